"""The tiny model fixture writes, fast, a folder that mlx-lm loads like a real chat model."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.fixtures.tiny_model import CHAT_TEMPLATE, VOCAB_SIZE, write_tiny_model


def test_tiny_model_is_written_in_milliseconds_after_the_first(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "warm")
    started = time.perf_counter()
    path = write_tiny_model(tmp_path / "fast", seed=5)
    assert time.perf_counter() - started < 0.5
    assert {p.name for p in path.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}


def test_tiny_model_loads_with_mlx_lm_and_speaks_chatml(tmp_path: Path) -> None:
    import mlx.core as mx
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(write_tiny_model(tmp_path / "m")))
    assert len(tokenizer) == VOCAB_SIZE == json.loads((tmp_path / "m" / "config.json").read_text())["vocab_size"]
    assert tokenizer.eos_token_ids == {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text  # byte-level BPE round-trips, specials included
    assert tokenizer.chat_template == CHAT_TEMPLATE
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), VOCAB_SIZE)


def test_seed_changes_weights_but_not_the_tokenizer(tmp_path: Path) -> None:
    a, b = write_tiny_model(tmp_path / "a", seed=1), write_tiny_model(tmp_path / "b", seed=2)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()
    c = write_tiny_model(tmp_path / "c", seed=1)
    assert (a / "model.safetensors").read_bytes() == (c / "model.safetensors").read_bytes()
