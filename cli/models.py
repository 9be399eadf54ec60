"""Store verbs about models: list (ls), show, create, cp, rm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from mlxserve.services.common.errors import InvalidArgument, MlxServeError
from mlxserve.v1 import common_pb2, store_pb2

from .backend import Backend, complete_model_names, exits_on_error, settings_from
from .render import human_size, relative_time, show_progress, table

RECIPE_SUFFIXES = {".yaml": "modelspec", ".yml": "modelspec"}  # anything else is read as a Modelfile
MAX_RECIPE_BYTES = 1 << 20  # a recipe is text; templates and licenses fit many times over
SHOW_FIELDS = ("template", "parameters", "system", "license", "modelfile")


def details_dict(d: common_pb2.ModelDetails) -> dict:
    return {
        "parent_model": d.parent_model, "format": d.format, "family": d.family, "families": list(d.families),
        "parameter_size": d.parameter_size, "quantization_level": d.quantization_level,
    }


@exits_on_error
def list_models(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """List the models in the store."""
    resp = Backend(settings_from(ctx)).call("store", "List", store_pb2.ListRequest())
    if as_json:
        typer.echo(json.dumps({"models": [
            {"name": m.name, "model": m.model or m.name, "digest": m.digest, "size": m.size,
             "modified_at": m.modified_at, "details": details_dict(m.details)}
            for m in resp.models
        ]}, indent=2))
        return
    typer.echo(table(
        ("NAME", "ID", "SIZE", "MODIFIED"),
        [(m.name, m.digest[:12], human_size(m.size), relative_time(m.modified_at)) for m in resp.models],
    ))


# -- create --------------------------------------------------------------------------------------------


def current_digest(backend: Backend, name: str) -> str | None:
    """The manifest digest `name` has in the store now, or None if there is no such model (or the
    lookup fails: it only serves the "replaced" line; the operation itself says what is wrong)."""
    try:
        return backend.call("store", "Show", store_pb2.ShowRequest(name=name)).summary.digest
    except MlxServeError:
        return None


def say_replaced(backend: Backend, name: str, old: str | None) -> None:
    """Tell that `name` replaced a different model (create and cp replace, as Ollama's do)."""
    new = current_digest(backend, name) if old is not None else None
    if old is not None and new is not None and new != old:
        typer.echo(f"replaced {name} (was {old[:12]})")


def run_progress(backend: Backend, method: str, request: Any) -> None:
    """Run a streaming store operation, its progress on stdout (bars on a terminal, lines elsewhere)."""
    show_progress(backend.stream("store", method, request))


def create_model(backend: Backend, name: str, source: Path) -> None:
    """Import `source` (a GGUF file or a model folder) as `name` through the store, showing progress."""
    source = source.expanduser().resolve()
    if not source.exists():
        raise InvalidArgument(f"source '{source}' does not exist")
    run_progress(backend, "Create", store_pb2.CreateRequest(name=name, from_path=str(source)))


def looks_like_path(text: str) -> bool:
    """Whether `--from` names a file or folder rather than a model (`me/smollm2:q4` is a model)."""
    return (Path(text).expanduser().exists() or text.startswith(("/", "./", "../", "~"))
            or text.lower().endswith((".gguf", ".safetensors")))


def placement_json(hosts: Optional[str], hostfile: Optional[Path], strategy: Optional[str],
                   backend: Optional[str]) -> str:
    """The create request's placement from the flags ("" when none is given; "{}" for --hosts none).
    The store checks it (placement.parse_placement) and keeps the hosts with the model."""
    if hosts is None and hostfile is None:
        if strategy or backend:
            raise InvalidArgument("--strategy and --distributed-backend go with --hosts or --hostfile")
        return ""
    if hosts is not None and hosts.strip().lower() == "none":
        return "{}"
    placement: dict[str, Any] = {"strategy": strategy or "pipeline"}
    if hosts is not None:
        placement["hosts"] = [h.strip() for h in hosts.split(",") if h.strip()]
    if hostfile is not None:
        placement["hostfile"] = str(hostfile.expanduser().resolve())
    if backend:
        placement["backend"] = backend
    return json.dumps(placement)


def create_request(name: str, recipe: Optional[Path], source: Optional[str], quantize: Optional[str],
                   group_size: Optional[int], placement: str = "") -> store_pb2.CreateRequest:
    """The CreateRequest for `mlxctl create`: the store parses the recipe; flags override it."""
    if recipe is None and source is None:
        raise InvalidArgument("create needs a recipe (-f Modelfile or ModelSpec.yaml) or a source (--from PATH|MODEL)")
    req = store_pb2.CreateRequest(name=name)
    if recipe is not None:
        path = recipe.expanduser().resolve()
        if not path.is_file():
            raise InvalidArgument(f"recipe '{path}' does not exist or is not a file")
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"GGUF":
            raise InvalidArgument(f"'{path}' is a GGUF model, not a recipe; import it with --from {path}")
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise InvalidArgument(f"recipe '{path}' is larger than {MAX_RECIPE_BYTES // 1024} KiB; is it really a "
                                  "Modelfile or a ModelSpec.yaml?")
        try:
            req.recipe = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"cannot read recipe '{path}': {e}") from None
        req.recipe_format = RECIPE_SUFFIXES.get(path.suffix.lower(), "modelfile")
        req.base_dir = str(path.parent)
    if source is not None:
        if looks_like_path(source):
            src = Path(source).expanduser().resolve()
            if not src.exists():
                raise InvalidArgument(f"source '{src}' does not exist")
            req.from_path = str(src)
        else:
            req.from_model = source
    if quantize:
        req.quantize = quantize
    if group_size is not None:
        if group_size <= 0:
            raise InvalidArgument(f"--group-size must be a positive number, got {group_size}")
        req.group_size = group_size
    req.placement_json = placement
    return req


