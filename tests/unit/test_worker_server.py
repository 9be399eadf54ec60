"""The gRPC layer's translation: proto3 optional fields keep "unset" apart from zero."""

from __future__ import annotations

from mlxserve.services.worker.prompts import ChatMessage
from mlxserve.services.worker.server import request_from_proto
from mlxserve.v1 import worker_pb2


def test_unset_options_stay_unset_so_defaults_apply() -> None:
    req = request_from_proto(worker_pb2.SubmitRequest(request_id="r", prompt="hi"))
    opts = req.options
    assert (opts.temperature, opts.top_p, opts.top_k, opts.min_p, opts.seed, opts.num_predict, opts.num_ctx) == (None,) * 7
    assert opts.effective_temperature == 0.8  # Ollama's default
    assert opts.stop == ()


def test_explicit_zero_temperature_means_greedy_not_default() -> None:
    req = request_from_proto(worker_pb2.SubmitRequest(
        request_id="r", is_chat=True,
        messages=[worker_pb2.ChatMessage(role="system", content="s"), worker_pb2.ChatMessage(role="user", content="u")],
        options=worker_pb2.SamplingOptions(temperature=0, top_k=0, seed=0, num_predict=-1, stop=["a", "b"], num_ctx=512),
    ))
    assert req.is_chat and req.messages == (ChatMessage("system", "s"), ChatMessage("user", "u"))
    o = req.options
    assert (o.temperature, o.top_k, o.seed, o.num_predict, o.num_ctx, o.stop) == (0.0, 0, 0, -1, 512, ("a", "b"))
    assert o.effective_temperature == 0.0


def test_generate_fields_carry_over() -> None:
    req = request_from_proto(worker_pb2.SubmitRequest(request_id="r", prompt="p", system="s", raw=False))
    assert (req.is_chat, req.prompt, req.system, req.raw) == (False, "p", "s", False)


def test_tools_tool_choice_and_names_carry_over() -> None:
    from mlxserve.services.worker.prompts import Tool, ToolChoice
    from mlxserve.v1.frames import ToolCall

    req = request_from_proto(worker_pb2.SubmitRequest(
        request_id="r", is_chat=True,
        messages=[
            worker_pb2.ChatMessage(role="user", content="u", name="alice"),
            worker_pb2.ChatMessage(role="assistant", tool_calls=[worker_pb2.ToolCall(id="c1", name="f", arguments_json='{"a": 1}'),
                                                                 worker_pb2.ToolCall(name="g")]),
        ],
        tools=[worker_pb2.Tool(name="f", description="d", parameters_json='{"type": "object"}'), worker_pb2.Tool(name="g")],
        tool_choice=worker_pb2.ToolChoice(mode=worker_pb2.ToolChoice.REQUIRED, allowed=["f"], single=True),
        chat_template_kwargs_json='{"enable_thinking": false}',
    ))
    assert req.messages[0].name == "alice"
    assert req.messages[1].tool_calls == (ToolCall("f", '{"a": 1}', id="c1"), ToolCall("g", "{}"))
    assert req.tools == (Tool("f", "d", {"type": "object"}), Tool("g"))
    assert req.tool_choice == ToolChoice("required", ("f",), True)
    assert req.chat_template_kwargs == {"enable_thinking": False}
    assert request_from_proto(worker_pb2.SubmitRequest(request_id="r", prompt="p")).tool_choice == ToolChoice("auto")
    none = worker_pb2.SubmitRequest(request_id="r", prompt="p", tool_choice=worker_pb2.ToolChoice(mode=worker_pb2.ToolChoice.NONE))
    assert request_from_proto(none).tool_choice.mode == "none"
