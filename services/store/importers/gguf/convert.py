"""Import one GGUF file as an mlx-lm model folder: refuse early, convert tensor by tensor, write.

Everything a file could be refused for (architecture, tensor types, unknown tensors, rope
scaling, tokenizer) is checked from the header before a byte of output is written. Tensors are
then converted one at a time (quants.py) and placed where mlx-lm's implementation of the
architecture expects them (architectures.py), so peak memory stays near one safetensors shard.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mlxserve import __version__
from mlxserve.services.common.errors import InvalidArgument

from ...blobs import digest_of_file
from ...manifest import ANN_QUANTIZATION, ModelConfig, human_parameter_size
from ...progress import ProgressCallback, ProgressEvent, no_progress
from ...templates import capabilities
from .. import ImportResult
from . import architectures, quants, tokenizer
from .reader import GGUFFile, read_gguf

CONVERTER = "mlxserve-gguf"
GROUP_SIZE = 32
SHARD_BYTES = 2 << 30  # mlx-lm's own shard size; keeps peak memory near one shard
MODES = ("auto", "none")

# llama.cpp's `general.file_type` (enum llama_ftype) names, as Ollama shows them.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}


def check_gguf(gg: GGUFFile) -> architectures.Architecture:
    """Refuse, naming the reason, anything this importer cannot convert faithfully (header only)."""
    arch = architectures.architecture_for(gg)
    quants.check_types(gg)
    arch.check(gg)
    tokenizer.check_tokenizer(gg)
    arch.rules(gg)  # every tensor must be accounted for
    return arch


def float_dtype_for(gg: GGUFFile) -> str:
    """The float type for `--quantize none`: bfloat16 where float16 would overflow (Gemma's
    activations) or where the file itself holds bfloat16, else float16."""
    if gg.architecture.startswith("gemma") or any(t.type_name == "BF16" for t in gg.tensors.values()):
        return "bfloat16"
    return "float16"


def import_gguf(src: Path, out_dir: Path, progress: ProgressCallback = no_progress, *,
                quantize: str = "auto", float_dtype: str | None = None,
                source_digest: str | None = None) -> ImportResult:
    """Convert the GGUF file `src` into an mlx-lm folder at `out_dir` (which must exist).

    `quantize`: "auto" keeps every ggml type that MLX can hold exactly as MLX affine quantization
    and requantizes the rest (quants.REQUANT_BITS); "none" writes float weights, as `float_dtype`
    ("float16", "bfloat16", "float32"; by default `float_dtype_for` the file). `source_digest`:
    the file's sha256 when the caller has just verified it, so it is not hashed twice.
    """
    if quantize not in MODES:
        raise InvalidArgument(f"GGUF import mode {quantize!r} is not one of {', '.join(MODES)}")
    progress(ProgressEvent("parsing GGUF header"))
    gg = read_gguf(src)
    try:
        arch = check_gguf(gg)
        rules = arch.rules(gg)
        source_digest = source_digest or _hash_source(src, progress)

        progress(ProgressEvent("building tokenizer"))
        tok = tokenizer.build_tokenizer(gg)

        weights = _convert_weights(gg, rules, out_dir, quantize, float_dtype or float_dtype_for(gg), progress)
        config = arch.config(gg)
        context_note = _cap_context(gg, config)
        eog = list(tok.special.get("eog") or [])
        if eog:
            # Stop where llama.cpp stops: every end-of-generation token (Gemma's <end_of_turn>, ...).
            config["eos_token_id"] = eog[0] if len(eog) == 1 else eog
        if weights.quantization:
            config["quantization"] = weights.quantization
            config["quantization_config"] = weights.quantization
        _write_json(out_dir / "config.json", config)

        template = gg.get("tokenizer.chat_template", "") or ""
        tok_config = dict(tok.tokenizer_config)
        (out_dir / "tokenizer.json").write_text(tok.tokenizer_json)
        if template:
            tok_config["chat_template"] = template
            (out_dir / "chat_template.jinja").write_text(template)
        _write_json(out_dir / "tokenizer_config.json", tok_config)
        _write_json(out_dir / "generation_config.json", _generation_config(tok.special))
        license_text = gg.get("general.license", "") or ""
        if license_text:
            (out_dir / "LICENSE").write_text(license_text + "\n")
    finally:
        gg.close()

    described = quants.describe(weights.results)
    quant_level = _quantization_level(gg)
    model_info: dict[str, Any] = {}
    for key, value in sorted(gg.metadata.items()):
        if isinstance(value, (list, np.ndarray)) or key == "tokenizer.chat_template":
            continue  # vocabularies and templates are reported elsewhere, not as model_info
        model_info[key] = value.item() if isinstance(value, np.generic) else value
    model_info["general.parameter_count"] = weights.parameter_count
    model_info["mlxserve.quantization"] = f"{quant_level} GGUF -> {described}"
    if template:
        model_info["mlxserve.chat_template"] = "from the GGUF (tokenizer.chat_template)"
    if context_note:
        model_info["mlxserve.context_length"] = context_note
    context_length = int(config.get("max_position_embeddings", 0) or gg.arch_get("context_length", 0) or 0)
    cfg = ModelConfig(
        format="mlx",
        family=gg.architecture,
        families=[gg.architecture],
        architecture=gg.architecture,
        parameter_count=weights.parameter_count,
        parameter_size=gg.get("general.size_label", "") or human_parameter_size(weights.parameter_count),
        quantization_level=quant_level,
        context_length=context_length,
        capabilities=capabilities(template),
        template=template,
        system="",
        license=license_text,
        parameters={},
        model_info=model_info,
    )
    files = {p.name: (p, None) for p in sorted(out_dir.iterdir()) if p.is_file()}
    return ImportResult(config=cfg, source_digest=source_digest, converter=f"{CONVERTER}/{__version__}",
                        files=files, annotations={ANN_QUANTIZATION: f"{quant_level} -> {described}"})


class _Weights:
    def __init__(self) -> None:
        self.results: list[quants.MlxTensor] = []
        self.quantization: dict[str, Any] | None = None
        self.parameter_count = 0


def _convert_weights(gg: GGUFFile, rules: dict[str, list[architectures.TensorRule]], out_dir: Path,
                     mode: str, float_dtype: str, progress: ProgressCallback) -> _Weights:
    """Convert every tensor, place it by its rules, and write safetensors shards into `out_dir`."""
    out = _Weights()
    writer = _ShardWriter(out_dir)
    layer_quant: dict[str, tuple[int, int]] = {}
    names = [n for n in gg.tensors if rules.get(n)]
    total = len(names)
    for i, name in enumerate(names):
        progress(ProgressEvent(f"converting {name}", total=total, completed=i))
        info = gg.tensors[name]
        tensor = quants.convert_tensor(gg, name, mode=mode, float_dtype=float_dtype)
        out.results.append(tensor)
        out.parameter_count += info.n_elements
        for rule in rules[name]:
            placed = _place(gg, name, tensor, rule, float_dtype)
            for suffix, array in placed.arrays.items():
                writer.add(f"{rule.target}.{suffix}", array, placed.float_dtype)
            if placed.bits is not None:
                layer_quant[rule.target] = (placed.bits, placed.group_size or GROUP_SIZE)
    progress(ProgressEvent("writing weights", total=total, completed=total))
    writer.close()
    if layer_quant:
        default_bits, default_group = Counter(layer_quant.values()).most_common(1)[0][0]
        quantization: dict[str, Any] = {"group_size": default_group, "bits": default_bits, "mode": "affine"}
        for target, (bits, group) in sorted(layer_quant.items()):
            if (bits, group) != (default_bits, default_group):
                quantization[target] = {"group_size": group, "bits": bits, "mode": "affine"}
        out.quantization = quantization
    return out


class _Placed:
    def __init__(self, arrays: dict[str, np.ndarray], float_dtype: str, bits: int | None, group_size: int | None):
        self.arrays, self.float_dtype, self.bits, self.group_size = arrays, float_dtype, bits, group_size


def _place(gg: GGUFFile, name: str, tensor: quants.MlxTensor, rule: architectures.TensorRule,
           float_dtype: str) -> _Placed:
    """Apply one rule (row slice, rotary un-permutation, offset) to a converted tensor."""
    quantized = tensor.bits is not None
    if rule.add and quantized:
        # An offset cannot be applied to packed codes; norms are F32 in every GGUF we know, so this
        # only happens for an odd file, which then gets its exact float values.
        tensor = quants.MlxTensor(weight=quants.dequantize(gg, name), scales=None, biases=None, bits=None,
                                  group_size=None, float_dtype="float32", exact=True,
                                  source_type=tensor.source_type)
        quantized = False
    if quantized:
        arrays = {"weight": tensor.weight, "scales": tensor.scales, "biases": tensor.biases}
    else:
        arrays = {"weight": tensor.weight}
    for key in list(arrays):
        a = arrays[key]
        if rule.rows is not None:
            a = a[..., rule.rows[0]:rule.rows[1], :] if a.ndim >= 2 else a[rule.rows[0]:rule.rows[1]]
        if rule.unpermute_heads:
            a = architectures.unpermute_rows(a, rule.unpermute_heads, axis=-2 if a.ndim >= 2 else 0)
        if rule.add and key == "weight":
            a = a.astype(np.float32) + np.float32(rule.add)
        arrays[key] = a
    if rule.suffix != "weight":
        if quantized:
            raise InvalidArgument(f"{gg.path.name}: tensor {name} is quantized but mlx-lm needs it as a float {rule.suffix}")
        arrays = {rule.suffix: arrays["weight"]}
    return _Placed(arrays, tensor.float_dtype, tensor.bits if quantized else None,
                   tensor.group_size if quantized else None)


class _ShardWriter:
    """Collects named arrays and writes them as safetensors shards of about SHARD_BYTES."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.pending: dict[str, tuple[np.ndarray, str]] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []

    def add(self, key: str, array: np.ndarray, float_dtype: str) -> None:
        if key in self.pending or any(key in keys for _, keys in self.shards):
            raise InvalidArgument(f"GGUF maps two tensors onto {key}")
        self.pending[key] = (array, float_dtype)
        self.pending_bytes += array.nbytes
        if self.pending_bytes >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        import mlx.core as mx

        if not self.pending:
            return
        dtypes = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
        arrays = {}
        for key, (a, float_dtype) in self.pending.items():
            x = mx.array(np.ascontiguousarray(a))
            if a.dtype.kind == "f":
                # Quantization scales/biases stay float32 (exactness); weights take their dtype.
                x = x.astype(dtypes[float_dtype] if key.endswith((".weight", ".bias")) else mx.float32)
            arrays[key] = x
        path = self.out_dir / f"shard-{len(self.shards):05d}.tmp.safetensors"
        mx.save_safetensors(str(path), arrays, metadata={"format": "mlx"})
        self.shards.append((path, list(arrays)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        self.flush()
        if len(self.shards) == 1:
            self.shards[0][0].rename(self.out_dir / "model.safetensors")
            return
        n = len(self.shards)
        weight_map: dict[str, str] = {}
        for i, (path, keys) in enumerate(self.shards, 1):
            final = f"model-{i:05d}-of-{n:05d}.safetensors"
            path.rename(self.out_dir / final)
            weight_map.update({k: final for k in keys})
        _write_json(self.out_dir / "model.safetensors.index.json", {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))})


