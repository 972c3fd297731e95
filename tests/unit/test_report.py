"""The analyze report's charts and sections: asserted on their data and matplotlib objects, not pixels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import Rectangle

from promptloop.analyze.charts import (
    COST_LABEL,
    DAILY_SERIES,
    PARTIAL_LABEL,
    WIDTH_PX,
    daily_figure,
    day_coverage,
    figure_png,
    latency_bins,
    latency_figure,
    partial_days,
)
from promptloop.analyze.report import cluster_table, daily_table, render_report
from promptloop.domain.results import AnalyzeResult, ClusterResult, Window

WEEK = Window(start="2026-05-01T09:00:00+00:00", end="2026-05-08T03:00:00+00:00", days=6.75)
WHOLE_DAYS = Window(start="2026-05-01T00:00:00+00:00", end="2026-05-03T00:00:00+00:00", days=2.0)


def day(name: str, **metrics: float | None) -> dict[str, float | int | str | None]:
    base: dict[str, float | int | str | None] = {"day": name, "interactions": 10, "thumbs_down_rate": 0.1,
                                                 "error_rate": 0.0, "refusal_rate": None, "total_cost_usd": 0.5}
    return {**base, **metrics}


def slow_tail() -> np.ndarray:
    """990 rows between 100 and 1089 ms and ten 30 s timeouts (slower than the p99)."""
    return np.concatenate([100.0 + np.arange(990), np.full(10, 30_000.0)])


def overflow_bars(ax: Axes) -> list[Rectangle]:
    return [bar for c in ax.containers if c.get_label().startswith("> p99") for bar in c]


def test_latency_bins_stop_at_the_p99_and_count_the_slower_rows_as_overflow() -> None:
    latencies = slow_tail()
    bins = latency_bins(latencies)
    p99 = float(np.percentile(latencies, 99))
    assert bins.p99 == pytest.approx(p99) and p99 < 2_000
    assert bins.edges[0] == 100.0 and bins.edges[-1] == pytest.approx(p99)
    assert bins.overflow == int((latencies > p99).sum()) == 10
    assert int(bins.counts.sum()) + bins.overflow == len(latencies)  # every row in one bin or the overflow
    assert bins.overflow_label == "> p99 (10 rows)"


def test_latency_bins_skip_missing_values_and_survive_identical_ones() -> None:
    bins = latency_bins(np.array([500.0, 500.0, np.nan, None, pd.NA, 500.0], dtype=object))
    assert bins.overflow == 0 and int(bins.counts.sum()) == 3 and bins.edges[-1] > bins.edges[0]
    with pytest.raises(ValueError, match="no finite latency"):
        latency_bins(np.array([np.nan]))


def test_the_latency_axis_ends_just_past_the_overflow_bar_not_at_the_slowest_row() -> None:
    figure = latency_figure(slow_tail())
    ax = figure.axes[0]
    left, right = ax.get_xlim()
    assert left == 100.0 and right < 2_000  # not 30,000: the bars keep the width of the axis
    bars = overflow_bars(ax)
    assert len(bars) == 1 and bars[0].get_height() == 10 and bars[0].get_x() > np.percentile(slow_tail(), 99)
    assert bars[0].get_x() + bars[0].get_width() <= right
    assert "> p99 (10 rows)" in [t.get_text() for t in ax.texts]


def test_without_rows_past_the_p99_there_is_no_overflow_bar() -> None:
    ax = latency_figure(np.arange(100.0, 200.0)).axes[0]  # the p99 lies between the two slowest rows
    assert [c.get_label() for c in ax.containers if c.get_label().startswith(">")] == ["> p99 (1 rows)"]
    ax = latency_figure(np.full(5, 300.0)).axes[0]
    assert not ax.texts and not overflow_bars(ax)


def test_a_day_the_window_covers_in_part_is_partial_with_its_share() -> None:
    assert day_coverage("2026-05-01", WEEK) == pytest.approx(15 / 24)
    assert day_coverage("2026-05-04", WEEK) == 1.0
    assert day_coverage("2026-05-08", WEEK) == pytest.approx(3 / 24)
    assert day_coverage("2026-05-09", WEEK) == 0.0
    daily = [day(f"2026-05-0{i}") for i in range(1, 9)]
    assert partial_days(daily, WEEK) == pytest.approx({"2026-05-01": 15 / 24, "2026-05-08": 3 / 24})
    assert partial_days(daily[:2], WHOLE_DAYS) == {}


def test_the_daily_table_says_which_days_are_partial() -> None:
    table = daily_table([day("2026-05-01"), day("2026-05-04"), day("2026-05-08")], WEEK)
    rows = table.split("<tr>")[2:]
    assert "<td>2026-05-01</td><td>partial (15.0 h of 24)</td>" in rows[0]
    assert "<td>2026-05-04</td><td>full</td>" in rows[1]
    assert "<td>2026-05-08</td><td>partial (3.0 h of 24)</td>" in rows[2]
    assert "<th>in window</th>" in table and "<th>total_cost_usd</th>" in table


def test_the_daily_legend_names_every_series_and_sits_outside_the_axes() -> None:
    daily = [day("2026-05-01"), day("2026-05-02", refusal_rate=0.2), day("2026-05-03")]
    figure = daily_figure(daily, {"2026-05-03": 0.5})
    ax, twin = figure.axes
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [*(label for _, label in DAILY_SERIES), COST_LABEL,
                                                          PARTIAL_LABEL]
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)  # lays the figure out (constrained layout) as saving it would
    box = legend.get_window_extent(renderer)
    for axes in (ax, twin):  # right of the plot and of the cost axis's labels
        assert box.x0 >= axes.get_tightbbox(renderer).x1
    assert not box.overlaps(ax.get_window_extent(renderer))


def test_partial_days_are_hatched_and_labelled_in_the_daily_chart() -> None:
    daily = [day("2026-05-01"), day("2026-05-02"), day("2026-05-03")]
    figure = daily_figure(daily, {"2026-05-01": 0.625})
    ax, twin = figure.axes
    assert [bar.get_hatch() for bar in twin.patches] == ["//", None, None]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2026-05-01\n(partial)", "2026-05-02", "2026-05-03"]
    whole = daily_figure(daily, {})
    assert PARTIAL_LABEL not in [t.get_text() for t in whole.legends[0].get_texts()]


def test_the_charts_are_1280_px_wide_with_readable_fonts() -> None:
    for figure in (latency_figure(slow_tail()), daily_figure([day("2026-05-01")], {})):
        assert figure.get_size_inches()[0] * figure.dpi == WIDTH_PX
        ax = figure.axes[0]
        sizes = [ax.xaxis.label.get_fontsize(), ax.title.get_fontsize(),
                 *(t.get_fontsize() for t in ax.get_xticklabels())]
        assert min(sizes) >= 12
    png = figure_png(latency_figure(slow_tail()))
    assert int.from_bytes(png[16:20], "big") == WIDTH_PX  # the PNG header's width


def cluster(**fields: object) -> ClusterResult:
    base: dict[str, object] = {"id": 0, "label": "thumbs_down/refusal [ko]: 환불", "kinds": ["refusal"], "size": 4,
                               "impact": 2.5, "thumbs_down_share": 1.0, "mean_severity": 2.0,
                               "example_ids": ["r7", "r9", "r11"]}
    return ClusterResult.model_validate({**base, **fields})


def test_the_cluster_section_shows_two_example_questions_not_ids() -> None:
    questions = ["환불은 어떻게 받나요?", "My card ‹CREDIT_CARD› was charged twice", "a third one"]
    table = cluster_table(AnalyzeResult.model_construct(clusters=[cluster(examples=questions)]))
    assert "환불은 어떻게 받나요?<br>My card ‹CREDIT_CARD› was charged twice</td>" in table
    assert "a third one" not in table and "r7" not in table
    assert "<th>example questions</th>" in table


def test_a_cluster_without_stored_questions_says_so_and_keeps_its_row_ids() -> None:
    table = cluster_table(AnalyzeResult.model_construct(clusters=[cluster(examples=[])]))
    assert "<td>no question text stored (rows r7, r9)</td>" in table


def test_the_report_has_both_charts_the_daily_table_and_the_cluster_questions() -> None:
    result = AnalyzeResult.model_construct(
        app="support-bot", window=WEEK, metrics={"interactions": 30}, detector_quality=None, alerts=[],
        by_prompt_version={}, daily=[day("2026-05-01"), day("2026-05-02")],
        clusters=[cluster(examples=["where is <my> refund?", "and now?"])])
    page = render_report(result, slow_tail())
    assert page.count('src="data:image/png;base64,') == 2
    assert "partial (15.0 h of 24)" in page and "where is &lt;my&gt; refund?<br>and now?" in page
    assert "img{max-width:100%" in page
    assert "overflow bin &gt; p99 (10 rows)" in page and 'alt="daily trends; partial days: 2026-05-01"' in page
    no_latency = render_report(result, np.full(3, np.nan))  # every row failed before an answer: nothing to plot
    assert "<h2>Latency</h2>" not in no_latency and no_latency.count("data:image/png") == 1


def test_the_knowledge_base_gap_section_names_each_gap_its_users_and_nearest_document_escaped() -> None:
    from promptloop.analyze.report import gap_table
    from promptloop.domain.results import KbGapResult

    gap = KbGapResult(id=1, topic="phone support <hours>", questions=9, users=7, kinds={"abstained": 6, "refused": 3},
                      examples=["Do you offer <b>phone</b> support?", "공휴일에도 고객지원이 운영되나요?"],
                      best_document="notes-trash-restore", best_score=6.3, key_term_coverage=0.4, source="kb")
    table = gap_table(AnalyzeResult.model_construct(kb_gaps=[gap]))
    assert ("<td>1</td><td>phone support &lt;hours&gt;</td><td>7</td><td>9</td><td>abstained 6, refused 3</td>"
            "<td>notes-trash-restore (6.3)</td><td>0.4</td>"
            "<td>Do you offer &lt;b&gt;phone&lt;/b&gt; support?<br>공휴일에도 고객지원이 운영되나요?</td>") in table
    assert "none found" in gap_table(AnalyzeResult.model_construct(kb_gaps=[]))
