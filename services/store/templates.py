"""A small catalog of chat templates, and what a template says about a model.

When a source carries no chat template, `pick_template` chooses one the way Ollama autodetects:
from the special tokens the tokenizer knows, then from the architecture. Each entry comes with
its default stop parameters. Templates are Hugging Face Jinja (what the worker's tokenizer
renders), and they emit the BOS token themselves because the worker encodes the rendered text
without adding special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

# Architectures that embed rather than complete (config.json model_type / GGUF architecture).
EMBEDDING_ARCHITECTURES = frozenset({
    "bert", "distilbert", "roberta", "xlm-roberta", "nomic_bert", "nomic-bert", "modernbert", "jina-bert-v2",
})


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    template: str
    stop: tuple[str, ...]
    markers: tuple[str, ...]          # tokens whose presence (all of them) identifies the family
    architectures: tuple[str, ...]    # architectures that use it when the tokens say nothing


_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_LLAMA3 = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Gemma has no system role: a system message is folded into the first user turn.
_GEMMA = (
    "{{ bos_token or '' }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% else %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' + (ns.system if role == 'user' else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% if role == 'user' %}{% set ns.system = '' %}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Mistral instruct: a system message goes in front of the first user turn's text.
_MISTRAL = (
    "{{ bos_token or '' }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + (eos_token or '') }}"
    "{% else %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}{% set ns.system = '' %}"
    "{% endif %}"
    "{% endfor %}"
)

_PHI3 = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

CATALOG: tuple[ChatTemplate, ...] = (
    ChatTemplate("llama3", _LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                 ("<|start_header_id|>",), ("llama",)),
    ChatTemplate("chatml", _CHATML, ("<|im_start|>", "<|im_end|>"),
                 ("<|im_start|>",), ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")),
    ChatTemplate("gemma", _GEMMA, ("<start_of_turn>", "<end_of_turn>"),
                 ("<start_of_turn>",), ("gemma", "gemma2", "gemma3", "gemma3_text")),
    ChatTemplate("phi3", _PHI3, ("<|end|>", "<|system|>", "<|user|>", "<|assistant|>"),
                 ("<|end|>", "<|user|>"), ("phi3",)),
    ChatTemplate("mistral", _MISTRAL, ("[INST]", "[/INST]"),
                 ("[INST]",), ("mistral", "mixtral")),
)
BY_NAME = {t.name: t for t in CATALOG}


def pick_template(architecture: str, tokens: str | set[str]) -> ChatTemplate | None:
    """The catalog template for a source without one: by special tokens first, then architecture.

    `tokens` is the tokenizer's vocabulary, or simply the text of its tokenizer.json (a marker
    that occurs in it is a token the tokenizer knows). A plain llama vocabulary without Llama 3
    header tokens gets no template: guessing one would make its output garbage.
    """
    for entry in CATALOG:
        if all(marker in tokens for marker in entry.markers):
            return entry
    for entry in CATALOG:
        if architecture in entry.architectures and entry.name != "llama3":
            return entry
    return None


def template_family(template: str) -> ChatTemplate | None:
    """The catalog family a template text belongs to, judged from the markers it writes."""
    for entry in CATALOG:
        if all(marker in template for marker in entry.markers):
            return entry
    return None


def default_stops(template: str, eos_token: str | None = None) -> list[str]:
    """Stop parameters that suit `template`: its family's, else the tokenizer's EOS text if special."""
    family = template_family(template)
    if family is not None:
        return list(family.stop)
    if eos_token and eos_token.startswith("<") and eos_token.endswith(">") and eos_token in template:
        return [eos_token]
    return []


def capabilities(template: str, *, embedding: bool = False, vision: bool = False) -> list[str]:
    """Ollama's capability words for a model: completion or embedding, then tools/thinking/vision.

    Like Ollama, tools and thinking are read off the chat template: a template that mentions
    `tools` renders tool definitions, one with `<think>` or `enable_thinking` can reason.
    """
    if embedding:
        return ["embedding"]
    out = ["completion"]
    if "tools" in template:
        out.append("tools")
    if "<think>" in template or "enable_thinking" in template:
        out.append("thinking")
    if vision:
        out.append("vision")
    return out
