"""`mlxctl import-ollama`: list the models of an Ollama store on this machine, and import them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.store.importers.ollama import default_ollama_dir
from mlxserve.v1 import store_pb2

from .backend import Backend, exits_on_error, settings_from
from .render import ProgressView, human_size, progress_view, table

LIST_TIMEOUT_S = 300.0  # the store reads every GGUF header: a large store takes a while
_Outcome = store_pb2.ImportOllamaResult
_VERBS = {_Outcome.IMPORTED: "imported", _Outcome.ALREADY_IMPORTED: "already imported",
          _Outcome.SKIPPED: "skipped", _Outcome.WOULD_IMPORT: "would import"}


def split_args(args: list[str]) -> tuple[Path, list[str]]:
    """(Ollama folder, model names): the first argument is the folder when it looks like one
    (a path, or a folder with Ollama's manifests/ inside); everything else is a model name."""
    if args:
        first = Path(args[0]).expanduser()
        if args[0].startswith(("/", "./", "../", "~")) or args[0] in (".", "..") or (first / "manifests").is_dir():
            return first.resolve(), args[1:]
    return default_ollama_dir().resolve(), args


def status_text(m: store_pb2.OllamaModel) -> str:
    if m.skip_reason:
        return f"skip: {m.skip_reason}"
    if m.imported:
        return "imported"
    return "importable" if m.name == m.ollama_name else f"importable as {m.name}"


def print_listing(resp: store_pb2.ListOllamaResponse) -> None:
    if not resp.models:
        typer.echo(f"no models in the Ollama store at {resp.dir}")
        return
    typer.echo(f"Ollama models in {resp.dir}:\n")
    typer.echo(table(("NAME", "SIZE", "ARCH", "QUANT", "STATUS"), [
        (m.ollama_name, human_size(m.size), m.architecture or "-", m.quantization or "-", status_text(m))
        for m in resp.models
    ]))
    if any(not m.skip_reason and not m.imported for m in resp.models):
        typer.echo("\nImport with `mlxctl import-ollama NAME...`, or every importable one with `--all`; "
                   "GGUF digests are checked then (`--dry-run` checks without importing).")


def listing_json(resp: store_pb2.ListOllamaResponse) -> str:
    return json.dumps({"dir": resp.dir, "models": [
        {"ollama_name": m.ollama_name, "name": m.name, "size": m.size, "architecture": m.architecture,
         "quantization": m.quantization, "parameter_size": m.parameter_size, "imported": m.imported,
         "skip_reason": m.skip_reason or None, "digest": m.digest}
        for m in resp.models
    ]}, indent=2)


def result_line(r: store_pb2.ImportOllamaResult) -> str:
    verb = _VERBS.get(r.outcome, "?")
    target = r.ollama_name if r.name in (r.ollama_name, "") else f"{r.ollama_name} as {r.name}"
    return f"{verb} {target}: {r.reason}" if r.reason else f"{verb} {target}"


def run_import(backend: Backend, request: store_pb2.ImportOllamaRequest) -> list[store_pb2.ImportOllamaResult]:
    """Stream the import: each model's progress (bars on a terminal), then one line with its result."""
    results: list[store_pb2.ImportOllamaResult] = []
    view: ProgressView | None = None
    try:
        for event in backend.stream("store", "ImportOllama", request):
            if event.HasField("progress"):
                if view is None:
                    typer.echo(f"importing {event.ollama_name}")
                    view = progress_view()
                view.update(event.progress.status, event.progress.total, event.progress.completed)
            elif event.HasField("result"):
                if view is not None:
                    view.close()
                    view = None
                results.append(event.result)
                typer.echo(result_line(event.result))
    finally:
        if view is not None:
            view.close()
    return results


@exits_on_error
def import_ollama(
    ctx: typer.Context,
    args: Optional[List[str]] = typer.Argument(
        None, metavar="[DIR] [NAME]...",
        help="Ollama's models folder (default $OLLAMA_MODELS, else ~/.ollama/models), then the models to "
             "import as Ollama names them, e.g. gemma3:270m"),
    everything: bool = typer.Option(False, "--all", help="import every model the folder holds; those that "
                                                         "cannot be imported are skipped, saying why"),
    list_only: bool = typer.Option(False, "--list", help="list the models and whether each can be imported "
                                                         "(what it does without names)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check the models as an import would (digests "
                                                          "included) and write nothing"),
    force: bool = typer.Option(False, "--force", help="import again models already imported, and replace "
                                                      "models of the same name that came from elsewhere"),
    as_json: bool = typer.Option(False, "--json", help="print the listing as JSON"),
) -> None:
    """Import the models of an Ollama store under the same names (without names: list them)."""
    folder, names = split_args(list(args or []))
    backend = Backend(settings_from(ctx))
    if list_only or (not names and not everything):
        if list_only and (names or everything or dry_run or force):
            raise InvalidArgument("--list takes no model names and no --all, --dry-run or --force")
        if dry_run:
            raise InvalidArgument("--dry-run checks the models named, or every one with --all")
        resp = backend.call("store", "ListOllama", store_pb2.ListOllamaRequest(dir=str(folder)),
                            timeout=LIST_TIMEOUT_S)
        if as_json:
            typer.echo(listing_json(resp))
        else:
            print_listing(resp)
        return
    if everything and names:
        raise InvalidArgument("give model names or --all, not both")
    if as_json:
        raise InvalidArgument("--json prints the listing: give it without model names or --all")
    results = run_import(backend, store_pb2.ImportOllamaRequest(dir=str(folder), names=names, all=everything,
                                                                force=force, dry_run=dry_run))
    counts = {verb: sum(1 for r in results if _VERBS.get(r.outcome) == verb) for verb in _VERBS.values()}
    typer.echo(", ".join(f"{n} {verb}" for verb, n in counts.items() if n) or "nothing to import")
    # Named models that were skipped fail the command (a script should notice); with --all,
    # skipping what cannot be imported is the expected outcome.
    if names and counts["skipped"]:
        raise typer.Exit(1)
