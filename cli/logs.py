"""`mlxctl logs`: the services' JSON log lines rendered for people, merged by time, and followed.

Each service writes JSON lines (structlog) to `<logs>/<service>.log`, and its captured stdout and
stderr (the same lines plus anything that is not JSON: a library's warnings, a crash's traceback)
to `<service>.stderr.log`. Workers write `worker-<model>.log`. This module only reads those files,
so it works whether or not the server is running.
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Optional

import typer

from mlxserve.services.common.errors import InvalidArgument, NotFound
from mlxserve.services.worker.main import log_service_name

from .backend import START_HINT, exits_on_error, settings_from

SERVICES = ("gateway", "store", "supervisor")
LEVELS = ("debug", "info", "warning", "error", "critical")
_LEVEL_RANK = {name: i for i, name in enumerate(LEVELS)} | {"warn": 2, "exception": 3, "fatal": 4}
# Keys every line has; the renderer puts them in fixed columns instead of key=value pairs.
_COLUMN_KEYS = ("timestamp", "level", "service", "event", "request_id")
_RID_WIDTH = 16  # gateway ids (16 hex) and mlxctl's (cli-<12 hex>) show whole
_ANSI = {"dim": "2", "bold": "1", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35",
         "cyan": "36", "bold_red": "1;31"}
_LEVEL_STYLE = {"debug": "blue", "info": "green", "warning": "yellow", "error": "red", "critical": "bold_red"}


@dataclass(frozen=True)
class LogLine:
    """One line of one log file: its text, its JSON record if it is one, and when it was written.

    A line that is not JSON takes the time of the JSON line before it in the same file, so a
    traceback stays beside the line it follows when files are merged.
    """

    text: str
    record: dict | None
    ts: float
    source: str


def parse(text: str) -> dict | None:
    """The JSON object on a log line, or None for anything else."""
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def timestamp_of(record: dict | None) -> float | None:
    """A record's `timestamp` (ISO 8601, UTC) as seconds since the epoch."""
    raw = (record or {}).get("timestamp")
    if not isinstance(raw, str):
        return None
    try:
        when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()


