"""What `create` builds from: `CreateSpec`, and the two recipe formats that produce one.

A recipe is either an Ollama `Modelfile` (FROM, PARAMETER, TEMPLATE, SYSTEM, LICENSE, MESSAGE)
or a `ModelSpec.yaml` (keys: from, template, system, parameters, quantize, group_size, license,
messages, placement). Both resolve `from` against the recipe's folder when it names a path, and parse it as
a model name otherwise. Every parameter is checked against Ollama's known ones and typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.common.placement import parse_placement

from .blobs import check_digest
from .names import parse_name

# Ollama's model parameters (api/types.go Options and Runner) and their types.
INT_PARAMETERS = frozenset({
    "num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "mirostat", "num_ctx", "num_batch",
    "num_gpu", "main_gpu", "num_thread",
})
FLOAT_PARAMETERS = frozenset({
    "top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
    "frequency_penalty", "mirostat_tau", "mirostat_eta", "tfs_z",
})
BOOL_PARAMETERS = frozenset({"penalize_newline", "use_mmap", "use_mlock", "numa", "low_vram", "vocab_only", "f16_kv"})
LIST_PARAMETERS = frozenset({"stop"})
KNOWN_PARAMETERS = INT_PARAMETERS | FLOAT_PARAMETERS | BOOL_PARAMETERS | LIST_PARAMETERS
# The ones mlxserve's runtime applies (services/worker/defaults.py; a test keeps the two in step).
# The others are llama.cpp runner settings (num_thread, mirostat, use_mmap...): a model may carry
# them, as Ollama's do, and create says they are not used rather than dropping them silently.
RUNTIME_PARAMETERS = frozenset({
    "temperature", "top_p", "top_k", "min_p", "seed", "num_predict", "num_ctx", "stop",
    "repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty",
})
MESSAGE_ROLES = ("system", "user", "assistant", "tool")

# MLX affine quantization: the bit widths it has, and the group sizes it takes.
QUANT_BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 64  # mlx-lm's default for affine quantization
_QUANT = re.compile(r"q([2-8])(_0)?")


@dataclass
class CreateSpec:
    """One create request. Exactly one source: `from_model`, `from_path` or `files`."""

    from_model: str | None = None            # an existing model to derive from (weights shared)
    from_path: Path | None = None            # a GGUF file or an mlx-lm / Hugging Face folder
    files: dict[str, str] = field(default_factory=dict)  # filename -> "sha256:<hex>" of uploaded blobs
    template: str | None = None              # None: keep the source's (or pick one from the catalog)
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    license: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    quantize: str | None = None              # "q4", "q8" (also "q4_0", "q8_0"), "none"; see `quantization`
    group_size: int | None = None
    model_info: dict[str, Any] = field(default_factory=dict)  # facts for `show`, merged into the model's model_info
    # Where the model is served when it is a group of processes (placement.py's keys); None: keep
    # the source's, {}: none. A hostfile is read at create time: the model keeps the hosts.
    placement: dict[str, Any] | None = None
    # The sha256 of `from_path`, when the caller has just verified it (an Ollama blob is named by
    # it): the importer then skips hashing the file again. Never taken from a client request.
    source_digest: str | None = None
    # The same for a folder's files (name -> sha256): they are linked into the model, not copied.
    source_digests: dict[str, str] = field(default_factory=dict)
    # Provenance for the manifest (pull: where the model came from, the remote manifest's digest),
    # set by in-process callers only, like source_digest.
    annotations: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise InvalidArgument for a spec `create` cannot honour (before any work starts)."""
        sources = [s for s in ("from_model", "from_path", "files") if getattr(self, s)]
        if len(sources) != 1:
            raise InvalidArgument(
                "create needs exactly one source: an existing model, a path (GGUF file or model folder) "
                f"or uploaded files; got {', '.join(sources) if sources else 'none'}"
            )
        if self.from_model:
            parse_name(self.from_model)
        for filename, digest in self.files.items():
            check_filename(filename)
            check_digest(digest)
        self.parameters = normalize_parameters(self.parameters)
        self.messages = normalize_messages(self.messages)
        self.placement = normalize_placement(self.placement)
        quantization(self.quantize, self.group_size)


def normalize_placement(placement: Any, base_dir: Path | None = None) -> dict[str, Any] | None:
    """A placement as the model keeps it (hosts listed, hostfile read), {} for none, None: unsaid."""
    if placement is None or placement == {}:
        return placement
    return parse_placement(placement, source="placement", base_dir=base_dir).to_dict()


def check_filename(filename: str) -> str:
    """A file name for an uploaded blob: one plain path component."""
    if (not isinstance(filename, str) or not filename or filename in (".", "..") or "/" in filename
            or "\\" in filename or any(ord(c) < 0x20 for c in filename) or len(filename) > 255):
        raise InvalidArgument(f"invalid file name {filename!r}: expected a plain name such as 'model.safetensors'")
    return filename


