"""ggml tensor types -> MLX arrays: exact repacking where MLX holds the type, bounded error elsewhere.

Tiny GGUF files are written with `gguf.GGUFWriter` (pre-quantized bytes via raw_dtype) and read
back with our reader, so every test runs the importer's real path. The reference is always the
gguf package's own numpy dequantizer.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.store.importers.gguf import quants
from mlxserve.services.store.importers.gguf.reader import (
    GGUFFile,
    TensorInfo,
    read_gguf,
)

EXACT = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K"]
REQUANTIZED = ["Q2_K", "Q3_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
# Where each block keeps its float16 super-scales (d, and dmin where there is one).
F16_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
              "IQ4_NL": (0,), "IQ4_XS": (0,)}


def random_quantized(kind: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Valid bytes of a `kind` tensor: gguf's own quantizer where it has one, else random bytes
    with finite, weight-sized float16 scales."""
    rng = np.random.default_rng(seed)
    qtype = T[kind]
    if kind in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        values = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.01, 1, (*shape[:-1], 1))
        return gguf.quants.quantize(values.astype(np.float32), qtype)
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(shape)) // block
    raw = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for at in F16_FIELDS[kind]:
        raw[:, at:at + 2] = rng.uniform(1e-4, 2e-2, (n_blocks, 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(*shape[:-1], shape[-1] // block * block_bytes)


def write_gguf(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> GGUFFile:
    """Write {name: (ggml type, data)} (bytes for quantized types) and read the file back."""
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (kind, data) in tensors.items():
        w.add_tensor(name, data, raw_dtype=T[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return read_gguf(path)


def mlx_values(t: quants.MlxTensor) -> np.ndarray:
    if not t.quantized:
        return np.asarray(t.weight, dtype=np.float32)
    return np.array(mx.dequantize(mx.array(t.weight), mx.array(t.scales), mx.array(t.biases),
                                  group_size=t.group_size, bits=t.bits))


def relative_rms(values: np.ndarray, exact: np.ndarray) -> float:
    return float(np.sqrt(np.mean((values - exact) ** 2) / np.mean(exact**2)))


def reference(data: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    return gguf_dequantize(data, T[kind]).reshape(shape)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8])
def test_packer_matches_mlx_layout_for_every_bit_width(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, (3, 128), dtype=np.uint8)
    packed = quants.pack_codes(codes, bits)
    assert packed.dtype == np.uint32 and packed.shape == (3, 128 * bits // 32)
    # With scale 1 and bias 0, MLX's dequantization reads the codes back.
    ones, zeros = mx.ones((3, 4)), mx.zeros((3, 4))
    assert np.array_equal(np.array(mx.dequantize(mx.array(packed), ones, zeros, group_size=32, bits=bits)), codes)
    # And mx.quantize's own output packs the same way.
    w, s, b = mx.quantize(mx.array(codes.astype(np.float32)), group_size=32, bits=bits)
    mlx_codes = np.rint((np.array(mx.dequantize(w, s, b, group_size=32, bits=bits)).reshape(3, 4, 32)
                         - np.array(b)[..., None]) / np.array(s)[..., None]).astype(np.uint8).reshape(3, 128)
    assert np.array_equal(quants.pack_codes(mlx_codes, bits), np.array(w))


@pytest.mark.parametrize("kind", EXACT)
def test_exact_types_dequantize_bit_for_bit(tmp_path: Path, kind: str) -> None:
    shape = (8, 512)
    data = random_quantized(kind, shape)
    gg = write_gguf(tmp_path / "m.gguf", {"w": (kind, data)})
    t = quants.convert_tensor(gg, "w")
    assert (t.bits, t.group_size, t.exact, t.source_type) == (quants.EXACT_BITS[kind], 32, True, kind)
    assert t.weight.dtype == np.uint32 and t.scales.dtype == np.float32 and t.biases.dtype == np.float32
    assert t.scales.shape == t.biases.shape == (8, 16)
    assert np.array_equal(mlx_values(t), reference(data, kind, shape))
    assert np.array_equal(quants.dequantize(gg, "w"), reference(data, kind, shape))


@pytest.mark.parametrize("kind", REQUANTIZED)
def test_requantized_types_stay_within_their_bit_width_error(tmp_path: Path, kind: str) -> None:
    shape = (16, 512)
    data = random_quantized(kind, shape)
    gg = write_gguf(tmp_path / "m.gguf", {"w": (kind, data)})
    t = quants.convert_tensor(gg, "w")
    assert (t.bits, t.group_size, t.source_type) == (quants.REQUANT_BITS[kind], 32, kind)
    # Uniform codes over the group's range give about 1/(2**bits) relative RMS error; allow 2x.
    assert relative_rms(mlx_values(t), reference(data, kind, shape)) < 2.0 / 2**t.bits


@pytest.mark.parametrize("kind", ["Q3_K", "IQ4_NL", "IQ4_XS"])
def test_grid_types_are_exact_at_8_bits(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(quants.REQUANT_BITS, kind, 8)
    shape = (4, 512)
    data = random_quantized(kind, shape, seed=3)
    gg = write_gguf(tmp_path / "m.gguf", {"w": (kind, data)})
    t = quants.convert_tensor(gg, "w")
    assert (t.bits, t.exact) == (8, True)
    assert np.array_equal(mlx_values(t), reference(data, kind, shape))


def test_group_16_types_at_8_bits_are_requantized_not_claimed_exact(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(quants.REQUANT_BITS, "Q6_K", 8)
    gg = write_gguf(tmp_path / "m.gguf", {"w": ("Q6_K", random_quantized("Q6_K", (4, 256)))})
    t = quants.convert_tensor(gg, "w")
    assert (t.bits, t.exact) == (8, False)


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K", "Q8_0"])
def test_expert_tensors_quantize_along_the_last_axis(tmp_path: Path, kind: str) -> None:
    shape = (3, 8, 256)  # (n_expert, rows, cols)
    data = random_quantized(kind, shape)
    gg = write_gguf(tmp_path / "m.gguf", {"experts": (kind, data)})
    assert gg.tensors["experts"].shape == shape
    t = quants.convert_tensor(gg, "experts")
    assert t.weight.shape == (3, 8, 256 * t.bits // 32) and t.scales.shape == (3, 8, 8)
    per_expert = [mlx_values(quants.MlxTensor(t.weight[e], t.scales[e], t.biases[e], t.bits, 32, "float32",
                                              t.exact, kind)) for e in range(3)]
    exact = reference(data, kind, shape)
    if t.exact:
        assert np.array_equal(np.stack(per_expert), exact)
    else:
        assert relative_rms(np.stack(per_expert), exact) < 2.0 / 2**t.bits


def test_float_types_keep_their_dtype_and_bf16_widens_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((4, 64)).astype(np.float32)
    f16 = rng.standard_normal((4, 64)).astype(np.float16)
    bf16 = (rng.standard_normal((4, 64)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    gg = write_gguf(tmp_path / "m.gguf", {"a": ("F32", f32), "b": ("F16", f16), "c": ("BF16", bf16)})
    a, b, c = (quants.convert_tensor(gg, n) for n in "abc")
    assert (a.float_dtype, b.float_dtype, c.float_dtype) == ("float32", "float16", "bfloat16")
    assert all(t.exact and not t.quantized for t in (a, b, c))
    assert np.array_equal(a.weight, f32) and np.array_equal(b.weight, f16)
    assert c.weight.dtype == np.float32
    assert np.array_equal(c.weight.view(np.uint32), bf16.astype(np.uint32) << 16)
    # MLX agrees on what those bfloat16 bits mean.
    assert np.array_equal(np.array(mx.array(c.weight).astype(mx.bfloat16).astype(mx.float32)), c.weight)


def test_one_dimensional_tensors_always_come_out_float(tmp_path: Path) -> None:
    norm = random_quantized("Q8_0", (256,))
    gg = write_gguf(tmp_path / "m.gguf", {"norm": ("Q8_0", norm)})
    t = quants.convert_tensor(gg, "norm")
    assert not t.quantized and t.float_dtype == "float32" and t.exact
    assert np.array_equal(t.weight, reference(norm, "Q8_0", (256,)))


@pytest.mark.parametrize("float_dtype", ["float16", "bfloat16"])
def test_mode_none_dequantizes_everything_exactly(tmp_path: Path, float_dtype: str) -> None:
    q4k = random_quantized("Q4_K", (4, 256))
    f32 = np.linspace(-1, 1, 4 * 64, dtype=np.float32).reshape(4, 64)
    gg = write_gguf(tmp_path / "m.gguf", {"q": ("Q4_K", q4k), "f": ("F32", f32)})
    q = quants.convert_tensor(gg, "q", mode="none", float_dtype=float_dtype)
    f = quants.convert_tensor(gg, "f", mode="none", float_dtype=float_dtype)
    assert not q.quantized and not f.quantized
    assert q.float_dtype == f.float_dtype == float_dtype
    assert np.array_equal(q.weight, reference(q4k, "Q4_K", (4, 256)))
    assert not f.exact  # linspace values need more than 16 bits: saving them in 16 loses some
    assert "dequantized to " + float_dtype in quants.describe([q, f])


def test_unsupported_types_are_refused_naming_type_and_tensor(tmp_path: Path) -> None:
    raw = np.random.default_rng(0).integers(0, 256, (2, 66), dtype=np.uint8)  # one IQ2_XXS block per row
    gg = write_gguf(tmp_path / "m.gguf", {"ok": ("F32", np.zeros((2, 32), np.float32)),
                                          "blk.0.ffn_up.weight": ("IQ2_XXS", raw)})
    with pytest.raises(InvalidArgument, match=r"blk\.0\.ffn_up\.weight.*IQ2_XXS.*supported: .*Q4_K"):
        quants.check_types(gg)
    with pytest.raises(InvalidArgument, match="IQ2_XXS"):
        quants.convert_tensor(gg, "blk.0.ffn_up.weight")
    assert quants.convert_tensor(gg, "ok").exact


def test_unknown_type_ids_are_refused(tmp_path: Path) -> None:
    gg = GGUFFile(tmp_path / "x.gguf", 3, tensors={"w": TensorInfo("w", (4, 32), 99, 0, 0)})
    with pytest.raises(InvalidArgument, match="type 99"):
        quants.check_types(gg)


def test_bad_mode_is_refused(tmp_path: Path) -> None:
    gg = write_gguf(tmp_path / "m.gguf", {"f": ("F32", np.zeros((2, 32), np.float32))})
    with pytest.raises(InvalidArgument, match="q4"):
        quants.convert_tensor(gg, "f", mode="q4")


def test_describe_says_what_each_source_type_became(tmp_path: Path) -> None:
    tensors = {f"w{kind}": (kind, random_quantized(kind, (2, 256))) for kind in ("Q4_K", "Q5_0", "Q8_0", "Q6_K")}
    tensors["norm"] = ("F32", np.ones(256, np.float32))
    gg = write_gguf(tmp_path / "m.gguf", tensors)
    results = {name: quants.convert_tensor(gg, name) for name in gg.tensors}
    assert quants.describe(results) == ("Q4_K, Q5_0, Q8_0 kept exactly as MLX affine 4/5/8-bit (group 32); "
                                        "Q6_K requantized to 8-bit (group 32); F32 kept")
