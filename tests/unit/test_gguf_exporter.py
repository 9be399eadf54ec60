"""The test-side GGUF exporter writes what llama.cpp reads: checked against llama.cpp's own logits.

tests/data/gguf/llamacpp_logits*.json hold llama.cpp's logits (llama-cpp-python 0.3.36, CPU) on
the exporter's tiny GGUFs, and each file's sha256: re-exporting must give the same bytes (so the
exporter cannot drift from what llama.cpp was shown), and the expected mlx-lm model must compute
llama.cpp's logits. Measured on x86_64 (max |diff| / max |logit|): F32 <= 5e-5 (the Gemmas; the rest
<= 3e-6, the Gemmas' residue being llama.cpp's fp16-table GELU), F16 <= 6e-4 (llama.cpp's F16
matmul rounds activations to fp16); quantized types 1-4e-2, because llama.cpp's CPU kernels also
quantize the activations (Q8_0/Q8_K), so those only show that every block layout decodes as
ggml's C code decodes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("mlx_lm")

from tests.fixtures import gguf_export as ge

DATA = Path(__file__).resolve().parents[1] / "data" / "gguf"
FLOAT_REF = json.loads((DATA / "llamacpp_logits.json").read_text())
QUANT_REF = json.loads((DATA / "llamacpp_logits_quant.json").read_text())
# Tolerances, as a fraction of the largest |logit|: a few times what was measured.
FLOAT_RTOL = {"F32": 2e-4, "F16": 2e-3}
QUANT_RMS_RTOL = 0.05  # measured <= 0.02; a misplaced nibble or scale bit gives ~1


def _case_id(case: dict) -> str:
    return f"{case['arch']}-{case['quant']}"


def _export(tmp_path: Path, case: dict) -> ge.ExportedModel:
    exported = ge.export_gguf(case["arch"], tmp_path / ge.case_file_name(case["arch"], case["quant"]), case["quant"])
    assert exported.sha256 == case["gguf_sha256"], (
        f"the exporter no longer writes the {_case_id(case)} file llama.cpp was shown; if the change is "
        "intended, rerun tests/data/gguf/make_llamacpp_logits.py")
    return exported


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    top = logits.max(-1, keepdims=True)
    return top[:, 0] + np.log(np.exp(logits - top).sum(-1))


def test_reference_data_covers_every_architecture_and_tensor_type():
    float_cases = {(c["arch"], c["quant"]) for c in FLOAT_REF["cases"]}
    quant_cases = {(c["arch"], c["quant"]) for c in QUANT_REF["cases"]}
    assert float_cases == set(ge.REFERENCE_CASES)
    assert quant_cases == set(ge.QUANT_REFERENCE_CASES)
    assert {a for a, _ in float_cases} == set(ge.ARCHS)
    assert {q for _, q in float_cases | quant_cases} == set(ge.QUANTS)
    assert FLOAT_REF["tokens"] == QUANT_REF["tokens"] == ge.REFERENCE_TOKENS


@pytest.mark.parametrize("case", FLOAT_REF["cases"], ids=_case_id)
def test_float_exports_compute_llama_cpp_logits(tmp_path, case):
    logits = _export(tmp_path, case).logits(FLOAT_REF["tokens"]).astype(np.float64)
    step = FLOAT_REF["column_step"]
    tol = FLOAT_RTOL[case["quant"]] * np.abs(logits).max()
    np.testing.assert_allclose(logits[:, ::step], case["columns"], rtol=0, atol=tol)
    np.testing.assert_allclose(logits[-1], case["last"], rtol=0, atol=tol)
    np.testing.assert_allclose(_logsumexp(logits), case["logsumexp"], rtol=0, atol=tol)
    # Greedy tokens agree wherever the top two are further apart than the tolerance allows.
    top2 = np.sort(logits, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tol
    assert (logits.argmax(-1)[clear] == np.array(case["argmax"])[clear]).all()


@pytest.mark.parametrize("case", QUANT_REF["cases"], ids=_case_id)
def test_quantized_block_layouts_decode_as_llama_cpp_decodes_them(tmp_path, case):
    logits = _export(tmp_path, case).logits(QUANT_REF["tokens"]).astype(np.float64)
    expected, reference = logits[:, ::QUANT_REF["column_step"]], np.array(case["columns"])
    rel_rms = np.sqrt(np.mean((expected - reference) ** 2, -1) / np.mean(reference ** 2, -1))
    # Per position; allowed to miss at a position or two where llama.cpp's quantized activations tip
    # a near-tied MoE router (qwen3moe's last position: the 2nd and 3rd experts 0.002 apart).
    assert np.mean(rel_rms < QUANT_RMS_RTOL) >= 0.9, np.round(rel_rms, 3)


@pytest.mark.parametrize("type_name", ge.TENSOR_TYPES)
def test_every_tensor_type_round_trips_through_gguf_dequantize(type_name):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 512), dtype=np.float32) * np.float32(0.05)
    x[0, :256] = 0  # an all-zero block must stay zero, not NaN
    encoded = ge.quantize(x, type_name)
    assert np.array_equal(encoded, ge.quantize(x, type_name))  # deterministic
    if encoded.dtype == np.uint8:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
        assert encoded.shape == (6, 512 // block * size)
    decoded = ge.dequantize(encoded, type_name).reshape(x.shape)
    assert np.all(decoded[0, :256] == 0)
    # Error per 256-value block, relative to its largest magnitude: about half a quantization step
    # (a whole one where a symmetric type clips the side opposite its largest magnitude).
    bound = {"F32": 0, "F16": 1e-3, "BF16": 4e-3, "Q8_0": 0.01, "Q6_K": 0.03, "Q5_0": 0.07, "Q5_1": 0.05,
             "Q5_K": 0.05, "Q4_0": 0.13, "Q4_1": 0.1, "Q4_K": 0.1, "IQ4_NL": 0.1, "IQ4_XS": 0.1, "Q3_K": 0.3,
             "Q2_K": 0.4}[type_name]
    err = np.abs(decoded - x).reshape(-1, 256).max(-1)
    amax = np.abs(x).reshape(-1, 256).max(-1)
    assert np.all(err <= bound * amax + 1e-12), (err / np.maximum(amax, 1e-12)).max()


def test_q4_k_m_mix_uses_llama_quantize_types_with_fallbacks(tmp_path):
    gemma = ge.export_gguf("gemma3", tmp_path / "gemma3.gguf", "Q4_K_M").tensor_types
    # Like the real gemma-3-270m Q4_K_M file: the tied embedding takes the output's Q6_K, and rows
    # K-quant blocks do not divide (ffn_down's 384) fall back to Q8_0 / Q5_0.
    assert gemma["token_embd.weight"] == "Q6_K"
    assert {gemma[f"blk.{i}.ffn_down.weight"] for i in range(6)} == {"Q8_0", "Q5_0"}
    assert {gemma[f"blk.{i}.attn_v.weight"] for i in range(6)} == {"Q6_K", "Q4_K"}
    assert gemma["blk.0.attn_q.weight"] == "Q4_K"
    assert gemma["blk.0.attn_q_norm.weight"] == gemma["output_norm.weight"] == "F32"
    moe = ge.export_gguf("qwen3moe", tmp_path / "moe.gguf", "Q4_K_M").tensor_types
    assert moe["blk.0.ffn_gate_inp.weight"] == "F32"  # the router is never quantized
    assert moe["output.weight"] == "Q6_K" and moe["blk.0.ffn_gate_exps.weight"] == "Q4_K"


def test_files_are_laid_out_as_llama_cpp_converter_writes_them(tmp_path):
    def read(arch: str) -> gguf.GGUFReader:
        return gguf.GGUFReader(ge.export_gguf(arch, tmp_path / f"{arch}.gguf", "F16").path)

    llama3 = read("llama3")
    names = {t.name: t for t in llama3.tensors}
    assert "output.weight" not in names  # tied
    assert names["rope_freqs.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert names["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert names["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    phi3 = {t.name for t in read("phi3").tensors}
    assert "blk.0.attn_qkv.weight" in phi3 and "blk.0.ffn_up.weight" in phi3 and "blk.0.ffn_gate.weight" not in phi3
    qwen2 = {t.name: t for t in read("qwen2").tensors}
    assert qwen2["blk.0.attn_q.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    gemma2 = read("gemma2")
    norm = next(t for t in gemma2.tensors if t.name == "output_norm.weight")
    assert abs(float(np.mean(norm.data)) - 1) < 0.1  # stored as 1 + w
    assert gemma2.fields["gemma2.attn_logit_softcapping"].contents() == 50.0
