"""Import an mlx-lm / Hugging Face model folder (config.json, *.safetensors, tokenizer.json).

Files are copied in as they are (hashed on the way); config.json and the safetensors headers
give the facts `show` reports. Files the store does not keep (README.md, images, subfolders)
are reported in the progress stream as skipped, never dropped silently.

A sentence-transformers folder (modules.json beside a BERT config) is an embedding model: its
pooling module's config (e.g. 1_Pooling/config.json) is flattened into the view as
`pooling_config.json`, next to modules.json and sentence_bert_config.json (max_seq_length).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping

from mlxserve import __version__
from mlxserve.services.common.errors import InvalidArgument

from ..blobs import copy_with_digest
from ..manifest import ModelConfig, human_parameter_size, media_type_for
from ..progress import ProgressCallback, ProgressEvent, no_progress
from ..templates import EMBEDDING_ARCHITECTURES, capabilities
from . import ImportResult

CONVERTER = "mlxserve-hf"
REQUIRED = ("config.json", "tokenizer.json")
_DTYPE_LEVEL = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
POOLING_TITLE = "pooling_config.json"
# The sentence-transformers modules our encoder implements, and the pooling modes it supports.
_ST_MODULES = ("Transformer", "Pooling", "Normalize")
_POOLING_MODES = ("pooling_mode_mean_tokens", "pooling_mode_cls_token")
_GENERATION_PARAMS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                      "repetition_penalty": "repeat_penalty"}


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise InvalidArgument(f"{path.name} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 1024 * 1024:
            raise InvalidArgument(f"{path.name} is not a safetensors file (header of {n} bytes)")
        try:
            return json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"{path.name} is not a safetensors file ({e})") from None


def count_parameters(headers: list[dict[str, Any]], quantization: dict[str, Any] | None) -> int:
    """Parameters of the unquantized model: packed uint32 weights count 32/bits values each."""
    total = 0
    for header in headers:
        for name, info in header.items():
            if name == "__metadata__" or name.endswith((".scales", ".biases")):
                continue
            if info.get("dtype") == "I64":  # index buffers (BERT's position_ids), not parameters
                continue
            n = 1
            for d in info["shape"]:
                n *= d
            base = name.rpartition(".")[0]
            if quantization and info.get("dtype") == "U32" and f"{base}.scales" in header:
                layer = quantization.get(base)
                bits = layer["bits"] if isinstance(layer, dict) else quantization.get("bits", 4)
                n = n * 32 // bits
            total += n
    return total


def import_hf_folder(src: Path, out_dir: Path, progress: ProgressCallback = no_progress, *,
                     known: Mapping[str, str] | None = None) -> ImportResult:
    """Copy an mlx-lm/Hugging Face folder's model files into `out_dir` and describe the model.

    `known`: file name -> sha256 digest for files whose bytes were just verified and already sit
    in the store (a pull's downloads, uploaded blobs): those are hard-linked, not copied, so the
    weights are written once (the commit then finds each blob present and drops the link).
    """
    known = known or {}
    missing = [name for name in REQUIRED if not (src / name).is_file()]
    weights = sorted(p for p in src.glob("*.safetensors") if p.is_file())
    if not weights:
        missing.append("*.safetensors")
    if missing:
        raise InvalidArgument(f"{src.name} is not a model folder: missing {', '.join(missing)}")
    try:
        config = json.loads((src / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{src.name}/config.json is not valid JSON: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise InvalidArgument(f"{src.name}/config.json does not name a model_type")

    extra = _sentence_transformers_files(src)
    imported_dirs = {p.parent for p in extra.values()}
    keep: list[Path] = []
    for p in sorted(src.iterdir()):
        if p.name in extra or p in imported_dirs:
            continue
        if p.is_file() and media_type_for(p.name) is not None:
            keep.append(p)
        else:
            progress(ProgressEvent(f"skipping {p.name} (not a model file)"))
    index = src / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        absent = sorted(s for s in shards if not (src / s).is_file())
        if absent:
            raise InvalidArgument(f"{src.name}: weight shards listed in the index are missing: {', '.join(absent)}")

    sources = [(p.name, p) for p in keep] + sorted(extra.items())
    total = sum(p.stat().st_size for _, p in sources)
    done = 0
    files: dict[str, tuple[Path, str | None]] = {}
    listing = hashlib.sha256()
    for title, p in sources:
        def copied(n: int) -> None:
            nonlocal done
            done += n
            progress(ProgressEvent(f"copying {p.relative_to(src)}", total=total, completed=done))

        digest = known.get(str(p.relative_to(src)))
        if digest is not None and _link(p, out_dir / title):
            copied(p.stat().st_size)
        else:
            digest, _ = copy_with_digest(p, out_dir / title, copied)
        files[title] = (out_dir / title, digest)
        listing.update(f"{title} {digest}\n".encode())

    quantization = config.get("quantization") if isinstance(config.get("quantization"), dict) else None
    params = count_parameters([_safetensors_header(p) for p in weights], quantization)
    cfg = _model_config(src, config, quantization, params)
    return ImportResult(config=cfg, source_digest="sha256:" + listing.hexdigest(),
                        converter=f"{CONVERTER}/{__version__}", files=files)


def _link(src: Path, dst: Path) -> bool:
    """Hard-link `src` (followed through symlinks) at `dst`; False where the filesystem cannot."""
    try:
        os.link(src.resolve(), dst)
        return True
    except OSError:
        return False


def _sentence_transformers_files(src: Path) -> dict[str, Path]:
    """Files of a sentence-transformers folder kept under a flat title: {view title: source file}.

    Refuses modules our encoder does not implement (a Dense projection, say) and pooling modes
    other than mean and CLS, so such a model fails at create rather than embedding wrongly.
    """
    modules_path = src / "modules.json"
    if not modules_path.is_file():
        return {}
    try:
        modules = json.loads(modules_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{src.name}/modules.json is not valid JSON: {e}") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise InvalidArgument(f"{src.name}/modules.json is not a list of modules")
    extra: dict[str, Path] = {}
    for module in modules:
        kind = str(module.get("type", "")).rpartition(".")[2]
        if kind not in _ST_MODULES:
            raise InvalidArgument(f"{src.name}: sentence-transformers module {module.get('type')!r} is not supported "
                                  f"(supported: {', '.join(_ST_MODULES)})")
        if kind != "Pooling":
            continue
        pooling_path = src / str(module.get("path", "")) / "config.json"
        if not pooling_path.is_file() and (src / POOLING_TITLE).is_file():  # an already-flattened folder (a view)
            pooling_path = src / POOLING_TITLE
        pooling = _read_json(pooling_path)
        if not pooling:
            raise InvalidArgument(f"{src.name}: the pooling module's config {module.get('path', '')}/config.json is missing")
        modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True)
        if len(modes) != 1 or modes[0] not in _POOLING_MODES:
            raise InvalidArgument(f"{src.name}: pooling {', '.join(modes) or 'none'} is not supported "
                                  f"(supported: one of {', '.join(_POOLING_MODES)})")
        extra[POOLING_TITLE] = pooling_path
    return extra


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{path.parent.name}/{path.name} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def _model_config(src: Path, config: dict[str, Any], quantization: dict[str, Any] | None, params: int) -> ModelConfig:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}

    def get(key: str, default: Any = None) -> Any:
        return config.get(key, text.get(key, default))

    arch = config["model_type"]
    tok_config = _read_json(src / "tokenizer_config.json")
    template = ""
    if (src / "chat_template.jinja").is_file():
        template = (src / "chat_template.jinja").read_text()
    elif isinstance(tok_config.get("chat_template"), str):
        template = tok_config["chat_template"]
    elif isinstance(tok_config.get("chat_template"), list):  # named templates: use "default"
        named = {t.get("name"): t.get("template") for t in tok_config["chat_template"] if isinstance(t, dict)}
        template = named.get("default") or ""
    license_file = next((p for p in sorted(src.glob("LICENSE*")) if p.is_file()), None)
    license_text = license_file.read_text(errors="replace") if license_file else ""

    if quantization:
        level = f"Q{quantization.get('bits', 4)}"
    else:
        level = _DTYPE_LEVEL.get(str(get("torch_dtype", get("dtype", ""))), "F16")
    context = int(get("max_position_embeddings", 0) or tok_config.get("model_max_length", 0) or 0)
    if context > 10**9:  # transformers' "no limit" sentinel
        context = 0
    max_seq_length = _read_json(src / "sentence_bert_config.json").get("max_seq_length")
    if isinstance(max_seq_length, int) and max_seq_length > 0:  # what the embedding model was trained to see
        context = min(context, max_seq_length) if context else max_seq_length
    embedding = arch in EMBEDDING_ARCHITECTURES or (src / "modules.json").is_file()
    caps = capabilities(template, embedding=embedding, vision=isinstance(config.get("vision_config"), dict))
    gen = _read_json(src / "generation_config.json")
    parameters = {ours: gen[theirs] for theirs, ours in _GENERATION_PARAMS.items()
                  if isinstance(gen.get(theirs), (int, float)) and gen.get("do_sample", True)}

    info: dict[str, Any] = {"general.architecture": arch, "general.parameter_count": params}
    for key, ours in (("max_position_embeddings", "context_length"), ("hidden_size", "embedding_length"),
                      ("num_hidden_layers", "block_count"), ("num_attention_heads", "attention.head_count"),
                      ("num_key_value_heads", "attention.head_count_kv"), ("intermediate_size", "feed_forward_length"),
                      ("rope_theta", "rope.freq_base"), ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
                      ("vocab_size", "vocab_size")):
        if get(key) is not None:
            info[f"{arch}.{ours}"] = get(key)
    return ModelConfig(
        format="mlx", family=arch, families=[arch], architecture=arch, parameter_count=params,
        parameter_size=human_parameter_size(params), quantization_level=level, context_length=context,
        capabilities=caps, template=template, system="", license=license_text,
        parameters=parameters, model_info=info,
    )
