"""The timeline: engine figures from decode spans, and the trace / Gantt a person opens."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlrl.rollout.timeline import Timeline


def handmade() -> Timeline:
    # capacity 2; requests on the engine: 1 in [0,1), 2 in [1,2), 1 in [2,4), 0 in [4,5), 1 in [5,6), 0 after;
    # "c" was carried from before the window (starts at -3); tool / verifier / update spans never count
    timeline = Timeline()
    for track, phase, start, end in [("a", "decode", 0, 4), ("b", "decode", 1, 2), ("c", "decode", -3, 1),
                                     ("c", "paused", 1, 5), ("c", "decode", 5, 6), ("b", "tool", 2, 7),
                                     ("a", "verifier", 1, 9), ("trainer", "update", 6, 9.5),
                                     ("trainer", "sync", 9.5, 10)]:
        timeline.add(track, phase, start, end)
    timeline.mark("step 0", 0)
    return timeline


def test_busy_fraction_and_bubble_ratio_are_read_off_the_decode_spans():
    figures = handmade().engine_figures(start=0, close=6, end=10, capacity=2)
    # a and c overlap in [0,1) (2 requests), a and b in [1,2); one request in [2,4) and [5,6); none in [4,5)
    assert figures["engine_busy_fraction"] == pytest.approx(5 / 10)
    # empty slots over [0,6): none in [0,2), 1 of 2 in [2,4) and [5,6), 2 of 2 in [4,5)
    assert figures["bubble_ratio"] == pytest.approx((0.5 * 2 + 1 + 0.5) / 6)
    assert handmade().engine_figures(0, 6, 10, capacity=1)["bubble_ratio"] == pytest.approx(1 / 6)  # only [4,5)
    assert handmade().engine_figures(0, 6, 10, capacity=4)["bubble_ratio"] == pytest.approx(
        (2 * 0.5 + 2 * 0.75 + 1 + 0.75) / 6)


def test_bad_phases_and_windows_are_refused():
    with pytest.raises(ValueError, match="unknown phase 'thinking'"):
        Timeline().add("a", "thinking", 0, 1)
    with pytest.raises(ValueError, match="start <= close <= end"):
        handmade().engine_figures(start=5, close=4, end=10, capacity=2)
    with pytest.raises(ValueError, match="capacity must be >= 1, got 0"):
        handmade().engine_figures(0, 1, 2, capacity=0)


def test_the_trace_and_the_gantt_show_every_span(tmp_path):
    trace_path, png_path = handmade().write(tmp_path)
    events = json.loads(trace_path.read_text())["traceEvents"]
    threads = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    spans = [(threads[e["tid"]], e["name"], e["ts"], e["dur"]) for e in events if e["ph"] == "X"]
    assert len(spans) == 9
    assert ("a verifier", "verifier", 4e6, 8e6) in spans  # beside a's decoding, on a thread of its own
    assert ("c", "paused", 4e6, 4e6) in spans  # times from the first span's start (-3)
    counter = [e["args"]["requests"] for e in events if e["ph"] == "C"]
    assert max(counter) == 2 and counter[-1] == 0
    assert [e["name"] for e in events if e["ph"] == "i"] == ["step 0"]
    with Image.open(png_path) as png:
        assert png.width > 500 and png.height > 200


def test_prune_keeps_what_a_later_window_needs():
    timeline = handmade()
    timeline.prune(before=5.5)
    assert {(s.track, s.phase) for s in timeline.spans} == {("c", "decode"), ("b", "tool"), ("a", "verifier"),
                                                           ("trainer", "update"), ("trainer", "sync")}
    assert timeline.marks == []
