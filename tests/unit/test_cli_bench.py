"""`mlxctl bench`: the statistics it reports, how it times a stream (with a fake clock against a
canned NDJSON server), distinct prompts, the table, and its errors."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Callable, Iterator

import pytest
from typer.testing import CliRunner

from mlxserve.cli.bench import (HEADERS, BenchConfig, Prompts, StreamResult, parse_concurrency, percentile, print_report,
                                report_rows, stream_one, summarize)
from mlxserve.cli import gateway_client
from mlxserve.cli.main import app
from mlxserve.services.common.errors import Internal, InvalidArgument, NotFound
from tests.fixtures.http_gateway import InProcessSession, Unreachable


def result(ttft: float, last: float, tokens: int, eval_ns: int) -> StreamResult:
    return StreamResult(ttft_s=ttft, last_token_s=last, total_s=last + 0.001, eval_count=tokens, eval_duration_ns=eval_ns)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0], 95) == 1.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)


def test_decode_rates_from_server_durations_and_from_arrival_times() -> None:
    r = result(ttft=0.5, last=1.5, tokens=11, eval_ns=2_000_000_000)
    assert r.server_decode_tps == pytest.approx(5.5)   # 11 tokens in the server's 2 s
    assert r.client_decode_tps == pytest.approx(10.0)  # 10 tokens after the first, over 1 s
    one = result(ttft=0.5, last=0.5, tokens=1, eval_ns=0)
    assert one.server_decode_tps is None and one.client_decode_tps is None


def test_a_level_reports_aggregate_tokens_over_wall_time_and_ttft_percentiles() -> None:
    results = [result(ttft=t, last=t + 1.0, tokens=9, eval_ns=1_000_000_000) for t in (0.1, 0.2, 0.3, 0.4)]
    stats = summarize(4, wall_s=2.0, results=results)
    assert stats.streams == 4 and stats.requests == 4 and stats.eval_tokens == 36
    assert stats.aggregate_tps == pytest.approx(18.0)
    assert stats.ttft_p50_s == pytest.approx(0.25) and stats.ttft_p95_s == pytest.approx(0.385)
    assert stats.server_decode_tps == pytest.approx(9.0) and stats.client_decode_tps == pytest.approx(8.0)


def test_concurrency_levels_parse_and_bad_ones_are_refused() -> None:
    assert parse_concurrency("1,2,4,8") == [1, 2, 4, 8]
    assert parse_concurrency(" 3 ") == [3]
    for bad in ("", "0", "1,x", "-2"):
        with pytest.raises(InvalidArgument, match="--concurrency"):
            parse_concurrency(bad)


def test_every_request_opens_with_its_own_system_message() -> None:
    first, second = Prompts(None), Prompts("same prompt")
    systems = [first.take()[0] for _ in range(20)] + [second.take()[0] for _ in range(20)]
    assert len(set(systems)) == 40
    assert {second.take()[1] for _ in range(3)} == {"same prompt"}


# ------------------------------------------------------------------------------ streaming, fake clock


def ndjson(*chunks: dict) -> bytes:
    return b"".join(json.dumps(c).encode() + b"\n" for c in chunks)


def fake_clock(times: list[float]) -> Callable[[], float]:
    it: Iterator[float] = iter(times)
    return lambda: next(it)


def test_a_stream_is_timed_from_its_first_token_to_its_last_with_the_servers_counts() -> None:
    seen: list[dict] = []

    def answer(method: str, path: str, body: dict | None) -> tuple[int, list[dict], dict[str, str]]:
        assert path == "/api/generate" and body is not None
        seen.append(body)
        return 200, [{"response": "a", "done": False}, {"response": "", "done": False}, {"response": "b", "done": False},
                     {"response": "", "done": True, "eval_count": 3, "eval_duration": 500_000_000,
                      "prompt_eval_count": 7, "load_duration": 0}], {}

    cfg = BenchConfig(model="m", url="http://gateway.test", num_predict=3, runs=1, concurrency=[1], prompt=None, keep_alive="1m")
    # request sent at 10.0; chunks at 10.2, 10.3, 10.6; the final chunk at 10.7; done at 10.8
    r = asyncio.run(stream_one(InProcessSession(answer), cfg, "sys", "hi",  # type: ignore[arg-type]
                               clock=fake_clock([10.0, 10.2, 10.3, 10.6, 10.7, 10.8])))
    assert r.ttft_s == pytest.approx(0.2) and r.last_token_s == pytest.approx(0.6) and r.total_s == pytest.approx(0.8)
    assert r.eval_count == 3 and r.prompt_eval_count == 7
    assert r.server_decode_tps == pytest.approx(6.0) and r.client_decode_tps == pytest.approx(5.0)
    body = seen[0]
    assert body["options"] == {"temperature": 0, "num_predict": 3} and body["stream"] is True
    assert body["system"] == "sys" and body["keep_alive"] == "1m"


def test_an_http_error_maps_to_the_same_error_as_mlxctl_run() -> None:
    session = InProcessSession(lambda method, path, body: (404, {"error": "model 'nope' not found"}, {}))
    cfg = BenchConfig(model="nope", url="http://gateway.test", num_predict=3, runs=1, concurrency=[1], prompt=None, keep_alive=None)
    with pytest.raises(NotFound, match="model 'nope' not found"):
        asyncio.run(stream_one(session, cfg, "sys", "hi"))  # type: ignore[arg-type]


def test_an_error_line_mid_stream_fails_the_request() -> None:
    session = InProcessSession(lambda method, path, body: (200, [{"response": "a"}, {"error": "the worker crashed"}], {}))
    cfg = BenchConfig(model="m", url="http://gateway.test", num_predict=3, runs=1, concurrency=[1], prompt=None, keep_alive=None)
    with pytest.raises(Internal, match="^a benchmark request failed: the worker crashed$"):
        asyncio.run(stream_one(session, cfg, "sys", "hi"))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ report


def report() -> dict:
    level = {"streams": 2, "requests": 2, "wall_s": 1.0, "eval_tokens": 16, "ttft_p50_s": 0.05, "ttft_p95_s": 0.07,
             "server_decode_tps": 100.0, "client_decode_tps": 90.5, "aggregate_tps": 16.0}
    return {"model": "tiny:latest", "url": "http://127.0.0.1:1", "config": {"num_predict": 8},
            "load": {"warmup_s": 1.5, "load_duration_s": 1.2},
            "single": {**level, "streams": 1, "requests": 3, "client_decode_tps": None}, "concurrency": [level]}


def test_the_plain_table_has_a_row_per_level_under_the_headers() -> None:
    out = io.StringIO()
    print_report(report(), out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("tiny:latest at http://127.0.0.1:1: 8 tokens per request") and "load 1.20 s" in lines[0]
    assert all(h in lines[1] for h in HEADERS)
    assert lines[2].split()[:5] == ["single", "3", "50", "ms", "70"]
    assert report_rows(report())[0][5] == "-"  # no client rate known
    assert lines[3].split() == ["2", "2", "50", "ms", "70", "ms", "100.0", "90.5", "16.0"]


def test_cli_with_no_server_says_it_is_not_running_with_exit_code_4(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_client, "make_opener", Unreachable().opener)
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "bench", "tiny", "--host", "127.0.0.1:9"])
    assert result.exit_code == 4
    assert result.output.startswith("Error: mlxserve is not running") and "mlxctl serve" in result.output


def test_cli_refuses_a_bad_concurrency_list_with_exit_code_2(tmp_path) -> None:
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "bench", "tiny", "--concurrency", "1,zero"])
    assert result.exit_code == 2 and "--concurrency" in result.output