def quantization(quantize: str | None, group_size: int | None) -> tuple[int, int] | None:
    """(bits, group_size) for a quantize request, None for none; refuse what MLX cannot do.

    `q4`/`q8` use mlx-lm's default group of 64; Ollama's `q4_0`/`q8_0` mean groups of 32.
    K-quants (`q4_K_M`...) and float targets are llama.cpp formats, refused by name.
    """
    if quantize is None or quantize.strip().lower() in ("", "none"):
        # "none": no MLX quantization; a quantized GGUF is then written as float16/bfloat16.
        if group_size is not None:
            raise InvalidArgument("group_size only applies together with quantize")
        return None
    m = _QUANT.fullmatch(quantize.strip().lower())
    if not m or int(m.group(1)) not in QUANT_BITS:
        raise InvalidArgument(
            f"quantization {quantize!r} is not supported; use one of "
            f"{', '.join(f'q{b}' for b in QUANT_BITS)} (MLX affine quantization), q4_0 / q8_0, or none"
        )
    bits = int(m.group(1))
    default_group = 32 if m.group(2) else DEFAULT_GROUP_SIZE
    group = default_group if group_size is None else group_size
    if group not in GROUP_SIZES:
        raise InvalidArgument(f"group size {group} is not supported; use one of {', '.join(map(str, GROUP_SIZES))}")
    return bits, group


def _typed(name: str, value: Any) -> Any:
    try:
        if name in INT_PARAMETERS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if name in FLOAT_PARAMETERS:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if name in BOOL_PARAMETERS:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            raise ValueError
    except (TypeError, ValueError):
        kind = "an integer" if name in INT_PARAMETERS else "a number" if name in FLOAT_PARAMETERS else "true or false"
        raise InvalidArgument(f"parameter {name} must be {kind}, got {value!r}") from None
    raise InvalidArgument(f"unknown parameter {name!r}")


def normalize_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Check names against Ollama's parameters and coerce values to their types (stop: list)."""
    if not isinstance(parameters, dict):
        raise InvalidArgument("parameters must be a mapping of name to value")
    out: dict[str, Any] = {}
    for name, value in parameters.items():
        if name not in KNOWN_PARAMETERS:
            raise InvalidArgument(f"unknown parameter {name!r} (known: {', '.join(sorted(KNOWN_PARAMETERS))})")
        if name in LIST_PARAMETERS:
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str) and v for v in values):
                raise InvalidArgument(f"parameter {name} must be a string or a list of non-empty strings")
            out[name] = list(values)
        else:
            out[name] = _typed(name, value)
    return out


def normalize_messages(messages: list[Any]) -> list[dict[str, str]]:
    if not isinstance(messages, list):
        raise InvalidArgument("messages must be a list of {role, content}")
    out = []
    for m in messages:
        if not isinstance(m, dict) or set(m) - {"role", "content"} or not isinstance(m.get("content", ""), str):
            raise InvalidArgument(f"a message must have a role and a text content, got {m!r}")
        role = m.get("role")
        if role not in MESSAGE_ROLES:
            raise InvalidArgument(f"message role {role!r} is not one of {', '.join(MESSAGE_ROLES)}")
        out.append({"role": role, "content": m.get("content", "")})
    return out


def _resolve_from(value: str, base_dir: Path, spec: CreateSpec) -> None:
    """FROM a path (relative to the recipe's folder) or a model name."""
    value = value.strip()
    if not value:
        raise InvalidArgument("FROM needs a model name or a path")
    expanded = Path(value).expanduser()
    path = expanded if expanded.is_absolute() else base_dir / expanded
    looks_like_path = value.startswith(("/", "./", "../", "~")) or value.endswith(".gguf")
    if path.exists() or looks_like_path:
        if not path.exists():
            raise InvalidArgument(f"FROM {value!r}: {path} does not exist")
        spec.from_path = path.resolve()
    else:
        parse_name(value)  # a hostile or malformed name is refused here
        spec.from_model = value


# ----------------------------------------------------------------------------- Modelfile

