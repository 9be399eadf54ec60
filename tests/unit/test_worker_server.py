"""The Submit wire: the request a gateway builds is the request the worker decodes, "unset" kept apart from zero."""

from __future__ import annotations

import msgspec
import pytest

from mlxserve.gateway.native import parse_chat
from mlxserve.gateway.generation import submit_request
from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest, SamplingOptions, Tool, ToolChoice
from mlxserve.v1 import requests
from mlxserve.v1.frames import ToolCall
from tests.fixtures.submit_wire import over_the_wire


def test_unset_options_stay_unset_so_defaults_apply() -> None:
    opts = over_the_wire(GenerationRequest(request_id="r", prompt="hi")).options
    assert (opts.temperature, opts.top_p, opts.top_k, opts.min_p, opts.seed, opts.num_predict, opts.num_ctx) == (None,) * 7
    assert opts.effective_temperature == 0.8  # Ollama's default
    assert opts.stop == ()


def test_explicit_zero_temperature_means_greedy_not_default() -> None:
    req = over_the_wire(GenerationRequest(
        request_id="r", is_chat=True, messages=(ChatMessage("system", "s"), ChatMessage("user", "u")),
        options=SamplingOptions(temperature=0, top_k=0, seed=0, num_predict=-1, stop=("a", "b"), num_ctx=512),
    ))
    assert req.is_chat and req.messages == (ChatMessage("system", "s"), ChatMessage("user", "u"))
    o = req.options
    assert (o.temperature, o.top_k, o.seed, o.num_predict, o.num_ctx, o.stop) == (0.0, 0, 0, -1, 512, ("a", "b"))
    assert o.effective_temperature == 0.0


def test_every_field_crosses_the_wire_unchanged() -> None:
    sent = GenerationRequest(
        request_id="r", is_chat=True,
        messages=(ChatMessage("user", "u", name="alice"),
                  ChatMessage("assistant", tool_calls=[ToolCall("f", '{"a": 1}', id="c1"), ToolCall("g")]),
                  ChatMessage("tool", "18 degrees", tool_name="f", tool_call_id="c1")),
        options=SamplingOptions(repeat_penalty=1.1, repeat_last_n=-1, logit_bias={7: -100.0, 9: 2.5}),
        format='{"type":"object"}', tools=(Tool("f", "d", {"type": "object", "properties": {"z": {}, "b": {}}}), Tool("g")),
        tool_choice=ToolChoice("required", ("f",), True), think=False, logprobs=True, top_logprobs=3, truncate=False,
        chat_template_kwargs={"enable_thinking": False}, want_prompt_tokens=True, thinking_budget=0,
    )
    got = over_the_wire(sent)
    assert got == sent
    assert list(got.tools[0].parameters["properties"]) == ["z", "b"]  # a client's schema keeps its key order
    assert (got.think, got.truncate, got.thinking_budget) == (False, False, 0)  # false and 0 are not "unset"
    unset = over_the_wire(GenerationRequest(request_id="r", prompt="p", context=(1, 2, 3)))
    assert (unset.think, unset.truncate, unset.thinking_budget, unset.tool_choice, unset.context) == (
        None, None, None, ToolChoice("auto"), (1, 2, 3))


def test_the_gateways_request_is_what_the_worker_runs() -> None:
    req, _ = parse_chat({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "options": {"temperature": 0.5},
                         "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "rid")
    got = requests.decode(submit_request(req, "rid.1", "ipc:///x").request)
    assert (got.request_id, got.is_chat, got.messages, got.options.temperature) == ("rid.1", True, (ChatMessage("user", "Hi"),), 0.5)
    assert got.tools == (Tool("f", "", {"type": "object"}),)
    got.validate()


@pytest.mark.parametrize("data", [b"\xc1", requests.encode(GenerationRequest(request_id="r"))[:-1],
                                  msgspec.msgpack.encode({"request_id": 5})])
def test_a_malformed_request_is_invalid_argument(data: bytes) -> None:
    with pytest.raises(InvalidArgument, match="malformed request"):
        requests.decode(data)