def _cap_context(gg: GGUFFile, config: dict[str, Any]) -> str:
    """Cap the context where mlx-lm's implementation stops computing what the model does.

    Gemma 2 attends within a sliding window on every other layer (llama.cpp does too); mlx-lm's
    gemma2 attends to everything, so past the window the two part ways. Capping the context at
    the window keeps every answer faithful. Returns a note for `show`, or "".
    """
    window = config.get("sliding_window")
    n_ctx = config.get("max_position_embeddings")
    if gg.architecture == "gemma2" and isinstance(window, int) and isinstance(n_ctx, int) and 0 < window < n_ctx:
        config["max_position_embeddings"] = window
        return (f"{window} (the model's sliding window): mlx-lm's gemma2 has no sliding-window attention, "
                f"so beyond it answers would differ from the model's {n_ctx}-token behaviour")
    return ""


def _hash_source(src: Path, progress: ProgressCallback) -> str:
    size = src.stat().st_size
    done = reported = 0

    def hashed(n: int) -> None:
        nonlocal done, reported
        done += n
        if done - reported >= max(size // 20, 1 << 20):  # about 20 events, whatever the size
            reported = done
            progress(ProgressEvent("hashing source", total=size, completed=done))

    progress(ProgressEvent("hashing source", total=size, completed=0))
    digest = digest_of_file(src, hashed)
    progress(ProgressEvent("hashing source", digest=digest, total=size, completed=size))
    return digest


def _generation_config(special: dict[str, Any]) -> dict[str, Any]:
    """bos/eos/pad ids; end-of-turn and other end-of-generation tokens join eos, as in llama.cpp."""
    out: dict[str, Any] = {}
    if special.get("bos") is not None:
        out["bos_token_id"] = int(special["bos"])
    eos = [int(special[k]) for k in ("eos", "eot", "eom") if special.get(k) is not None]
    eos = list(dict.fromkeys(eos + [int(i) for i in special.get("eog") or []]))
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if special.get("pad") is not None:
        out["pad_token_id"] = int(special["pad"])
    return out


def _quantization_level(gg: GGUFFile) -> str:
    """Ollama's quantization word: the file type llama.cpp recorded, else the commonest matrix type."""
    file_type = gg.get("general.file_type")
    if isinstance(file_type, int) and file_type in FILE_TYPES:
        return FILE_TYPES[file_type]
    counts = Counter(t.type_name for t in gg.tensors.values() if len(t.shape) >= 2)
    return counts.most_common(1)[0][0] if counts else "F32"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