@exits_on_error
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="name for the new model, e.g. smollm2 or me/smollm2:q4"),
    recipe: Optional[Path] = typer.Option(None, "--file", "-f", help="a Modelfile or a ModelSpec.yaml recipe"),
    source: Optional[str] = typer.Option(None, "--from", help="a GGUF file, a model folder, or an existing model"),
    quantize: Optional[str] = typer.Option(
        None, "--quantize", "-q",
        help="q2..q8 (MLX affine, group 64), q4_0/q8_0 (group 32), or none; a GGUF keeps its own quantization by default"),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="quantization group size (default 64)"),
    hosts: Optional[str] = typer.Option(
        None, "--hosts",
        help="serve the model on a group of processes: host[:port],... (rank 0, first, is this machine); 'none' clears"),
    hostfile: Optional[Path] = typer.Option(None, "--hostfile", help="the group's hosts from an mlx.launch hostfile (JSON)"),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="how the group splits the model: pipeline (default) or tensor"),
    distributed_backend: Optional[str] = typer.Option(
        None, "--distributed-backend", help="MLX's distributed backend: ring (default, TCP), nccl, mpi or jaccl"),
) -> None:
    """Create a model from a recipe, a GGUF file, a model folder or another model."""
    backend = Backend(settings_from(ctx))
    placement = placement_json(hosts, hostfile, strategy, distributed_backend)
    request = create_request(name, recipe, source, quantize, group_size, placement)
    old = current_digest(backend, name)
    run_progress(backend, "Create", request)
    say_replaced(backend, name, old)


# -- show ------------------------------------------------------------------------------------------------


def show_json(s: store_pb2.ShowResponse) -> dict[str, Any]:
    """The model in the shape of Ollama's /api/show."""
    out: dict[str, Any] = {key: getattr(s, key) for key in SHOW_FIELDS if getattr(s, key)}
    out["details"] = details_dict(s.summary.details)
    out["model_info"] = json.loads(s.model_info_json) if s.model_info_json else {}
    if s.messages:
        out["messages"] = [{"role": m.role, "content": m.content} for m in s.messages]
    out["capabilities"] = list(s.capabilities)
    out["modified_at"] = s.summary.modified_at
    return out


