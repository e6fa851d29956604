"""The timeline plot reads at a glance at the notebooks' size: a latency axis that fits the data,
requests held up by a lock drawn across the time they waited, statement markers that never overlap.

Built from a made-up timeline (no server): what is tested is the drawing, not the measurement."""

from __future__ import annotations

import itertools

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection

from zdlab.records import Request, Span
from zdlab.report import Report, Timeline, plot

SLOWEST_MS = 560.0


def _report() -> Report:
    # 4 workers, a request every 10 ms each for 3 s; the third statement (a rewrite at 1.2 s) holds
    # the table for 0.56 s: the four requests in flight then wait for it.
    requests = [Request(start=t / 100, latency_ms=0.4 + (t * 7 % 13), kind=kind)
                for t in range(300) for kind in ("read_user", "update_user") if not 120 <= t < 176]
    requests += [Request(start=1.2, latency_ms=SLOWEST_MS - w, kind="read_user") for w in range(4)]
    spans = [Span(f"ADD COLUMN ... DEFAULT {d}", "ALTER TABLE users ADD COLUMN ...", start, end)
             for d, start, end in (("constant 'free'", 1.10, 1.101), ("now()", 1.14, 1.141),
                                   ("clock_timestamp()", 1.2, 1.76))]
    timeline = Timeline(requests=requests, spans=spans, stalls=[(1.2, 1.76)], duration_s=3.0)
    return Report(verdict="blocking", longest_stall_ms=560, sample_interval_ms=10, timeline=timeline)


def test_the_latency_axis_fits_the_slowest_request():
    ax = plot(_report()).axes[0]
    bottom, top = ax.get_ylim()
    assert SLOWEST_MS < top <= 3 * SLOWEST_MS  # room for the numbers, not decades of empty axis
    assert 0 < bottom < 0.4


def test_each_request_that_waited_on_a_lock_is_a_bar_across_its_wait():
    ax = plot(_report()).axes[0]
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bars) == 1
    segments = bars[0].get_segments()
    assert len(segments) == 4  # the four blocked requests, not the thousands of others
    for (x0, y0), (x1, y1) in segments:
        assert x0 == 1.2 and abs(x1 - x0 - y0 / 1000) < 1e-9 and y0 == y1 > 500
    assert "waited on a lock (4)" in ax.get_legend_handles_labels()[1]


def test_statement_markers_close_together_do_not_overlap_and_the_legend_names_them():
    fig = plot(_report())
    ax = fig.axes[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    numbers = [t for t in ax.texts if t.get_text().strip() in {"1", "2", "3"}]
    assert len(numbers) == 3
    boxes = [t.get_window_extent(renderer) for t in numbers]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    labels = ax.get_legend_handles_labels()[1]
    for label in ("ADD COLUMN ... DEFAULT constant 'free'", "ADD COLUMN ... DEFAULT now()",
                  "ADD COLUMN ... DEFAULT clock_timestamp()"):
        assert label in labels


def test_a_stepwise_rollout_is_drawn_with_a_marked_line_per_step_and_a_colour_per_version():
    report = _report()
    for i, r in enumerate(report.timeline.requests):
        r.app = "v1" if i % 3 else "v2"
    ax = report.plot(steps=[(0.5, "1 up"), (1.2, "2 up"), (2.0, "4 all")]).axes[0]
    assert [t.get_text().strip() for t in ax.texts] == ["1 up", "2 up", "4 all"]
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [0.5, 1.2, 2.0]
    labels = ax.get_legend_handles_labels()[1]
    assert any(label.startswith("v1 requests") for label in labels)
    assert any(label.startswith("v2 requests") for label in labels)
    assert "3 steps under traffic" in ax.get_title(loc="left")
    assert plot(_report()).axes[0].get_title(loc="left") != ax.get_title(loc="left")  # the default plot unchanged
