"""Anthropic's Messages API on the real system, through the official `anthropic` Python SDK (issue 17).

The demo SmolLM2 weights answer under a Hermes-style template that lists tools and writes
`<tool_call>` (the fixtures' Qwen3-style template, made into a model here through the store from a
Modelfile and removed after), so a forced tool call (tool_choice any) comes back as a tool_use block.
The agent-session test replays what Claude Code sends turn after turn (system blocks headed by its
per-request billing line, cache_control markers, a few tools, tool_use and tool_result turns,
adaptive thinking, streaming with ?beta=true) and checks that every turn after the first is served
from the prefix cache: nothing in the request path may change an earlier prefix.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pytest

from tests.e2e.harness import System, http_json
from tests.fixtures.tool_model import chat_template

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MODEL = "anthropic-tools:135m"
CALL_TOKENS = 64  # a forced call of these tools is ~35 tokens in this template's format
SAY = [{"role": "user", "content": "Say something nice about the sea."}]
# Sampling fields left the SDK's signature (2.x); the API still takes them, and greedy keeps answers comparable.
GREEDY = {"extra_body": {"temperature": 0}}
TOOLS = [
    {"name": "Read", "description": "Reads a file from the local filesystem.",
     "input_schema": {"type": "object", "properties": {"file_path": {"type": "string", "description": "Absolute path"},
                                                       "limit": {"type": "integer"}},
                      "required": ["file_path"], "additionalProperties": False,
                      "$schema": "http://json-schema.org/draft-07/schema#"}},
    {"name": "Bash", "description": "Runs a shell command.",
     "input_schema": {"type": "object", "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}},
                      "required": ["command"], "additionalProperties": False}},
    {"name": "Grep", "description": "Searches file contents with a regular expression.",
     "input_schema": {"type": "object", "properties": {"pattern": {"type": "string"}, "path": {"type": "string"}},
                      "required": ["pattern"], "additionalProperties": False}},
]
# Long enough that one turn's new tokens are a few percent of the prompt, as in a real agent session.
AGENT_PROMPT = "\n".join(
    f"- Rule {i}: when the user asks about file number {i}, read it first, quote the relevant lines, and explain "
    f"what they do before proposing any change; never run a command that deletes data." for i in range(40))


@pytest.fixture(scope="module")
def model(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo weights under a tools-capable template, made with `mlxctl create -f Modelfile`."""
    modelfile = tmp_path_factory.mktemp("anthropic-tools") / "Modelfile"
    modelfile.write_text(f'FROM smollm2:135m\nTEMPLATE """{chat_template()}"""\n')
    out = system.mlxctl("create", MODEL, "-f", str(modelfile), timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    yield MODEL
    system.mlxctl("stop", MODEL)
    system.mlxctl("rm", MODEL)


@pytest.fixture(scope="module")
def client(system: System) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=system.url, api_key="unused", timeout=180, max_retries=0)


def total_input(usage: Any) -> int:
    return usage.input_tokens + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)


def test_a_message_with_system_blocks_and_its_usage(client: anthropic.Anthropic, model: str) -> None:
    msg = client.messages.create(model=model, max_tokens=8, **GREEDY, messages=SAY,
                                 system=[{"type": "text", "text": "You are kind."}, {"type": "text", "text": "Be brief."}])
    assert msg.id.startswith("msg_") and msg.role == "assistant" and msg.model == model
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens") and 0 < msg.usage.output_tokens <= 8
    # No cache_control: the evaluated prompt is input_tokens, what came from the cache is apart.
    assert msg.usage.input_tokens > 0 and msg.usage.cache_creation_input_tokens == 0
    assert client.messages.count_tokens(model=model, messages=SAY, system=[
        {"type": "text", "text": "You are kind."}, {"type": "text", "text": "Be brief."}]).input_tokens == total_input(msg.usage)


def test_max_tokens_is_a_cap_clamped_to_the_context(client: anthropic.Anthropic, model: str) -> None:
    msg = client.messages.create(model=model, max_tokens=1_000_000, **GREEDY, messages=SAY, stop_sequences=["."])
    assert msg.stop_reason in ("end_turn", "stop_sequence", "max_tokens")
    if msg.stop_reason == "stop_sequence":
        assert msg.stop_sequence == "." and "." not in msg.content[0].text


