"""tokenizer.json and tokenizer_config.json rebuilt from a GGUF's vocabulary, matching llama.cpp.

A GGUF carries its vocabulary as metadata (tokens, token types, scores or merges, special ids);
llama.cpp tokenizes with it by rules of its own (src/llama-vocab.cpp). We rebuild those rules
from `tokenizers` components so that the tokenizer mlx-lm loads gives llama.cpp's ids:

- `tokenizer.ggml.model = "llama"` (SentencePiece-style): llama.cpp merges adjacent symbols,
  highest token score first, over the whole text with spaces written as "▁", and falls back to
  `<0xXX>` byte tokens. That is a BPE model whose merges are every split of every token, ranked by
  the token's score. With `add_space_prefix` it puts a space before each piece of text between
  special tokens (and at the start): a `Prepend` normalizer does the same, since normalizers run
  on each piece between added tokens.
- `tokenizer.ggml.model = "gpt2"` (byte-level BPE): the file's merges, and the regex splits that
  llama.cpp keys on `tokenizer.ggml.pre`, applied one after another as `Split(isolated)` steps.
- Control, unknown and user-defined tokens (plus those llama.cpp marks as control by their text,
  such as "<|im_end|>") are matched whole in the text first, as llama.cpp's tokenizer_st_partition
  does; control and unknown ones are `special`, so they stay text when special parsing is off.

Not transformers' GGUF converter (transformers.integrations.gguf): measured against llama.cpp it
disagrees on Llama 2's leading spaces, lacks the DeepSeek and digit-splitting pre-tokenizers and
Llama 3's ignore_merges, adds a token that is not in the vocabulary, and is an internal module
whose path and behaviour changed between major versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlxserve.services.common.errors import InvalidArgument

from .reader import GGUFFile

# llama.cpp's token types (tokenizer.ggml.token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4

SUPPORTED_MODELS = ("llama", "gpt2")

# Byte-level BPE pre-tokenizers: the regexes llama.cpp applies in turn (llm_tokenizer_bpe), written
# as the original tokenizer.json files have them (Oniguruma; llama.cpp spells (?i:...) out).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp runs regexes without \p{..} on text whose non-ASCII whitespace it has turned into "\v",
# so their non-ASCII ranges never match whitespace (U+2009, U+3000...): "&&[^\s]" says the same.
_CJK = r"[一-龥ࠀ-一가-퟿&&[^\s]]+"
_DEEPSEEK_LETTERS = (  # \u escapes: characters that Unicode normalization would rewrite
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ"
    "-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-"
    "ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"
)
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "llama-bpe": (_LLAMA3,), "llama3": (_LLAMA3,), "llama-v3": (_LLAMA3,),
    "qwen2": (_QWEN2,), "deepseek-r1-qwen": (_QWEN2,),
    "smollm": (r"\p{N}", _GPT2), "starcoder": (r"\p{N}", _GPT2),
    "gpt-2": (_GPT2,), "gpt2": (_GPT2,),  # llama.cpp knows only "gpt-2"; older converters wrote "gpt2"
    "default": _DEFAULT,
    "deepseek-llm": (r"[\r\n]", _DEEPSEEK_LETTERS, r"\s?[!-/:-~！-／：-～‘-‟　-。&&[^\s]]+", r"\s+$", _CJK,
                     r"\p{N}+"),
    "deepseek-coder": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"),
}
# Pre-tokenizers after which llama.cpp takes a whole word from the vocabulary before merging, and
# adds BOS unless the file says otherwise.
_LLAMA3_FAMILY = ("llama-bpe", "llama3", "llama-v3")

# Token texts llama.cpp treats as control tokens whatever their type (llama_vocab::impl::load):
# end-of-generation markers, and fill-in-the-middle markers where the file names none.
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~[")
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# Special ids: our name -> GGUF key(s); a deprecated key, read last by llama.cpp, wins.
_SPECIAL_KEYS = {
    "bos": ("bos_token_id",), "eos": ("eos_token_id",), "eot": ("eot_token_id",), "eom": ("eom_token_id",),
    "unk": ("unknown_token_id",), "sep": ("seperator_token_id",), "pad": ("padding_token_id",),
    "fim_pre": ("prefix_token_id", "fim_pre_token_id"), "fim_suf": ("suffix_token_id", "fim_suf_token_id"),
    "fim_mid": ("middle_token_id", "fim_mid_token_id"), "fim_pad": ("fim_pad_token_id",),
    "fim_rep": ("fim_rep_token_id",), "fim_sep": ("fim_sep_token_id",),
}


@dataclass
class TokenizerFiles:
    """What build_tokenizer writes: tokenizer.json's text, tokenizer_config.json (without a chat
    template), and the special token ids (`eog` lists every id that ends generation in llama.cpp)."""

    tokenizer_json: str
    tokenizer_config: dict[str, Any]
    special: dict[str, Any] = field(default_factory=dict)


def _name(gg: GGUFFile) -> str:
    return gg.path.name


def _supported_pre() -> str:
    return ", ".join(sorted(PRE_TOKENIZERS))


def _arch_get(gg: GGUFFile, key: str) -> Any:
    return gg.arch_get(key) if "general.architecture" in gg.metadata else None


def check_tokenizer(gg: GGUFFile) -> None:
    """Refuse, before any conversion, a vocabulary this module cannot rebuild exactly."""
    model = gg.get("tokenizer.ggml.model")
    if model is None:
        raise InvalidArgument(f"{_name(gg)}: GGUF file has no vocabulary (tokenizer.ggml.model is missing)")
    if model not in SUPPORTED_MODELS:
        raise InvalidArgument(
            f"{_name(gg)}: tokenizer model {model!r} is not supported (supported: 'llama' SentencePiece-style, "
            f"'gpt2' byte-level BPE)")
    if model == "gpt2":
        pre = gg.get("tokenizer.ggml.pre") or "default"
        if pre not in PRE_TOKENIZERS:
            raise InvalidArgument(f"{_name(gg)}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported "
                                  f"(supported: {_supported_pre()})")
    tokens = gg.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise InvalidArgument(f"{_name(gg)}: GGUF file lacks its vocabulary (tokenizer.ggml.tokens)")
    needed = "tokenizer.ggml.scores" if model == "llama" else "tokenizer.ggml.merges"
    if gg.get(needed) is None:
        raise InvalidArgument(f"{_name(gg)}: GGUF file lacks {needed}, which a {model!r} vocabulary needs")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        value = gg.get(key)
        if value is not None and len(value) < len(tokens):
            raise InvalidArgument(f"{_name(gg)}: {key} has {len(value)} entries for {len(tokens)} tokens")


@dataclass
class _Vocab:
    """The vocabulary as llama.cpp reads it (llama_vocab::impl::load)."""

    model: str
    pre: str
    tokens: list[str]
    special: dict[str, Any]
    control: set[int]  # matched whole in text; stays text when special parsing is off
    user_defined: set[int]  # matched whole in text always
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool


def _read_vocab(gg: GGUFFile) -> _Vocab:
    check_tokenizer(gg)
    model = gg.get("tokenizer.ggml.model")
    # llama.cpp gives an empty token a placeholder name, so that ids stay put.
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(gg.get("tokenizer.ggml.tokens"))]
    n = len(tokens)
    ids: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in ids:
            raise InvalidArgument(
                f"{_name(gg)}: vocabulary does not round-trip: token {t!r} appears twice (ids {ids[t]} and {i})")
        ids[t] = i
    declared = _arch_get(gg, "vocab_size")
    embd = gg.tensors.get("token_embd.weight")
    for what, size in (("vocab_size", declared), ("token_embd.weight rows", embd.shape[0] if embd else None)):
        if size is not None and int(size) != n:
            raise InvalidArgument(f"{_name(gg)}: vocabulary has {n} tokens but the model's {what} is {size}")

    raw_types = gg.get("tokenizer.ggml.token_type")
    types = np.asarray(raw_types[:n], dtype=np.int64) if raw_types is not None else np.full(n, NORMAL)

    # llama.cpp's defaults for ids the file does not give (11 is Falcon's, kept for byte-level BPE).
    special: dict[str, Any] = {k: None for k in _SPECIAL_KEYS}
    special.update({"bos": 1, "eos": 2, "unk": 0} if model == "llama" else {"bos": 11, "eos": 11})
    special = {k: (i if i is not None and i < n else None) for k, i in special.items()}
    for name, keys in _SPECIAL_KEYS.items():
        for key in keys:
            value = gg.get(f"tokenizer.ggml.{key}")
            if value is None:
                continue
            if not isinstance(value, int) or not 0 <= value < n:
                raise InvalidArgument(
                    f"{_name(gg)}: tokenizer.ggml.{key} {value!r} is not a token of the {n} in the vocabulary")
            special[name] = value
            break

    control = {int(i) for i in np.nonzero((types == CONTROL) | (types == UNKNOWN))[0]}
    user_defined = {int(i) for i in np.nonzero(types == USER_DEFINED)[0]}
    # llama.cpp finds end-of-generation and fill-in-the-middle tokens by their text and makes them
    # control tokens, whatever the file says (a "</s>" in Qwen2's vocabulary becomes one).
    eog = {ids[t] for t in _EOG_TEXTS if t in ids}
    control |= eog
    if special["eot"] is None:
        special["eot"] = next((ids[t] for t in _EOT_TEXTS if t in ids), None)
    if special["eom"] is None and "<|eom_id|>" in ids:
        special["eom"] = ids["<|eom_id|>"]
    for name, texts in _FIM_TEXTS.items():
        if special[name] is None:
            found = [ids[t] for t in texts if t in ids]
            control |= set(found)
            special[name] = found[0] if found else None
    eog |= {special[k] for k in ("eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep") if special[k] is not None}
    special["eog"] = sorted(eog)
    user_defined -= control

    pre = (gg.get("tokenizer.ggml.pre") or "default") if model == "gpt2" else "default"
    if model == "llama":
        add_bos, add_eos, add_space_prefix = True, False, True
    else:
        add_bos, add_eos, add_space_prefix = pre in _LLAMA3_FAMILY, False, False
    add_space_prefix = bool(gg.get("tokenizer.ggml.add_space_prefix", add_space_prefix))
    add_bos = bool(gg.get("tokenizer.ggml.add_bos_token", add_bos))
    add_eos = bool(gg.get("tokenizer.ggml.add_eos_token", add_eos))
    for flag, name in ((add_bos, "bos"), (add_eos, "eos")):
        if flag and special[name] is None:
            raise InvalidArgument(f"{_name(gg)}: the vocabulary asks to add a {name.upper()} token but names none")
    return _Vocab(model, pre, tokens, special, control, user_defined, add_bos, add_eos, add_space_prefix)


def _spm_merges(tokens: list[str], scores: np.ndarray) -> list[tuple[str, str]]:
    """Every way to make a token from two tokens, the highest-scoring result first: the order in
    which llama.cpp's SentencePiece-style tokenizer merges symbols."""
    ids = {t: i for i, t in enumerate(tokens)}
    found: list[tuple[float, int, int]] = []
    for i, token in enumerate(tokens):
        # Real spaces never reach the model: they are written "▁", or matched as added tokens.
        if len(token) < 2 or " " in token:
            continue
        for k in range(1, len(token)):
            if token[:k] in ids and token[k:] in ids:
                found.append((-float(scores[i]), i, k))
    found.sort()
    return [(tokens[i][:k], tokens[i][k:]) for _, i, k in found]