def level_rank(level: str) -> int:
    """debug 0 < info < warning < error < critical; refuses names it does not know."""
    rank = _LEVEL_RANK.get(level.lower())
    if rank is None:
        raise InvalidArgument(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    return rank


@dataclass(frozen=True)
class LineFilter:
    """Which lines to show: at least `level`, and only those of one request when `request_id` is
    set (matched against `request_id` and the worker's per-attempt `submit_id`). Lines that are
    not JSON carry neither, so they show unless a request id is asked for."""

    level: str | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        if self.level is not None:
            level_rank(self.level)

    def matches(self, line: LogLine) -> bool:
        record = line.record
        if record is None:
            return self.request_id is None
        if self.request_id is not None and self.request_id not in (record.get("request_id"), record.get("submit_id")):
            return False
        if self.level is not None:
            rank = _LEVEL_RANK.get(str(record.get("level", "info")).lower(), 1)
            return rank >= level_rank(self.level)
        return True


# ---------------------------------------------------------------------------------------- rendering


def _paint(text: str, style: str | None, color: bool) -> str:
    if not color or not style:
        return text
    return f"\x1b[{_ANSI[style]}m{text}\x1b[0m"


def _value(value: object) -> str:
    if isinstance(value, str):
        # Quote only what would not read back as one token.
        return value if value and not any(c.isspace() or c in "\"=" for c in value) else json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def short_request_id(rid: str) -> str:
    """A request id as shown: whole up to 16 characters (every id the services make), else cut."""
    return rid if len(rid) <= _RID_WIDTH else rid[: _RID_WIDTH - 1] + "…"


def render(line: LogLine, *, color: bool = False, tz: dt.tzinfo | None = None) -> str:
    """`HH:MM:SS.mmm LEVEL service  event  rid=... key=value ...` for a JSON line (local time unless
    `tz`); an exception's traceback on the lines after it; any other line as it is."""
    record = line.record
    if record is None:
        return line.text
    ts = timestamp_of(record)
    clock = dt.datetime.fromtimestamp(ts, tz).strftime("%H:%M:%S.%f")[:-3] if ts is not None else " " * 12
    level = str(record.get("level", "")).lower()
    parts = [
        _paint(clock, "dim", color),
        _paint(f"{level.upper():<5}", _LEVEL_STYLE.get(level), color),
        _paint(f"{record.get('service', line.source):<10}", "cyan", color),
        _paint(str(record.get("event", "")), "bold", color),
    ]
    pairs = []
    if record.get("request_id"):
        pairs.append(_paint("rid=", "dim", color) + _paint(short_request_id(str(record["request_id"])), "magenta", color))
    exception = record.get("exception")
    for key, value in record.items():
        if key in _COLUMN_KEYS or key == "exception":
            continue
        pairs.append(_paint(f"{key}=", "dim", color) + _value(value))
    text = " ".join(parts[:3]) + "  " + parts[3] + ("  " + " ".join(pairs) if pairs else "")
    if isinstance(exception, str) and exception:
        text += "\n" + "\n".join("    " + ln for ln in exception.rstrip("\n").splitlines())
    return text


# ------------------------------------------------------------------------------------------- files


def log_files(logs_dir: Path, service: str = "all", *, stderr: bool = False) -> list[Path]:
    """The files `service` names: gateway, store, supervisor, worker (every worker),
    worker:MODEL (one model's worker), all (everything), or any other `<name>` with a log file.
    `stderr` picks the captured stdout/stderr files instead of the JSON logs."""
    suffix = ".stderr.log" if stderr else ".log"

    def existing(names: Iterable[str]) -> list[Path]:
        return sorted({logs_dir / f"{n}{suffix}" for n in names if (logs_dir / f"{n}{suffix}").is_file()})

    if service == "all":
        return sorted(p for p in logs_dir.glob(f"*{suffix}") if stderr or not p.name.endswith(".stderr.log"))
    if service == "worker":
        return [p for p in log_files(logs_dir, "all", stderr=stderr) if p.name.startswith("worker-")]
    if service.startswith("worker:"):
        model = service.split(":", 1)[1]
        names = [log_service_name(model)]
        if ":" not in model.rsplit("/", 1)[-1]:
            names.append(log_service_name(f"{model}:latest"))  # the tag a bare name resolves to
        return existing(names)
    return existing([service])


def source_name(path: Path) -> str:
    """The service a log file belongs to (its name without `.log` / `.stderr.log`)."""
    name = path.name
    return name[: -len(".stderr.log")] if name.endswith(".stderr.log") else name[: -len(".log")]


def _decode(raw: bytes) -> str:
    return raw.rstrip(b"\r").decode("utf-8", errors="replace")


def read_backwards(path: Path, block: int = 64 * 1024) -> Iterator[str]:
    """A file's non-empty lines, last first, reading only as much of the end as is asked for."""
    with open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END)
        rest = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step) + rest
            pieces = chunk.split(b"\n")
            rest = pieces[0]
            for raw in reversed(pieces[1:]):
                if raw.strip():
                    yield _decode(raw)
        if rest.strip():
            yield _decode(rest)


def _timed(texts: Iterable[str], source: str, last_ts: float = 0.0) -> list[LogLine]:
    """Lines in file order with their times; a non-JSON line borrows the previous line's."""
    out = []
    for text in texts:
        record = parse(text)
        ts = timestamp_of(record)
        last_ts = ts if ts is not None else last_ts
        out.append(LogLine(text, record, last_ts, source))
    return out


def last_lines(path: Path, n: int, keep: LineFilter) -> list[LogLine]:
    """The last `n` lines of one file that `keep` lets through, oldest first."""
    if n <= 0:
        return []
    source = source_name(path)
    groups: list[list[LogLine]] = []  # newest first: a JSON line and the non-JSON lines after it
    pending: list[str] = []           # non-JSON lines met (going backwards) before their JSON line
    found = 0
    earliest = 0.0
    for text in read_backwards(path):
        record = parse(text)
        if record is None:
            pending.append(text)
            continue
        ts = timestamp_of(record)
        earliest = ts if ts is not None else earliest
        group = [LogLine(text, record, earliest, source)] + [LogLine(t, None, earliest, source) for t in reversed(pending)]
        pending = []
        group = [ln for ln in group if keep.matches(ln)]
        groups.append(group)
        found += len(group)
        if found >= n:
            break
    else:
        # The file opens with non-JSON lines: they come before the first timed line.
        groups.append([ln for ln in (LogLine(t, None, earliest, source) for t in reversed(pending)) if keep.matches(ln)])
    return [ln for group in reversed(groups) for ln in group][-n:]


