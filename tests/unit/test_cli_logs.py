"""`mlxctl logs`: JSON log lines rendered for people, filters, merging files by time, and following
files as they grow, rotate and appear."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlxserve.cli import logs as logs_cli
from mlxserve.cli.logs import Follower, LineFilter, LogLine, last_lines, log_files, parse, recent, render
from mlxserve.cli.main import app
from mlxserve.services.common.errors import InvalidArgument

UTC = dt.timezone.utc


def record(event: str, ts: str, service: str = "gateway", level: str = "info", **fields: object) -> str:
    return json.dumps({**fields, "event": event, "service": service, "level": level, "timestamp": ts})


def line(text: str, source: str = "gateway") -> LogLine:
    rec = parse(text)
    return LogLine(text, rec, logs_cli.timestamp_of(rec) or 0.0, source)


def write(path: Path, *lines: str) -> None:
    with open(path, "a") as f:
        f.write("".join(ln + "\n" for ln in lines))


def test_a_json_line_renders_as_time_level_service_event_then_its_fields() -> None:
    text = record("request", "2026-11-25T13:43:08.162860Z", request_id="probe1", method="POST",
                  route="/api/generate", status=200, duration_ms=1655.47)
    assert render(line(text), tz=UTC) == ("13:43:08.162 INFO  gateway     request  rid=probe1 method=POST "
                                          "route=/api/generate status=200 duration_ms=1655.47")


def test_values_with_spaces_are_quoted_and_long_request_ids_shortened() -> None:
    text = record("request_failed", "2026-11-25T13:48:26.244176Z", request_id="a" * 30, error="model 'nope' not found",
                  tags=["x", "y"])
    out = render(line(text), tz=UTC)
    assert f"rid={'a' * 15}…" in out
    assert "error=\"model 'nope' not found\"" in out and 'tags=["x","y"]' in out


def test_an_exception_shows_indented_under_its_line() -> None:
    text = record("crashed", "2026-11-25T13:00:00Z", level="error",
                  exception="Traceback (most recent call last):\n  File \"x.py\"\nValueError: boom")
    out = render(line(text), tz=UTC).splitlines()
    assert out[0] == "13:00:00.000 ERROR gateway     crashed"
    assert out[1:] == ["    Traceback (most recent call last):", '      File "x.py"', "    ValueError: boom"]


def test_a_line_that_is_not_json_shows_as_it_is() -> None:
    assert render(line("Traceback (most recent call last):"), tz=UTC) == "Traceback (most recent call last):"
    assert render(line("{not json"), tz=UTC) == "{not json"


def test_colors_only_when_asked() -> None:
    text = record("listening", "2026-11-25T13:00:00Z", url="http://x")
    assert "\x1b[" not in render(line(text), tz=UTC)
    colored = render(line(text), color=True, tz=UTC)
    assert "\x1b[32mINFO " in colored and colored.endswith("http://x")


def test_level_filter_keeps_that_level_and_above() -> None:
    keep = LineFilter(level="warning")
    assert not keep.matches(line(record("a", "2026-11-25T13:00:00Z", level="info")))
    assert keep.matches(line(record("b", "2026-11-25T13:00:00Z", level="warning")))
    assert keep.matches(line(record("c", "2026-11-25T13:00:00Z", level="error")))
    assert keep.matches(line("a plain stderr line"))
    with pytest.raises(InvalidArgument, match="unknown log level"):
        LineFilter(level="loud")


def test_request_id_filter_matches_the_request_and_the_workers_submit_id_only() -> None:
    keep = LineFilter(request_id="rid1")
    assert keep.matches(line(record("request", "2026-11-25T13:00:00Z", request_id="rid1")))
    assert keep.matches(line(record("cancelled", "2026-11-25T13:00:00Z", submit_id="rid1")))
    assert not keep.matches(line(record("request", "2026-11-25T13:00:00Z", request_id="rid10")))
    assert not keep.matches(line("a plain stderr line"))


def test_last_lines_reads_the_end_of_a_file_across_read_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gateway.log"
    write(path, *(record(f"e{i}", f"2026-11-25T13:00:{i:02d}Z", n="x" * 50) for i in range(40)))
    real = logs_cli.read_backwards
    monkeypatch.setattr(logs_cli, "read_backwards", lambda p: real(p, block=100))
    got = last_lines(path, 5, LineFilter())
    assert [ln.record["event"] for ln in got] == ["e35", "e36", "e37", "e38", "e39"]
    odd = last_lines(path, 3, LineFilter(request_id=None, level=None))
    assert [ln.record["event"] for ln in odd] == ["e37", "e38", "e39"]


def test_all_services_merge_by_time_and_a_traceback_stays_after_its_line(tmp_path: Path) -> None:
    gw, sup = tmp_path / "gateway.stderr.log", tmp_path / "supervisor.stderr.log"
    write(gw, record("g1", "2026-11-25T13:00:01Z"), "Traceback (most recent call last):", "ValueError: boom",
          record("g2", "2026-11-25T13:00:04Z"))
    write(sup, record("s1", "2026-11-25T13:00:00Z", service="supervisor"),
          record("s2", "2026-11-25T13:00:02Z", service="supervisor"),
          record("s3", "2026-11-25T13:00:05Z", service="supervisor"))
    got = recent([gw, sup], 50, LineFilter())
    names = [ln.record["event"] if ln.record else ln.text for ln in got]
    assert names == ["s1", "g1", "Traceback (most recent call last):", "ValueError: boom", "s2", "g2", "s3"]
    assert [ln.record["event"] for ln in recent([gw, sup], 2, LineFilter())] == ["g2", "s3"]


def test_which_files_each_service_name_reads(tmp_path: Path) -> None:
    for name in ("gateway", "store", "supervisor", "worker-tiny_latest", "worker-smollm2_135m"):
        write(tmp_path / f"{name}.log", "{}")
        write(tmp_path / f"{name}.stderr.log", "{}")
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(log_files(tmp_path, "all")) == ["gateway.log", "store.log", "supervisor.log",
                                                 "worker-smollm2_135m.log", "worker-tiny_latest.log"]
    assert names(log_files(tmp_path, "worker")) == ["worker-smollm2_135m.log", "worker-tiny_latest.log"]
    assert names(log_files(tmp_path, "worker:tiny")) == ["worker-tiny_latest.log"]
    assert names(log_files(tmp_path, "worker:smollm2:135m")) == ["worker-smollm2_135m.log"]
    assert names(log_files(tmp_path, "gateway", stderr=True)) == ["gateway.stderr.log"]
    assert log_files(tmp_path, "nothing") == []


def test_follower_hands_out_complete_lines_written_after_it_started(tmp_path: Path) -> None:
    path = tmp_path / "gateway.log"
    write(path, record("old", "2026-11-25T13:00:00Z"))
    follower = Follower(lambda: [path])
    assert follower.poll() == []
    with open(path, "a") as f:
        f.write(record("new", "2026-11-25T13:00:01Z") + "\n" + '{"event": "half')
    assert [ln.record["event"] for ln in follower.poll()] == ["new"]
    with open(path, "a") as f:
        f.write('", "timestamp": "2026-11-25T13:00:02Z"}\n')
    assert [ln.record["event"] for ln in follower.poll()] == ["half"]
    follower.close()


def test_follower_survives_rotation_truncation_and_picks_up_new_files(tmp_path: Path) -> None:
    path = tmp_path / "gateway.log"
    write(path, record("before", "2026-11-25T13:00:00Z"))
    follower = Follower(lambda: sorted(tmp_path.glob("*.log")))
    write(path, record("last-in-old", "2026-11-25T13:00:01Z"))
    path.rename(tmp_path / "gateway.log.1")
    write(path, record("first-in-new", "2026-11-25T13:00:02Z"))
    assert [ln.record["event"] for ln in follower.poll()] == ["last-in-old", "first-in-new"]

    path.write_text("")  # truncated in place
    write(path, record("after-truncate", "2026-11-25T13:00:03Z"))
    assert [ln.record["event"] for ln in follower.poll()] == ["after-truncate"]

    write(tmp_path / "worker-new.log", record("worker-up", "2026-11-25T13:00:04Z", service="worker-new"),
          record("worker-more", "2026-11-25T13:00:05Z", service="worker-new"))
    assert [ln.record["event"] for ln in follower.poll()] == ["worker-up", "worker-more"]
    follower.close()


def test_follower_sees_lines_another_thread_appends(tmp_path: Path) -> None:
    path = tmp_path / "gateway.log"
    path.touch()
    follower = Follower(lambda: [path])

    def append() -> None:
        for i in range(5):
            write(path, record(f"e{i}", f"2026-11-25T13:00:0{i}Z"))
            time.sleep(0.02)

    writer = threading.Thread(target=append)
    writer.start()
    got: list[str] = []
    deadline = time.monotonic() + 10
    for ln in follower.follow(interval=0.01, should_stop=lambda: len(got) >= 5 or time.monotonic() > deadline):
        got.append(ln.record["event"])
    writer.join()
    follower.close()
    assert got == ["e0", "e1", "e2", "e3", "e4"]


def test_cli_without_a_logs_folder_says_so_with_the_not_found_exit_code(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "nowhere"), "logs"])
    assert result.exit_code == 3
    assert "no logs at" in result.output and "mlxctl serve" in result.output


def test_cli_renders_the_last_lines_and_passes_json_through(tmp_path: Path) -> None:
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    write(logs_dir / "gateway.log", *(record(f"e{i}", f"2026-11-25T13:00:0{i}Z", request_id=f"r{i}") for i in range(5)))
    write(logs_dir / "store.log", record("store_listening", "2026-11-25T13:00:09Z", service="store"))
    runner = CliRunner()
    shown = runner.invoke(app, ["--home", str(tmp_path), "logs", "gateway", "-n", "2"])
    assert shown.exit_code == 0, shown.output
    assert [ln.split()[3] for ln in shown.output.splitlines()] == ["e3", "e4"]
    raw = runner.invoke(app, ["--home", str(tmp_path), "logs", "--json", "--request-id", "r1"])
    assert raw.exit_code == 0 and [json.loads(ln)["event"] for ln in raw.output.splitlines()] == ["e1"]
    everything = runner.invoke(app, ["--home", str(tmp_path), "logs", "-n", "2"])
    assert [ln.split()[3] for ln in everything.output.splitlines()] == ["e4", "store_listening"]
    unknown = runner.invoke(app, ["--home", str(tmp_path), "logs", "worker"])
    assert unknown.exit_code == 3 and "there are logs for gateway, store" in unknown.output
