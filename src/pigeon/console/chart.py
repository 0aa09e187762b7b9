"""The dashboard's chart as geometry for an inline SVG: three bars per hour, a y axis."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

WIDTH, HEIGHT = 760, 220
LEFT, BOTTOM, TOP = 40, 24, 10
SERIES = ("accepted", "delivered", "failed")


@dataclass(frozen=True, slots=True)
class Bar:
    series: str
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    y: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    baseline: float


def _nice_top(peak: int) -> int:
    """The y axis' top: the smallest of 1, 2, 5, 10, 20, 50... at or above the peak."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= peak:
                return step * magnitude
        magnitude *= 10


def hourly_chart(hours: list[datetime], values: dict[str, list[int]]) -> Chart:
    """Bars for each hour and series, scaled to the largest value."""
    top = _nice_top(max((max(v) for v in values.values() if v), default=0))
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(len(hours), 1)
    bar_w = slot * 0.8 / len(SERIES)
    baseline = TOP + plot_h
    bars = []
    for n, hour in enumerate(hours):
        for s, name in enumerate(SERIES):
            count = values[name][n]
            height = plot_h * count / top
            x = LEFT + n * slot + slot * 0.1 + s * bar_w
            title = f"{hour:%H}:00 UTC: {count} {name}"
            bars.append(Bar(name, round(x, 1), round(baseline - height, 1), round(bar_w, 1),
                            round(height, 1), title))  # fmt: skip
    x_ticks = [
        Tick(round(LEFT + n * slot + slot / 2, 1), HEIGHT - 6, f"{hour:%H}h")
        for n, hour in enumerate(hours)
        if n % 3 == 0
    ]
    y_ticks = [
        Tick(LEFT - 6, round(baseline - plot_h * part / 2, 1), f"{top * part / 2:g}")
        for part in range(3)
    ]
    return Chart(WIDTH, HEIGHT, bars, x_ticks, y_ticks, baseline)
