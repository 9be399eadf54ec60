"""ggml tensor types -> MLX arrays: exact where MLX can hold the type, faithful elsewhere.

MLX's affine quantization stores `w = scale * code + bias` per group of 32 (or 64, 128) values
of a row, with `code` packed into uint32 words. Most ggml types are that already, with group 32:

- Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: one block of 32 is one group (Q8_0's signed codes shift by 128).
- Q4_K, Q5_K: a 256-superblock holds 8 sub-blocks of 32, `w = d*sc*q - dmin*m`, i.e. a group of
  32 with scale `d*sc` and bias `-dmin*m`.

They are repacked bit for bit, never through floats: `mx.dequantize` of the result equals the
gguf package's own dequantization exactly. Scales and biases stay float32 because `d*sc` needs
17 significant bits, and float16 scales make MLX-CPU's quantized matmul ~40x slower.

The rest (Q2_K, Q3_K, Q6_K with sub-blocks of 16, IQ4_NL and IQ4_XS with a non-linear codebook)
are dequantized exactly and requantized with `mx.quantize` at `REQUANT_BITS[type]`. At 8 bits,
Q3_K, IQ4_NL and IQ4_XS are still exact: each group's values lie on an integer grid of at most
256 steps of one scale, so they are repacked rather than requantized.

F32/F16/BF16 stay float; 1-D tensors (norms, biases) always come out float. Mode "none"
dequantizes everything to floats tagged with the caller's float dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from mlxserve.services.common.errors import InvalidArgument

from .reader import GGML_TYPES, GGUFFile, TensorInfo

GROUP_SIZE = 32
FLOAT_TYPES = ("F32", "F16", "BF16")
NATIVE_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # what "auto" keeps each as
# ggml type -> MLX affine bits that hold it exactly (group 32).
EXACT_BITS: dict[str, int] = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "Q4_K": 4, "Q5_K": 5}
# ggml type -> bits it becomes (group 32), chosen by greedy agreement with the file's exact values
# (tests/bench/bench_gguf_requant.py on gemma-3-270m copies made by llama.cpp's quantizer; 8 raw
# prompts x 32 tokens, results/gguf-requant-gemma3.json): Q6_K 183/256 at 6 bits, 229 at 8; IQ4_NL
# 164 at 6, 256 at 8; IQ4_XS 222 at 6, 256 at 8; Q3_K 140 at 5, 206 at 6, 256 at 8; Q2_K 14 at 4,
# 49 at 5, 87 at 6, 238 at 8. Nothing narrower than 8 bits kept greedy output faithful, and at 8
# bits Q3_K, IQ4_NL and IQ4_XS are exact (repacked, see _EXACT_AT_8). The price is size: 10 bits a
# weight with the float32 scales and biases, against their 2.6-6.6.
REQUANT_BITS: dict[str, int] = {"Q2_K": 8, "Q3_K": 8, "Q6_K": 8, "IQ4_NL": 8, "IQ4_XS": 8}
SUPPORTED_TYPES: tuple[str, ...] = FLOAT_TYPES + tuple(EXACT_BITS) + tuple(REQUANT_BITS)

MODES = ("auto", "none")
FLOAT_DTYPES = ("float16", "bfloat16", "float32")
# Rows are converted a chunk at a time so that temporaries stay small next to the output.
_CHUNK_ELEMENTS = 1 << 20


@dataclass
class MlxTensor:
    """One converted tensor. Quantized: `weight` holds packed uint32 codes, with `scales` and
    `biases` of shape (*rows, cols // group_size). Float: `weight` holds the values (float32, or
    float16 when both the source and the target are float16; F32/F16 sources may be read-only
    views of the file) and `float_dtype` says what to save them as."""

    weight: np.ndarray
    scales: np.ndarray | None
    biases: np.ndarray | None
    bits: int | None
    group_size: int | None
    float_dtype: str  # "float32" | "float16" | "bfloat16"
    exact: bool  # dequantizing this (in float_dtype when float) equals the GGUF's own dequantization
    source_type: str  # the ggml type name, e.g. "Q4_K"

    @property
    def quantized(self) -> bool:
        return self.bits is not None


# --------------------------------------------------------------------------- packing


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes (< 2**bits, last axis a multiple of 32) into MLX's layout: element j of a row
    sits at bit offset bits*j of the row's little-endian bit stream, read as uint32 words."""
    *lead, n = codes.shape
    if n % 32:
        raise ValueError(f"rows of {n} codes do not fill whole 32-bit words")
    if bits == 8:
        return np.ascontiguousarray(codes, dtype=np.uint8).view(np.uint32)
    # Eight codes take exactly `bits` bytes: build them in a uint64, keep its low `bits` bytes.
    eights = codes.reshape(*lead, n // 8, 8)
    acc = np.zeros(eights.shape[:-1], dtype=np.uint64)
    for k in range(8):
        acc |= eights[..., k].astype(np.uint64) << np.uint64(bits * k)
    packed = acc.astype("<u8").view(np.uint8).reshape(*acc.shape, 8)[..., :bits]
    return np.ascontiguousarray(packed).reshape(*lead, n * bits // 8).view(np.uint32)


# --------------------------------------------------------------------------- block decoders
# Each takes blocks (n, bytes_per_block) uint8 and returns the affine form of their values:
# codes (n_groups, 32) uint8, scales and biases (n_groups,) float32, such that
# scales*codes + biases equals ggml's dequantization exactly in float32 (every product is exact).

Affine = tuple[np.ndarray, np.ndarray, np.ndarray]
# IQ4_NL / IQ4_XS codebook (ggml-common.h kvalues_iq4nl); +127 makes every entry an 8-bit code.
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int16)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[:, at:at + 2]).view("<f2")[:, 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., k) bytes -> (..., 2k): the low nibbles, then the high nibbles (ggml's order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: bit j of a little-endian uint32 is the fifth bit of element j."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _q4_0(b: np.ndarray) -> Affine:
    d = _f16(b, 0)
    return _nibbles(b[:, 2:18]), d, -8 * d


def _q4_1(b: np.ndarray) -> Affine:
    return _nibbles(b[:, 4:20]), _f16(b, 0), _f16(b, 2)


def _q5_0(b: np.ndarray) -> Affine:
    d = _f16(b, 0)
    return _nibbles(b[:, 6:22]) | (_high_bits(b[:, 2:6]) << 4), d, -16 * d


def _q5_1(b: np.ndarray) -> Affine:
    return _nibbles(b[:, 8:24]) | (_high_bits(b[:, 4:8]) << 4), _f16(b, 0), _f16(b, 2)


def _q8_0(b: np.ndarray) -> Affine:
    d = _f16(b, 0)
    return b[:, 2:34] ^ np.uint8(0x80), d, -128 * d  # int8 q -> code q + 128


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins (ggml's get_scale_min_k4)."""
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=-1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _k_affine(b: np.ndarray, codes: np.ndarray) -> Affine:
    d, dmin = _f16(b, 0)[:, None], _f16(b, 2)[:, None]
    sc, mn = _k_scales(b[:, 4:16])
    return codes.reshape(-1, 32), (d * sc).reshape(-1), (-(dmin * mn)).reshape(-1)


def _q4_k(b: np.ndarray) -> Affine:
    # 128 bytes = 4 chunks of 32; a chunk's low nibbles are sub-block 2c, its high ones 2c+1.
    return _k_affine(b, _nibbles(b[:, 16:144].reshape(-1, 4, 32)))


def _q5_k(b: np.ndarray) -> Affine:
    codes = _nibbles(b[:, 48:176].reshape(-1, 4, 32)).reshape(-1, 8, 32)
    high = (b[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # bit s of qh[l]: sub-block s
    return _k_affine(b, codes | (high << 4))


def _iq4_nl(b: np.ndarray) -> Affine:
    d = _f16(b, 0)
    return (IQ4_VALUES[_nibbles(b[:, 2:18])] + 127).astype(np.uint8), d, -127 * d


def _iq4_xs(b: np.ndarray) -> Affine:
    d = _f16(b, 0)[:, None]
    scales_h = b[:, 2:4].copy().view("<u2")  # (n, 1): 2 high bits per sub-block
    scales_l = _nibbles(b[:, 4:8]).reshape(-1, 2, 4).transpose(0, 2, 1).reshape(-1, 8)  # low nibble first
    high = (scales_h >> (2 * np.arange(8, dtype=np.uint16))) & 3
    dl = d * ((scales_l | (high << 4)).astype(np.float32) - 32)
    codes = IQ4_VALUES[_nibbles(b[:, 8:136].reshape(-1, 8, 16))] + 127
    return codes.astype(np.uint8).reshape(-1, 32), dl.reshape(-1), (-127 * dl).reshape(-1)


def _q3_k(b: np.ndarray) -> Affine:
    """Exact at 8 bits: a group of 32 is two sub-blocks of 16 with signed 6-bit scales and 3-bit
    values in [-4, 3]; their integer products span at most 252 steps of `d`."""
    d = _f16(b, 108)
    low2 = (b[:, 32:96].reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    hbit = (b[:, None, 0:32] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # bit 4h+j of hmask[l]
    q = low2.reshape(-1, 256).astype(np.int16) - 4 * (1 - hbit.reshape(-1, 256).astype(np.int16))
    s = b[:, 96:108]
    low4 = np.concatenate([s[:, :8] & 0x0F, s[:, :8] >> 4], axis=-1)
    high2 = ((s[:, None, 8:12] >> (2 * np.arange(4, dtype=np.uint8))[None, :, None]) & 3).reshape(-1, 16)
    sc = (low4 | (high2 << 4)).astype(np.int16) - 32
    ints = (sc[:, :, None] * q.reshape(-1, 16, 16)).reshape(-1, 32)
    lo = ints.min(axis=-1)
    scales = np.repeat(d, 8)
    return (ints - lo[:, None]).astype(np.uint8), scales, scales * lo.astype(np.float32)


_EXACT_DECODERS: dict[str, Callable[[np.ndarray], Affine]] = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0, "Q4_K": _q4_k, "Q5_K": _q5_k,
}
_EXACT_AT_8: dict[str, Callable[[np.ndarray], Affine]] = {"Q3_K": _q3_k, "IQ4_NL": _iq4_nl, "IQ4_XS": _iq4_xs}


# --------------------------------------------------------------------------- conversion


def _unsupported(info: TensorInfo, others: str = "") -> InvalidArgument:
    return InvalidArgument(
        f"tensor {info.name} has ggml type {info.type_name}{others}, which cannot be imported "
        f"(supported: {', '.join(SUPPORTED_TYPES)})")


def check_types(gg: GGUFFile) -> None:
    """Refuse a file with any tensor of an unsupported type, before anything is converted."""
    bad = [info for info in gg.tensors.values() if info.type_name not in SUPPORTED_TYPES]
    if bad:
        kinds = ", ".join(sorted({info.type_name for info in bad}))
        others = f" (and {len(bad) - 1} more tensors of types {kinds})" if len(bad) > 1 else ""
        raise InvalidArgument(f"{gg.path.name}: {_unsupported(bad[0], others).message}")


def _info(gg: GGUFFile, name: str) -> TensorInfo:
    info = gg.tensors[name]
    if info.type_name not in SUPPORTED_TYPES:
        raise _unsupported(info)
    return info


def _row_chunks(info: TensorInfo, raw: np.ndarray) -> Iterable[tuple[slice, np.ndarray]]:
    """(row slice, bytes of those rows) over the tensor flattened to 2-D."""
    rows = raw.reshape(-1, raw.shape[-1])
    step = max(1, _CHUNK_ELEMENTS // info.shape[-1])
    for start in range(0, rows.shape[0], step):
        yield slice(start, start + step), np.asarray(rows[start:start + step])


def _bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    return (u16.astype(np.uint32) << 16).view(np.float32)


def dequantize(gg: GGUFFile, name: str) -> np.ndarray:
    """The tensor as float32 of its shape, exactly as ggml dequantizes it."""
    info = _info(gg, name)
    if info.type_name in ("F32", "F16"):
        return np.asarray(gg.array(name), dtype=np.float32)  # F32: a read-only view of the file
    if info.type_name == "BF16":
        return _bf16_to_f32(gg.array(name))
    qtype = GGMLQuantizationType[info.type_name]
    out = np.empty((int(np.prod(info.shape[:-1], dtype=np.int64)), info.shape[-1]), dtype=np.float32)
    for rows, chunk in _row_chunks(info, gg.raw(name)):
        out[rows] = gguf_dequantize(chunk, qtype)
    return out.reshape(info.shape)


def _float(gg: GGUFFile, info: TensorInfo, float_dtype: str) -> MlxTensor:
    """Float output in `float_dtype`; `exact` says whether that dtype holds every value."""
    if info.type_name == "F16" and float_dtype == "float16":
        return MlxTensor(gg.array(info.name), None, None, None, None, "float16", True, "F16")
    values = dequantize(gg, info.name)
    return MlxTensor(values, None, None, None, None, float_dtype, _holds(values, float_dtype), info.type_name)


def _holds(values: np.ndarray, float_dtype: str) -> bool:
    """Whether saving float32 `values` as `float_dtype` keeps every one of them."""
    if float_dtype == "float32":
        return True
    flat = values.reshape(-1)
    for start in range(0, flat.size, _CHUNK_ELEMENTS):
        part = flat[start:start + _CHUNK_ELEMENTS]
        if float_dtype == "float16":
            with np.errstate(over="ignore"):
                same = np.array_equal(part, part.astype(np.float16).astype(np.float32), equal_nan=True)
        else:  # bfloat16 holds a float32 exactly when its low 16 bits are zero
            same = not np.any(part.view(np.uint32) & np.uint32(0xFFFF))
        if not same:
            return False
    return True


def _affine(gg: GGUFFile, info: TensorInfo, bits: int, decode: Callable[[np.ndarray], Affine] | None) -> MlxTensor:
    """Repack with `decode` (exact), or dequantize and requantize with mx.quantize when it is None."""
    cols = info.shape[-1]
    n_rows = int(np.prod(info.shape[:-1], dtype=np.int64))
    weight = np.empty((n_rows, cols * bits // 32), dtype=np.uint32)
    scales = np.empty((n_rows, cols // GROUP_SIZE), dtype=np.float32)
    biases = np.empty_like(scales)
    _, _, block_bytes = GGML_TYPES[info.ggml_type]
    for rows, chunk in _row_chunks(info, gg.raw(info.name)):
        if decode is not None:
            codes, s, b = decode(chunk.reshape(-1, block_bytes))
            weight[rows] = pack_codes(codes.reshape(-1, cols), bits)
        else:
            values = mx.array(gguf_dequantize(chunk, GGMLQuantizationType[info.type_name]))
            w, s, b = mx.quantize(values, group_size=GROUP_SIZE, bits=bits)
            weight[rows] = np.array(w)
        scales[rows] = np.asarray(s).reshape(-1, cols // GROUP_SIZE)
        biases[rows] = np.asarray(b).reshape(-1, cols // GROUP_SIZE)
    lead = info.shape[:-1]
    return MlxTensor(weight.reshape(*lead, -1), scales.reshape(*lead, -1), biases.reshape(*lead, -1), bits,
                     GROUP_SIZE, "float32", decode is not None, info.type_name)


def convert_tensor(gg: GGUFFile, name: str, mode: str = "auto", float_dtype: str = "float16") -> MlxTensor:
    """Convert one tensor. Mode "auto": floats stay as they are (F32, F16, BF16); Q4_0, Q4_1,
    Q5_0, Q5_1, Q8_0, Q4_K, Q5_K become MLX affine group-32 exactly; the other supported types
    are requantized at REQUANT_BITS; 1-D tensors come out float. Mode "none": every tensor is
    dequantized exactly and tagged `float_dtype` ("float16", "bfloat16" or "float32"). Quantization groups
    run along the last axis, so 3-D expert tensors work too."""
    if mode not in MODES:
        raise InvalidArgument(f"quantization mode {mode!r} is not one of {', '.join(MODES)}")
    if float_dtype not in FLOAT_DTYPES:
        raise InvalidArgument(f"float dtype {float_dtype!r} is not one of {', '.join(FLOAT_DTYPES)}")
    info = _info(gg, name)
    kind = info.type_name
    if mode == "none":
        return _float(gg, info, float_dtype)
    if kind in FLOAT_TYPES:
        return _float(gg, info, NATIVE_DTYPES[kind])
    if len(info.shape) < 2:
        return _float(gg, info, "float32")  # norms and biases: small, and kept exact
    if kind in EXACT_BITS:
        return _affine(gg, info, EXACT_BITS[kind], _EXACT_DECODERS[kind])
    bits = REQUANT_BITS[kind]
    return _affine(gg, info, bits, _EXACT_AT_8.get(kind) if bits == 8 else None)


# --------------------------------------------------------------------------- reporting


def describe(results: Mapping[str, MlxTensor] | Iterable[MlxTensor]) -> str:
    """What each source type became, for `show`, e.g. "Q4_K, Q5_0, Q8_0 kept exactly as MLX
    affine 4/5/8-bit (group 32); Q6_K requantized to 8-bit (group 32); F32 kept"."""
    tensors = list(results.values()) if isinstance(results, Mapping) else list(results)
    outcomes: dict[tuple[str, str], tuple[int | None, int]] = {}  # (type, how) -> (bits, count)
    for t in tensors:
        if t.quantized:
            how = "exact" if t.exact else "requantized"
        elif NATIVE_DTYPES.get(t.source_type) == t.float_dtype:
            how = "kept"
        else:
            how = ("stored as " if t.source_type in FLOAT_TYPES else "dequantized to ") + t.float_dtype
        bits, count = outcomes.get((t.source_type, how), (t.bits, 0))
        outcomes[(t.source_type, how)] = (bits, count + 1)
    ways: dict[str, int] = {}  # a type with several outcomes says how many tensors took each
    for kind, _ in outcomes:
        ways[kind] = ways.get(kind, 0) + 1

    def label(kind: str, how: str) -> str:
        count = outcomes[(kind, how)][1]
        return f"{kind} ({count} tensor{'s' * (count > 1)})" if ways[kind] > 1 else kind

    order = {k: i for i, k in enumerate(SUPPORTED_TYPES)}
    clauses = []
    for how, phrase in (("exact", "kept exactly as MLX affine {}-bit (group 32)"),
                        ("requantized", "requantized to {}-bit (group 32)")):
        keys = sorted((k for k in outcomes if k[1] == how), key=lambda k: (outcomes[k][0], order.get(k[0], 99)))
        if keys:
            clauses.append(f"{', '.join(label(*k) for k in keys)} "
                           + phrase.format("/".join(str(outcomes[k][0]) for k in keys)))
    rest = sorted((k for k in outcomes if k[1] not in ("exact", "requantized")), key=lambda k: (k[1], order.get(k[0], 99)))
    for how in dict.fromkeys(k[1] for k in rest):
        clauses.append(f"{', '.join(label(*k) for k in rest if k[1] == how)} {how}")
    return "; ".join(clauses)