def merge(streams: Iterable[list[LogLine]]) -> list[LogLine]:
    """Several files' lines as one list by time, keeping each file's own order."""
    return list(heapq.merge(*streams, key=lambda ln: ln.ts))


def recent(paths: list[Path], n: int, keep: LineFilter) -> list[LogLine]:
    """The last `n` matching lines across `paths`, merged by timestamp."""
    return merge(last_lines(p, n, keep) for p in paths)[-n:] if n > 0 else []


@dataclass
class _Tail:
    path: Path
    file: BinaryIO
    inode: int
    partial: bytes = b""
    last_ts: float = 0.0
    seen: bytes = b""  # the last bytes read, to notice the file rewritten below where we are


class Follower:
    """Tails a changing set of files like `tail -F`.

    `discover` is asked for the files on every poll, so a log that appears while following (a
    worker started for another model) is read from its start. A file replaced under the same
    name (rotation) is read to its end, then the new one from its start; a file that shrank
    (truncation) is read again from its start. A line is handed out once it ends in a newline.
    """

    def __init__(self, discover: Callable[[], list[Path]], *, from_start: bool = False) -> None:
        self._discover = discover
        self._tails: dict[Path, _Tail] = {}
        for path in discover():
            self._open(path, at_end=not from_start)

    def poll(self) -> list[LogLine]:
        """Every complete line written since the last poll, merged across files by time."""
        for path in self._discover():
            if path not in self._tails:
                self._open(path, at_end=False)
        return merge(self._read(t) for t in list(self._tails.values()))

    def follow(self, interval: float = 0.25, should_stop: Callable[[], bool] = lambda: False) -> Iterator[LogLine]:
        """Lines as they are written, until `should_stop()` (or the caller stops iterating)."""
        while not should_stop():
            got = self.poll()
            yield from got
            if not got:
                time.sleep(interval)

    def close(self) -> None:
        for tail in self._tails.values():
            tail.file.close()
        self._tails.clear()

    def _open(self, path: Path, *, at_end: bool) -> None:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return
        if at_end:
            f.seek(0, os.SEEK_END)
        self._tails[path] = _Tail(path, f, os.fstat(f.fileno()).st_ino)

    def _read(self, tail: _Tail) -> list[LogLine]:
        if self._rewritten(tail):
            tail.file.seek(0)  # truncated (and maybe written again past where we were): all of it is new
            tail.partial = tail.seen = b""
        lines = self._lines(tail, tail.file.read())
        st = _stat(tail.path)
        if st is None:
            return lines  # gone for now (mid-rotation); keep reading the old file until a new one shows
        if st.st_ino != tail.inode:
            # Rotated: the old file is read to its end (above, plus an unterminated last line),
            # then the new one from its start.
            lines += self._lines(tail, b"\n" if tail.partial else b"")
            tail.file.close()
            tail.file = open(tail.path, "rb")
            tail.inode, tail.seen = os.fstat(tail.file.fileno()).st_ino, b""
            lines += self._lines(tail, tail.file.read())
        elif st.st_size < tail.file.tell():
            tail.file.seek(0)  # truncated in place: what is there now is new
            tail.partial = tail.seen = b""
            lines += self._lines(tail, tail.file.read())
        return lines

    @staticmethod
    def _rewritten(tail: _Tail) -> bool:
        """Whether the bytes just before our position are no longer the ones we read there."""
        if not tail.seen:
            return False
        pos = tail.file.tell()
        tail.file.seek(pos - len(tail.seen))
        same = tail.file.read(len(tail.seen)) == tail.seen
        tail.file.seek(pos)
        return not same

    @staticmethod
    def _lines(tail: _Tail, data: bytes) -> list[LogLine]:
        if not data:
            return []
        tail.seen = (tail.seen + data)[-64:]
        complete, newline, tail.partial = (tail.partial + data).rpartition(b"\n")
        if not newline:
            return []
        texts = [_decode(raw) for raw in complete.split(b"\n") if raw.strip()]
        lines = _timed(texts, source_name(tail.path), tail.last_ts)
        if lines:
            tail.last_ts = lines[-1].ts
        return lines


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------------------------- CLI


