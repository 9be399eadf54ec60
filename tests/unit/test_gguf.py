"""The GGUF importer through the store: faithful llama conversion, what show reports, refusals.

`write_tiny_gguf` (tests/fixtures/tiny_gguf.py) builds a real random-weight llama GGUF. Every architecture and tensor type is covered by
test_gguf_roundtrip.py (with tests/fixtures/gguf_export.py); this file covers the llama path in
detail and everything a user is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from mlxserve.services.common.errors import InvalidArgument  # noqa: E402
from mlxserve.services.store.importers.gguf import import_gguf, read_gguf, unpermute_rows  # noqa: E402
from mlxserve.services.store.store import ModelStore  # noqa: E402
from tests.fixtures.tiny_gguf import (  # noqa: E402
    HIDDEN, FFN, CHAT_TEMPLATE, _llama_cpp_permute, _trained_tokenizer, write_tiny_gguf,
)

def _load_view(folder: Path):
    import mlx_lm

    return mlx_lm.load(str(folder))


def test_unpermute_rows_inverts_llama_cpp_permutation() -> None:
    rows = np.arange(4 * 64 * 3).reshape(4 * 64, 3)
    assert np.array_equal(unpermute_rows(_llama_cpp_permute(rows, 4), 4), rows)


def test_f32_gguf_imports_to_the_exact_hf_weights(tmp_path: Path) -> None:
    import mlx.core as mx

    src = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(src, quant="F32")
    out = tmp_path / "out"
    out.mkdir()
    import_gguf(src, out)
    got = mx.load(str(out / "model.safetensors"))
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert np.array_equal(np.array(got[name]), value), name
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "quantization" not in config


def test_mixed_quantized_gguf_keeps_bits_per_layer_and_loads_in_mlx_lm(tmp_path: Path) -> None:
    import mlx.core as mx

    src = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(src, quant="mixed")
    out = tmp_path / "out"
    out.mkdir()
    result = import_gguf(src, out)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert config["quantization"]["model.layers.0.mlp.down_proj"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    got = mx.load(str(out / "model.safetensors"))
    assert got["model.layers.0.self_attn.q_proj.scales"].dtype == mx.float32
    assert got["model.layers.0.self_attn.q_proj.biases"].dtype == mx.float32
    # Dequantized Q (unpermuted) is close to the original HF rows: 4-bit error, not scrambled rows.
    q = mx.dequantize(got["model.layers.0.self_attn.q_proj.weight"], got["model.layers.0.self_attn.q_proj.scales"],
                      got["model.layers.0.self_attn.q_proj.biases"], group_size=32, bits=4)
    ref = expected["model.layers.0.self_attn.q_proj.weight"]
    assert np.abs(np.array(q) - ref).max() < 0.05
    assert result.config.parameter_count == sum(v.size for v in expected.values())

    model, tokenizer = _load_view(out)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hello world"}], add_generation_prompt=True)
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), len(tokenizer.get_vocab()))


def test_rebuilt_tokenizer_matches_the_original(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src, quant="F32")
    out = tmp_path / "out"
    out.mkdir()
    import_gguf(src, out)
    original = _trained_tokenizer()
    rebuilt = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in ["the lazy dog", "hello world 12345", " spaced  out\n", "<|im_start|>user\nhi<|im_end|>"]:
        assert rebuilt.encode(text).ids == original.encode(text).ids, text
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == "<|im_end|>" and tok_config["chat_template"] == CHAT_TEMPLATE
    # The file's EOS (<|im_end|>) first, then <|endoftext|>, which llama.cpp also ends generation at.
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 0]


def test_header_reader_reports_shapes_and_types(tmp_path: Path) -> None:
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src, quant="Q8_0")
    header = read_gguf(src)
    assert header.metadata["general.architecture"] == "llama"
    info = header.tensors["blk.0.ffn_gate.weight"]
    assert info.shape == (FFN, HIDDEN) and info.type_name == "Q8_0"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "mamba"}, "architecture 'mamba' is not supported .*llama.*gemma3"),
        ({"tokenizer_model": "t5"}, "tokenizer model 't5' is not supported"),
        ({"pre": "chameleon"}, "pre-tokenizer 'chameleon' .* is not supported"),
        ({"extra_tensor": ("blk.0.attn_q_extra.weight", 16)}, "IQ2_XXS"),
        ({"extra_tensor": ("blk.0.attn_extra.weight", 8)}, "blk.0.attn_extra.weight"),
        ({"extra_tensor": ("rope_freqs.weight", 0)}, "rope_freqs.weight"),
    ],
)
def test_unsupported_gguf_is_refused_and_leaves_nothing_behind(tmp_path: Path, kwargs: dict, message: str) -> None:
    src = tmp_path / "bad.gguf"
    write_tiny_gguf(src, **kwargs)
    store = ModelStore(tmp_path / "models")
    with pytest.raises(InvalidArgument, match=message):
        store.create_from_path("bad", src)
    assert store.list() == []
    leftovers = [p for p in (tmp_path / "models").rglob("*") if p.is_file() and p.name not in (".lock", "store-format.json")]
    assert leftovers == []


def test_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "x.gguf"
    src.write_bytes(b"not a gguf at all")
    with pytest.raises(InvalidArgument, match="neither a GGUF file nor a model folder"):
        ModelStore(tmp_path / "models").create_from_path("x", src)


def test_truncated_gguf_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src)
    src.write_bytes(src.read_bytes()[:200])
    with pytest.raises(InvalidArgument, match="truncated"):
        ModelStore(tmp_path / "models").create_from_path("x", src)


def test_f16_gguf_converts_to_float16_weights_close_to_the_original(tmp_path: Path) -> None:
    import mlx.core as mx

    src = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(src, quant="F16")
    out = tmp_path / "out"
    out.mkdir()
    result = import_gguf(src, out)
    got = mx.load(str(out / "model.safetensors"))
    q = got["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == mx.float16 and "quantization" not in json.loads((out / "config.json").read_text())
    assert np.abs(np.array(q.astype(mx.float32)) - expected["model.layers.0.self_attn.q_proj.weight"]).max() < 1e-3
    assert result.config.quantization_level == "F16"


def test_q4_0_gguf_stays_quantized_and_loads_in_mlx_lm(tmp_path: Path) -> None:
    import mlx.core as mx

    src = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(src, quant="Q4_0")
    out = tmp_path / "out"
    out.mkdir()
    result = import_gguf(src, out)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}
    got = mx.load(str(out / "model.safetensors"))
    w = got["model.layers.0.mlp.up_proj.weight"]
    assert w.dtype == mx.uint32
    deq = mx.dequantize(w, got["model.layers.0.mlp.up_proj.scales"], got["model.layers.0.mlp.up_proj.biases"],
                        group_size=32, bits=4)
    assert np.abs(np.array(deq) - expected["model.layers.0.mlp.up_proj.weight"]).max() < 0.05
    assert result.config.quantization_level == "Q4_0"
    model, tokenizer = _load_view(out)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    assert model(mx.array([ids])).shape[1] == len(ids)


def test_quantize_none_stores_a_quantized_gguf_as_float16_and_show_says_so(tmp_path: Path) -> None:
    import mlx.core as mx

    from mlxserve.services.store.recipes import CreateSpec

    src = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(src, quant="Q8_0")
    store = ModelStore(tmp_path / "models")
    store.create("tiny-f16", CreateSpec(from_path=src, quantize="none"))
    view = store.resolve("tiny-f16").view_path
    assert "quantization" not in json.loads((view / "config.json").read_text())
    q = mx.load(str(view / "model.safetensors"))["model.layers.0.self_attn.v_proj.weight"]
    assert q.dtype == mx.float16
    assert np.abs(np.array(q.astype(mx.float32)) - expected["model.layers.0.self_attn.v_proj.weight"]).max() < 0.01
    shown = store.show("tiny-f16")
    assert shown.details.quantization_level == "Q8_0"  # the source's, as Ollama reports it
    assert shown.model_info["mlxserve.quantization"] == "Q8_0 GGUF -> Q8_0 dequantized to float16; F32 stored as float16"
