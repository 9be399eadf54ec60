"""Copies of the Gemma 3 270M file in other ggml types, made by llama.cpp's own quantizer, for
measuring what the importer does with each type (tests/bench/bench_gguf_requant.py).

Run under a Python with llama-cpp-python (pip install llama-cpp-python==0.3.36):

    python tests/bench/make_gemma3_quant_copies.py gemma-3-270m-q4_k_m.gguf OUT_DIR

llama.cpp first dequantizes the file to F32 (exactly), then quantizes that to Q6_K, IQ4_NL and
IQ4_XS (its standard mixes), and to Q2_K and Q3_K with --pure (its Q2_K/Q3_K_M mixes hold no
tensor of those types on this model: only rows that are whole 256-blocks can be K-quants here).
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import llama_cpp

MIXES = {"q6_k": ("MOSTLY_Q6_K", False), "iq4_nl": ("MOSTLY_IQ4_NL", False), "iq4_xs": ("MOSTLY_IQ4_XS", False),
         "q2_k-pure": ("MOSTLY_Q2_K", True), "q3_k_m-pure": ("MOSTLY_Q3_K_M", True)}


def quantize(src: Path, dst: Path, ftype: int, pure: bool = False) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread, params.ftype, params.allow_requantize, params.pure = 2, ftype, True, pure
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not write {dst}")
    print("wrote", dst, flush=True)


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    f32 = out / "gemma-3-270m-f32.gguf"
    if not f32.exists():
        quantize(src, f32, llama_cpp.LLAMA_FTYPE_ALL_F32)
    for name, (ftype, pure) in MIXES.items():
        quantize(f32, out / f"gemma-3-270m-{name}.gguf", getattr(llama_cpp, "LLAMA_FTYPE_" + ftype), pure)


if __name__ == "__main__":
    main()
