"""How mlxctl prints: tables, human sizes and times, progress lines, streamed answers, Ollama-style timings."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any, Callable, Iterable, Protocol, Sequence, TextIO

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.text import Text


def human_size(n: int) -> str:
    """Decimal units, as Ollama prints them: 91 MB, 4.7 GB."""
    if n >= 1000**3:
        return f"{n / 1000**3:.1f} GB"
    if n >= 1000**2:
        return f"{n / 1000**2:.0f} MB"
    if n >= 1000:
        return f"{n / 1000:.0f} KB"
    return f"{n} B"


def parse_time(text: str) -> dt.datetime | None:
    """An RFC 3339 timestamp (Z or offset) as an aware datetime; None if empty or unreadable."""
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _span(seconds: float) -> str:
    units = (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400), ("day", 86400),
             ("hour", 3600), ("minute", 60), ("second", 1))
    for name, size in units:
        if seconds >= size:
            n = int(seconds // size)
            if n == 1:
                return f"About an {name}" if name == "hour" else f"About a {name}"
            return f"{n} {name}s"
    return "Less than a second"


def relative_time(text: str, now: dt.datetime | None = None) -> str:
    """'3 minutes ago', '4 minutes from now', 'Forever' (over a century ahead), or '' if unknown."""
    when = parse_time(text)
    if when is None:
        return ""
    now = now or dt.datetime.now(dt.timezone.utc)
    delta = (when - now).total_seconds()
    if delta > 100 * 365 * 86400:
        return "Forever"
    if delta >= 0:
        return f"{_span(delta)} from now"
    return f"{_span(-delta)} ago"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by at least three spaces, like `ollama list`."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["    ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [list(headers), *rows]]
    return "\n".join(lines)


class ProgressPrinter:
    """Prints a store operation's progress: each status once, with a percentage when its total is
    known. On a terminal the percentage is redrawn in place; elsewhere (logs, pipes) only the first
    and the final figure of each status are printed, so a large file doesn't print 100 lines."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout
        self._tty = self._out.isatty()
        self._status: str | None = None
        self._last_pct: int | None = None
        self._open_line = False

    def update(self, status: str, total: int = 0, completed: int = 0) -> None:
        pct = min(100, 100 * completed // total) if total > 0 else None
        new_status = status != self._status
        if not new_status and pct == self._last_pct:
            return
        line = status if pct is None else f"{status} {pct:3d}%"
        if self._tty:
            if self._open_line and not new_status:
                self._out.write("\r" + line)
            else:
                self._out.write(("\n" if self._open_line else "") + line)
            self._open_line = pct is not None and pct < 100
            if not self._open_line:
                self._out.write("\n")
        elif new_status or pct == 100:
            self._out.write(line + "\n")
        self._out.flush()
        self._status, self._last_pct = status, pct

    def close(self) -> None:
        if self._open_line:
            self._out.write("\n")
            self._out.flush()
            self._open_line = False


class ProgressView(Protocol):
    def update(self, status: str, total: int = 0, completed: int = 0) -> None: ...
    def close(self) -> None: ...


class _SizedOnly(ProgressColumn):
    """Show `column` only for steps that move bytes; a plain status line gets nothing there."""

    def __init__(self, column: ProgressColumn) -> None:
        super().__init__()
        self.column = column

    def render(self, task: Task) -> Text:
        if not task.fields.get("sized"):
            return Text("")
        return self.column.render(task)  # type: ignore[return-value]


class BarProgress:
    """Progress on a terminal: one line per status; steps with a byte total get a bar with the
    bytes done and total, the speed and the time left (rich redraws them in place)."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            _SizedOnly(BarColumn(bar_width=30)),
            _SizedOnly(DownloadColumn()),
            _SizedOnly(TransferSpeedColumn()),
            _SizedOnly(TimeRemainingColumn()),
            console=console, refresh_per_second=8,
        )
        self._tasks: dict[str, object] = {}
        self._progress.start()

    def update(self, status: str, total: int = 0, completed: int = 0) -> None:
        task = self._tasks.get(status)
        if task is None:
            sized = total > 0
            task = self._tasks[status] = self._progress.add_task(status, total=total if sized else 1,
                                                                  completed=completed if sized else 1, sized=sized)
        if total > 0:
            self._progress.update(task, total=total, completed=min(completed, total))  # type: ignore[arg-type]

    def close(self) -> None:
        self._progress.stop()


def progress_view(out: TextIO | None = None) -> ProgressView:
    """Bars with sizes, speed and ETA on a terminal; plain lines (ProgressPrinter) elsewhere."""
    out = out or sys.stdout
    if out.isatty():
        return BarProgress(Console(file=out, force_terminal=True))
    return ProgressPrinter(out)


def status_lines(out: TextIO) -> Callable[[str], None]:
    """Where a long command says what it is doing: one line each on a terminal, nothing otherwise."""
    if not out.isatty():
        return lambda _: None
    return lambda message: print(message, file=out, flush=True)


def show_progress(events: Iterable[Any], out: TextIO | None = None) -> None:
    """Render a store operation's Progress stream (status, total, completed) as it arrives."""
    view = progress_view(out)
    try:
        for p in events:
            view.update(p.status, p.total, p.completed)
    finally:
        view.close()


def _duration(ns: int) -> str:
    s = ns / 1e9
    if s >= 1:
        return f"{s:.6g}s"
    return f"{ns / 1e6:.6g}ms"


def print_timings(done: dict, out=None) -> None:
    """The stats `ollama run --verbose` prints after an answer, from the final NDJSON chunk."""
    out = out or sys.stderr
    rows = []
    if "total_duration" in done:
        rows.append(("total duration:", _duration(int(done["total_duration"]))))
    if "load_duration" in done:
        rows.append(("load duration:", _duration(int(done["load_duration"]))))
    for prefix, key in (("prompt eval", "prompt_eval"), ("eval", "eval")):
        count, ns = done.get(f"{key}_count"), done.get(f"{key}_duration")
        if count is not None:
            rows.append((f"{prefix} count:", f"{count} token(s)"))
        if ns:
            rows.append((f"{prefix} duration:", _duration(int(ns))))
            if count is not None:
                rows.append((f"{prefix} rate:", f"{count / (int(ns) / 1e9):.2f} tokens/s"))
    for label, value in rows:
        print(f"{label:<22}{value}", file=out)


DIM, RESET = "\x1b[2m", "\x1b[0m"


class AnswerWriter:
    """Prints an answer as it streams: thinking first (between Ollama's 'Thinking...' markers,
    dimmed on a terminal), then the content; `finish` ends the last line."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.content = ""
        self.thinking = ""
        self._in_thinking = False
        self._at_line_start = True

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        self._at_line_start = text.endswith("\n")

    def add(self, content: str = "", thinking: str = "") -> None:
        if thinking:
            if not self._in_thinking:
                self._write("Thinking...\n")
                self._in_thinking = True
            self.thinking += thinking
            self._write(f"{DIM}{thinking}{RESET}" if self.tty else thinking)
        if content:
            self._end_thinking()
            self.content += content
            self._write(content)

    def _end_thinking(self) -> None:
        if self._in_thinking:
            self._in_thinking = False
            self._write(("" if self._at_line_start else "\n") + "...done thinking.\n\n")

    def finish(self) -> None:
        self._end_thinking()
        if not self._at_line_start:
            self._write("\n")


def print_answer(chunks: Iterable[dict], writer: AnswerWriter, chat: bool) -> dict:
    """Print a /api/generate (`chat=False`) or /api/chat stream's chunks as they arrive; return the final chunk."""
    done: dict = {}
    try:
        for chunk in chunks:
            if chat:
                message = chunk.get("message") or {}
                writer.add(message.get("content", ""), message.get("thinking", ""))
            else:
                writer.add(chunk.get("response", ""), chunk.get("thinking", ""))
            if chunk.get("done"):
                done = chunk
    finally:
        writer.finish()
    return done
