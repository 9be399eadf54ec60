"""Import the models of an Ollama store on this machine (`mlxctl import-ollama`).

Ollama keeps `blobs/sha256-<hex>` and `manifests/<host>/<namespace>/<model>/<tag>`: Docker
schema-2 manifests whose layers carry `application/vnd.ollama.image.*` media types. The model
layer is a GGUF, which `ModelStore.create` converts like any GGUF file; the params, system,
license and messages layers become the new model's defaults. Pulling from a registry that holds
Ollama's format (ollama_registry.py) maps the layers with the same functions (parse_manifest,
refusal, apply_config, apply_layer, read_gguf_header, OllamaModel.create_spec). The template layer is a Go
template, which mlxserve does not execute: the GGUF's own chat template (or the catalog's) is
used instead, and the model's model_info says which.

Nothing here trusts the folder it reads: manifest names are checked part by part, every blob must
be a regular file inside the folder whose size and sha256 match the manifest, and JSON and text
layers are bounded. A model that fails a check is skipped with the reason; the others go on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from mlxserve.services.common import logs
from mlxserve.services.common.errors import Cancelled, DiskFull, InvalidArgument, MlxServeError, NotFound, Unavailable

from ..blobs import digest_of_file
from ..manifest import ANN_SOURCE_DIGEST, MANIFEST_MEDIA_TYPE
from ..names import parse_name
from ..progress import ProgressCallback, ProgressEvent, no_progress
from ..recipes import KNOWN_PARAMETERS, CreateSpec, normalize_messages, normalize_parameters
from ..registry import DOCKER_MANIFEST
from ..templates import BY_NAME, pick_template, template_family

if TYPE_CHECKING:
    from ..store import ModelStore

log = logs.get_logger(component="store")

OLLAMA_HOST = "registry.ollama.ai"
OLLAMA_NAMESPACE = "library"
OLLAMA_TAG = "latest"

_M = "application/vnd.ollama.image"
MEDIA_MODEL = f"{_M}.model"
MEDIA_PARAMS = f"{_M}.params"
MEDIA_SYSTEM = f"{_M}.system"
MEDIA_LICENSE = f"{_M}.license"
MEDIA_MESSAGES = f"{_M}.messages"
MEDIA_TEMPLATE = f"{_M}.template"
MEDIA_PROMPT = f"{_M}.prompt"          # the template's name before Ollama 0.1.x renamed it
MEDIA_PROJECTOR = f"{_M}.projector"
MEDIA_ADAPTER = f"{_M}.adapter"
MEDIA_TENSOR = f"{_M}.tensor"          # safetensors-engine models: one layer per tensor
# Ignored like Ollama ignores them: `.embed` (deprecated) and `.draft` (a speculative-decoding
# helper, not needed to serve the model).
MEDIA_EMBED = f"{_M}.embed"
MEDIA_DRAFT = f"{_M}.draft"
IGNORED_LAYERS = frozenset({MEDIA_EMBED, MEDIA_DRAFT})
# The layers read into memory and mapped onto the model's defaults (apply_layer).
SMALL_LAYERS = frozenset({MEDIA_PARAMS, MEDIA_SYSTEM, MEDIA_LICENSE, MEDIA_MESSAGES, MEDIA_TEMPLATE, MEDIA_PROMPT})
MANIFEST_TYPES = (DOCKER_MANIFEST, MANIFEST_MEDIA_TYPE)

# Bounds on what is read into memory: a real manifest is ~1 KB, a license ~30 KB.
MAX_MANIFEST_BYTES = 1 << 20
MAX_TEXT_LAYER_BYTES = 1 << 20

# model_info keys the import writes, so `show` can say where the model came from.
INFO_SOURCE = "ollama.source"             # "registry.ollama.ai/library/gemma3:270m"
INFO_DIGEST = "ollama.manifest_digest"    # "sha256:<hex>" of the Ollama manifest imported
INFO_TEMPLATE = "ollama.template"         # what became of the Go template
INFO_IGNORED = "ollama.ignored_parameters"

_OLLAMA_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")

IMPORTED, ALREADY_IMPORTED, SKIPPED, WOULD_IMPORT = "imported", "already imported", "skipped", "would import"


def default_ollama_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where Ollama keeps its models: `$OLLAMA_MODELS`, else `~/.ollama/models` (envconfig.Models)."""
    value = env.get("OLLAMA_MODELS", "").strip().strip("\"'")
    return Path(value).expanduser() if value else Path.home() / ".ollama" / "models"


