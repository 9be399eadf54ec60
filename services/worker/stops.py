"""Stop strings matched on decoded text, across token boundaries, and never emitted."""

from __future__ import annotations


class StopStringFilter:
    """Streams text through, holding back any tail that could still become a stop string.

    `feed` returns the text that is safe to emit now and whether a stop string completed; on a
    stop, the text before it is emitted and the stop string itself (and anything after) is not,
    and `matched` names the stop string (Anthropic's `stop_sequence`).
    """

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buf = self._held + text
        hits = [(at, s) for at, s in ((buf.find(s), s) for s in self.stops) if at >= 0]
        if hits:
            at, self.matched = min(hits, key=lambda hit: hit[0])
            self._held = ""
            return buf[:at], True
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """Release held text at the end of a request that ended for another reason."""
        out, self._held = self._held, ""
        return out

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest tail of `buf` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best
