"""Chart geometry computed on the server; the templates draw it as inline SVG.

No JavaScript chart library and nothing fetched from elsewhere: a chart is a list of shapes
with coordinates, CSS classes (colours live in the stylesheet) and a tooltip text, which Jinja
writes out escaped. Two kinds are needed: stacked bars over time (alerts by category or
severity) and a scatter plot (energy against duration of charging sessions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

WIDTH, HEIGHT = 760.0, 210.0
LEFT, RIGHT, TOP, BOTTOM = 44.0, 10.0, 10.0, 26.0
MAX_BUCKETS = 48
MAX_BAR = 40.0  # widest bar, so a range with few buckets does not draw slabs
#: Bucket widths tried in order, in seconds: the first that gives at most MAX_BUCKETS bars.
STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400, 7 * 86_400, 30 * 86_400)


@dataclass(frozen=True)
class Shape:
    """A rectangle (bar segment), or a circle of radius width when height is 0; css picks its colour."""

    x: float
    y: float
    width: float = 0.0
    height: float = 0.0
    css: str = ""
    title: str = ""


@dataclass(frozen=True)
class Chart:
    """Everything a template needs to draw one chart."""

    width: float
    height: float
    shapes: list[Shape] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    legend: list[tuple[str, str, int]] = field(default_factory=list)  # css, label, count
    x_title: str = ""
    y_title: str = ""

    @property
    def plot_left(self) -> float:
        return LEFT

    @property
    def plot_right(self) -> float:
        return self.width - RIGHT


def bucket_step(start: float, end: float) -> int:
    """The narrowest bucket width (seconds) that spans start..end in at most MAX_BUCKETS bars."""
    span = max(end - start, 0.0)
    for step in STEPS:
        if span / step < MAX_BUCKETS:
            return step
    return math.ceil(span / MAX_BUCKETS)


def stacked_bars(times: Sequence[tuple[float, str]], keys: Sequence[tuple[str, str, str]],
                 start: float | None, end: float | None) -> Chart:
    """Counts over time: one bar per bucket, one segment per key.

    times: (epoch seconds, key) per counted item; keys: (key, label, css) in stacking order,
    bottom first; start/end: the time range shown (None: from the first / to the last item).
    """
    if not times:
        return Chart(WIDTH, HEIGHT)
    lo = start if start is not None else min(t for t, _ in times)
    hi = end if end is not None else max(t for t, _ in times)
    hi = max(hi, lo + 1.0)
    step = bucket_step(lo, hi)
    first = math.floor(lo / step) * step
    count = max(1, math.ceil((hi - first) / step))
    counts: list[dict[str, int]] = [{} for _ in range(count)]
    for ts, key in times:
        index = min(max(int((ts - first) // step), 0), count - 1)
        counts[index][key] = counts[index].get(key, 0) + 1
    top = max(sum(bucket.values()) for bucket in counts)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / count
    bar_w = min(max(slot * 0.8, 1.0), MAX_BAR)
    shapes: list[Shape] = []
    for i, bucket in enumerate(counts):
        base = HEIGHT - BOTTOM
        label = _time_label(first + i * step, step)
        for key, name, css in keys:
            n = bucket.get(key, 0)
            if not n:
                continue
            h = plot_h * n / top
            base -= h
            shapes.append(Shape(LEFT + i * slot + (slot - bar_w) / 2, base, bar_w, h, css, f"{label}: {n} {name}"))
    totals = {key: sum(1 for _, k in times if k == key) for key, _, _ in keys}
    legend = [(css, name, totals[key]) for key, name, css in keys if totals[key]]
    x_ticks = [(LEFT + i * slot + slot / 2, _time_label(first + i * step, step))
               for i in range(0, count, max(1, math.ceil(count / 8)))]
    return Chart(WIDTH, HEIGHT, shapes, _y_ticks(top, plot_h), x_ticks, legend,
                 x_title=f"UTC, bars of {_duration(step)}", y_title="count")


def scatter(points: Sequence[tuple[float, float, str, str]], x_title: str, y_title: str) -> Chart:
    """A scatter plot of (x, y, css, tooltip) points, both axes from zero."""
    if not points:
        return Chart(WIDTH, HEIGHT)
    x_max = (max(p[0] for p in points) or 1.0) * 1.05  # a margin: no point sits on the frame
    y_max = (max(p[1] for p in points) or 1.0) * 1.05
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    shapes = [Shape(LEFT + plot_w * x / x_max, HEIGHT - BOTTOM - plot_h * y / y_max, 4.0, 0.0, css, title)
              for x, y, css, title in points]
    x_ticks = [(LEFT + plot_w * f, _number(x_max * f)) for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return Chart(WIDTH, HEIGHT, shapes, _y_ticks(y_max, plot_h), x_ticks, [], x_title=x_title, y_title=y_title)


def _y_ticks(top: float, plot_h: float) -> list[tuple[float, str]]:
    return [(HEIGHT - BOTTOM - plot_h * f, _number(top * f)) for f in (0.0, 0.5, 1.0)]


def _number(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 10 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2g}"


def _time_label(ts: float, step: int) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    if step >= 86_400:
        return moment.strftime("%Y-%m-%d")
    if step >= 3600:
        return moment.strftime("%m-%d %H:%M")
    return moment.strftime("%H:%M")


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
