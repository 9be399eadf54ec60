"""llama.cpp's greedy continuations of raw prompts on the real gemma3 Q4_K_M file (test data).

Run once, under a Python that has llama-cpp-python (it builds from source in ~7 minutes):

    pip install llama-cpp-python==0.3.36
    python tests/data/gguf/make_gemma3_reference.py PATH/gemma-3-270m-q4_k_m.gguf
    python tests/data/gguf/make_gemma3_reference.py --f32 PATH/gemma-3-270m-q4_k_m.gguf

It writes gemma3_llamacpp_greedy.json beside itself. With --f32 it first has llama.cpp
dequantize the file to F32 (llama_model_quantize, LLAMA_FTYPE_ALL_F32: the very same weight
values, exactly), runs that, and writes gemma3_f32_llamacpp_greedy.json: llama.cpp computing
those weights in float32, without the 8-bit activation quantization its CPU kernels apply to
quantized weights. Each file holds: per prompt, llama.cpp's prompt token ids
(BOS added, as llama.cpp does for this vocabulary), the greedy token ids it generates, their
text and each one's bytes, and at each step the margin between the best and second-best logit (a near-tie is where
two faithful implementations may legitimately part ways).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import llama_cpp
from llama_cpp import Llama, __version__ as llama_cpp_version

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n",
    "1, 2, 3, 4, 5,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "東京は日本の",
    "Translate to French: Good morning, my friend. ->",
]
NEW_TOKENS = 32
N_CTX = 256


def main() -> None:
    f32 = "--f32" in sys.argv[1:]
    path = Path([a for a in sys.argv[1:] if a != "--f32"][0])
    source_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    out_path = Path(__file__).with_name("gemma3_f32_llamacpp_greedy.json" if f32 else "gemma3_llamacpp_greedy.json")
    if f32:
        dst = path.with_name(path.stem + "-f32.gguf")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = llama_cpp.LLAMA_FTYPE_ALL_F32, True, 2
        if llama_cpp.llama_model_quantize(str(path).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"llama.cpp could not dequantize {path}")
        path = dst
    llm = Llama(str(path), n_ctx=N_CTX, n_threads=2, n_batch=N_CTX, logits_all=True, verbose=False, seed=0)
    eos = llm.token_eos()
    cases = []
    for prompt in PROMPTS:
        llm.reset()
        prompt_ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        llm.eval(prompt_ids)
        out, margins = [], []
        for _ in range(NEW_TOKENS):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            top2 = np.sort(logits)[-2:]
            token = int(np.argmax(logits))
            out.append(token)
            margins.append(round(float(top2[1] - top2[0]), 4))
            if token == eos:
                break
            llm.eval([token])
        text = llm.detokenize(out).decode("utf-8", errors="replace")
        pieces = [llm.detokenize([t]).hex() for t in out]  # each token's bytes: a multi-byte character may span two
        cases.append({"prompt": prompt, "prompt_ids": prompt_ids, "greedy_ids": out, "text": text,
                      "pieces_hex": pieces, "top2_margins": margins})
        print(f"{prompt!r} -> {text!r}", flush=True)
    doc = {
        "command": "python tests/data/gguf/make_gemma3_reference.py " + ("--f32 " if f32 else "") + "gemma-3-270m-q4_k_m.gguf",
        "llama_cpp_python": llama_cpp_version,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "gguf": path.name,
        "gguf_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "source_gguf_sha256": source_sha,
        "n_ctx": N_CTX,
        "new_tokens": NEW_TOKENS,
        "cases": cases,
    }
    out_path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print("wrote", out_path)


if __name__ == "__main__":
    main()