@dataclass
class OllamaModel:
    """One manifest of an Ollama store: what it holds and whether it can be imported."""

    host: str
    namespace: str
    model: str
    tag: str
    manifest_digest: str = ""              # "sha256:<hex>" of the manifest file
    name: str = ""                         # the mlxserve name it imports as
    size: int = 0                          # bytes of its layers and config, as `ollama list` counts
    gguf: Path | None = None               # the model blob
    gguf_digest: str = ""                  # "sha256:<hex>"
    architecture: str = ""                 # GGUF general.architecture
    quantization: str = ""                 # Ollama's file_type, e.g. "Q4_K_M"
    parameter_size: str = ""               # Ollama's model_type, e.g. "268.10M"
    parameters: dict[str, Any] = field(default_factory=dict)
    ignored_parameters: list[str] = field(default_factory=list)
    system: str | None = None
    license: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    go_template: str | None = None         # the template layer's text: never executed
    gguf_has_template: bool = False
    catalog_template: str = ""             # the catalog entry used when the GGUF has no template
    skip_reason: str | None = None

    @property
    def ollama_name(self) -> str:
        """The name as `ollama list` shows it (Ollama's DisplayShortest)."""
        if self.host.lower() != OLLAMA_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != OLLAMA_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def full_name(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def skip(self, reason: str) -> OllamaModel:
        if self.skip_reason is None:  # the first reason found is the one reported
            self.skip_reason = reason
        return self

    def template_note(self) -> str:
        """What `show` says about the Go template (model_info's `ollama.template`)."""
        if self.gguf_has_template:
            source = "the GGUF"
        elif self.catalog_template:
            source = f"the catalog ({self.catalog_template})"
        else:
            return ("not executed (Go template); the model has no chat template: "
                    "use raw prompts (/api/generate with raw, /v1/completions)")
        return f"not executed (Go template); the chat template comes from {source}"

    def create_spec(self, gguf: Path) -> CreateSpec:
        """What `ModelStore.create` builds the mlxserve model from, reading the GGUF at `gguf`."""
        info: dict[str, Any] = {INFO_SOURCE: self.full_name, INFO_DIGEST: self.manifest_digest}
        if self.go_template is not None:
            info[INFO_TEMPLATE] = self.template_note()
        if self.ignored_parameters:
            info[INFO_IGNORED] = "; ".join(self.ignored_parameters)
        template = None
        if not self.gguf_has_template and self.catalog_template:
            template = BY_NAME[self.catalog_template].template
        return CreateSpec(from_path=gguf, template=template, parameters=dict(self.parameters),
                          system=self.system, license=self.license, messages=list(self.messages),
                          model_info=info, source_digest=self.gguf_digest)


@dataclass(frozen=True)
class ImportResult:
    ollama_name: str
    name: str
    outcome: str        # IMPORTED, ALREADY_IMPORTED, SKIPPED or WOULD_IMPORT
    reason: str = ""    # why it was skipped
    digest: str = ""    # the new mlxserve manifest digest (hex) when imported


# ----------------------------------------------------------------------------- scanning


def store_root(path: Path | str) -> Path:
    """The Ollama models folder `path`, resolved; InvalidArgument when it is not one."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InvalidArgument(f"no Ollama store at {root}: not a folder (give Ollama's models folder, "
                              "e.g. ~/.ollama/models, or set OLLAMA_MODELS)")
    if not (root / "manifests").is_dir():
        raise InvalidArgument(f"{root} is not an Ollama models folder: it has no manifests/ folder")
    return root.resolve()


def scan(path: Path | str) -> list[OllamaModel]:
    """Every model the Ollama store at `path` holds, sorted by name, each checked (except the
    GGUF's sha256, which `import_model` verifies: hashing a whole store just to list it is slow)."""
    root = store_root(path)
    return sorted((_read_model(root, parts, file) for parts, file in _manifest_files(root)),
                  key=lambda m: m.ollama_name.lower())


def _manifest_files(root: Path) -> list[tuple[tuple[str, ...], Path]]:
    """manifests/<host>/<namespace>/<model>/<tag> files, as Ollama globs them (*/*/*/*)."""
    out = []
    for host in _entries(root / "manifests", Path.is_dir):
        for namespace in _entries(host, Path.is_dir):
            for model in _entries(namespace, Path.is_dir):
                for tag in _entries(model, Path.is_file):
                    out.append(((host.name, namespace.name, model.name, tag.name), tag))
    return out


def _entries(folder: Path, keep: Callable[[Path], bool]) -> list[Path]:
    """The folder's entries that `keep` accepts, hidden ones left out; none if it cannot be read."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and keep(p))
    except OSError:
        return []


def _inside(folder: Path, path: Path) -> bool:
    """Whether `path`, with every link followed, stays inside `folder` (itself followed: a store
    whose blobs/ is a link to another disk is still one store)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _valid_ollama_name(host: str, namespace: str, model: str, tag: str) -> bool:
    """Ollama's own rules (types/model/name.go): bounded lengths, a narrow character set."""
    return (bool(_HOST.fullmatch(host)) and len(host) <= 350 and bool(_PART.fullmatch(namespace))
            and "." not in namespace and all(_PART.fullmatch(p) and len(p) <= 80 for p in (namespace, model, tag)))


def _read_model(root: Path, parts: tuple[str, ...], path: Path) -> OllamaModel:
    m = OllamaModel(*parts)
    if not _valid_ollama_name(*parts):
        return m.skip(f"{ascii('/'.join(parts))} is not a valid Ollama model name")
    if not _inside(root / "manifests", path):
        return m.skip("its manifest is a link that leads outside the Ollama store")
    try:
        m.name = parse_name(m.ollama_name).display
    except InvalidArgument as e:
        m.skip(f"its name cannot be an mlxserve name ({e})")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            return m.skip(f"its manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        data = path.read_bytes()
    except OSError as e:
        return m.skip(f"its manifest cannot be read ({e.strerror})")
    m.manifest_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        layers, config = parse_manifest(data)
    except ValueError as e:
        return m.skip(f"its manifest is damaged: {e}")
    m.size = sum(d["size"] for d in layers) + (config["size"] if config else 0)
    refused = refusal(layers)
    if refused is not None:
        m.skip(refused)
    # Every layer is looked at even once a reason to skip is known, so that the listing still
    # shows what the model is; the first reason found is the one reported.
    if config is not None:
        data = _small_blob(root, config, m)
        if data is not None:
            apply_config(m, data)
    for desc in layers:
        media_type = desc["mediaType"]
        if media_type == MEDIA_MODEL:
            m.gguf, m.gguf_digest = _blob(root, desc, m), canonical(desc["digest"])
        elif media_type in SMALL_LAYERS:
            data = _small_blob(root, desc, m)
            if data is not None:
                apply_layer(m, desc, data)
        elif media_type in (MEDIA_PROJECTOR, MEDIA_ADAPTER):
            _blob(root, desc, m)  # a missing one is worth saying too, after the first reason
    if m.gguf is not None:
        read_gguf_header(m)
    return m


def parse_manifest(data: bytes) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(layers, config) of an Ollama image's schema-2 manifest, each descriptor checked (media
    type, sha256 digest, size); ValueError naming what is wrong."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise ValueError("not a schema-2 image manifest")
    if doc.get("mediaType", DOCKER_MANIFEST) not in MANIFEST_TYPES:
        raise ValueError(f"media type {doc.get('mediaType')!r} is not an image manifest")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ValueError("it has no list of layers")
    config = doc.get("config")
    if config is not None and not (isinstance(config, dict) and config.get("digest")):
        config = None  # Ollama reads a model without a config blob too
    for desc in layers + ([config] if config else []):
        if not isinstance(desc, dict) or not isinstance(desc.get("mediaType"), str):
            raise ValueError("a layer has no media type")
        if not isinstance(desc.get("digest"), str) or not _OLLAMA_DIGEST.fullmatch(desc["digest"]):
            raise ValueError(f"layer digest {str(desc.get('digest'))[:80]!r} is not a sha256 digest")
        if not isinstance(desc.get("size"), int) or isinstance(desc["size"], bool) or desc["size"] < 0:
            raise ValueError(f"layer {desc['digest']} has no valid size")
    return layers, config


def refusal(layers: list[dict[str, Any]]) -> str | None:
    """Why a model made of `layers` cannot be served faithfully (the first reason), or None.

    Looks at media types only, so it is said before any blob is read or downloaded.
    """
    kinds = [d["mediaType"] for d in layers]
    if MEDIA_PROJECTOR in kinds:
        return "it has a vision projector; vision models are not supported yet (mlxserve serves text-only GGUF models)"
    if MEDIA_ADAPTER in kinds:
        return ("it has a LoRA adapter layer, which mlxserve does not apply; "
                "create the model from merged weights instead")
    if MEDIA_TENSOR in kinds:
        return "it is stored as safetensors tensors (Ollama's newer engine format), not as a GGUF"
    if kinds.count(MEDIA_MODEL) > 1:
        return f"it has {kinds.count(MEDIA_MODEL)} model layers; mlxserve imports models with one GGUF"
    if MEDIA_MODEL not in kinds:
        return "it has no model layer: a cloud model, or one whose weights are stored elsewhere"
    return None


def canonical(digest: str) -> str:
    """`sha256:<hex>`, lower-case, of a digest Ollama wrote as `sha256:` or `sha256-` (checked by parse_manifest)."""
    return "sha256:" + _OLLAMA_DIGEST.fullmatch(digest).group(1).lower()  # type: ignore[union-attr]


def _kind(desc: dict[str, Any]) -> str:
    """A layer's kind for messages: "model", "params", "license"..., or "config"."""
    media_type = desc["mediaType"]
    return media_type.rsplit(".", 1)[-1] if media_type.startswith(_M + ".") else "config"


def _blob(root: Path, desc: dict[str, Any], m: OllamaModel) -> Path | None:
    """The blob a layer names if it is a regular file inside the store of the size the manifest
    says; otherwise None, and the model is skipped saying which check failed."""
    digest, what = canonical(desc["digest"]), _kind(desc)
    # Ollama writes sha256-<hex> (versions before 0.1.x wrote sha256:<hex>); the digest pattern
    # rules out anything else, so the path cannot leave blobs/ by its name, only through a link.
    hexdigest = digest.removeprefix("sha256:")
    path = root / "blobs" / f"sha256-{hexdigest}"
    if not os.path.lexists(path) and os.path.lexists(root / "blobs" / f"sha256:{hexdigest}"):
        path = root / "blobs" / f"sha256:{hexdigest}"
    if not os.path.lexists(path):
        m.skip(f"its {what} blob {digest} is missing from {root / 'blobs'}; "
               f"`ollama pull {m.ollama_name}` restores it")
    elif not _inside(root / "blobs", path):
        m.skip(f"its {what} blob {digest} is a link that leads outside the Ollama store")
    elif not path.is_file():
        m.skip(f"its {what} blob {digest} is not a regular file")
    elif (size := path.stat().st_size) != desc["size"]:
        m.skip(f"its {what} blob {digest} has {size} bytes, but the manifest says {desc['size']}: "
               "damaged or incomplete")
    else:
        return path
    return None


def _small_blob(root: Path, desc: dict[str, Any], m: OllamaModel) -> bytes | None:
    """A small layer's bytes (bounded), checked against its digest (hashed as read: it is small)."""
    if (reason := small_layer_too_big(desc)) is not None:
        m.skip(reason)
        return None
    path = _blob(root, desc, m)
    if path is None:
        return None
    data = path.read_bytes()
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != canonical(desc["digest"]):
        m.skip(f"its {_kind(desc)} blob {canonical(desc['digest'])} does not match its digest "
               f"(the content hashes to {actual}): damaged")
        return None
    return data


def small_layer_too_big(desc: dict[str, Any]) -> str | None:
    """Why a config/params/system/... layer is not read (more than MAX_TEXT_LAYER_BYTES), or None."""
    if desc["size"] > MAX_TEXT_LAYER_BYTES:
        return f"its {_kind(desc)} layer has {desc['size']} bytes, more than the {MAX_TEXT_LAYER_BYTES} allowed"
    return None


def apply_config(m: OllamaModel, data: bytes) -> None:
    """Ollama's config blob (ConfigV2: file_type, model_type...) -> what `m` reports."""
    doc = _json(m, "config", data, dict)
    m.quantization = str(doc.get("file_type") or "")
    m.parameter_size = str(doc.get("model_type") or "")


def apply_layer(m: OllamaModel, desc: dict[str, Any], data: bytes) -> None:
    """One verified small layer (a media type in SMALL_LAYERS) -> `m`'s parameters, system,
    license, messages or Go template; a layer that cannot be used skips `m` saying why."""
    media_type = desc["mediaType"]
    if media_type == MEDIA_PARAMS:
        _map_parameters(m, _json(m, _kind(desc), data, dict))
    elif media_type == MEDIA_MESSAGES:
        _map_messages(m, _json(m, _kind(desc), data, list))
    elif (text := _text(m, _kind(desc), data)) is None:
        return
    elif media_type == MEDIA_SYSTEM:
        m.system = text
    elif media_type in (MEDIA_TEMPLATE, MEDIA_PROMPT):
        m.go_template = text
    elif media_type == MEDIA_LICENSE:  # Ollama keeps one layer per LICENSE of the Modelfile
        m.license = text if m.license is None else f"{m.license}\n\n{text}"


def _text(m: OllamaModel, what: str, data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        m.skip(f"its {what} layer is not UTF-8 text")
        return None


def _json(m: OllamaModel, what: str, data: bytes, kind: type) -> Any:
    text = _text(m, what, data)
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        m.skip(f"its {what} layer is not valid JSON ({e})")
        return kind()
    if not isinstance(value, kind):
        m.skip(f"its {what} layer is not a JSON {'object' if kind is dict else 'array'}")
        return kind()
    return value


def _map_parameters(m: OllamaModel, params: dict[str, Any]) -> None:
    """Ollama's options JSON -> our parameters, one by one: a parameter mlxserve does not know is
    left out and named in model_info rather than costing the whole model."""
    for key, value in params.items():
        if key not in KNOWN_PARAMETERS:
            m.ignored_parameters.append(f"{key} (not a parameter mlxserve knows)")
            continue
        try:
            m.parameters.update(normalize_parameters({key: value}))
        except InvalidArgument as e:
            m.ignored_parameters.append(f"{key} ({e})")


def _map_messages(m: OllamaModel, messages: list[Any]) -> None:
    """Ollama's messages (role, content, and images or tool calls we drop) -> ours."""
    try:
        m.messages = normalize_messages([
            {"role": msg.get("role"), "content": msg.get("content") or ""} if isinstance(msg, dict) else msg
            for msg in messages
        ])
    except InvalidArgument as e:
        m.skip(f"its messages layer cannot be used: {e}")


def read_gguf_header(m: OllamaModel) -> None:
    """What the GGUF header at `m.gguf` tells: the architecture, whether the GGUF importer takes the
    file (its own header-only check, so the listing and a dry run say what an import would), and
    which chat template the model gets when the GGUF has none (call it after the small layers:
    the Go template names the prompt format)."""
    # Imported here: mlxctl imports this module (for default_ollama_dir) and needs none of this.
    from .gguf.convert import FILE_TYPES, check_gguf
    from .gguf.reader import read_gguf

    assert m.gguf is not None

    def said(e: InvalidArgument) -> str:  # the blob's file name tells a user nothing
        return str(e).replace(f"{m.gguf.name}: ", "").replace(m.gguf.name, "the file")

    try:
        gg = read_gguf(m.gguf)
        m.architecture = gg.architecture
    except InvalidArgument as e:
        m.skip(f"its model blob is not a usable GGUF: {said(e)}")
        return
    except OSError as e:
        m.skip(f"its model blob cannot be read ({e.strerror})")
        return
    m.quantization = m.quantization or FILE_TYPES.get(gg.get("general.file_type"), "")
    try:
        check_gguf(gg)
    except InvalidArgument as e:
        m.skip(said(e))
    m.gguf_has_template = bool(gg.get("tokenizer.chat_template"))
    if not m.gguf_has_template:
        # Ollama's Go template says which prompt format the model was packaged for; failing that,
        # the store's own choice from the vocabulary and the architecture.
        family = template_family(m.go_template or "")
        tokens = gg.get("tokenizer.ggml.tokens") or []
        picked = family or pick_template(m.architecture, set(tokens) if isinstance(tokens, list) else set())
        m.catalog_template = picked.name if picked else ""
    gg.close()


# ----------------------------------------------------------------------------- selecting


def parse_ollama_name(text: str) -> tuple[str, str, str, str]:
    """A name as Ollama reads it (ParseName: host/namespace/model:tag with Ollama's defaults),
    lower-cased for comparison."""
    s = text.strip()
    tag = OLLAMA_TAG
    if s.rfind(":") > s.rfind("/"):
        s, tag = s.rsplit(":", 1)
    parts = s.split("/")
    host, namespace = OLLAMA_HOST, OLLAMA_NAMESPACE
    if len(parts) >= 3:
        host, namespace = "/".join(parts[:-2]).split("://")[-1], parts[-2]
    elif len(parts) == 2:
        namespace = parts[0]
    return host.lower(), namespace.lower(), parts[-1].lower(), tag.lower()


def select(models: list[OllamaModel], names: list[str], everything: bool, root: Path | str = "") -> list[OllamaModel]:
    """The models `names` ask for (Ollama's spelling, e.g. `gemma3:270m`), or all of them.

    A name the store does not hold is an error before anything is imported.
    """
    if everything:
        if names:
            raise InvalidArgument("give model names or --all, not both")
        return list(models)
    by_name = {(m.host.lower(), m.namespace.lower(), m.model.lower(), m.tag.lower()): m for m in models}
    picked: list[OllamaModel] = []
    unknown = []
    for text in names:
        found = by_name.get(parse_ollama_name(text))
        if found is None:
            unknown.append(text)
        elif found not in picked:
            picked.append(found)
    if unknown:
        held = ", ".join(m.ollama_name for m in models) or "nothing"
        raise NotFound(f"the Ollama store at {root} has no model {', '.join(map(repr, unknown))} (it has: {held})")
    return picked


# ----------------------------------------------------------------------------- importing


def held_as(store: ModelStore, m: OllamaModel) -> str | None:
    """What mlxserve holds under `m`'s name: None (nothing), "this" (this very Ollama model: same
    manifest, same GGUF), "earlier" (an earlier version of it) or "other" (a model from elsewhere)."""
    try:
        _, _, manifest = store.get_manifest(m.name)
        info = store.show(m.name).model_info
    except (NotFound, InvalidArgument):
        return None
    if info.get(INFO_SOURCE) != m.full_name:
        return "other"
    same = manifest.annotations.get(ANN_SOURCE_DIGEST) == m.gguf_digest and info.get(INFO_DIGEST) == m.manifest_digest
    return "this" if same else "earlier"


def verify_gguf(m: OllamaModel, progress: ProgressCallback, verified: dict[str, str | None]) -> str | None:
    """Hash the model blob (once per run: tags often share one); the skip reason, or None if it matches."""
    assert m.gguf is not None
    if m.gguf_digest not in verified:
        total = m.gguf.stat().st_size
        done = 0
        status = f"verifying {m.gguf_digest.removeprefix('sha256:')[:12]}"
        progress(ProgressEvent(status, digest=m.gguf_digest, total=total, completed=0))

        def hashed(n: int) -> None:
            nonlocal done
            done += n
            progress(ProgressEvent(status, digest=m.gguf_digest, total=total, completed=done))

        actual = digest_of_file(m.gguf, hashed)
        verified[m.gguf_digest] = None if actual == m.gguf_digest else (
            f"its model blob {m.gguf_digest} does not match its digest (the content hashes to {actual}): "
            f"damaged; `ollama pull {m.ollama_name}` fetches it again")
    return verified[m.gguf_digest]


def import_model(store: ModelStore, m: OllamaModel, *, force: bool = False, dry_run: bool = False,
                 progress: ProgressCallback = no_progress,
                 verified: dict[str, str | None] | None = None) -> ImportResult:
    """Import one scanned Ollama model into `store` (a ModelStore) under its name.

    Checks first, cheapest first: the scan's verdict, whether it is already imported, whether the
    name belongs to a model from elsewhere (kept unless `force`), then the GGUF's sha256. A model
    the GGUF importer refuses is skipped with the importer's message. Cancelled and Unavailable
    (e.g. a full disk) end the whole run; every other failure skips only this model.
    """
    verified = {} if verified is None else verified

    def skipped(reason: str) -> ImportResult:
        return ImportResult(m.ollama_name, m.name, SKIPPED, reason)

    if m.skip_reason is not None:
        return skipped(m.skip_reason)
    held = None if force else held_as(store, m)
    if held == "this":
        return ImportResult(m.ollama_name, m.name, ALREADY_IMPORTED)
    if held == "other":
        return skipped(f"mlxserve already has a model named {m.name} that was not imported from this "
                       "Ollama model; use --force to replace it")
    reason = verify_gguf(m, progress, verified)
    if reason is not None:
        return skipped(reason)
    if dry_run:
        return ImportResult(m.ollama_name, m.name, WOULD_IMPORT)
    assert m.gguf is not None
    try:
        # The GGUF is read through a link named like the model: loaders that go by the file
        # extension accept it, and the importer's messages and the source annotation name it.
        with tempfile.TemporaryDirectory(prefix="mlxserve-ollama-") as tmp:
            link = Path(tmp) / f"{m.model}-{m.tag}.gguf"
            os.symlink(m.gguf, link)
            summary = store.create(m.name, m.create_spec(link), progress)
    except (Cancelled, Unavailable, DiskFull):
        raise
    except MlxServeError as e:
        return skipped(str(e))
    except OSError:
        raise  # the disk, not the model: the next model would fail the same way
    except Exception as e:  # noqa: BLE001 - one model the converter trips on must not stop the others
        log.exception("ollama_import_failed", model=m.ollama_name)
        return skipped(f"the import failed ({type(e).__name__}: {e})")
    # The blob was verified just above and is handed over with its digest, so the importer does
    # not hash gigabytes a second time; Ollama writes blobs once (by rename) and never in place.
    return ImportResult(m.ollama_name, m.name, IMPORTED, digest=summary.digest)


def import_models(store: ModelStore, path: Path | str, names: list[str], *, everything: bool = False,
                  force: bool = False, dry_run: bool = False,
                  progress_for: Callable[[OllamaModel], ProgressCallback] = lambda _: no_progress,
                  ) -> list[ImportResult]:
    """Scan the Ollama store at `path` and import the models `names` asks for (or all of them)."""
    models = select(scan(path), names, everything, path)
    verified: dict[str, str | None] = {}
    return [import_model(store, m, force=force, dry_run=dry_run, progress=progress_for(m), verified=verified)
            for m in models]
