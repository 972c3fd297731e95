"""The analyze report's charts and the figures behind them.

Latency is clipped at its p99 with one overflow bin (a few 30 s timeouts otherwise squeeze every
other bar into the first pixels); the daily chart keeps its legend outside the axes and marks the
window's partial first/last day, whose rates come from a fraction of a day. Charts are drawn on a
plain `Figure` (no pyplot, no global backend) sized for a 1280 px wide page.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from promptloop.domain.results import DailyMetrics, Window

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WIDTH_PX = 1280  # the report's images are shown at this width, one image pixel per screen pixel
DPI = 100
FONT_SIZE = 13  # points at DPI 100: about 18 px, readable without zooming at 1280 px
LATENCY_BINS = 40
DAILY_SERIES = (("thumbs_down_rate", "thumbs-down rate"), ("error_rate", "error rate"),
                ("refusal_rate", "refusal rate"))
COST_LABEL = "cost (USD)"
PARTIAL_LABEL = "partial day (in part in the window)"
DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class LatencyBins:
    """A latency histogram up to the p99, and the rows above it."""

    edges: np.ndarray  # LATENCY_BINS + 1 edges from the fastest row to the p99
    counts: np.ndarray  # rows in each bin (the last bin includes the p99 itself)
    p99: float
    overflow: int  # rows slower than the p99, drawn as one bin past the axis

    @property
    def overflow_label(self) -> str:
        return f"> p99 ({self.overflow} rows)"


def finite_latencies(latencies: Sequence[float] | np.ndarray) -> np.ndarray:
    """The latencies as floats, without the missing ones (None, NaN, pd.NA of a nullable column)."""
    values = pd.to_numeric(pd.Series(latencies, dtype=object), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return values[np.isfinite(values)]


def latency_bins(latencies: Sequence[float] | np.ndarray, bins: int = LATENCY_BINS) -> LatencyBins:
    """Bin the finite latencies up to their p99; the slower ones are counted as overflow."""
    values = finite_latencies(latencies)
    if not len(values):
        raise ValueError("no finite latency to plot")
    p99 = float(np.percentile(values, 99))
    low = float(values.min())
    high = p99 if p99 > low else low + 1.0  # every row equal: one visible bin rather than a zero width
    counts, edges = np.histogram(values[values <= p99], bins=bins, range=(low, high))
    return LatencyBins(edges=edges, counts=counts, p99=p99, overflow=int((values > p99).sum()))


def day_coverage(day: str, window: Window) -> float:
    """The share (0-1) of the UTC day `day` (YYYY-MM-DD) that lies inside the window (end exclusive)."""
    start, end = pd.Timestamp(window.start), pd.Timestamp(window.end)
    start = start.tz_localize("UTC") if start.tzinfo is None else start
    end = end.tz_localize("UTC") if end.tzinfo is None else end
    day_start = pd.Timestamp(day, tz="UTC")
    overlap = min(day_start + DAY, end) - max(day_start, start)
    return max(overlap / DAY, 0.0)


def partial_days(daily: Sequence[DailyMetrics], window: Window) -> dict[str, float]:
    """The days of `daily` not fully inside the window, with the share of each that is."""
    shares = {str(d["day"]): day_coverage(str(d["day"]), window) for d in daily}
    return {day: share for day, share in shares.items() if share < 1.0}


def coverage_text(share: float | None) -> str:
    """How much of a day the window holds, for the daily table: 'full' or 'partial (9.5 h of 24)'."""
    return "full" if share is None else f"partial ({share * 24:.1f} h of 24)"


@contextmanager
def _style() -> Iterator[None]:
    """Fonts large enough at 1280 px; applied while a figure is drawn, never globally."""
    import matplotlib

    with matplotlib.rc_context({"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE + 2,
                                "axes.labelsize": FONT_SIZE, "xtick.labelsize": FONT_SIZE - 1,
                                "ytick.labelsize": FONT_SIZE - 1, "legend.fontsize": FONT_SIZE - 1}):
        yield


def _figure(height_in: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(WIDTH_PX / DPI, height_in), dpi=DPI, layout="constrained")


def latency_figure(latencies: Sequence[float] | np.ndarray) -> Figure:
    """Histogram clipped at the p99; the slower rows are one hatched bar labelled '> p99 (N rows)'."""
    bins = latency_bins(latencies)
    with _style():
        figure = _figure(4.2)
        ax = figure.add_subplot()
        width = float(bins.edges[1] - bins.edges[0])
        ax.bar(bins.edges[:-1], bins.counts, width=width, align="edge", color="#4c72b0", label="rows up to the p99")
        right = float(bins.edges[-1]) + width
        if bins.overflow:
            overflow_x = float(bins.edges[-1]) + width  # one empty bin apart: the axis is not continuous there
            ax.bar([overflow_x], [bins.overflow], width=width, align="edge", color="#dd8452", hatch="//",
                   edgecolor="#8c4a1c", label=bins.overflow_label)
            ax.annotate(bins.overflow_label, (overflow_x + width / 2, bins.overflow), xytext=(0, 4),
                        textcoords="offset points", ha="right", va="bottom")
            right = overflow_x + 2 * width
        ax.set_xlim(float(bins.edges[0]), right)
        ax.set_xlabel(f"latency (ms), axis clipped at the p99 = {bins.p99:,.0f} ms")
        ax.set_ylabel("interactions")
        ax.set_title("Latency")
    return figure


def daily_figure(daily: Sequence[DailyMetrics], partial: Mapping[str, float]) -> Figure:
    """Daily rates (lines) and cost (bars, right axis); partial days hatched; the legend outside, right."""
    from matplotlib.patches import Patch

    days = [str(d["day"]) for d in daily]
    x = np.arange(len(days))
    with _style():
        figure = _figure(4.8)
        ax = figure.add_subplot()
        twin = ax.twinx()
        costs = [float(d.get("total_cost_usd") or 0.0) for d in daily]
        bars = twin.bar(x, costs, width=0.6, color="#999999", alpha=0.35, label=COST_LABEL)
        for bar, day in zip(bars, days, strict=True):
            if day in partial:
                bar.set_hatch("//")
        for i, day in enumerate(days):
            if day in partial:
                ax.axvspan(i - 0.5, i + 0.5, color="#f2c14e", alpha=0.15, hatch="\\\\", linewidth=0)
        for key, label in DAILY_SERIES:
            values = [_number(d.get(key)) for d in daily]
            ax.plot(x, values, marker="o", label=label)
        ax.set_zorder(twin.get_zorder() + 1)  # the rate lines above the cost bars
        ax.patch.set_visible(False)
        ax.set_xticks(x, [f"{day}\n(partial)" if day in partial else day for day in days])
        for tick in ax.get_xticklabels():  # full dates side by side overlap from ~7 days at this width
            tick.set_rotation(30)
            tick.set_horizontalalignment("right")
        ax.set_xlim(-0.5, len(days) - 0.5)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("rate")
        twin.set_ylabel(COST_LABEL)
        ax.set_title("Daily trends")
        # The cost bars' own handle would take the first bar's hatch when the first day is partial.
        handles = [*ax.get_lines(), Patch(facecolor="#999999", alpha=0.35, label=COST_LABEL)]
        if partial:
            handles.append(Patch(facecolor="#f2c14e", alpha=0.3, hatch="\\\\", label=PARTIAL_LABEL))
        figure.legend(handles=handles, labels=[h.get_label() for h in handles], loc="outside right upper")
    return figure


def _number(value: object) -> float:
    """A day's metric as a float; a missing one (None: no rated or answered row that day) is a gap."""
    return float(value) if isinstance(value, (int, float)) else np.nan


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes at its own size (WIDTH_PX wide)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
