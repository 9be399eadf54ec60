"""Import a llama-family GGUF file as an mlx-lm model folder, keeping its quantization.

`mx.load` reads Q4_0/Q4_1/Q8_0 tensors straight into MLX's affine-quantized triples (uint32
weights, scales, biases; group size 32). What this module adds: refusing what it cannot convert
faithfully (checked from the GGUF header before any tensor is loaded), renaming tensors to
mlx-lm's llama names, undoing llama.cpp's row permutation of Q and K, widening scales and biases
to float32 (lossless, and MLX-CPU's quantized matmul is ~40x slower with float16 scales), and
rebuilding config.json, tokenizer.json and tokenizer_config.json from the GGUF metadata.
"""

from __future__ import annotations

import json
import mmap
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlxserve import __version__
from mlxserve.services.common.errors import InvalidArgument

from ..manifest import ModelConfig
from ..manifest import human_parameter_size
from ..progress import ProgressCallback, ProgressEvent, no_progress
from ..templates import capabilities
from . import ImportResult

CONVERTER = "mlxserve-gguf"
SUPPORTED_ARCHITECTURES = ("llama",)
GROUP_SIZE = 32  # MLX's GGUF loader always yields group-32 affine quantization

# ggml tensor types (ggml.h). Only these load into MLX without a lossy detour.
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
    24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
    35: "TQ2_0", 39: "MXFP4",
}
SUPPORTED_TENSOR_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}

# llama.cpp's `general.file_type` (LLAMA_FTYPE_*) for the files we accept.
FILE_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0"}

# tokenizer.ggml.pre values whose pre-tokenizer we rebuild exactly, as tokenizers components.
SUPPORTED_PRE_TOKENIZERS = ("smollm", "starcoder", "gpt2")

_BLOCK_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)")

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


# --------------------------------------------------------------------------- GGUF header reader

@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int

    @property
    def type_name(self) -> str:
        return GGML_TYPE_NAMES.get(self.ggml_type, f"type {self.ggml_type}")


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
GGUF_STRING, GGUF_ARRAY = 8, 9


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise InvalidArgument(f"{self.path.name} is not a valid GGUF file (truncated header)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.unpack("<Q"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{self.path.name} is not a valid GGUF file (a string is not UTF-8)") from None

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == GGUF_STRING:
            return self.string()
        if vtype == GGUF_ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in _NP:
                dt = np.dtype(_NP[etype])
                return np.frombuffer(self.take(count * dt.itemsize), dtype=dt).copy()
            return [self.value(etype) for _ in range(count)]
        raise InvalidArgument(f"{self.path.name} is not a valid GGUF file (unknown value type {vtype})")


