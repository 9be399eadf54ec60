"""The worker's side of Anthropic's API: CountTokens counts a prompt exactly as Submit makes it (queueing
nothing), the thinking budget crosses the gRPC layer, and a request ended by a stop string says which."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.worker.blas import BlasReport
from mlxserve.gateway.anthropic_api import parse_messages_request
from mlxserve.gateway.generation import submit_request
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest, Tool, ToolChoice, render_prompt
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from mlxserve.services.worker.server import WorkerServicer
from mlxserve.v1 import requests, worker_pb2
from tests.fixtures.tool_model import tool_model_dir  # noqa: F401 - fixture
from tests.fixtures.runner_driver import drive
from tests.fixtures.submit_wire import over_the_wire

READ = Tool("Read", "Read a file", {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})


@pytest.fixture(scope="module")
def runner(tool_model_dir: Path) -> ModelRunner:
    return ModelRunner(tool_model_dir, num_parallel=2, max_queue=4)


def session(request_id: str, turns: int = 1, **fields) -> GenerationRequest:
    messages = [ChatMessage("system", "You are a careful coding agent.")]
    for i in range(turns):
        messages += [ChatMessage("user", f"Question {i}: how are you today?"), ChatMessage("assistant", "I am fine, thank you.")]
    messages.append(ChatMessage("user", "What would you like to talk about?"))
    fields.setdefault("options", SamplingOptions(temperature=0, num_predict=1))
    fields.setdefault("tools", (READ,))
    return GenerationRequest(request_id=request_id, is_chat=True, messages=tuple(messages), **fields)


def test_count_is_the_prompt_submit_makes_and_queues_nothing(runner: ModelRunner) -> None:
    counted = runner.count(session("c-1"))
    assert runner.counts() == (0, 0) and not runner.has_work()
    assert runner.submit(session("s-1")).prompt_tokens == counted
    drive(runner)
    # The tools are in the prompt: without them it is shorter.
    assert runner.count(session("c-2", tool_choice=ToolChoice("none"))) < counted


def test_count_is_the_whole_prompt_even_past_the_context(runner: ModelRunner) -> None:
    small = SamplingOptions(temperature=0, num_predict=1, num_ctx=160)
    plain = ToolChoice("none")  # the tool listing alone would not fit
    full = runner.count(session("c-3", turns=12, options=small, tool_choice=plain))
    fitted = runner.submit(session("s-3", turns=12, options=small, tool_choice=plain)).prompt_tokens
    drive(runner)
    assert fitted < 160 < full  # submit drops the oldest turns to fit; the count says how long it really is


def test_count_refuses_what_submit_refuses(runner: ModelRunner) -> None:
    bad = session("c-4", tools=(), tool_choice=ToolChoice("required"))
    for call in (runner.count, runner.submit):
        with pytest.raises(InvalidArgument, match="needs at least one tool"):
            call(bad)


def test_the_count_tokens_rpc_counts_the_submit_request_it_is_given(runner: ModelRunner) -> None:
    servicer = WorkerServicer(runner, replies=None, blas=BlasReport("", 0.0, True))  # type: ignore[arg-type]
    request = GenerationRequest(request_id="rpc-1", is_chat=True, messages=(ChatMessage("user", "Hi there"),),
                                tools=(Tool("Read", parameters={"type": "object"}),), thinking_budget=64)
    reply = WorkerServicer.CountTokens.__wrapped__(servicer, worker_pb2.SubmitRequest(request=requests.encode(request)), None)
    assert reply.prompt_tokens == runner.count(request) > 0
    assert not runner.has_work()


def test_the_thinking_budget_crosses_the_wire_unset_stays_unset() -> None:
    assert over_the_wire(GenerationRequest(request_id="r", prompt="p", thinking_budget=0)).thinking_budget == 0
    assert over_the_wire(GenerationRequest(request_id="r", prompt="p")).thinking_budget is None
    with pytest.raises(InvalidArgument, match="thinking_budget must be >= 0"):
        GenerationRequest(request_id="r", prompt="p", thinking_budget=-1).validate()


def test_a_request_ended_by_a_stop_string_names_it(runner: ModelRunner) -> None:
    def run(request_id: str, stop: tuple[str, ...]):
        request = GenerationRequest(request_id=request_id, is_chat=True, messages=(ChatMessage("user", "Hello!"),),
                                    options=SamplingOptions(temperature=0, num_predict=12, stop=stop))
        runner.submit(request)
        return drive(runner)[request_id]

    plain = run("stop-0", ())
    said = "".join(f.text for f in plain)
    assert plain[-1].stop_sequence is None and len(said) > 4
    stop = said[2:4]
    stopped = run("stop-1", ("never-written", stop))
    assert stopped[-1].done_reason == "stop" and stopped[-1].stop_sequence == stop
    assert "".join(f.text for f in stopped) == said[:said.index(stop)]


def test_the_template_shows_a_clients_tool_schema_in_the_key_order_it_was_sent(runner: ModelRunner) -> None:
    # From the Anthropic body to the rendered prompt, as the gateway and the worker pass it on: a client's
    # schema is re-sent every turn, and a re-ordered one would change the prefix of every later prompt.
    schema = {"type": "object", "required": ["b"], "properties": {"z": {"type": "string"}, "b": {"type": "integer"}}}
    req, _, _ = parse_messages_request({"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}],
                                        "tools": [{"name": "Zeta", "description": "z", "input_schema": schema}]}, "r")
    prompt = render_prompt(runner.tokenizer, requests.decode(submit_request(req, "r.1", "").request))
    assert '"parameters": {"type": "object", "required": ["b"], "properties": {"z": {"type": "string"}, "b": {"type": "integer"}}}' in prompt