def test_the_stream_helper_reads_the_event_stream(client: anthropic.Anthropic, model: str) -> None:
    with client.messages.stream(model=model, max_tokens=8, **GREEDY, messages=SAY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    whole = client.messages.create(model=model, max_tokens=8, **GREEDY, messages=SAY)
    assert text == final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    assert total_input(final.usage) == total_input(whole.usage)


def test_tool_choice_any_forces_a_tool_use_block_whose_input_fits_the_schema(client: anthropic.Anthropic, model: str) -> None:
    msg = client.messages.create(model=model, max_tokens=CALL_TOKENS, **GREEDY, tools=TOOLS, tool_choice={"type": "any"},
                                 messages=[{"role": "user", "content": "Show me what is in /etc/hostname."}])
    assert msg.stop_reason == "tool_use", msg.content
    calls = [b for b in msg.content if b.type == "tool_use"]
    assert calls and len({c.id for c in calls}) == len(calls)
    for call in calls:
        assert call.id.startswith("toolu_") and call.name in {t["name"] for t in TOOLS}
        jsonschema.validate(call.input, next(t["input_schema"] for t in TOOLS if t["name"] == call.name))
    named = client.messages.create(model=model, max_tokens=CALL_TOKENS, **GREEDY, tools=TOOLS,
                                   tool_choice={"type": "tool", "name": "Grep"},
                                   messages=[{"role": "user", "content": "Find TODO in the sources."}])
    assert [b.name for b in named.content if b.type == "tool_use"] == ["Grep"]


def test_models_and_errors_in_anthropics_shapes(client: anthropic.Anthropic, model: str, system: System) -> None:
    ids = [m.id for m in client.models.list(limit=1000)]
    assert model in ids
    assert client.models.retrieve(model).type == "model"
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="no-such-model", max_tokens=8, messages=SAY)
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
    assert e.value.body["error"]["type"] == "invalid_request_error" and "messages[0].content[0].type" in e.value.message
    status, body = http_json("POST", system.url + "/v1/messages", {"model": model, "messages": SAY})
    assert status == 400 and body == {"type": "error", "error": {"type": "invalid_request_error", "message": "'max_tokens' is required"}}


def claude_code_turn(model: str, messages: list[dict], tool_choice: dict) -> dict[str, Any]:
    """A request as Claude Code shapes it: a per-request billing line, cached system blocks, tools, adaptive thinking."""
    return dict(
        model=model, max_tokens=CALL_TOKENS, tools=TOOLS, tool_choice=tool_choice, messages=copy.deepcopy(messages),
        system=[{"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.177.{secrets.token_hex(2)}; "
                                         f"cc_entrypoint=cli; cch={secrets.token_hex(3)};"},
                {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                 "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": AGENT_PROMPT, "cache_control": {"type": "ephemeral"}}],
        thinking={"type": "adaptive"}, metadata={"user_id": "user_e2e_session"}, betas=["claude-code-20250219"],
        extra_body={"temperature": 0, "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}},
    )


def test_an_agent_session_reuses_its_prefix_every_turn(client: anthropic.Anthropic, model: str) -> None:
    messages: list[dict] = [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\nThe working directory is /srv/app.\n</system-reminder>"},
        {"type": "text", "text": "What does /srv/app/main.py do?", "cache_control": {"type": "ephemeral"}}]}]
    usages = []
    for turn, choice in enumerate(({"type": "any"}, {"type": "any"}, {"type": "auto"})):
        with client.beta.messages.stream(**claude_code_turn(model, messages, choice)) as stream:
            final = stream.get_final_message()
        usages.append(final.usage)
        calls = [b for b in final.content if b.type == "tool_use"]
        if turn < 2:
            assert final.stop_reason == "tool_use" and calls, final.content
            messages.append({"role": "assistant", "content": [b.model_dump(include={"type", "id", "name", "input"}) for b in calls]})
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": c.id, "content": f"result {turn}: 42 lines"} for c in calls]})
    first, *later = usages
    assert first.cache_creation_input_tokens > 1000 and first.input_tokens == 0  # marked for caching: reported as written
    for usage in later:
        assert usage.cache_read_input_tokens >= 0.9 * total_input(usage), [u.model_dump() for u in usages]
    # Counted as Submit makes it: the last turn's prompt, whole.
    last = claude_code_turn(model, messages, {"type": "auto"})
    for key in ("max_tokens", "metadata", "betas"):
        last.pop(key)
    assert client.beta.messages.count_tokens(**last).input_tokens == total_input(usages[-1])