def _bpe_merges(gg: GGUFFile, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The file's merges, checked: `tokenizers` cannot take one whose parts or result are not tokens."""
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for rank, merge in enumerate(gg.get("tokenizer.ggml.merges")):
        cut = merge.find(" ", 1)  # where llama.cpp splits a merge
        pair = (merge[:cut], merge[cut + 1:])
        if cut < 0 or pair[0] not in vocab or pair[1] not in vocab or pair[0] + pair[1] not in vocab:
            raise InvalidArgument(f"{_name(gg)}: vocabulary does not round-trip: merge {rank} {merge!r} is not "
                                  f"two tokens that make a third")
        if pair not in seen:  # llama.cpp keeps a repeated merge's first rank
            seen.add(pair)
            merges.append(pair)
    return merges


def _backend(gg: GGUFFile, v: _Vocab) -> Any:
    """The `tokenizers.Tokenizer` that tokenizes as llama.cpp does."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(v.tokens)}
    if v.model == "llama":
        scores = np.asarray(gg.get("tokenizer.ggml.scores"), dtype=np.float64)
        unk = v.tokens[v.special["unk"]] if v.special["unk"] is not None else None
        tok = Tokenizer(models.BPE(vocab=vocab, merges=_spm_merges(v.tokens, scores), unk_token=unk,
                                   fuse_unk=True, byte_fallback=True))
        steps = [normalizers.Prepend("▁")] if v.add_space_prefix else []
        tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
        # mlx-lm recognises exactly this decoder and streams with its SentencePiece detokenizer.
        strip = [decoders.Strip(" ", 1, 0)] if v.add_space_prefix else []
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    else:
        merges = _bpe_merges(gg, vocab)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=v.pre in _LLAMA3_FAMILY))
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[v.pre]]
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()

    # In llama.cpp, Phi-3's added tokens but these three swallow the whitespace after them (matched
    # by model name).
    phi3 = any(s in str(gg.get("general.name", "")).lower() for s in ("phi-3", "phi3"))
    keep_space = {"<unk>", "<s>", "<|endoftext|>"}

    def added(i: int, special: bool) -> AddedToken:
        text = v.tokens[i]
        rstrip = phi3 and text not in keep_space
        return AddedToken(text, special=special, normalized=False, rstrip=rstrip, lstrip=False, single_word=False)

    tok.add_special_tokens([added(i, True) for i in sorted(v.control)])
    tok.add_tokens([added(i, False) for i in sorted(v.user_defined)])

    bos = (v.tokens[v.special["bos"]], v.special["bos"]) if v.add_bos else None
    eos = (v.tokens[v.special["eos"]], v.special["eos"]) if v.add_eos else None
    if bos or eos:
        single = ([f"{bos[0]}:0"] if bos else []) + ["$A:0"] + ([f"{eos[0]}:0"] if eos else [])
        pair = single + ([f"{bos[0]}:1"] if bos else []) + ["$B:1"] + ([f"{eos[0]}:1"] if eos else [])
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[t for t in (bos, eos) if t])
    return tok


def _round_trip(gg: GGUFFile, v: _Vocab, tok: Any) -> None:
    """Every id must come back as its own token, and the vocabulary must not have grown."""
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != len(v.tokens):
        raise InvalidArgument(
            f"{_name(gg)}: vocabulary does not round-trip: {size} tokens rebuilt from {len(v.tokens)}")
    back = tok.get_vocab(with_added_tokens=True)
    for i, t in enumerate(v.tokens):
        if back.get(t) != i:
            raise InvalidArgument(
                f"{_name(gg)}: vocabulary does not round-trip: token {i} {t!r} comes back as id {back.get(t)}")


def build_tokenizer(gg: GGUFFile) -> TokenizerFiles:
    """Rebuild the GGUF's vocabulary as tokenizer.json + tokenizer_config.json for mlx-lm.

    `encode(text, add_special_tokens=True)` adds BOS/EOS exactly when llama.cpp does, and special
    tokens written in text become their ids (llama.cpp's parse_special). Raises InvalidArgument,
    naming the problem, for an unsupported or inconsistent vocabulary.
    """
    v = _read_vocab(gg)
    tok = _backend(gg, v)
    _round_trip(gg, v, tok)

    def token(name: str) -> str | None:
        i = v.special.get(name)
        return v.tokens[i] if i is not None else None

    context = _arch_get(gg, "context_length")
    config: dict[str, Any] = {
        # The generic class: it loads tokenizer.json as it is, where a model class might rebuild parts.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unk"),
        "pad_token": token("pad"),
        "add_bos_token": v.add_bos,
        "add_eos_token": v.add_eos,
        # Decoding must give back the text the model wrote; llama.cpp's generation does no clean-up either.
        "clean_up_tokenization_spaces": False,
    }
    if context:
        config["model_max_length"] = int(context)
    special = {k: val for k, val in v.special.items() if val is not None}
    return TokenizerFiles(tok.to_str(), config, special)
