"""Compute llama.cpp's token ids for a corpus on every reference vocabulary: tokenizer_reference.json.

Run once, with llama-cpp-python (never a dependency of the project or its tests):

    /work/llamacpp-venv/bin/python tests/data/gguf/make_tokenizer_reference.py

The vocabularies are llama.cpp's own vocab-only test files (tests/fixtures/llama_vocabs.py), the
real Gemma 3 270M file (tests/fixtures/gemma3.py) and SmolLM2 (tests/fixtures/smollm2.py).
For each vocabulary and text the JSON holds `ids`: llama_tokenize(text, add_special=False,
parse_special=True), which is what a chat prompt gets. With add_special=True llama.cpp only adds
BOS/EOS around those ids, which this script checks on every text, so the JSON records the flags
(`add_bos`, `add_eos`) instead of a second copy. `ids_unparsed` holds parse_special=False for the
texts that write special tokens.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

import llama_cpp  # noqa: E402

from tests.fixtures.gemma3 import find_gemma3_gguf  # noqa: E402
from tests.fixtures.llama_vocabs import find_llama_vocabs  # noqa: E402
from tests.fixtures.smollm2 import find_smollm2_gguf  # noqa: E402

OUT = Path(__file__).with_name("tokenizer_reference.json")
INP = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf.inp (the same for every vocabulary)"

CORPUS = [
    # special tokens written in text, as chat templates render them
    "<s>[INST] Hello [/INST]",
    "<s> hi</s>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user Hi<end_of_turn>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "<|user|>\nHi there<|end|>\n<|assistant|>\n",
    "<|system|> Be brief.<|end|>  <|user|>  x<|end|>",
    "<｜begin▁of▁sentence｜>User: hi\n\nAssistant:",
    "<|endoftext|>Hello<|endoftext|>",
    "<fim_prefix>def f(x):\n    <fim_suffix>\n    return y<fim_middle>",
    "a<unk>b <mask> <pad>",
    "<table><tr><td>1</td></tr></table> <b>bold</b> <code>x</code>",
    "<think>\nhmm\n</think>\n\nAnswer",
    "<<s>> <s<s>s> </s></s>",
    # spaces, newlines, tabs
    "",
    " ",
    "  ",
    "Hello",
    " Hello",
    "  Hello",
    "Hello world",
    "Hello   world  ",
    "a  b   c    d     e",
    " " * 40 + "x",
    "line one\nline two\n\nline four\n",
    "\n\n\n",
    "\n" * 40,
    "\r\nWindows\r\nline\r\n",
    "tab\there\t\tand\t\t\tthere",
    "\t" * 33 + "deep",
    "trailing spaces   \n  leading spaces",
    "\u00a0non\u00a0breaking\u2009thin\u3000ideographic\u2028sep",
    "a\u2009s\u3000t \u2009x\u3000中\u2009文 \u205fy\u1680z",
    "<|user|>\u00a0hi<|end|>\u2009<|assistant|>",
    # letters, cases, contractions
    "I'm sure you'll see it's what we've done, they'd say, isn't it? I'M DON'T WE'LL",
    "the quick brown fox jumps over the lazy dog",
    "THE QUICK BROWN FOX",
    # digits and numbers
    "1 12 123 1234 12345 123456 1234567",
    "3.14159265358979323846264338327950288419716939937510",
    "Call 555-0123 or +1 (800) 555-0199 by 2024-12-31 at 23:59:59.",
    "$1,000,000.00 is 10^6 or 1e6; 0x1F = 31; 007",
    "١٢٣ ٤٥٦ and २०२४ and ½ ¾ and Ⅻ",
    # accented Latin, other scripts
    "Ça va? Élève naïve à la façade, Ærøskøbing, straße, Łódź, São Paulo",
    "Tiếng Việt có dấu: Cửa Việt, Hà Nội, Thành phố Hồ Chí Minh",
    "Привет, мир! Ελληνικά γράμματα. שלום עולם. مرحبا بالعالم",
    "e\u0301 vs \u00e9 (combining acute vs precomposed)",
    # CJK
    "我想在苹果公司工作。今天天气很好！",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 문장입니다. 안녕하세요!",
    "中文English混合text测试123。",
    # emoji
    "Hello 👋🏽 world 🌍! 🦙🦙🦙",
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 🇫🇷🇯🇵 flags, ❤️ heart",
    "😀😃😄😁😆😅🤣😂🙂🙃",
    # byte fallback: rare CJK, astral symbols, control characters
    "𠜎𠜱𠝹𠱓𠱸𠲖𠳏 𪚥 𰻞𰻞麵",
    "\U0001F9FF\U0001FAE0\U00010348 \U0001D11E",
    "bell\x07 esc\x1b[31mred\x1b[0m nul\x00 del\x7f",
    "zero\u200bwidth\ufeffbom\u200djoiner",
    "▁literal▁lower▁block▁",
    # code
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    '{"name": "mlxserve", "version": [0, 1, 0], "ok": true, "nested": {"k": null}}',
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "$ ls -la ~/.cache && echo \"done\" | tee /tmp/log.txt 2>&1",
    "https://example.com/path?query=1&x=y#frag user@example.org",
    "<div class=\"a\">x &amp; y</div>",
    "!!!!!! ...... ?!?! ---- ____ ==== //// \\\\\\\\",
    "'quoted' \"double\" `back` «guillemets» „low“ ‘single’",
]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def llama_cpp_inputs(vocab_file: Path) -> list[str]:
    """llama.cpp's own test strings for its vocab files (the .inp file beside them, else the cached sdist's)."""
    beside = vocab_file.with_name(vocab_file.name + ".inp")
    if beside.is_file():
        text = beside.read_text(encoding="utf-8")
    else:
        import tarfile

        from tests.fixtures.llama_vocabs import MEMBER_DIR, SDIST_FILE
        from tests.fixtures.smollm2 import cache_dir
        with tarfile.open(cache_dir() / "wheels" / SDIST_FILE) as tar:
            text = tar.extractfile(MEMBER_DIR + "ggml-vocab-llama-spm.gguf.inp").read().decode("utf-8")
    return text.split("\n__ggml_vocab_test__\n")[:-1]


def describe(path: Path, texts: list[str]) -> dict:
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_tokens = llama_cpp.llama_vocab_n_tokens(vocab)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    add_eos = bool(llama_cpp.llama_vocab_get_add_eos(vocab))
    bos, eos = llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_eos(vocab)

    ids, unparsed = [], {}
    for i, text in enumerate(texts):
        plain = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        full = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        expected = ([bos] if add_bos else []) + plain + ([eos] if add_eos else [])
        assert full == expected, (path.name, text, full, plain)
        ids.append(plain)
        if "<" in text:
            unparsed[str(i)] = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    # The tokens llama.cpp matches whole in text before tokenizing the rest (tokenizer_st_partition):
    # its attributes (control, user-defined, unknown) after its own fix-ups, as id ranges.
    attr_split = 1 << 0 | 1 << 3 | 1 << 4  # LLAMA_TOKEN_ATTR_UNKNOWN | CONTROL | USER_DEFINED
    split = [t for t in range(n_tokens) if llama_cpp.llama_vocab_get_attr(vocab, t) & attr_split]
    ranges: list[list[int]] = []
    for t in split:
        if ranges and ranges[-1][1] == t - 1:
            ranges[-1][1] = t
        else:
            ranges.append([t, t])
    eog = [t for t in range(n_tokens) if llama_cpp.llama_vocab_is_eog(vocab, t)]

    def token_id(value: int) -> int | None:
        return None if value < 0 else value

    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_model_meta_val_str(llm.model, b"tokenizer.ggml.pre", buf, 256)
    out = {
        "file": path.name,
        "sha256": sha256(path),
        "n_tokens": n_tokens,
        "tokenizer_pre": buf.value.decode() if n >= 0 else None,
        "add_bos": add_bos,
        "add_eos": add_eos,
        "bos": token_id(bos),
        "eos": token_id(eos),
        "eot": token_id(llama_cpp.llama_vocab_eot(vocab)),
        "eog": eog,
        "special_token_ranges": ranges,
        "ids": ids,
        "ids_unparsed": unparsed,
    }
    llm.close()
    return out


def main() -> None:
    vocabs = find_llama_vocabs()
    assert vocabs is not None
    files = {name: path for name, path in vocabs.items()}
    files["gemma3"] = find_gemma3_gguf()
    files["smollm2"] = find_smollm2_gguf()
    inputs = llama_cpp_inputs(vocabs["llama-spm"])
    texts = CORPUS + [t for t in inputs if t not in CORPUS]
    result = {
        "command": "/work/llamacpp-venv/bin/python tests/data/gguf/make_tokenizer_reference.py",
        "llama_cpp_python": llama_cpp.__version__,
        "texts_from": {"corpus": len(CORPUS), "llama.cpp": INP},
        "texts": texts,
        "vocabs": {name: describe(path, texts) for name, path in files.items()},
    }
    OUT.write_text(json.dumps(result, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB, {len(texts)} texts x {len(files)} vocabularies)")


if __name__ == "__main__":
    main()
