"""Compiled decode pieces on the CPU change how a step is scheduled, never what it computes."""

from __future__ import annotations

import copy

import mlx.core as mx
import pytest
from mlx import nn
from mlx_lm.generate import BatchGenerator
from mlx_lm.models import gemma, llama
from mlx_lm.models.cache import make_prompt_cache
from mlxserve.services.worker.cpu_decode import compile_decode_pieces

PROMPTS = [[1, 5, 9, 13, 2, 7], [3, 8, 8, 1]]


@pytest.fixture(autouse=True)
def on_cpu():
    old = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(old)


def tiny_llama(seed: int = 0) -> nn.Module:
    mx.random.seed(seed)
    args = llama.ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=96,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=64,
                           rope_theta=100000.0, tie_word_embeddings=True)
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model


def tiny_gemma(seed: int = 0) -> nn.Module:
    mx.random.seed(seed)
    args = gemma.ModelArgs(model_type="gemma", hidden_size=64, num_hidden_layers=2, intermediate_size=96,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                           vocab_size=64)
    model = gemma.Model(args)
    mx.eval(model.parameters())
    return model


def greedy(model: nn.Module, prompt: list[int], n: int) -> tuple[list[int], list[mx.array]]:
    """Prefill, then n greedy decode steps: the tokens and every step's logits."""
    cache = make_prompt_cache(model)
    logits = model(mx.array(prompt)[None], cache=cache)[:, -1, :]
    tokens, steps = [], [logits]
    for _ in range(n):
        y = mx.argmax(logits, axis=-1)
        tokens.append(y.item())
        logits = model(y[:, None], cache=cache)[:, -1, :]
        steps.append(logits)
    return tokens, steps


def batch_greedy(model: nn.Module, prompts: list[list[int]], n: int) -> dict[int, list[int]]:
    """The worker's engine: one BatchGenerator decoding every prompt at once (array offsets)."""
    gen = BatchGenerator(model, max_tokens=n, stop_tokens=[], completion_batch_size=len(prompts),
                         prefill_batch_size=len(prompts))
    try:
        uids = gen.insert(prompts, max_tokens=[n] * len(prompts))
        out: dict[int, list[int]] = {u: [] for u in uids}
        running = set(uids)
        while running:
            _, responses = gen.next()
            for r in responses:
                out[r.uid].append(r.token)
                if r.finish_reason is not None:
                    running.discard(r.uid)
    finally:
        gen.close()
    return out


def test_compiled_llama_decodes_the_same_logits_and_tokens() -> None:
    plain = tiny_llama()
    compiled = copy.deepcopy(plain)
    # 2 layers: two norms each, one RoPE and one MLP each, and the final norm.
    assert compile_decode_pieces(compiled) == 2 * 4 + 1
    for prompt in PROMPTS:
        want_tokens, want_steps = greedy(plain, prompt, 12)
        got_tokens, got_steps = greedy(compiled, prompt, 12)
        assert got_tokens == want_tokens
        for want, got in zip(want_steps, got_steps, strict=True):
            assert mx.array_equal(want, got).item()


def test_compiled_llama_in_a_batch_generator_matches_the_plain_model() -> None:
    plain = tiny_llama(seed=1)
    compiled = copy.deepcopy(plain)
    compile_decode_pieces(compiled)
    assert list(batch_greedy(compiled, PROMPTS, 10).values()) == list(batch_greedy(plain, PROMPTS, 10).values())


def test_a_model_whose_pieces_differ_is_left_as_it_computes() -> None:
    # Gemma's MLP uses GELU and its RMSNorm scales by 1 + weight: neither may take the SwiGLU/RMSNorm path.
    plain = tiny_gemma()
    compiled = copy.deepcopy(plain)
    compile_decode_pieces(compiled)
    assert not any(type(m).__name__.startswith("Compiled") and type(m).__name__ != "CompiledRoPE"
                   for _, m in compiled.named_modules())
    want_tokens, want_steps = greedy(plain, PROMPTS[0], 8)
    got_tokens, got_steps = greedy(compiled, PROMPTS[0], 8)
    assert got_tokens == want_tokens
    assert mx.array_equal(want_steps[-1], got_steps[-1]).item()


def test_a_quantized_mlp_keeps_its_own_call() -> None:
    model = tiny_llama(seed=2)
    nn.quantize(model, group_size=32, bits=4)
    compile_decode_pieces(model)
    assert not any(type(m).__name__.startswith("CompiledMLP") for _, m in model.named_modules())
    tokens, _ = greedy(model, PROMPTS[1], 4)
    assert len(tokens) == 4