def _use_color(out) -> bool:
    return out.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _emit(lines: Iterable[LogLine], keep: LineFilter, as_json: bool, color: bool) -> None:
    out = sys.stdout
    for line in lines:
        if not keep.matches(line):
            continue
        if as_json:
            if line.record is None:
                continue  # scripts get JSON only; the non-JSON lines show in the rendered view
            out.write(line.text + "\n")
        else:
            out.write(render(line, color=color) + "\n")
    out.flush()


def complete_service(incomplete: str) -> list[str]:
    """Shell completion for SERVICE: the fixed names, and `worker:<model>` for each worker log."""
    try:
        logs_dir = settings_from(None).logs_dir
        workers = sorted({source_name(p) for p in log_files(logs_dir, "worker")}) if logs_dir.is_dir() else []
    except Exception:  # completion must never print a traceback into the user's shell
        workers = []
    names = ["all", *SERVICES, "worker", *(f"worker:{w[len('worker-'):]}" for w in workers)]
    return [n for n in names if n.startswith(incomplete)]


@exits_on_error
def logs(
    ctx: typer.Context,
    service: str = typer.Argument("all", help="gateway, store, supervisor, worker (every model's worker), "
                                              "worker:MODEL, or all (merged by time)",
                                 autocompletion=complete_service),
    follow: bool = typer.Option(False, "-f", "--follow", help="keep printing lines as they are written (Ctrl-C to stop); "
                                                              "survives rotation and picks up new worker logs"),
    lines: int = typer.Option(50, "-n", "--lines", min=0, help="how many of the last lines to print first"),
    as_json: bool = typer.Option(False, "--json", help="print the raw JSON lines (filtered), not the rendered ones"),
    level: Optional[str] = typer.Option(None, "--level", help="only lines at this level or above: debug, info, warning, error"),
    request_id: Optional[str] = typer.Option(None, "--request-id", help="only the lines of one request, in every service "
                                                                        "(the X-Request-Id the gateway answers with)"),
    stderr: bool = typer.Option(False, "--stderr", help="read the services' captured stdout/stderr instead "
                                                        "(tracebacks, library warnings)"),
) -> None:
    """Show the services' logs, rendered for people. Reads the files under the logs folder, so it
    works with the server stopped too. Lines that are not JSON are shown as they are."""
    settings = settings_from(ctx)
    logs_dir = settings.logs_dir
    if not logs_dir.is_dir():
        raise NotFound(f"no logs at {logs_dir}: mlxserve has not run with this home yet; {START_HINT}")
    keep = LineFilter(level=level, request_id=request_id)

    def discover() -> list[Path]:
        return log_files(logs_dir, service, stderr=stderr)

    paths = discover()
    if not paths and not follow:
        kind = "stderr logs" if stderr else "logs"
        known = sorted({source_name(p) for p in logs_dir.glob("*.log")})
        raise NotFound(f"no {kind} for {service!r} in {logs_dir}"
                       + (f"; there are logs for {', '.join(known)}" if known else ""))
    color = _use_color(sys.stdout) and not as_json
    # Placed at each file's end before the recent lines print, so nothing written meanwhile is missed.
    follower = Follower(discover) if follow else None
    try:
        _emit(recent(paths, lines, keep), keep, as_json, color)
        if follower is not None:
            for line in follower.follow():
                _emit([line], keep, as_json, color)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a follow ends: not a failure
    except BrokenPipeError:
        # The reader (`| head`) went away; stop quietly, without Python's second complaint at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if follower is not None:
            follower.close()
