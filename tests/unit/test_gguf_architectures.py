"""Each GGUF architecture maps onto mlx-lm's own model: names, shapes, values and logits.

Every case builds a tiny random model with mlx-lm's implementation, writes it as a GGUF the way
llama.cpp's converter lays it out (HF names through gguf-py's tensor map, Q/K rows permuted for
the llama family, +1 on Gemma norms, the metadata keys the converter writes), then maps it back
with `architectures.py` and checks that mlx-lm loads the result strictly and computes the same
logits. The mapping under test never sees the test's own naming: gguf-py names the tensors.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
mx = pytest.importorskip("mlx.core")

from mlx.utils import tree_flatten  # noqa: E402

from mlxserve.services.common.errors import InvalidArgument  # noqa: E402
from mlxserve.services.store.importers.gguf.architectures import (  # noqa: E402
    SUPPORTED_ARCHITECTURES,
    TensorRule,
    architecture_for,
    recover_llama3_scaling,
    unpermute_rows,
)
from mlxserve.services.store.importers.gguf.reader import read_gguf  # noqa: E402

REAL_GEMMA3 = Path("/tmp/g3/gemma-3-270m-q4_k_m.gguf")
VOCAB = 48


# ------------------------------------------------------------------ llama.cpp's side, from its definitions

def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """conversion/llama.py `LlamaModel.permute`: each head's two halves interleaved row by row."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_llama3_rope_freqs(dim: int, base: float, factor: float, low: float, high: float, old: int) -> np.ndarray:
    """transformers' `_compute_llama3_parameters`, expressed as llama.cpp's rope_freqs tensor:
    the divisor of each inverse frequency."""
    inv_freq = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = old / low, old / high
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    scaled = np.where(medium, smoothed, scaled)
    return (inv_freq / scaled).astype(np.float32)