_COMMANDS = ("FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "LICENSE", "MESSAGE", "ADAPTER")


def _split_modelfile(text: str) -> list[tuple[str, str, str | None, int]]:
    """(COMMAND, text before any triple-quoted string, that string or None, line number)."""
    out: list[tuple[str, str, str | None, int]] = []
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        line, lineno = lines[i], i + 1
        i += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        command, _, rest = stripped.partition(" ")
        if "\t" in command:
            command, _, more = command.partition("\t")
            rest = more + " " + rest
        command = command.upper()
        if command not in _COMMANDS:
            raise InvalidArgument(f"Modelfile line {lineno}: unknown instruction {command!r}")
        rest = rest.strip()
        if '"""' in rest:
            head, _, after = rest.partition('"""')
            if '"""' in after:
                body, _, tail = after.partition('"""')
            else:
                parts = [after]
                while i < len(lines) and '"""' not in lines[i]:
                    parts.append(lines[i])
                    i += 1
                if i >= len(lines):
                    raise InvalidArgument(f'Modelfile line {lineno}: unterminated """ string')
                last, _, tail = lines[i].partition('"""')
                parts.append(last)
                i += 1
                body = "\n".join(parts)
            if tail.strip():
                raise InvalidArgument(f'Modelfile line {lineno}: unexpected text after closing """')
            out.append((command, head, body, lineno))
        else:
            out.append((command, rest, None, lineno))
    return out


def _unquote(value: str, quoted: str | None = None) -> str:
    if quoted is not None:
        return quoted
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_modelfile(text: str, base_dir: Path) -> CreateSpec:
    """Parse an Ollama Modelfile into a CreateSpec; paths in FROM are relative to `base_dir`."""
    spec = CreateSpec()
    seen_from = False
    params: dict[str, Any] = {}
    licenses: list[str] = []
    for command, arg, quoted, lineno in _split_modelfile(text):
        if command == "ADAPTER":
            raise InvalidArgument("ADAPTER is not supported: create the model from merged weights instead")
        if command == "FROM":
            if seen_from:
                raise InvalidArgument(f"Modelfile line {lineno}: only one FROM is allowed")
            seen_from = True
            _resolve_from(_unquote(arg, quoted), base_dir, spec)
        elif command == "PARAMETER":
            name, _, value = arg.strip().partition(" ")
            name = name.strip().lower()
            value = _unquote(value, quoted)
            if not name or value == "":
                raise InvalidArgument(f"Modelfile line {lineno}: PARAMETER needs a name and a value")
            if name not in KNOWN_PARAMETERS:
                raise InvalidArgument(f"Modelfile line {lineno}: unknown parameter {name!r}")
            if name in LIST_PARAMETERS:
                params.setdefault(name, []).append(value)  # stop accumulates
            else:
                params[name] = _typed(name, value)
        elif command == "TEMPLATE":
            spec.template = _unquote(arg, quoted)
        elif command == "SYSTEM":
            spec.system = _unquote(arg, quoted)
        elif command == "LICENSE":
            licenses.append(_unquote(arg, quoted))
        elif command == "MESSAGE":
            role, _, content = arg.strip().partition(" ")
            content = _unquote(content, quoted)
            spec.messages.append({"role": role.strip().lower(), "content": content})
    if not seen_from:
        raise InvalidArgument("a Modelfile needs a FROM line")
    if licenses:
        spec.license = "\n\n".join(licenses)
    spec.parameters = params
    spec.messages = normalize_messages(spec.messages)
    return spec


# ----------------------------------------------------------------------------- ModelSpec.yaml

_SPEC_KEYS = ("from", "template", "system", "parameters", "quantize", "group_size", "license", "messages", "placement")


def parse_modelspec(text: str, base_dir: Path) -> CreateSpec:
    """Parse a ModelSpec.yaml recipe; `from` is a path relative to `base_dir` or a model name."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidArgument(f"ModelSpec is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("a ModelSpec must be a YAML mapping with at least a 'from' key")
    unknown = sorted(str(k) for k in doc if k not in _SPEC_KEYS)
    if "adapter" in unknown:
        raise InvalidArgument("adapter is not supported: create the model from merged weights instead")
    if unknown:
        raise InvalidArgument(f"unknown ModelSpec key(s): {', '.join(unknown)} (known: {', '.join(_SPEC_KEYS)})")
    if not isinstance(doc.get("from"), str):
        raise InvalidArgument("a ModelSpec needs 'from': a model name or a path")
    spec = CreateSpec()
    _resolve_from(doc["from"], base_dir, spec)
    for key in ("template", "system", "license", "quantize"):
        if doc.get(key) is not None:
            if not isinstance(doc[key], str):
                raise InvalidArgument(f"ModelSpec '{key}' must be a string")
            setattr(spec, key, doc[key])
    if doc.get("group_size") is not None:
        if not isinstance(doc["group_size"], int) or isinstance(doc["group_size"], bool):
            raise InvalidArgument("ModelSpec 'group_size' must be an integer")
        spec.group_size = doc["group_size"]
    spec.parameters = normalize_parameters(doc.get("parameters") or {})
    spec.messages = normalize_messages(doc.get("messages") or [])
    if "placement" in doc:
        spec.placement = normalize_placement(doc["placement"] or {}, base_dir)
    quantization(spec.quantize, spec.group_size)
    return spec