def read_gguf_header(path: Path) -> GGUFHeader:
    """Read a GGUF file's metadata and tensor table without loading any tensor data."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise InvalidArgument(f"{path.name} is not a GGUF file (bad magic number)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf, path)
            cur.pos = 4
            version = cur.unpack("<I")
            if version not in (2, 3):
                raise InvalidArgument(f"{path.name}: GGUF version {version} is not supported (supported: 2, 3)")
            n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
            header = GGUFHeader(version)
            for _ in range(n_kv):
                key = cur.string()
                header.metadata[key] = cur.value(cur.unpack("<I"))
            for _ in range(n_tensors):
                name = cur.string()
                n_dims = cur.unpack("<I")
                if n_dims > 8:
                    raise InvalidArgument(f"{path.name} is not a valid GGUF file (tensor {name} has {n_dims} dims)")
                dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
                ggml_type = cur.unpack("<I")
                cur.unpack("<Q")  # data offset: mx.load finds the data itself
                # GGUF lists dimensions fastest-varying first; report them row-major like numpy.
                header.tensors[name] = TensorInfo(name, tuple(reversed(dims)), ggml_type)
            return header


# --------------------------------------------------------------------------- validation

def _meta(header: GGUFHeader, key: str, default: Any = None, *, required: bool = False) -> Any:
    if key in header.metadata:
        value = header.metadata[key]
        return value.item() if isinstance(value, np.generic) else value
    if required:
        raise InvalidArgument(f"GGUF file lacks required metadata {key!r}")
    return default


def mlx_name(gguf_base: str) -> str | None:
    """The mlx-lm llama parameter path for a GGUF tensor base name (without `.weight`)."""
    if gguf_base in _TOP_TENSORS:
        return _TOP_TENSORS[gguf_base]
    m = _BLOCK_RE.fullmatch(gguf_base)
    if m and m.group(2) in _BLOCK_TENSORS:
        return f"model.layers.{int(m.group(1))}.{_BLOCK_TENSORS[m.group(2)]}"
    return None


def check_supported(header: GGUFHeader, source: str) -> None:
    """Refuse, naming the reason, any GGUF this importer cannot convert faithfully."""
    arch = _meta(header, "general.architecture", required=True)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise InvalidArgument(
            f"{source}: GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    bad_types = sorted({t.type_name for t in header.tensors.values() if t.ggml_type not in SUPPORTED_TENSOR_TYPES})
    if bad_types:
        example = next(t.name for t in header.tensors.values() if t.ggml_type not in SUPPORTED_TENSOR_TYPES)
        raise InvalidArgument(
            f"{source}: GGUF tensor type(s) {', '.join(bad_types)} are not supported (e.g. tensor {example}); "
            f"supported: {', '.join(SUPPORTED_TENSOR_TYPES.values())}"
        )
    for name in header.tensors:
        base, dot, suffix = name.rpartition(".")
        if suffix != "weight" or mlx_name(base) is None:
            raise InvalidArgument(f"{source}: GGUF tensor {name!r} is not part of a supported llama model")
    scaling = _meta(header, f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise InvalidArgument(f"{source}: rope scaling type {scaling!r} is not supported (supported: none, linear)")
    for key in ("embedding_length", "block_count", "attention.head_count", "feed_forward_length"):
        _meta(header, f"{arch}.{key}", required=True)
    tok_model = _meta(header, "tokenizer.ggml.model", required=True)
    if tok_model != "gpt2":
        raise InvalidArgument(
            f"{source}: tokenizer model {tok_model!r} is not supported (supported: 'gpt2' byte-level BPE)"
        )
    pre = _meta(header, "tokenizer.ggml.pre", "gpt2")
    if pre not in SUPPORTED_PRE_TOKENIZERS:
        raise InvalidArgument(
            f"{source}: pre-tokenizer {pre!r} is not supported (supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)})"
        )
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        _meta(header, key, required=True)


# --------------------------------------------------------------------------- conversion

def unpermute_rows(x: Any, n_head: int) -> Any:
    """Undo llama.cpp's rotary row permutation of a Q or K projection (or its scales/biases).

    llama.cpp stores each head's rows interleaved as (head_dim/2, 2); the HF/MLX layout is
    (2, head_dim/2). The permutation moves whole rows, so packed quantized rows move intact.
    """
    rows = x.shape[0]
    return x.reshape(n_head, rows // n_head // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


@dataclass
class ConvertedWeights:
    weights: dict[str, Any]
    quantization: dict[str, Any] | None
    parameter_count: int
    tied: bool


def convert_tensors(raw: dict[str, Any], n_head: int, n_head_kv: int) -> ConvertedWeights:
    """Rename `mx.load` GGUF output to mlx-lm llama names, unpermute Q/K, widen quant scales."""
    import mlx.core as mx

    out: dict[str, Any] = {}
    bits_of: dict[str, int] = {}
    params = 0
    for key, value in raw.items():
        base, _, suffix = key.rpartition(".")
        target = mlx_name(base)
        if target is None:
            raise InvalidArgument(f"GGUF tensor {key!r} is not part of a supported llama model")
        if base.endswith(".attn_q"):
            value = unpermute_rows(value, n_head)
        elif base.endswith(".attn_k"):
            value = unpermute_rows(value, n_head_kv)
        if suffix in ("scales", "biases"):
            value = value.astype(mx.float32)
        elif suffix == "weight" and f"{base}.scales" in raw:
            scales = raw[f"{base}.scales"]
            bits = value.shape[1] * 32 // (scales.shape[1] * GROUP_SIZE)
            bits_of[target] = bits
            params += value.shape[0] * scales.shape[1] * GROUP_SIZE
        else:
            params += value.size
        out[f"{target}.{suffix}"] = value

    tied = "lm_head.weight" not in out
    quantization: dict[str, Any] | None = None
    if bits_of:
        default_bits = Counter(bits_of.values()).most_common(1)[0][0]
        quantization = {"group_size": GROUP_SIZE, "bits": default_bits}
        for target, bits in sorted(bits_of.items()):
            if bits != default_bits:
                quantization[target] = {"group_size": GROUP_SIZE, "bits": bits}
    return ConvertedWeights(out, quantization, params, tied)


def build_tokenizer(header: GGUFHeader) -> Any:
    """Rebuild the byte-level BPE tokenizer (a `tokenizers.Tokenizer`) from GGUF metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens: list[str] = list(_meta(header, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in _meta(header, "tokenizer.ggml.merges")]
    types = _meta(header, "tokenizer.ggml.token_type")
    types = list(types) if types is not None else [1] * len(tokens)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise InvalidArgument("GGUF tokenizer has duplicate tokens; cannot rebuild a BPE vocabulary")

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = _meta(header, "tokenizer.ggml.pre", "gpt2")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder"):
        # llama.cpp splits every digit on its own before the GPT-2 regex (as HF's Digits does).
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()

    # Every added token is already in the vocabulary, so it keeps its id there.
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_CONTROL]
    )
    tok.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_USER_DEFINED]
    )

    bos_id = _meta(header, "tokenizer.ggml.bos_token_id")
    eos_id = _meta(header, "tokenizer.ggml.eos_token_id")
    add_bos = bool(_meta(header, "tokenizer.ggml.add_bos_token", False))
    add_eos = bool(_meta(header, "tokenizer.ggml.add_eos_token", False))
    if (add_bos and bos_id is None) or (add_eos and eos_id is None):
        raise InvalidArgument("GGUF tokenizer asks to add BOS/EOS tokens but does not name them")
    if add_bos or add_eos:
        bos, eos = tokens[bos_id] if add_bos else None, tokens[eos_id] if add_eos else None

        def seq(piece: str, type_id: int) -> str:
            parts = ([f"{bos}:{type_id}"] if bos else []) + [f"{piece}:{type_id}"] + ([f"{eos}:{type_id}"] if eos else [])
            return " ".join(parts)

        special = {t: i for t, i in ((bos, bos_id), (eos, eos_id)) if t is not None}
        tok.post_processor = processors.TemplateProcessing(
            single=seq("$A", 0), pair=f"{seq('$A', 0)} {seq('$B', 1)}", special_tokens=list(special.items())
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def import_gguf(src: Path, out_dir: Path, progress: ProgressCallback = no_progress) -> ImportResult:
    """Convert the GGUF file `src` into an mlx-lm folder at `out_dir` (which must exist)."""
    import mlx.core as mx

    from ..blobs import digest_of_file

    source = src.name
    progress(ProgressEvent("parsing GGUF header"))
    header = read_gguf_header(src)
    check_supported(header, source)
    arch = _meta(header, "general.architecture")

    size = src.stat().st_size
    done = 0

    def hashed(n: int) -> None:
        nonlocal done
        done += n

    progress(ProgressEvent("hashing source", total=size))
    source_digest = digest_of_file(src, hashed)
    progress(ProgressEvent("hashing source", digest=source_digest, total=size, completed=done))

    n_head = int(_meta(header, f"{arch}.attention.head_count"))
    n_head_kv = int(_meta(header, f"{arch}.attention.head_count_kv", n_head))
    hidden = int(_meta(header, f"{arch}.embedding_length"))
    tokens = _meta(header, "tokenizer.ggml.tokens")

    progress(ProgressEvent("converting tensors", total=len(header.tensors)))
    raw = mx.load(str(src))
    converted = convert_tensors(raw, n_head, n_head_kv)
    del raw
    progress(ProgressEvent("writing weights"))
    mx.save_safetensors(str(out_dir / "model.safetensors"), converted.weights, metadata={"format": "mlx"})
    del converted.weights

    context_length = int(_meta(header, f"{arch}.context_length", 2048))
    bos_id = _meta(header, "tokenizer.ggml.bos_token_id")
    eos_id = _meta(header, "tokenizer.ggml.eos_token_id")
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(_meta(header, f"{arch}.block_count")),
        "intermediate_size": int(_meta(header, f"{arch}.feed_forward_length")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": int(_meta(header, f"{arch}.rope.dimension_count", hidden // n_head)),
        "rms_norm_eps": float(_meta(header, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "vocab_size": int(_meta(header, f"{arch}.vocab_size", len(tokens))),
        "rope_theta": float(_meta(header, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": context_length,
        "tie_word_embeddings": converted.tied,
        "attention_bias": False,
        "mlp_bias": False,
    }
    if _meta(header, f"{arch}.rope.scaling.type", "none") == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": float(_meta(header, f"{arch}.rope.scaling.factor", required=True))}
    if bos_id is not None:
        config["bos_token_id"] = int(bos_id)
    if eos_id is not None:
        config["eos_token_id"] = int(eos_id)
    if converted.quantization:
        config["quantization"] = converted.quantization
        config["quantization_config"] = converted.quantization
    _write_json(out_dir / "config.json", config)

    progress(ProgressEvent("building tokenizer"))
    build_tokenizer(header).save(str(out_dir / "tokenizer.json"))
    template = _meta(header, "tokenizer.chat_template", "") or ""

    def token(key: str) -> str | None:
        i = _meta(header, key)
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": bool(_meta(header, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(_meta(header, "tokenizer.ggml.add_eos_token", False)),
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
    }
    if template:
        tok_config["chat_template"] = template
        (out_dir / "chat_template.jinja").write_text(template)
    _write_json(out_dir / "tokenizer_config.json", tok_config)
    gen_config: dict[str, Any] = {}
    if bos_id is not None:
        gen_config["bos_token_id"] = int(bos_id)
    if eos_id is not None:
        gen_config["eos_token_id"] = int(eos_id)
    pad_id = _meta(header, "tokenizer.ggml.padding_token_id")
    if pad_id is not None:
        gen_config["pad_token_id"] = int(pad_id)
    _write_json(out_dir / "generation_config.json", gen_config)
    license_text = _meta(header, "general.license", "") or ""
    if license_text:
        (out_dir / "LICENSE").write_text(license_text + "\n")

    file_type = _meta(header, "general.file_type")
    quant_level = FILE_TYPE_NAMES.get(file_type) if file_type is not None else None
    if quant_level is None:
        counts = Counter(t.type_name for t in header.tensors.values() if len(t.shape) == 2)
        quant_level = counts.most_common(1)[0][0] if counts else "F32"
    model_info: dict[str, Any] = {}
    for key, value in sorted(header.metadata.items()):
        if isinstance(value, (list, np.ndarray)) or key == "tokenizer.chat_template":
            continue  # vocabularies and templates are reported elsewhere, not as model_info
        model_info[key] = value.item() if isinstance(value, np.generic) else value
    model_info["general.parameter_count"] = converted.parameter_count
    cfg = ModelConfig(
        format="mlx",
        family=arch,
        families=[arch],
        architecture=arch,
        parameter_count=converted.parameter_count,
        parameter_size=_meta(header, "general.size_label", "") or human_parameter_size(converted.parameter_count),
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
    return ImportResult(config=cfg, source_digest=source_digest, converter=f"{CONVERTER}/{__version__}", files=files)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
