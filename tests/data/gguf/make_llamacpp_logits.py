"""llama.cpp's logits on the test exporter's tiny GGUFs (test data for test_gguf_exporter.py).

The exporter (tests/fixtures/gguf_export.py) and the importer are written separately so they
cannot share one mistake; this checks the exporter once against llama.cpp itself. Run from the
repository root under a Python that has llama-cpp-python:

    /work/llamacpp-venv/bin/python tests/data/gguf/make_llamacpp_logits.py

It exports every reference case with the project's own venv (`--export-python`, default
.venv/bin/python: the exporter needs mlx-lm and tokenizers), evaluates the fixed
REFERENCE_TOKENS with llama.cpp on the CPU (float32 KV cache, no flash attention, one batch) and
writes beside itself:

- llamacpp_logits.json: every architecture as F32, and F16 cases (float weights);
- llamacpp_logits_quant.json: each quantized tensor type (and the Q4_K_M mix), where llama.cpp's
  CPU kernels also quantize the activations, so they agree only loosely, but a wrong block
  layout would not agree at all.

Per case: the GGUF's sha256 (the test re-exports and must get the same bytes), and llama.cpp's
logits rounded to 4 decimals: at every position the argmax and every 16th column; for the float
cases also the log-sum-exp over the whole vocabulary at every position, and all of it at the last.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from llama_cpp import Llama
from llama_cpp import __version__ as llama_cpp_version

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
COLUMN_STEP = 16
N_CTX = 64
GGML_TYPE_F32 = 0

_EXPORT = """
import json, sys
from tests.fixtures import gguf_export as ge
cases = ge.export_reference_cases(sys.argv[1])
quant = {f"{a}/{q}" for a, q in ge.QUANT_REFERENCE_CASES}
print(json.dumps({"tokens": ge.REFERENCE_TOKENS, "cases": cases, "quant": sorted(quant)}))
"""


def _export(python: str, out_dir: Path) -> dict:
    done = subprocess.run([python, "-c", _EXPORT, str(out_dir)], cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _logits(path: str, tokens: list[int]) -> np.ndarray:
    llm = Llama(path, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=2, logits_all=True, seed=0,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False, verbose=False)
    llm.eval(tokens)
    out = np.array(llm.scores[:len(tokens)], dtype=np.float64)
    llm.close()
    return out


def _record(case: dict, logits: np.ndarray, *, full: bool) -> dict:
    def r(a: np.ndarray) -> list:
        return np.round(a, 4).tolist()

    out = {"arch": case["arch"], "quant": case["quant"], "gguf_sha256": case["sha256"],
           "argmax": logits.argmax(-1).tolist(), "columns": r(logits[:, ::COLUMN_STEP])}
    if full:  # the whole vocabulary: its log-sum-exp at every position, all of it at the last
        top = logits.max(-1, keepdims=True)
        out |= {"logsumexp": r(top[:, 0] + np.log(np.exp(logits - top).sum(-1))), "last": r(logits[-1])}
    return out


def _write(path: Path, header: dict, cases: list[dict]) -> None:
    # One key, and one case, per line: diffable without a line per number.
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in header.items()]
    body = ",\n".join("  " + json.dumps(c, separators=(",", ":")) for c in cases)
    path.write_text("{\n" + "\n".join(lines) + f'\n "cases": [\n{body}\n ]\n}}\n')


def main() -> None:
    python = sys.argv[sys.argv.index("--export-python") + 1] if "--export-python" in sys.argv else ".venv/bin/python"
    with tempfile.TemporaryDirectory() as tmp:
        exported = _export(python, Path(tmp))
        tokens = exported["tokens"]
        float_cases, quant_cases = [], []
        for case in exported["cases"]:
            quantized = f"{case['arch']}/{case['quant']}" in exported["quant"]
            record = _record(case, _logits(case["path"], tokens), full=not quantized)
            (quant_cases if quantized else float_cases).append(record)
            print(f"{case['arch']:>9} {case['quant']:<7} argmax {record['argmax'][-3:]}", file=sys.stderr)
    header = {
        "command": "/work/llamacpp-venv/bin/python tests/data/gguf/make_llamacpp_logits.py",
        "llama_cpp_python": llama_cpp_version, "python": platform.python_version(), "machine": platform.machine(),
        "settings": f"CPU, n_ctx={N_CTX}, one batch, logits_all, F32 KV cache, flash_attn off, 2 threads",
        "tokens": tokens, "column_step": COLUMN_STEP,
    }
    _write(HERE / "llamacpp_logits.json", header, float_cases)
    _write(HERE / "llamacpp_logits_quant.json", header, quant_cases)


if __name__ == "__main__":
    main()