def _section(title: str, rows: list[tuple[str, str]]) -> list[str]:
    if not rows:
        return []
    width = max(len(k) for k, _ in rows)
    return [f"  {title}", *[f"    {k.ljust(width)}    {v}".rstrip() for k, v in rows], ""]


def show_text(s: store_pb2.ShowResponse) -> str:
    """What `ollama show` prints: model facts, capabilities, parameters, system prompt, license head."""
    info = json.loads(s.model_info_json) if s.model_info_json else {}
    d = s.summary.details
    arch = str(info.get("general.architecture") or d.family)
    facts = [("architecture", arch), ("parameters", d.parameter_size)]
    for key, label in (("context_length", "context length"), ("embedding_length", "embedding length")):
        if f"{arch}.{key}" in info:
            facts.append((label, str(info[f"{arch}.{key}"])))
    facts.append(("quantization", d.quantization_level))
    # What an imported file became, and where the chat template came from: said, never guessed.
    facts.append(("stored as", str(info.get("mlxserve.quantization", "")).split(" -> ", 1)[-1]))
    facts.append(("chat template", str(info.get("ollama.template") or info.get("mlxserve.chat_template") or "")))
    facts.append(("parameters not used", str(info.get("mlxserve.parameters_not_used", ""))))
    lines = _section("Model", [(k, v) for k, v in facts if v])
    lines += _section("Capabilities", [(c, "") for c in s.capabilities])
    params = []
    for line in s.parameters.splitlines():
        key, _, value = line.strip().partition(" ")
        params.append((key, value.strip()))
    lines += _section("Parameters", params)
    if s.system:
        lines += _section("System", [(ln, "") for ln in s.system.splitlines()[:10]])
    if s.license:
        head = [ln for ln in s.license.splitlines() if ln.strip()][:2]
        lines += _section("License", [(ln.strip(), "") for ln in head])
    return "\n".join(lines).rstrip()


@exits_on_error
def show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the model to describe", autocompletion=complete_model_names),
    template: bool = typer.Option(False, "--template", help="print only the chat template"),
    parameters: bool = typer.Option(False, "--parameters", help="print only the default parameters"),
    system: bool = typer.Option(False, "--system", help="print only the system prompt"),
    license_: bool = typer.Option(False, "--license", help="print only the license"),
    modelfile: bool = typer.Option(False, "--modelfile", help="print a Modelfile that recreates the model"),
    as_json: bool = typer.Option(False, "--json", help="print everything as JSON (Ollama's /api/show shape)"),
) -> None:
    """Show a model's details, parameters, template, system prompt and license."""
    picked = [f for f, on in zip(SHOW_FIELDS, (template, parameters, system, license_, modelfile)) if on]
    if len(picked) + as_json > 1:
        raise InvalidArgument("choose one of --template, --parameters, --system, --license, --modelfile and --json")
    s = Backend(settings_from(ctx)).call("store", "Show", store_pb2.ShowRequest(name=name))
    if as_json:
        typer.echo(json.dumps(show_json(s), indent=2, ensure_ascii=False))
    elif picked:
        typer.echo(getattr(s, picked[0]))
    else:
        typer.echo(show_text(s))


# -- cp, rm ------------------------------------------------------------------------------------------------


@exits_on_error
def copy(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="an existing model", autocompletion=complete_model_names),
    destination: str = typer.Argument(..., help="the new name for it"),
) -> None:
    """Give a model another name (no weights are copied); a model already named so is replaced."""
    backend = Backend(settings_from(ctx))
    old = current_digest(backend, destination)
    backend.call("store", "Copy", store_pb2.CopyRequest(source=source, destination=destination))
    typer.echo(f"copied '{source}' to '{destination}'")
    say_replaced(backend, destination, old)


@exits_on_error
def remove(ctx: typer.Context, models: List[str] = typer.Argument(..., help="models to delete", autocompletion=complete_model_names)) -> None:
    """Delete models from the store."""
    backend = Backend(settings_from(ctx))
    for name in models:
        backend.call("store", "Remove", store_pb2.RemoveRequest(name=name))
        typer.echo(f"deleted '{name}'")