def write_gguf(path: Path, arch: str, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    """A GGUF with `meta` (keys without the `<arch>.` prefix unless they start with general. or
    tokenizer.) and F32 `tensors`, through gguf-py's writer as llama.cpp's converter uses it."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        full = key if key.startswith(("general.", "tokenizer.")) else f"{arch}.{key}"
        if isinstance(value, bool):
            w.add_bool(full, value)
        elif isinstance(value, int):
            w.add_uint32(full, value)
        elif isinstance(value, float):
            w.add_float32(full, value)
        elif isinstance(value, str):
            w.add_string(full, value)
        else:
            w.add_array(full, list(value))
    for name, data in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ------------------------------------------------------------------ the cases

BASE = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 96, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "vocab_size": VOCAB, "max_position_embeddings": 256}


@dataclass
class Case:
    id: str
    arch: str                  # GGUF architecture
    config: dict               # the original mlx-lm config.json
    meta: dict                 # what llama.cpp's converter writes for it
    permuted: bool = False     # conversion/llama.py LlamaModel subclasses
    norm_shift: float = 0.0    # conversion/gemma.py
    extra: dict = field(default_factory=dict)  # generated tensors (rope_freqs, rope_factors_*)
    fuse_qkv: bool = False     # convert_hf_to_gguf.py --fuse-qkv
    fuse_gate_up_exps: bool = False


def text_model_meta(c: dict) -> dict:
    """conversion/base.py TextModel.set_gguf_parameters for an HF config."""
    meta = {"block_count": c["num_hidden_layers"], "context_length": c["max_position_embeddings"],
            "embedding_length": c["hidden_size"], "feed_forward_length": c["intermediate_size"],
            "attention.head_count": c["num_attention_heads"],
            "attention.head_count_kv": c["num_key_value_heads"],
            "attention.layer_norm_rms_epsilon": c["rms_norm_eps"]}
    if "rope_theta" in c:
        meta["rope.freq_base"] = float(c["rope_theta"])
    if "head_dim" in c:
        meta["attention.key_length"] = meta["attention.value_length"] = c["head_dim"]
    tokens = [f"t{i}" for i in range(c["vocab_size"])]
    return meta | {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
                   "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}


def llama_meta(c: dict) -> dict:
    """conversion/llama.py LlamaModel: also vocab size and rope dimension count."""
    rope_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return text_model_meta(c) | {"vocab_size": c["vocab_size"], "rope.dimension_count": rope_dim}


def _llama(**extra) -> dict:
    return BASE | {"model_type": "llama", "head_dim": 16, "rope_theta": 10000.0, "tie_word_embeddings": False} | extra


def _llama3_case() -> Case:
    # A short original context, so that a dozen positions already show the scaled frequencies.
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    config = _llama(rope_scaling=scaling)
    freqs = hf_llama3_rope_freqs(16, 10000.0, 8.0, 1.0, 4.0, 64)
    return Case("llama3", "llama", config, llama_meta(config), permuted=True, extra={"rope_freqs.weight": freqs})


def _phi3_case() -> Case:
    # Phi-3.5/Phi-4-mini style: longrope, partial rotary, tied embeddings.
    rng = np.random.default_rng(3)
    long = (1 + rng.random(4) * 4).round(3).tolist()
    short = (1 + rng.random(4) * 0.2).round(3).tolist()
    config = BASE | {"model_type": "phi3", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                     "original_max_position_embeddings": 64, "tie_word_embeddings": True,
                     "rope_scaling": {"type": "longrope", "long_factor": long, "short_factor": short}}
    meta = text_model_meta(config) | {"rope.scaling.original_context_length": 64, "rope.dimension_count": 8,
                                      "attention.sliding_window": 0,
                                      "rope.scaling.attn_factor": math.sqrt(1 + math.log(4) / math.log(64))}
    extra = {"rope_factors_long.weight": np.array(long, np.float32),
             "rope_factors_short.weight": np.array(short, np.float32)}
    return Case("phi3-longrope", "phi3", config, meta, extra=extra)


def _gemma3_case() -> Case:
    config = BASE | {"model_type": "gemma3_text", "num_hidden_layers": 6, "head_dim": 16, "rms_norm_eps": 1e-6,
                     "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": 16,
                     "sliding_window": 8, "sliding_window_pattern": 6}
    meta = text_model_meta(config) | {"attention.sliding_window": 8}
    return Case("gemma3", "gemma3", config, meta, norm_shift=1.0)


def _gemma2_case() -> Case:
    config = BASE | {"model_type": "gemma2", "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                     "query_pre_attn_scalar": 16, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
    # conversion/gemma.py Gemma2Model writes its own keys (no rope base)
    meta = {k: v for k, v in text_model_meta(config).items() if k != "rope.freq_base"}
    meta |= {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "attention.sliding_window": 4096}
    return Case("gemma2", "gemma2", config, meta, norm_shift=1.0)


def _qwen3moe_case(fused: bool = False) -> Case:
    config = BASE | {"model_type": "qwen3_moe", "head_dim": 16, "rope_theta": 1000000.0, "num_experts": 4,
                     "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1,
                     "mlp_only_layers": [], "norm_topk_prob": True, "tie_word_embeddings": False}
    meta = text_model_meta(config) | {"expert_count": 4, "expert_used_count": 2, "expert_feed_forward_length": 32}
    return Case("qwen3moe" + "-fused-gate-up" * fused, "qwen3moe", config, meta, fuse_gate_up_exps=fused)


def _granite_case() -> Case:
    config = BASE | {"model_type": "granite", "rope_theta": 10000.0, "logits_scaling": 8.0,
                     "attention_multiplier": 0.03125, "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                     "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True}
    meta = llama_meta(config) | {"attention.scale": 0.03125, "embedding_scale": 12.0, "residual_scale": 0.22,
                                 "logit_scale": 8.0}
    return Case("granite", "granite", config, meta, permuted=True)


def _olmo3_case() -> Case:
    config = BASE | {"model_type": "olmo3", "num_hidden_layers": 4, "rope_theta": 10000.0, "sliding_window": 8,
                     "tie_word_embeddings": False}
    pattern = [(i + 1) % 4 != 0 for i in range(4)]  # conversion/olmo.py Olmo2Model's default for OLMo 3
    meta = text_model_meta(config) | {"attention.sliding_window": 8, "attention.sliding_window_pattern": pattern}
    return Case("olmo3", "olmo2", config, meta)


def _cases() -> list[Case]:
    llama = _llama()
    mixtral = BASE | {"model_type": "mixtral", "rope_theta": 1000000.0, "num_local_experts": 4,
                      "num_experts_per_tok": 2, "tie_word_embeddings": False}
    qwen2 = BASE | {"model_type": "qwen2", "rope_theta": 1000000.0, "tie_word_embeddings": True}
    qwen3 = BASE | {"model_type": "qwen3", "head_dim": 16, "rope_theta": 1000000.0, "tie_word_embeddings": False}
    olmo2 = BASE | {"model_type": "olmo2", "rope_theta": 500000.0, "tie_word_embeddings": False}
    mistral_nemo = _llama(head_dim=8, tie_word_embeddings=True)  # head_dim != hidden / heads
    yarn = _llama(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})
    yarn_meta = llama_meta(yarn) | {"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                                    "rope.scaling.original_context_length": 64}
    linear = _llama(rope_scaling={"rope_type": "linear", "factor": 2.0})
    linear_meta = llama_meta(linear) | {"rope.scaling.type": "linear", "rope.scaling.factor": 2.0}
    return [
        Case("llama", "llama", llama, llama_meta(llama), permuted=True),
        Case("llama-fused-qkv", "llama", llama, llama_meta(llama), permuted=True, fuse_qkv=True),
        Case("llama-head-dim", "llama", mistral_nemo, llama_meta(mistral_nemo), permuted=True),
        _llama3_case(),
        Case("llama-yarn", "llama", yarn, yarn_meta, permuted=True),
        Case("llama-linear", "llama", linear, linear_meta, permuted=True),
        Case("mixtral", "llama", mixtral, llama_meta(mixtral) | {"expert_count": 4, "expert_used_count": 2},
             permuted=True),
        Case("qwen2", "qwen2", qwen2, text_model_meta(qwen2)),
        Case("qwen2-fused-qkv", "qwen2", qwen2, text_model_meta(qwen2), fuse_qkv=True),
        Case("qwen3", "qwen3", qwen3, text_model_meta(qwen3)),
        _qwen3moe_case(),
        _qwen3moe_case(fused=True),
        _gemma2_case(),
        _gemma3_case(),
        _phi3_case(),
        _granite_case(),
        Case("olmo2", "olmo2", olmo2, text_model_meta(olmo2)),
        _olmo3_case(),
    ]


CASES = _cases()


# ------------------------------------------------------------------ export (llama.cpp's way) and import (ours)

def mlx_model(config: dict, weights: dict[str, np.ndarray] | None = None):
    """mlx-lm's own model for `config`, with `weights` loaded strictly after its sanitize."""
    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    model = module.Model(module.ModelArgs.from_dict(config))
    if weights is not None:
        mx_weights = {k: mx.array(v) for k, v in weights.items()}
        if hasattr(model, "sanitize"):
            mx_weights = model.sanitize(mx_weights)
        model.load_weights(list(mx_weights.items()), strict=True)
    return model


def random_weights(config: dict, seed: int = 0, lm_head: bool = False) -> dict[str, np.ndarray]:
    """Random values for every parameter of mlx-lm's model (norms too, so offsets show). Gemma 3
    has no tie setting: it ties when lm_head is left out, unless `lm_head`."""
    rng = np.random.default_rng(seed)
    model = mlx_model(config)
    weights = {k: (rng.standard_normal(v.shape) * 0.2).astype(np.float32)
               for k, v in tree_flatten(model.parameters())}
    if config.get("tie_word_embeddings", config["model_type"] == "gemma3_text" and not lm_head):
        weights.pop("lm_head.weight", None)
    return weights


def hf_name(mlx_name: str, model_type: str) -> str:
    """mlx-lm stacks experts as switch_mlp; HF (after the converter's merge) calls them experts."""
    if model_type == "mixtral":
        for ours, theirs in (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")):
            mlx_name = mlx_name.replace(f"switch_mlp.{ours}", f"experts.{theirs}")
    return mlx_name.replace("switch_mlp", "experts")


def export(case: Case, weights: dict[str, np.ndarray], path: Path) -> Path:
    """The GGUF llama.cpp's converter writes for these HF weights."""
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[case.arch]
    names = gguf.get_tensor_name_map(arch_enum, case.config["num_hidden_layers"])
    heads, kv = case.config["num_attention_heads"], case.config["num_key_value_heads"]
    tensors: dict[str, np.ndarray] = {}
    for name, value in weights.items():
        hf = hf_name(name, case.config["model_type"])
        if case.permuted and hf.endswith(("q_proj.weight", "q_proj.bias")):
            value = llama_cpp_permute(value, heads)
        if case.permuted and hf.endswith(("k_proj.weight", "k_proj.bias")):
            value = llama_cpp_permute(value, kv)
        if hf.endswith("norm.weight"):
            value = value + np.float32(case.norm_shift)
        gguf_name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, f"gguf-py has no name for {hf}"
        tensors[gguf_name] = value
    if case.fuse_qkv:  # conversion/base.py: cat([q, k, v]) after the permutation
        for i in range(case.config["num_hidden_layers"]):
            for suffix in ("weight", "bias"):
                parts = [f"blk.{i}.attn_{p}.{suffix}" for p in "qkv"]
                if all(p in tensors for p in parts):
                    tensors[f"blk.{i}.attn_qkv.{suffix}"] = np.concatenate([tensors.pop(p) for p in parts])
    if case.fuse_gate_up_exps:  # conversion/base.py: cat([gate, up], dim=1)
        for i in range(case.config["num_hidden_layers"]):
            gate, up = tensors.pop(f"blk.{i}.ffn_gate_exps.weight"), tensors.pop(f"blk.{i}.ffn_up_exps.weight")
            tensors[f"blk.{i}.ffn_gate_up_exps.weight"] = np.concatenate([gate, up], axis=1)
    return write_gguf(path, case.arch, case.meta, tensors | case.extra)


def apply(rule: TensorRule, value: np.ndarray) -> np.ndarray:
    """What the importer does with a rule: rows, then un-permute, then add."""
    if rule.rows is not None:
        a, b = rule.rows
        value = value[a:b] if value.ndim == 1 else value[..., a:b, :]
    if rule.unpermute_heads:
        value = unpermute_rows(value, rule.unpermute_heads)
    return value + np.float32(rule.add)


def import_weights(path: Path) -> tuple[dict, dict[str, np.ndarray], dict]:
    gg = read_gguf(path)
    arch = architecture_for(gg)
    arch.check(gg)
    rules = arch.rules(gg)
    assert set(rules) == set(gg.tensors), "every tensor in the file is accounted for"
    weights = {f"{r.target}.{r.suffix}": apply(r, gg.array(name)) for name, rs in rules.items() for r in rs}
    return arch.config(gg), weights, rules


def plain_json(value: Any) -> bool:
    """Only Python's own JSON types (no numpy scalars), so config.json reads back as written."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_json(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


def logits(model, tokens: list[int]) -> np.ndarray:
    out = model(mx.array([tokens]))
    mx.eval(out)
    return np.array(out.astype(mx.float32))


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_imported_model_loads_in_mlx_lm_with_the_original_weights_and_logits(case: Case, tmp_path: Path) -> None:
    original = random_weights(case.config)
    config, weights, _ = import_weights(export(case, original, tmp_path / f"{case.id}.gguf"))

    assert config["model_type"] == case.config["model_type"]
    assert plain_json(config)
    model = mlx_model(config, weights)  # strict: nothing missing, nothing extra, every shape right
    expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
    assert {k: v.shape for k, v in weights.items()} == expected
    for name, value in original.items():
        np.testing.assert_allclose(weights[name], value, rtol=0, atol=1e-6, err_msg=name)

    tokens = [1, 5, 9, 17, 33, 2, 40, 7, 11, 3, 30, 12]
    reference = logits(mlx_model(case.config, original), tokens)
    np.testing.assert_allclose(logits(model, tokens), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("llama", "qwen2", "gemma3", "qwen3moe")],
                         ids=lambda c: c.id)
def test_config_carries_the_original_hyperparameters(case: Case, tmp_path: Path) -> None:
    config, _, _ = import_weights(export(case, random_weights(case.config), tmp_path / "m.gguf"))
    for key, value in case.config.items():
        if key == "tie_word_embeddings" and case.config["model_type"] in ("gemma3_text", "gemma2"):
            continue
        assert config[key] == value, key
    assert config["bos_token_id"] == 1 and config["eos_token_id"] == 2


def test_permuted_families_unpermute_q_and_k_with_their_own_head_counts(tmp_path: Path) -> None:
    case = CASES[0]
    _, _, rules = import_weights(export(case, random_weights(case.config), tmp_path / "m.gguf"))
    assert rules["blk.1.attn_q.weight"] == [TensorRule("model.layers.1.self_attn.q_proj", unpermute_heads=4)]
    assert rules["blk.1.attn_k.weight"] == [TensorRule("model.layers.1.self_attn.k_proj", unpermute_heads=2)]
    assert rules["blk.1.attn_v.weight"] == [TensorRule("model.layers.1.self_attn.v_proj")]
    qwen = next(c for c in CASES if c.id == "qwen2-fused-qkv")
    _, _, rules = import_weights(export(qwen, random_weights(qwen.config), tmp_path / "q.gguf"))
    assert [r.unpermute_heads for r in rules["blk.0.attn_qkv.bias"]] == [None, None, None]  # qwen2 is not permuted
    assert [r.rows for r in rules["blk.0.attn_qkv.bias"]] == [(0, 64), (64, 96), (96, 128)]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("gemma2", "gemma3", "llama")], ids=lambda c: c.id)
def test_gemma_norms_lose_the_one_llama_cpp_added_and_others_keep_theirs(case: Case, tmp_path: Path) -> None:
    _, _, rules = import_weights(export(case, random_weights(case.config), tmp_path / "m.gguf"))
    norms = {name: rs[0].add for name, rs in rules.items() if name.split(".")[-2].endswith("norm")}
    assert norms and set(norms.values()) == {-case.norm_shift if case.norm_shift else 0.0}
    others = {rs[0].add for name, rs in rules.items() if rs and name not in norms}
    assert others == {0.0}


@pytest.mark.parametrize("case, layers_27b", [(_gemma2_case(), 46), (_gemma3_case(), 62)], ids=["gemma2", "gemma3"])
def test_gemma_27b_scales_queries_by_hidden_over_heads_and_other_sizes_by_head_size(
        case: Case, layers_27b: int, tmp_path: Path) -> None:
    # src/models/gemma2.cpp, gemma3.cpp: llama.cpp tells the 27B size by its layer count
    for layers, expected in ((layers_27b, 64 // 4), (layers_27b - 2, 32)):
        meta = case.meta | {"block_count": layers, "attention.key_length": 32, "attention.value_length": 32}
        gg = read_gguf(write_gguf(tmp_path / f"{layers}.gguf", case.arch, meta,
                                  {"token_embd.weight": np.zeros((VOCAB, 64), np.float32)}))
        assert architecture_for(gg).config(gg)["query_pre_attn_scalar"] == expected


@pytest.mark.parametrize("shape", [(8, 5), (3, 8, 5), (8,)])
def test_unpermute_rows_inverts_llama_cpp_permute_moving_whole_rows(shape: tuple[int, ...]) -> None:
    x = np.arange(np.prod(shape)).reshape(shape)
    if len(shape) == 3:  # experts: rows are axis -2 of each expert
        permuted = np.stack([llama_cpp_permute(e, 2) for e in x])
    else:
        permuted = llama_cpp_permute(x, 2)
    assert np.array_equal(unpermute_rows(permuted, 2), x)
    # packed quantized codes and their per-group scales are rows of other widths: same movement
    codes, scales = np.arange(8 * 3).reshape(8, 3), np.arange(8).reshape(8, 1) * 10
    assert np.array_equal(unpermute_rows(llama_cpp_permute(codes, 2), 2), codes)
    assert np.array_equal(unpermute_rows(llama_cpp_permute(scales, 2), 2), scales)


@pytest.mark.parametrize("dim, base, factor, low, high, old", [
    (128, 500000.0, 8.0, 1.0, 4.0, 8192),   # Llama 3.1 8B / 70B / 405B, Llama 3.3
    (64, 500000.0, 32.0, 1.0, 4.0, 8192),   # Llama 3.2 1B (3B has head size 128, same factors)
    (128, 500000.0, 32.0, 1.0, 4.0, 8192),  # Llama 3.2 3B
    (128, 500000.0, 16.0, 1.0, 2.0, 4096),  # other thresholds, solved from the smoothed band
])
def test_llama3_rope_scaling_is_recovered_from_rope_freqs(dim, base, factor, low, high, old) -> None:
    from mlx_lm.models.rope_utils import Llama3RoPE

    freqs = hf_llama3_rope_freqs(dim, base, factor, low, high, old)
    scaling = recover_llama3_scaling(freqs, dim, base)
    assert scaling == {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                       "original_max_position_embeddings": old}
    rope = Llama3RoPE(dim, base=base, scaling_config=scaling)
    periods = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    np.testing.assert_allclose(np.array(rope._freqs), periods * freqs, rtol=1e-5)


def test_rope_freqs_that_no_llama3_scaling_reproduces_are_refused(tmp_path: Path) -> None:
    assert recover_llama3_scaling(np.ones(8, np.float32), 16, 10000.0) is None
    case = _llama3_case()
    bent = case.extra["rope_freqs.weight"].copy()
    bent[2] *= 1.5
    path = export(Case(**{**case.__dict__, "extra": {"rope_freqs.weight": bent}}),
                  random_weights(case.config), tmp_path / "m.gguf")
    with pytest.raises(InvalidArgument, match="rope_freqs.weight is not Llama 3 rope scaling"):
        architecture_for(read_gguf(path)).check(read_gguf(path))


def _tiny(tmp_path: Path, case: Case, meta: dict | None = None, extra: dict | None = None) -> Any:
    case = Case(**{**case.__dict__, "meta": case.meta | (meta or {}), "extra": case.extra | (extra or {})})
    gg = read_gguf(export(case, random_weights(case.config), tmp_path / f"{case.id}.gguf"))
    return architecture_for(gg), gg


def test_unknown_architecture_is_refused_naming_it_and_the_supported_list(tmp_path: Path) -> None:
    gg = read_gguf(write_gguf(tmp_path / "b.gguf", "bert", {"block_count": 1}, {"token_embd.weight": np.zeros((4, 8))}))
    with pytest.raises(InvalidArgument, match="'bert' is not supported") as e:
        architecture_for(gg)
    assert all(a in str(e.value) for a in SUPPORTED_ARCHITECTURES)


def test_a_tensor_with_no_place_in_mlx_lm_is_refused_by_name(tmp_path: Path) -> None:
    arch, gg = _tiny(tmp_path, CASES[0], extra={"blk.0.attn_rot_embd.weight": np.zeros(8, np.float32)})
    with pytest.raises(InvalidArgument, match=r"tensor blk\.0\.attn_rot_embd\.weight has no place"):
        arch.check(gg)
    qwen3 = next(c for c in CASES if c.id == "qwen3")
    arch, gg = _tiny(tmp_path, qwen3, extra={"cls_out.weight": np.zeros((2, 64), np.float32)})  # a reranker head
    with pytest.raises(InvalidArgument, match=r"tensor cls_out\.weight has no place in mlx-lm's qwen3"):
        arch.check(gg)


def test_rope_scaling_mlx_lm_cannot_apply_is_refused_by_kind(tmp_path: Path) -> None:
    moe = next(c for c in CASES if c.id == "qwen3moe")
    arch, gg = _tiny(tmp_path, moe, meta={"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0})
    with pytest.raises(InvalidArgument, match="rope scaling 'yarn' is not something mlx-lm's qwen3_moe can apply"):
        arch.check(gg)
    arch, gg = _tiny(tmp_path, CASES[0], meta={"rope.scaling.type": "xpos"})
    with pytest.raises(InvalidArgument, match="rope scaling 'xpos'"):
        arch.check(gg)


def test_settings_mlx_lm_lacks_are_refused(tmp_path: Path) -> None:
    gemma3 = _gemma3_case()
    arch, gg = _tiny(tmp_path, gemma3, meta={"final_logit_softcapping": 30.0})
    with pytest.raises(InvalidArgument, match="final_logit_softcapping"):
        arch.check(gg)
    arch, gg = _tiny(tmp_path, gemma3, meta={"attention.sliding_window_pattern": [True, False, True, True, True, True]})
    with pytest.raises(InvalidArgument, match="sliding_window_pattern is not periodic"):
        arch.check(gg)
    arch, gg = _tiny(tmp_path, CASES[0], meta={"attention.head_count_kv": [2, 1]})
    with pytest.raises(InvalidArgument, match="head_count_kv differs between layers"):
        arch.check(gg)
    arch, gg = _tiny(tmp_path, _phi3_case(), meta={"rope.scaling.attn_factor": 1.0})
    with pytest.raises(InvalidArgument, match="attn_factor is 1.0, but mlx-lm's longrope scales by 1.1547"):
        arch.check(gg)
    arch, gg = _tiny(tmp_path, CASES[0], extra={"blk.0.attn_q.bias": np.zeros(64, np.float32)})
    with pytest.raises(InvalidArgument, match=r"attention biases on \['attn_q'\] but not on"):
        arch.check(gg)
    arch, gg = _tiny(tmp_path, _gemma2_case(), extra={"output.weight": np.zeros((VOCAB, 64), np.float32)})
    with pytest.raises(InvalidArgument, match="Gemma 2 ties its output"):
        arch.check(gg)


def test_a_missing_layer_tensor_is_refused_by_name(tmp_path: Path) -> None:
    case = CASES[0]
    weights = random_weights(case.config)
    del weights["model.layers.1.mlp.up_proj.weight"]
    gg = read_gguf(export(case, weights, tmp_path / "m.gguf"))
    with pytest.raises(InvalidArgument, match=r"lacks tensor blk\.1\.ffn_up\.weight"):
        architecture_for(gg).check(gg)


def test_gemma3_without_lm_head_ties_and_with_one_keeps_it(tmp_path: Path) -> None:
    case = _gemma3_case()
    for lm_head in (False, True):
        original = random_weights(case.config, lm_head=lm_head)
        config, weights, _ = import_weights(export(case, original, tmp_path / f"{lm_head}.gguf"))
        assert ("lm_head.weight" in weights) == lm_head
        tokens = [3, 1, 4, 1, 5, 9, 2, 6]
        np.testing.assert_allclose(logits(mlx_model(config, weights), tokens),
                                   logits(mlx_model(case.config, original), tokens), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not REAL_GEMMA3.exists(), reason="the real gemma3 GGUF is not downloaded")
def test_real_gemma3_file_maps_every_tensor_with_llama_cpp_hyperparameters() -> None:
    gg = read_gguf(REAL_GEMMA3)
    arch = architecture_for(gg)
    arch.check(gg)
    rules = arch.rules(gg)
    assert set(rules) == set(gg.tensors) and all(rules.values())
    config = arch.config(gg)
    assert {k: config[k] for k in (
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "sliding_window", "sliding_window_pattern", "query_pre_attn_scalar", "rope_theta", "rope_local_base_freq",
        "rms_norm_eps", "vocab_size", "max_position_embeddings")} == {
        "model_type": "gemma3_text", "hidden_size": 640, "num_hidden_layers": 18, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 256, "sliding_window": 512, "sliding_window_pattern": 6,
        "query_pre_attn_scalar": 256, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "rms_norm_eps": 1e-6, "vocab_size": 262144, "max_position_embeddings": 32768}
    assert config.get("rope_scaling") is None
    norms = [n for n in gg.tensors if n.split(".")[-2].endswith("norm")]
    assert len(norms) == 18 * 6 + 1 and all(rules[n][0].add == -1.0 for n in norms)
    # tied output: no output.weight in the file, so no lm_head target
    assert "lm_head" not in {r.target for rs in rules.values() for r in rs}
    # mlx-lm builds exactly the parameters the rules fill
    model = mlx_model(config)
    model.sanitize({})
    expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
    produced = {}
    for name, rs in rules.items():
        for r in rs:
            produced[f"{r.target}.{r.suffix}"] = gg.tensors[name].shape
    assert produced == expected
