"""One model served by two worker processes (rank 0 + a follower) over MLX's ring backend on
127.0.0.1, pipeline-split, spoken to as the gateway does: gRPC on rank 0's socket, frames over
ZeroMQ. The greedy outputs must be the single-process reference; batching, sampling, stop
strings, structured output and cancellation behave as on one worker; a rank killed mid-stream
fails the request with the rank named, and the group ends."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from mlxserve.services.store.store import ModelStore
from mlxserve.v1 import frames, requests, worker_pb2, worker_pb2_grpc

from tests.fixtures.tiny_model import tiny_model_dir  # noqa: F401 - fixture
from tests.fixtures.worker_group import Group, start_group

pytestmark = [pytest.mark.e2e, pytest.mark.smollm2]

HOSTS = ["127.0.0.1", "127.0.0.1:second"]  # labels as the supervisor passes them (MLXSERVE_GROUP_HOSTS)


@pytest.fixture(scope="module")
def smollm2_view(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = ModelStore(tmp_path_factory.mktemp("home") / "models")
    store.create_from_path("smollm2", smollm2_gguf)
    return store.resolve("smollm2").view_path


@pytest.fixture(scope="module")
def group(smollm2_view: Path) -> Iterator[Group]:
    with tempfile.TemporaryDirectory(prefix="mlxg-", dir="/tmp") as d:  # short: unix socket paths
        g = start_group(smollm2_view, Path(d), hosts=HOSTS, extra=("--num-parallel", "8"), env=fast_blas_env())
        try:
            g.wait_ready()
            yield g
        finally:
            g.stop()


def fast_blas_env() -> dict[str, str]:
    """The optimized BLAS the supervisor preloads into workers, one thread a rank: two ranks share
    this host's cores, and OpenBLAS's spinning threads would otherwise fight over them."""
    from mlxserve.services.supervisor.blas import find_optimized_blas, with_preload

    blas = find_optimized_blas()
    return {**with_preload({}, blas), "OPENBLAS_NUM_THREADS": "1"} if blas else {}


class Client:
    """rank 0 as the gateway sees it: Submit/Cancel over gRPC, frames on one ZeroMQ PULL socket."""

    def __init__(self, g: Group) -> None:
        self.stub: worker_pb2_grpc.WorkerStub = g.stub()
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.reply_to = f"ipc://{g.home}/gw-{os.getpid()}-{time.monotonic_ns()}.sock"
        self.pull.bind(self.reply_to)
        self.frames: dict[str, list[frames.TokenEvent]] = {}

    def submit(self, request: requests.GenerationRequest) -> worker_pb2.SubmitResponse:
        self.frames[request.request_id] = []
        return self.stub.Submit(worker_pb2.SubmitRequest(reply_to=self.reply_to, request=requests.encode(request)), timeout=30)

    def receive(self, timeout_s: float = 60.0) -> frames.TokenEvent:
        assert self.pull.poll(int(timeout_s * 1000)), "no frame arrived"
        event = frames.decode(self.pull.recv())
        self.frames[event.request_id].append(event)
        return event

    def until_done(self, ids: set[str], timeout_s: float = 120.0) -> dict[str, list[frames.TokenEvent]]:
        pending = set(ids)
        while pending:
            event = self.receive(timeout_s)
            if event.done:
                pending.discard(event.request_id)
        return {i: self.frames[i] for i in ids}

    def close(self) -> None:
        self.pull.close(0)
        self.ctx.term()


@pytest.fixture
def client(group: Group) -> Iterator[Client]:
    c = Client(group)
    yield c
    c.close()


def chat(request_id: str, content: str | list[dict], **options: object) -> requests.GenerationRequest:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    return requests.GenerationRequest(request_id=request_id, is_chat=True, want_prompt_tokens=True,
                                      messages=tuple(requests.ChatMessage(m["role"], m["content"]) for m in messages),
                                      options=requests.SamplingOptions(**options))


def token_ids(events: list[frames.TokenEvent]) -> list[int]:
    return [t for e in events for t in e.token_ids]


def text(events: list[frames.TokenEvent]) -> str:
    return "".join(e.text for e in events)


def test_group_reports_both_ranks_and_the_strategy(group: Group) -> None:
    deadline = time.monotonic() + 10
    info = group.stub().Info(worker_pb2.InfoRequest(), timeout=5)
    while len(info.ranks) < 2 and time.monotonic() < deadline:  # filled by the first heartbeat
        time.sleep(0.2)
        info = group.stub().Info(worker_pb2.InfoRequest(), timeout=5)
    assert info.strategy == "pipeline"
    assert [(r.rank, r.host) for r in info.ranks] == [(0, HOSTS[0]), (1, HOSTS[1])]
    assert info.ranks[0].pid == group.ranks[0].pid and info.ranks[1].pid == group.ranks[1].pid
    assert all(r.memory_bytes > 0 and r.active_memory > 0 for r in info.ranks)
    assert "mlxserve-group: rank 1 of 2 joined" in group.stderr(1)


def test_group_greedy_outputs_equal_the_reference_while_batched_with_sampled_requests(client: Client, smollm2_reference: dict) -> None:
    cases = smollm2_reference["cases"]
    for i, case in enumerate(cases):
        greedy = {"temperature": 0.0, "num_predict": len(case["greedy_token_ids"])}
        if "messages" in case:
            request = chat(f"greedy-{i}", case["messages"], **greedy)
        else:
            request = requests.GenerationRequest(request_id=f"greedy-{i}", prompt=case["raw_prompt"], raw=True,
                                                 want_prompt_tokens=True, options=requests.SamplingOptions(**greedy))
        assert list(client.submit(request).prompt_token_ids) == case["prompt_token_ids"], f"case {i}"
    # Sampled neighbours in the same batch, each with its own options: two alike (same seed), one unseeded.
    for name, opts in {"seeded-a": {"seed": 7}, "seeded-b": {"seed": 7}, "unseeded": {}}.items():
        client.submit(chat(name, "Write a haiku about rivers.", temperature=0.9, top_p=0.9, num_predict=8, **opts))
    done = client.until_done({f"greedy-{i}" for i in range(len(cases))} | {"seeded-a", "seeded-b", "unseeded"})
    for i, case in enumerate(cases):
        expected = [t for t in case["greedy_token_ids"] if t != 2]  # <|im_end|> ends the text unshown
        assert token_ids(done[f"greedy-{i}"]) == expected, f"case {i}"
        assert done[f"greedy-{i}"][-1].error is None
    assert token_ids(done["seeded-a"]) == token_ids(done["seeded-b"]) and token_ids(done["seeded-a"])
    assert done["unseeded"][-1].done_reason in ("stop", "length") and token_ids(done["unseeded"])


def test_group_stop_string_ends_the_text_before_it(client: Client) -> None:
    client.submit(chat("stop", "What is the capital of France?", temperature=0.0, num_predict=20, stop=("Paris",)))
    events = client.until_done({"stop"})["stop"]
    assert text(events) == "The capital of France is "
    assert events[-1].done_reason == "stop" and events[-1].stop_sequence == "Paris"


def test_group_structured_output_follows_the_schema(client: Client) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    client.submit(requests.GenerationRequest(
        request_id="json", is_chat=True, messages=(requests.ChatMessage("user", "Name a city and its country as JSON."),),
        format=json.dumps(schema), options=requests.SamplingOptions(temperature=0.0, num_predict=60)))
    events = client.until_done({"json"})["json"]
    assert events[-1].error is None
    parsed = json.loads(text(events))
    assert set(parsed) == {"city", "country"} and all(isinstance(v, str) for v in parsed.values())


def test_group_cancel_ends_a_running_request(client: Client) -> None:
    client.submit(chat("long", "Tell me a long story about a lighthouse.", temperature=0.0, num_predict=400))
    while len(client.frames["long"]) < 3:
        client.receive()
    assert client.stub.Cancel(worker_pb2.CancelRequest(request_id="long"), timeout=10).cancelled
    events = client.until_done({"long"})["long"]
    assert events[-1].done_reason == "cancel" and len(token_ids(events)) < 400


def test_group_stops_every_rank_when_rank_0_is_stopped(group: Group) -> None:
    group.ranks[0].send_signal(signal.SIGTERM)
    assert group.wait_exit(20) == [0, 0], (group.stderr(0)[-2000:], group.stderr(1)[-2000:])
    assert "rank 0 stopped the group" in group.stderr(1)


def test_group_rank_killed_mid_stream_fails_the_request_naming_it_and_ends_the_group(smollm2_view: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mlxg-", dir="/tmp") as d:
        g = start_group(smollm2_view, Path(d), hosts=HOSTS)
        c = None
        try:
            g.wait_ready()
            c = Client(g)
            c.submit(chat("doomed", "Tell me a long story about a lighthouse.", temperature=0.0, num_predict=400))
            while len(c.frames["doomed"]) < 3:
                c.receive()
            g.ranks[1].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            while not c.frames["doomed"][-1].done:
                c.receive(timeout_s=10)
            final = c.frames["doomed"][-1]
            assert time.monotonic() - killed < 5
            assert final.done_reason == "error" and "rank 1 (127.0.0.1:second)" in final.error, final.error
            codes = g.wait_exit(10)
            assert codes[0] not in (None, 0), g.stderr(0)[-2000:]
            assert "lost rank 1 (127.0.0.1:second)" in g.stderr(0).strip().splitlines()[-1]
        finally:
            if c is not None:
                c.close()
            g.stop()


@pytest.mark.parametrize("killed", [0, 1])
def test_idle_group_whose_rank_is_killed_ends_within_seconds(smollm2_view: Path, killed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mlxg-", dir="/tmp") as d:
        g = start_group(smollm2_view, Path(d), hosts=HOSTS)
        try:
            g.wait_ready()
            g.ranks[killed].send_signal(signal.SIGKILL)
            survivor = 1 - killed
            codes = g.wait_exit(8)  # rank 0 notices at its next idle heartbeat, a follower at its next message
            assert codes[survivor] not in (None, 0), g.stderr(survivor)[-2000:]
            assert f"lost rank {killed} ({HOSTS[killed]})" in g.stderr(survivor).strip().splitlines()[-1]
        finally:
            g.stop()


def test_group_tensor_strategy_refuses_smollm2_over_two_ranks(smollm2_view: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mlxg-", dir="/tmp") as d:
        g = start_group(smollm2_view, Path(d), strategy="tensor", hosts=HOSTS)
        try:
            assert g.wait_exit(60) == [3, 3]
            last = g.stderr(0).strip().splitlines()[-1]
            assert "tensor parallelism over 2 ranks needs the attention heads (9) to divide by 2" in last, last
            assert "rank 0 (127.0.0.1)" in last
        finally:
            g.stop()


def test_group_tensor_strategy_serves_a_model_whose_heads_divide(tiny_model_dir: Path) -> None:  # noqa: F811
    with tempfile.TemporaryDirectory(prefix="mlxg-", dir="/tmp") as d:
        g = start_group(tiny_model_dir, Path(d), strategy="tensor", hosts=HOSTS)  # 4 heads, 2 key/value heads
        c = None
        try:
            g.wait_ready()
            c = Client(g)
            c.submit(chat("t", "Hello there", temperature=0.0, num_predict=12))
            c.submit(chat("s", "Tell me a story", temperature=0.8, num_predict=12))
            done = c.until_done({"t", "s"})
            assert all(events[-1].error is None and token_ids(events) for events in done.values())
            assert g.stub().Info(worker_pb2.InfoRequest(), timeout=5).strategy == "tensor"
        finally:
            if c is not None:
                c.close()
            g.stop()
