"""The GGUF architectures we import, each mapped onto mlx-lm's own implementation of it.

For every architecture this says which mlx-lm parameter each GGUF tensor becomes, what must be
undone on the way (llama.cpp's converter permutes Q/K rows for its rotary layout in the llama
family, and adds 1 to Gemma's RMSNorm weights), and the config.json that makes mlx-lm build the
same network llama.cpp runs: every value comes from the file's metadata and tensors, read the way
llama.cpp's loader reads them (its defaults included, e.g. Gemma 3's every-6th-layer global
attention and 10000 local rope base). What mlx-lm cannot represent is refused, naming it.

The importer (convert.py) runs `architecture_for(gg)`, `.check(gg)`, then writes each tensor by
its `.rules(gg)` and the `.config(gg)` beside it. A rule is applied in this order: take `rows`,
undo the permutation with `unpermute_heads`, then add `add`. Rows are axis -2 of a weight as
mlx-lm holds it (out x in; experts E x out x in) and axis 0 of a 1-D bias.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlxserve.services.common.errors import InvalidArgument

from .reader import GGUFFile


@dataclass(frozen=True)
class TensorRule:
    """Where one GGUF tensor (or a row range of it) goes in the mlx-lm model. Applied in order:
    take `rows`, un-permute with `unpermute_heads`, add `add` (see the module docstring)."""

    target: str                          # mlx-lm parameter path without suffix: "model.layers.3.self_attn.q_proj"
    suffix: str = "weight"               # "weight" or "bias"
    unpermute_heads: int | None = None   # undo llama.cpp's rotary row permutation with this many heads
    add: float = 0.0                     # added to the (float) values, e.g. -1.0 for Gemma norms
    rows: tuple[int, int] | None = None  # take only these rows (for a fused tensor mlx-lm wants split), else all


def unpermute_rows(x: Any, n_head: int, axis: int = -2) -> Any:
    """Undo llama.cpp's `LlamaModel.permute` on the rows of `x` (conversion/llama.py).

    llama.cpp stores each head's rows interleaved (row 2i is the head's row i, row 2i+1 its row
    i + head_dim/2) so that its "normal" rope rotates adjacent pairs; mlx-lm rotates the two
    halves. Whole rows move, so this works on float weights and on the packed codes, scales and
    biases of a quantized weight alike. `axis` is the row axis (-2 for weights and 3-D expert
    stacks); a 1-D bias is permuted along its only axis.
    """
    if x.ndim == 1:
        axis = 0
    axis = axis % x.ndim
    rows = x.shape[axis]
    if n_head <= 0 or rows % (2 * n_head):
        raise ValueError(f"{rows} rows do not split into {n_head} heads of pairs")
    moved = x.swapaxes(0, axis)
    rest = moved.shape[1:]
    out = moved.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)
    return out.swapaxes(0, axis)


# ------------------------------------------------------------------ reading the metadata

_MISSING = object()


def _refuse(gg: GGUFFile, why: str) -> InvalidArgument:
    return InvalidArgument(f"{gg.path.name}: {why}")


def _meta(gg: GGUFFile, key: str, default: Any = _MISSING) -> Any:
    """`<arch>.<key>` as one value; a per-layer array must hold one value for mlx-lm's one setting."""
    value = gg.arch_get(key, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise _refuse(gg, f"GGUF file lacks required metadata '{gg.architecture}.{key}'")
        return default
    if isinstance(value, (list, np.ndarray)):
        values = list(np.asarray(value).tolist()) if isinstance(value, np.ndarray) else list(value)
        if not values or any(v != values[0] for v in values):
            raise _refuse(gg, f"{gg.architecture}.{key} differs between layers ({values}); "
                              "mlx-lm takes one value for all layers")
        value = values[0]
    return value.item() if isinstance(value, np.generic) else value


def _number(gg: GGUFFile, key: str, default: Any = _MISSING) -> Any:
    value = _meta(gg, key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise _refuse(gg, f"{gg.architecture}.{key} is {value!r}, not a number")
    return value


def _int(gg: GGUFFile, key: str, default: Any = _MISSING) -> int:
    value = _number(gg, key, default)
    if value is None or value != int(value) or value < 0:
        raise _refuse(gg, f"{gg.architecture}.{key} is {value!r}, not a count")
    return int(value)


def _float(gg: GGUFFile, key: str, default: Any = _MISSING) -> float:
    return _f32(_number(gg, key, default))


def _f32(value: float) -> float:
    """A float32 metadata value as the shortest decimal that reads back as the same float32
    (1e-06 rather than 9.999999974752427e-07), which is what llama.cpp computes with."""
    return float(str(np.float32(value)))


@dataclass(frozen=True)
class HParams:
    """The hyperparameters every architecture shares, as llama.cpp's loader reads them
    (src/llama-model.cpp, `load_hparams`)."""

    n_layer: int
    n_embd: int
    n_ff: int | None
    n_head: int
    n_kv: int
    head_dim: int
    n_rot: int
    eps: float
    n_ctx: int
    n_vocab: int
    rope_theta: float

    @property
    def plain_head_dim(self) -> bool:
        return self.head_dim * self.n_head == self.n_embd


def read_hparams(gg: GGUFFile) -> HParams:
    if "token_embd.weight" not in gg.tensors:
        raise _refuse(gg, "GGUF file has no token_embd.weight tensor")
    n_vocab, n_embd_rows = gg.tensors["token_embd.weight"].shape[-2:]
    n_embd = _int(gg, "embedding_length")
    if n_embd_rows != n_embd:
        raise _refuse(gg, f"token_embd.weight is {n_embd_rows} wide but embedding_length is {n_embd}")
    tokens = gg.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens) != n_vocab:
        raise _refuse(gg, f"token_embd.weight has {n_vocab} rows but the vocabulary has {len(tokens)} tokens")
    n_head = _int(gg, "attention.head_count")
    if n_head <= 0:
        raise _refuse(gg, f"{gg.architecture}.attention.head_count is {n_head}")
    head_dim = _int(gg, "attention.key_length", n_embd // n_head)
    value_dim = _int(gg, "attention.value_length", head_dim)
    if value_dim != head_dim:
        raise _refuse(gg, f"attention.value_length {value_dim} differs from key_length {head_dim}; "
                          "mlx-lm uses one head size for both")
    n_kv = _int(gg, "attention.head_count_kv", n_head)  # llama.cpp: defaults to head_count
    if n_kv <= 0 or n_head % n_kv:
        raise _refuse(gg, f"{gg.architecture}.attention.head_count_kv is {n_kv}: it must divide head_count {n_head}")
    n_ff = _int(gg, "feed_forward_length") if gg.arch_get("feed_forward_length") is not None else None
    return HParams(
        n_layer=_int(gg, "block_count"),
        n_embd=n_embd,
        n_ff=n_ff,
        n_head=n_head,
        n_kv=n_kv,
        head_dim=head_dim,
        n_rot=_int(gg, "rope.dimension_count", head_dim),
        eps=_float(gg, "attention.layer_norm_rms_epsilon"),
        n_ctx=_int(gg, "context_length"),
        n_vocab=int(n_vocab),
        rope_theta=_float(gg, "rope.freq_base", 10000.0),  # llama.cpp's default
    )


# ------------------------------------------------------------------ rope scaling

# What llama.cpp's converter assumes for llama3 rope when the HF config leaves it out, which is
# also what Llama 3.1, 3.2 and 3.3 use (conversion/llama.py, `generate_extra_tensors`).
_LLAMA3_DEFAULTS = (1.0, 4.0, 8192.0)  # low_freq_factor, high_freq_factor, original_max_position_embeddings


def llama3_factors(dim: int, base: float, factor: float, low_freq_factor: float, high_freq_factor: float,
                   original_max_position_embeddings: float) -> np.ndarray:
    """The per-frequency divisors mlx-lm's `Llama3RoPE` applies (rope_utils.py), in the form
    llama.cpp stores them as `rope_freqs.weight`: 1 for high frequencies, `factor` for low ones,
    smoothed between."""
    wavelen = 2 * math.pi * base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    low_wavelen = original_max_position_embeddings / low_freq_factor
    high_wavelen = original_max_position_embeddings / high_freq_factor
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    medium = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen > low_wavelen, factor,
                    np.where((wavelen > high_wavelen) & (wavelen < low_wavelen), medium, 1.0))


def recover_llama3_scaling(freqs: np.ndarray, dim: int, base: float) -> dict | None:
    """mlx-lm's llama3 `rope_scaling` whose frequencies equal llama.cpp's `rope_freqs` tensor,
    None when the tensor scales nothing, or ValueError when no llama3 parameters reproduce it."""
    freqs = np.asarray(freqs, dtype=np.float64)
    if freqs.shape != (dim // 2,):
        raise ValueError(f"it has {freqs.size} values, not {dim // 2} (half the rotary dimension {dim})")
    if not np.all(np.isfinite(freqs)) or freqs.min() <= 0:
        raise ValueError("it holds non-positive or non-finite values")
    if np.allclose(freqs, 1.0, rtol=0, atol=1e-6):
        return None
    factor = float(np.float32(freqs.max()))
    candidates = [_LLAMA3_DEFAULTS]
    # Otherwise solve for the thresholds from the smoothed band: there llama3 sets
    # 1/f = (1 - s)/factor + s with s = old/wavelen * 1/(high - low) - low/(high - low), linear in
    # 1/wavelen. Only the ratios old/low and old/high change frequencies, so low = 1 is chosen.
    wavelen = 2 * math.pi * base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    band = (freqs > 1 + 1e-4) & (freqs < factor * (1 - 1e-4))
    if factor > 1 and band.sum() >= 2:
        smooth = (1 / freqs[band] - 1 / factor) / (1 - 1 / factor)
        (a, b), *_ = np.linalg.lstsq(np.stack([1 / wavelen[band], -np.ones(band.sum())], axis=1), smooth, rcond=None)
        if a > 0 and b > 0:
            candidates.append((1.0, round(float(1 + 1 / b), 6), round(float(a / b), 3)))
    for low, high, old in candidates:
        if high <= low:
            continue
        if np.allclose(llama3_factors(dim, base, factor, low, high, old), freqs, rtol=1e-4, atol=1e-6):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                    "original_max_position_embeddings": int(old) if float(old).is_integer() else old}
    raise ValueError("no llama3 rope scaling (factor, low/high frequency factors, original context) reproduces it")


def _float_tensor(gg: GGUFFile, name: str) -> np.ndarray:
    info = gg.tensors[name]
    if info.type_name not in ("F32", "F16", "F64"):
        raise _refuse(gg, f"{name} is {info.type_name}; llama.cpp writes it as F32")
    return gg.array(name).astype(np.float64).reshape(-1)


def _rope_scaling(gg: GGUFFile, hp: HParams, arch_name: str, allowed: tuple[str, ...],
                  type_key: str = "rope_type") -> tuple[dict | None, frozenset[str]]:
    """mlx-lm's `rope_scaling` for this file, and the tensors it was read from.

    llama.cpp's loader reads `rope.scaling.type` (default "linear") and `rope.scaling.factor`
    (or the older `rope.scale_linear`); llama3 scaling lives only in the `rope_freqs` tensor and
    longrope in `rope_factors_long`/`_short` (conversion/llama.py, conversion/phi.py). `allowed`
    are the kinds the architecture's mlx-lm model applies; others are refused by name.
    """
    stype = _meta(gg, "rope.scaling.type", None)
    factor = _float(gg, "rope.scaling.factor", _float(gg, "rope.scale_linear", 0.0))
    attn_factor = _float(gg, "rope.scaling.attn_factor", 1.0)  # llama.cpp's rope_attn_factor, default 1
    has_freqs = "rope_freqs.weight" in gg.tensors
    has_longrope = {"rope_factors_long.weight", "rope_factors_short.weight"} & gg.tensors.keys()
    if stype is None:
        stype = "longrope" if has_longrope else "linear"
    if stype == "linear" and (not factor or factor == 1.0):
        stype = "none"

    def refuse(kind: str) -> InvalidArgument:
        return _refuse(gg, f"rope scaling {kind!r} is not something mlx-lm's {arch_name} can apply "
                           f"(it applies: {', '.join(allowed) or 'none'})")

    scaling: dict | None = None
    consumed: set[str] = set()
    if has_freqs:
        if stype != "none":
            raise _refuse(gg, f"rope_freqs.weight combined with rope scaling {stype!r} has no mlx-lm equivalent")
        try:
            scaling = recover_llama3_scaling(_float_tensor(gg, "rope_freqs.weight"), hp.n_rot, hp.rope_theta)
        except ValueError as e:
            raise _refuse(gg, f"rope_freqs.weight is not Llama 3 rope scaling, the only kind mlx-lm applies "
                              f"from it: {e}") from None
        if scaling is not None and "llama3" not in allowed:
            raise refuse("llama3")
        consumed.add("rope_freqs.weight")
    if has_longrope and stype != "longrope":
        raise _refuse(gg, f"rope_factors tensors come with rope scaling {stype!r}; "
                          "llama.cpp reads them only for longrope")
    if stype == "none":
        pass
    elif stype == "linear":
        if "linear" not in allowed:
            raise refuse("linear")
        scaling = {type_key: "linear", "factor": factor}
    elif stype == "yarn":
        if "yarn" not in allowed:
            raise refuse("yarn")
        if not factor:
            raise _refuse(gg, "rope scaling 'yarn' without rope.scaling.factor")
        # llama.cpp reads only the factor and original context for these architectures; its yarn
        # betas (32, 1) and attention factor (0.1 ln(factor) + 1) are mlx-lm's YarnRoPE defaults.
        scaling = {type_key: "yarn", "factor": factor,
                   "original_max_position_embeddings": _int(gg, "rope.scaling.original_context_length", hp.n_ctx)}
    elif stype == "longrope":
        if "longrope" not in allowed:
            raise refuse("longrope")
        if len(has_longrope) != 2:
            raise _refuse(gg, "longrope needs both rope_factors_long.weight and rope_factors_short.weight")
        orig = _int(gg, "rope.scaling.original_context_length")
        long, short = (_float_tensor(gg, f"rope_factors_{k}.weight") for k in ("long", "short"))
        if long.size != hp.n_rot // 2 or short.size != hp.n_rot // 2:
            raise _refuse(gg, f"rope_factors tensors have {long.size} and {short.size} values, not {hp.n_rot // 2}")
        # mlx-lm's SuScaledRoPE derives its attention factor from the two context lengths
        # (conversion/phi.py writes the same formula); refuse a file that says otherwise.
        ratio = hp.n_ctx / orig
        expected = math.sqrt(1 + math.log(ratio) / math.log(orig)) if ratio > 1 else 1.0
        if not math.isclose(attn_factor, expected, rel_tol=1e-4):
            raise _refuse(gg, f"rope.scaling.attn_factor is {attn_factor}, but mlx-lm's longrope scales by "
                              f"{expected:.6f}, derived from the context lengths")
        attn_factor = 1.0
        scaling = {type_key: "longrope", "long_factor": [_f32(v) for v in long],
                   "short_factor": [_f32(v) for v in short], "original_max_position_embeddings": orig}
        consumed |= has_longrope
    else:
        raise refuse(stype)
    if not math.isclose(attn_factor, 1.0, rel_tol=1e-6):
        raise _refuse(gg, f"rope.scaling.attn_factor {attn_factor} has no mlx-lm equivalent for {arch_name}")
    return scaling, frozenset(consumed)


# ------------------------------------------------------------------ the architectures

# GGUF per-layer tensor base names (gguf-py constants.py, TENSOR_NAMES) -> mlx-lm module paths
# under model.layers.N. A tuple target is one fused GGUF tensor that mlx-lm holds split by rows.
_ATTN = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),  # --fuse-qkv
}
_QK_NORM = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_MLP = {"ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_LLAMA_NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_GEMMA_NORMS = {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
                "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
_OLMO2_NORMS = {"post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}


def _experts(prefix: str) -> dict[str, str | tuple[str, ...]]:
    # mlx-lm stacks experts as switch_mlp.* of shape (E, out, in), which is GGUF's *_exps layout;
    # ffn_gate_up_exps is what the converter's --fuse-gate-up-exps writes.
    return {"ffn_gate_inp": f"{prefix}.gate", "ffn_gate_exps": f"{prefix}.switch_mlp.gate_proj",
            "ffn_up_exps": f"{prefix}.switch_mlp.up_proj", "ffn_down_exps": f"{prefix}.switch_mlp.down_proj",
            "ffn_gate_up_exps": (f"{prefix}.switch_mlp.gate_proj", f"{prefix}.switch_mlp.up_proj")}


# Per-layer tensors that must be present: each group is satisfied by any one of its alternatives.
_REQ_QKV = (("attn_q", "attn_k", "attn_v"), ("attn_qkv",))
_REQ_MLP = (("ffn_gate", "ffn_up", "ffn_down"),)
_REQ_MOE = (("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"),
            ("ffn_gate_inp", "ffn_gate_up_exps", "ffn_down_exps"))


@dataclass
class Plan:
    """How one file maps onto one mlx-lm model type."""

    model_type: str
    config: dict
    layer_map: dict[str, str | tuple[str, ...]]
    required: list[tuple[tuple[str, ...], ...]]
    consumed: frozenset[str] = frozenset()   # whole-file tensors folded into config.json
    lm_head: bool = True                      # output.weight has a place (False: the model always ties)
    biases: tuple[str, ...] = ()              # per-layer tensors whose .bias mlx-lm's model takes
    n_ff_exp: int | None = None


def _base_config(gg: GGUFFile, hp: HParams, model_type: str) -> dict:
    _need(gg, hp.n_ff is not None or model_type == "qwen3_moe",
          f"GGUF file lacks required metadata {gg.architecture}.feed_forward_length")
    config: dict[str, Any] = {
        "model_type": model_type,
        "hidden_size": hp.n_embd,
        "num_hidden_layers": hp.n_layer,
        "intermediate_size": hp.n_ff,
        "num_attention_heads": hp.n_head,
        "num_key_value_heads": hp.n_kv,
        "head_dim": hp.head_dim,
        "rms_norm_eps": hp.eps,
        "vocab_size": hp.n_vocab,
        "max_position_embeddings": hp.n_ctx,
        "rope_theta": hp.rope_theta,
        "tie_word_embeddings": "output.weight" not in gg.tensors,  # llama.cpp: no output -> token_embd
    }
    if (bos := gg.get("tokenizer.ggml.bos_token_id")) is not None:
        config["bos_token_id"] = int(bos)
    eos = [gg.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    eos = list(dict.fromkeys(int(t) for t in eos if t is not None))
    if eos:
        config["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    return config


def _need(gg: GGUFFile, cond: bool, why: str) -> None:
    if not cond:
        raise _refuse(gg, why)


def _need_full_rotary(gg: GGUFFile, hp: HParams, arch: str) -> None:
    _need(gg, hp.n_rot == hp.head_dim,
          f"rope.dimension_count {hp.n_rot} is not the head size {hp.head_dim}; mlx-lm's {arch} rotates whole heads")


def _need_plain_head_dim(gg: GGUFFile, hp: HParams, arch: str) -> None:
    _need(gg, hp.plain_head_dim, f"attention.key_length {hp.head_dim} is not embedding_length / head_count "
                                 f"({hp.n_embd // hp.n_head}); mlx-lm's {arch} derives the head size that way")


def _has(gg: GGUFFile, base: str, suffix: str = "weight") -> bool:
    return f"blk.0.{base}.{suffix}" in gg.tensors


def _biases(gg: GGUFFile, group: tuple[str, ...], what: str) -> bool:
    """Whether the layers carry biases on all of `group` (mlx-lm's one switch for the group)."""
    present = [b for b in group if _has(gg, b, "bias")]
    if "attn_q" in group and _has(gg, "attn_qkv", "bias"):
        present += ["attn_q", "attn_k", "attn_v"]
    if present and set(present) != set(group):
        missing = sorted(set(group) - set(present))
        raise _refuse(gg, f"{what} biases on {sorted(set(present))} but not on {missing}; "
                          "mlx-lm has one switch for all of them")
    return bool(present)


def _bias_names(attention: bool, mlp: bool) -> tuple[str, ...]:
    names = ("attn_q", "attn_k", "attn_v", "attn_output", "attn_qkv") if attention else ()
    return names + (("ffn_gate", "ffn_up", "ffn_down") if mlp else ())


def _swa_pattern(gg: GGUFFile, hp: HParams, default: int) -> list[bool]:
    """Which layers use the sliding window, as llama.cpp's `load_swa_pattern` reads it: a per-layer
    bool array, or a period n whose last layer is global (`set_swa_pattern`)."""
    value = gg.arch_get("attention.sliding_window_pattern")
    if isinstance(value, (list, np.ndarray)):
        pattern = [bool(v) for v in value]
        _need(gg, len(pattern) == hp.n_layer,
              f"attention.sliding_window_pattern has {len(pattern)} entries for {hp.n_layer} layers")
        return pattern
    n = _int(gg, "attention.sliding_window_pattern", default)
    return [n == 0 or i % n < n - 1 for i in range(hp.n_layer)]


def _period(pattern: list[bool]) -> int | None:
    """The n with layer i global exactly when (i + 1) % n == 0 (mlx-lm's gemma3 rule), if any."""
    for n in range(1, len(pattern) + 2):  # len + 1: no global layer at all
        if all(p == ((i + 1) % n != 0) for i, p in enumerate(pattern)):
            return n
    return None


# ------------------------------------------------------------------ one plan per architecture

def _llama(gg: GGUFFile, hp: HParams) -> Plan:
    # conversion/llama.py: LlamaModel (also Mistral and Mixtral); src/models/llama.cpp.
    _need(gg, hp.n_rot == hp.head_dim, f"rope.dimension_count {hp.n_rot} is not the head size {hp.head_dim} "
                                       "(llama.cpp refuses this too)")
    moe = _int(gg, "expert_count", 0) > 0
    scaling, consumed = _rope_scaling(gg, hp, "mixtral" if moe else "llama",
                                      () if moe else ("linear", "yarn", "llama3", "longrope"))
    if moe:
        # Mixtral: llama.cpp routes with softmax over the top-k logits, as mlx-lm's mixtral does.
        _need_plain_head_dim(gg, hp, "mixtral")
        _need(gg, not _has(gg, "attn_q", "bias") and not _has(gg, "attn_qkv", "bias"),
              "mlx-lm's mixtral has no attention biases")
        config = _base_config(gg, hp, "mixtral")
        config |= {"num_local_experts": _int(gg, "expert_count"),
                   "num_experts_per_tok": _int(gg, "expert_used_count")}
        del config["head_dim"]
        return Plan("mixtral", config, {**_LLAMA_NORMS, **_ATTN, **_experts("block_sparse_moe")},
                    [(("attn_norm", "ffn_norm"),), _REQ_QKV, (("attn_output",),), _REQ_MOE],
                    consumed, n_ff_exp=hp.n_ff)
    attention_bias = _biases(gg, ("attn_q", "attn_k", "attn_v", "attn_output"), "attention")
    mlp_bias = _biases(gg, ("ffn_gate", "ffn_up", "ffn_down"), "feed-forward")
    config = _base_config(gg, hp, "llama") | {"attention_bias": attention_bias, "mlp_bias": mlp_bias,
                                              "rope_scaling": scaling}
    return Plan("llama", config, {**_LLAMA_NORMS, **_ATTN, **_MLP},
                [(("attn_norm", "ffn_norm"),), _REQ_QKV, (("attn_output",),), _REQ_MLP], consumed,
                biases=_bias_names(attention_bias, mlp_bias))


def _qwen2(gg: GGUFFile, hp: HParams) -> Plan:
    # conversion/qwen.py: Qwen2Model (TextModel: not permuted); src/models/qwen2.cpp.
    _need_plain_head_dim(gg, hp, "qwen2")
    _need_full_rotary(gg, hp, "qwen2")
    _need(gg, _biases(gg, ("attn_q", "attn_k", "attn_v"), "attention"),
          "mlx-lm's qwen2 needs the q/k/v biases every Qwen2 has, and this file has none")
    scaling, consumed = _rope_scaling(gg, hp, "qwen2", ("linear", "yarn"))
    config = _base_config(gg, hp, "qwen2") | {"rope_scaling": scaling}
    del config["head_dim"]
    return Plan("qwen2", config, {**_LLAMA_NORMS, **_ATTN, **_MLP},
                [(("attn_norm", "ffn_norm"),), _REQ_QKV, (("attn_output",),), _REQ_MLP], consumed,
                biases=("attn_q", "attn_k", "attn_v", "attn_qkv"))


def _qwen3(gg: GGUFFile, hp: HParams) -> Plan:
    # conversion/qwen.py: Qwen3Model (from Qwen2Model: not permuted); src/models/qwen3.cpp.
    _need_full_rotary(gg, hp, "qwen3")
    scaling, consumed = _rope_scaling(gg, hp, "qwen3", ("linear", "yarn"))
    config = _base_config(gg, hp, "qwen3") | {"rope_scaling": scaling}
    return Plan("qwen3", config, {**_LLAMA_NORMS, **_ATTN, **_QK_NORM, **_MLP},
                [(("attn_norm", "ffn_norm", "attn_q_norm", "attn_k_norm"),), _REQ_QKV, (("attn_output",),), _REQ_MLP],
                consumed)


def _qwen3moe(gg: GGUFFile, hp: HParams) -> Plan:
    # conversion/qwen.py: Qwen3MoeModel; src/models/qwen3moe.cpp: every layer is MoE, softmax
    # gating with the top-k weights renormalised (build_moe_ffn's norm_w = true).
    _need_full_rotary(gg, hp, "qwen3_moe")
    _, consumed = _rope_scaling(gg, hp, "qwen3_moe", ())  # mlx-lm's qwen3_moe has a plain RoPE
    n_expert, n_used = _int(gg, "expert_count"), _int(gg, "expert_used_count")
    _need(gg, n_expert > 0 and 0 < n_used <= n_expert, f"expert_count {n_expert} / expert_used_count {n_used}")
    n_ff_exp = _int(gg, "expert_feed_forward_length", 0) or (hp.n_ff or 0) // n_used  # llama.cpp's fallback
    config = _base_config(gg, hp, "qwen3_moe") | {
        "intermediate_size": hp.n_ff or n_ff_exp, "num_experts": n_expert, "num_experts_per_tok": n_used,
        "moe_intermediate_size": n_ff_exp, "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True}
    return Plan("qwen3_moe", config, {**_LLAMA_NORMS, **_ATTN, **_QK_NORM, **_experts("mlp")},
                [(("attn_norm", "ffn_norm", "attn_q_norm", "attn_k_norm"),), _REQ_QKV, (("attn_output",),), _REQ_MOE],
                consumed, n_ff_exp=n_ff_exp)


def _query_pre_attn_scalar(hp: HParams, n_layer_27b: int) -> int:
    # src/models/gemma2.cpp / gemma3.cpp: the 27B size scales queries by n_embd / n_head, the
    # others by the head size (after gemma_pytorch's config); llama.cpp tells the size by layers.
    return hp.n_embd // hp.n_head if hp.n_layer == n_layer_27b else hp.head_dim


def _gemma2(gg: GGUFFile, hp: HParams) -> Plan:
    # conversion/gemma.py: Gemma2Model adds 1 to every *norm.weight; src/models/gemma2.cpp.
    # mlx-lm's gemma2 attends globally on every layer: it matches llama.cpp's alternating 4096-token
    # sliding window only while the whole sequence fits in the window.
    _need_full_rotary(gg, hp, "gemma2")
    _rope_scaling(gg, hp, "gemma2", ())
    _need(gg, _float(gg, "rope.freq_base_swa", hp.rope_theta) == hp.rope_theta,
          "rope.freq_base_swa differs from rope.freq_base; mlx-lm's gemma2 has one rope base")
    _need(gg, "output.weight" not in gg.tensors, "output.weight is present, but Gemma 2 ties its output to "
                                                 "token_embd (llama.cpp and mlx-lm both)")
    config = _base_config(gg, hp, "gemma2") | {
        "attn_logit_softcapping": _float(gg, "attn_logit_softcapping", 50.0),   # llama-hparams.h defaults
        "final_logit_softcapping": _float(gg, "final_logit_softcapping", 30.0),
        "query_pre_attn_scalar": _query_pre_attn_scalar(hp, 46),
        "sliding_window": _int(gg, "attention.sliding_window", 4096),  # informational: mlx-lm ignores it
    }
    del config["tie_word_embeddings"]
    return Plan("gemma2", config, {**_GEMMA_NORMS, **_ATTN, **_MLP},
                [(tuple(_GEMMA_NORMS),), _REQ_QKV, (("attn_output",),), _REQ_MLP], lm_head=False)


def _gemma3(gg: GGUFFile, hp: HParams) -> Plan:
    # conversion/gemma.py: Gemma3Model adds 1 to every *norm.weight; src/models/gemma3.cpp.
    _need_full_rotary(gg, hp, "gemma3_text")
    scaling, _ = _rope_scaling(gg, hp, "gemma3_text", ("linear",))  # llama.cpp scales the global layers only, as mlx-lm
    softcap = _float(gg, "final_logit_softcapping", 0.0)
    _need(gg, not softcap, f"final_logit_softcapping {softcap}: mlx-lm's gemma3_text has no logit softcapping")
    window = _int(gg, "attention.sliding_window", 0)
    if window > 0:
        pattern = _period(_swa_pattern(gg, hp, 6))  # llama.cpp's default for gemma3: every 6th layer global
        _need(gg, pattern is not None, "attention.sliding_window_pattern is not periodic with the last layer of "
                                       "each period global, which is the only layout mlx-lm's gemma3_text has")
        _need(gg, pattern <= hp.n_layer, f"no layer of the {hp.n_layer} attends globally (sliding window pattern "
                                         f"{pattern}); mlx-lm's gemma3_text needs one within its first period")
    else:
        pattern, window = 1, hp.n_ctx  # llama.cpp: no sliding window; pattern 1 makes every layer global
    config = _base_config(gg, hp, "gemma3_text") | {
        "rope_local_base_freq": _float(gg, "rope.freq_base_swa", 10000.0),  # llama-hparams.h default
        "query_pre_attn_scalar": _query_pre_attn_scalar(hp, 62),
        "sliding_window": window,
        "sliding_window_pattern": pattern,
        "rope_scaling": scaling,
    }
    del config["tie_word_embeddings"]  # mlx-lm's gemma3_text ties when lm_head is missing (sanitize)
    return Plan("gemma3_text", config, {**_GEMMA_NORMS, **_ATTN, **_QK_NORM, **_MLP},
                [(tuple(_GEMMA_NORMS) + ("attn_q_norm", "attn_k_norm"),), _REQ_QKV, (("attn_output",),), _REQ_MLP])


def _phi3(gg: GGUFFile, hp: HParams) -> Plan:
    # conversion/phi.py: Phi3MiniModel (TextModel: not permuted) keeps qkv_proj fused as attn_qkv
    # and gate_up_proj fused as ffn_up, as mlx-lm's phi3 holds them; src/models/phi3.cpp (which
    # turns Phi's sliding window off, as mlx-lm has none).
    _need_plain_head_dim(gg, hp, "phi3")
    _need(gg, 0 < hp.n_rot <= hp.head_dim and hp.n_rot % 2 == 0, f"rope.dimension_count {hp.n_rot}")
    scaling, consumed = _rope_scaling(gg, hp, "phi3", ("longrope",), type_key="type")
    config = _base_config(gg, hp, "phi3") | {
        "partial_rotary_factor": hp.n_rot / hp.head_dim,
        "original_max_position_embeddings": _int(gg, "rope.scaling.original_context_length", hp.n_ctx),
        "rope_scaling": scaling,
    }
    del config["head_dim"]
    layer_map = {**_LLAMA_NORMS, "attn_qkv": "self_attn.qkv_proj", "attn_output": "self_attn.o_proj",
                 "ffn_up": "mlp.gate_up_proj", "ffn_down": "mlp.down_proj"}
    return Plan("phi3", config, layer_map,
                [(("attn_norm", "ffn_norm"),), (("attn_qkv",),), (("attn_output", "ffn_up", "ffn_down"),)], consumed)


def _granite(gg: GGUFFile, hp: HParams) -> Plan:
    # conversion/granite.py: GraniteModel (a LlamaModel: permuted) writes HF's *_multiplier
    # values as *_scale keys; src/models/granite.cpp reads them (0 = not applied).
    _need_plain_head_dim(gg, hp, "granite")
    _need_full_rotary(gg, hp, "granite")
    _need(gg, gg.arch_get("rope.scaling.finetuned", True) is not False,
          "rope.scaling.finetuned is false, which llama.cpp's granite takes as 'no rope'; "
          "mlx-lm's granite always ropes")
    scaling, consumed = _rope_scaling(gg, hp, "granite", ("linear", "yarn", "llama3", "longrope"))
    attention_bias = _biases(gg, ("attn_q", "attn_k", "attn_v", "attn_output"), "attention")
    mlp_bias = _biases(gg, ("ffn_gate", "ffn_up", "ffn_down"), "feed-forward")
    config = _base_config(gg, hp, "granite") | {
        "logits_scaling": _float(gg, "logit_scale"),  # llama.cpp requires it
        "attention_multiplier": _float(gg, "attention.scale", 0.0) or 1 / math.sqrt(hp.head_dim),
        "embedding_multiplier": _float(gg, "embedding_scale", 0.0) or 1.0,
        "residual_multiplier": _float(gg, "residual_scale", 0.0) or 1.0,
        "attention_bias": attention_bias, "mlp_bias": mlp_bias, "rope_scaling": scaling,
    }
    del config["head_dim"]
    return Plan("granite", config, {**_LLAMA_NORMS, **_ATTN, **_MLP},
                [(("attn_norm", "ffn_norm"),), _REQ_QKV, (("attn_output",),), _REQ_MLP], consumed,
                biases=_bias_names(attention_bias, mlp_bias))


def _olmo2(gg: GGUFFile, hp: HParams) -> Plan:
    # conversion/olmo.py: Olmo2Model (TextModel: not permuted), also OLMo 3, which adds a sliding
    # window on all but every 4th layer; src/models/olmo2.cpp: sliding layers rope without scaling,
    # exactly as mlx-lm's olmo3.
    _need_full_rotary(gg, hp, "olmo2")
    attention_bias = _biases(gg, ("attn_q", "attn_k", "attn_v", "attn_output"), "attention")
    _need(gg, not _has(gg, "ffn_up", "bias"), "mlx-lm's olmo2 has no feed-forward biases")
    window = _int(gg, "attention.sliding_window", 0)
    sliding = _swa_pattern(gg, hp, 4) if window > 0 else []  # llama.cpp's default period for olmo2
    model_type = "olmo3" if any(sliding) else "olmo2"
    _need(gg, not all(sliding) or not sliding, "every layer uses the sliding window; mlx-lm's olmo3 needs a "
                                               "full-attention layer")
    scaling, consumed = _rope_scaling(gg, hp, model_type, ("linear", "yarn"))
    config = _base_config(gg, hp, model_type) | {"attention_bias": attention_bias, "rope_scaling": scaling}
    if model_type == "olmo3":
        _need(gg, _float(gg, "rope.freq_base_swa", hp.rope_theta) == hp.rope_theta,
              "rope.freq_base_swa differs from rope.freq_base; mlx-lm's olmo3 has one rope base")
        config["sliding_window"] = window
        config["layer_types"] = ["sliding_attention" if swa else "full_attention" for swa in sliding]
    return Plan(model_type, config, {**_OLMO2_NORMS, **_ATTN, **_QK_NORM, **_MLP},
                [(tuple(_OLMO2_NORMS) + ("attn_q_norm", "attn_k_norm"),), _REQ_QKV, (("attn_output",),), _REQ_MLP],
                consumed, biases=_bias_names(attention_bias, False))


@dataclass(frozen=True)
class Architecture:
    """One supported GGUF architecture and the mlx-lm model type it becomes.

    `model_type` is the usual one; `config(gg)["model_type"]` is the one for the file (a llama
    file with experts is Mixtral, an olmo2 file with a sliding window is OLMo 3).
    """

    gguf_name: str
    model_type: str
    permuted: bool      # llama.cpp's converter permuted Q/K rows (its LlamaModel and subclasses)
    norm_offset: float  # what llama.cpp's converter added to every RMSNorm weight
    planner: Callable[[GGUFFile, HParams], Plan] = field(repr=False)

    def plan(self, gg: GGUFFile) -> Plan:
        if gg.architecture != self.gguf_name:
            raise _refuse(gg, f"GGUF architecture {gg.architecture!r} is not {self.gguf_name!r}")
        return self.planner(gg, read_hparams(gg))

    def check(self, gg: GGUFFile) -> None:
        """Refuse (InvalidArgument naming it) what cannot become mlx-lm's model faithfully: a
        setting mlx-lm lacks, a tensor that has no place in it, a tensor it needs that is missing."""
        self.rules(gg)

    def config(self, gg: GGUFFile) -> dict:
        """config.json for mlx-lm, without "quantization" (the importer adds that)."""
        return dict(self.plan(gg).config)

    def rules(self, gg: GGUFFile) -> dict[str, list[TensorRule]]:
        """Every GGUF tensor name -> its rules ([] = consumed into config.json)."""
        plan = self.plan(gg)
        hp = read_hparams(gg)
        out: dict[str, list[TensorRule]] = {}
        for name, info in gg.tensors.items():
            out[name] = self._tensor_rules(gg, plan, hp, name, info.shape)
        seen: dict[tuple[str, str], str] = {}
        for name, rules in out.items():
            for rule in rules:
                key = (rule.target, rule.suffix)
                if key in seen:
                    raise _refuse(gg, f"tensors {seen[key]} and {name} both fill {rule.target}.{rule.suffix}")
                seen[key] = name
        for i in range(hp.n_layer):
            for group in plan.required:
                if not any(all(f"blk.{i}.{b}.weight" in gg.tensors for b in alt) for alt in group):
                    missing = [f"blk.{i}.{b}.weight" for b in group[0] if f"blk.{i}.{b}.weight" not in gg.tensors]
                    raise _refuse(gg, f"GGUF file lacks tensor {missing[0]}, which mlx-lm's {plan.model_type} needs")
        _need(gg, "output_norm.weight" in gg.tensors, "GGUF file lacks tensor output_norm.weight")
        return out

    def _tensor_rules(self, gg: GGUFFile, plan: Plan, hp: HParams, name: str,
                      shape: tuple[int, ...]) -> list[TensorRule]:
        def unplaced() -> InvalidArgument:
            return _refuse(gg, f"tensor {name} has no place in mlx-lm's {plan.model_type} model "
                               f"(GGUF architecture {self.gguf_name})")

        norm_add = -self.norm_offset
        if name in plan.consumed:
            return []
        if name == "token_embd.weight":
            return [TensorRule("model.embed_tokens")]
        if name == "output_norm.weight":
            return [TensorRule("model.norm", add=norm_add)]
        if name == "output.weight" and plan.lm_head:
            _need(gg, shape[0] == hp.n_vocab, f"output.weight has {shape[0]} rows for {hp.n_vocab} tokens")
            return [TensorRule("lm_head")]
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
        if not m or int(m[1]) >= hp.n_layer or m[2] not in plan.layer_map:
            raise unplaced()
        layer, base, suffix = int(m[1]), m[2], m[3]
        if suffix == "bias" and base not in plan.biases:
            raise unplaced()
        prefix = f"model.layers.{layer}."
        target = plan.layer_map[base]
        rows = shape[-2] if len(shape) > 1 else shape[0]
        q, kv = hp.n_head * hp.head_dim, hp.n_kv * hp.head_dim
        q_heads = hp.n_head if self.permuted else None
        k_heads = hp.n_kv if self.permuted else None

        def expect(n: int) -> None:
            _need(gg, rows == n, f"{name} has {rows} rows where {n} were expected")

        if isinstance(target, tuple) and base == "attn_qkv":
            expect(q + 2 * kv)
            return [TensorRule(prefix + target[0], suffix, q_heads, rows=(0, q)),
                    TensorRule(prefix + target[1], suffix, k_heads, rows=(q, q + kv)),
                    TensorRule(prefix + target[2], suffix, rows=(q + kv, q + 2 * kv))]
        if isinstance(target, tuple):  # ffn_gate_up_exps: gate rows, then up rows
            expect(2 * (plan.n_ff_exp or rows // 2))
            half = rows // 2
            return [TensorRule(prefix + target[0], suffix, rows=(0, half)),
                    TensorRule(prefix + target[1], suffix, rows=(half, rows))]
        if base == "attn_q":
            expect(q)
            return [TensorRule(prefix + target, suffix, q_heads)]
        if base == "attn_k":
            expect(kv)
            return [TensorRule(prefix + target, suffix, k_heads)]
        if base == "attn_v":
            expect(kv)
        if base == "attn_qkv":  # phi3's own fused layout: q, k, v rows, never permuted
            expect(q + 2 * kv)
        return [TensorRule(prefix + target, suffix, add=norm_add if base.endswith("norm") else 0.0)]


ARCHITECTURES: dict[str, Architecture] = {a.gguf_name: a for a in (
    # permuted: conversion/llama.py LlamaModel.modify_tensors (undo_permute = True), granite.py
    # GraniteModel(LlamaModel); the others are TextModel subclasses that keep HF's row order.
    Architecture("llama", "llama", permuted=True, norm_offset=0.0, planner=_llama),
    Architecture("qwen2", "qwen2", permuted=False, norm_offset=0.0, planner=_qwen2),
    Architecture("qwen3", "qwen3", permuted=False, norm_offset=0.0, planner=_qwen3),
    Architecture("qwen3moe", "qwen3_moe", permuted=False, norm_offset=0.0, planner=_qwen3moe),
    # norm_offset: conversion/gemma.py adds 1 to every tensor ending in "norm.weight"
    # (Gemma2Model.modify_tensors, Gemma3Model.norm_shift); mlx-lm adds it back at run time.
    Architecture("gemma2", "gemma2", permuted=False, norm_offset=1.0, planner=_gemma2),
    Architecture("gemma3", "gemma3_text", permuted=False, norm_offset=1.0, planner=_gemma3),
    Architecture("phi3", "phi3", permuted=False, norm_offset=0.0, planner=_phi3),
    Architecture("granite", "granite", permuted=True, norm_offset=0.0, planner=_granite),
    Architecture("olmo2", "olmo2", permuted=False, norm_offset=0.0, planner=_olmo2),
)}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(ARCHITECTURES)


def architecture_for(gg: GGUFFile) -> Architecture:
    """The Architecture for `gg`, or InvalidArgument naming its architecture and the supported list."""
    arch = gg.architecture
    if arch not in ARCHITECTURES:
        raise InvalidArgument(f"GGUF architecture {arch!r} is not supported "
                              f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    return ARCHITECTURES[arch]
