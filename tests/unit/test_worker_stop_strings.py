"""Stop strings are matched on streamed text across chunk boundaries and never emitted."""

from __future__ import annotations

from mlxserve.services.worker.stops import StopStringFilter


def stream(stops: list[str], chunks: list[str]) -> tuple[list[str], bool]:
    f = StopStringFilter(stops)
    out = []
    for c in chunks:
        text, stopped = f.feed(c)
        out.append(text)
        if stopped:
            return out, True
    out.append(f.flush())
    return out, False


def test_stop_split_over_chunks_is_cut_and_text_before_it_is_emitted() -> None:
    assert stream(["END"], ["hello E", "N", "D tail"]) == (["hello ", "", ""], True)


def test_held_back_prefix_is_released_once_ruled_out() -> None:
    out, stopped = stream(["END"], ["say E", "N", "d more"])
    assert not stopped
    assert out[:2] == ["say ", ""]
    assert "".join(out) == "say ENd more"


def test_earliest_of_several_stops_wins() -> None:
    out, stopped = stream(["world", "lo w"], ["hello", " world"])
    assert stopped and "".join(out) == "hel"


def test_overlapping_partial_match_still_finds_the_stop() -> None:
    out, stopped = stream(["aab"], ["a", "a", "a", "b!"])
    assert stopped and "".join(out) == "a"


def test_unfinished_prefix_is_flushed_at_the_end() -> None:
    out, stopped = stream(["</s>"], ["done </"])
    assert not stopped and "".join(out) == "done </"


def test_no_stops_passes_text_through_unchanged() -> None:
    assert stream([], ["a", "b"]) == (["a", "b", ""], False)
