"""The HTML report of an analyze run: metrics, latency histogram, daily trends, failure clusters."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from promptloop.analyze.charts import (
    coverage_text,
    daily_figure,
    figure_png,
    finite_latencies,
    latency_bins,
    latency_figure,
    partial_days,
)
from promptloop.analyze.classifier import classifier_summary, quality_notes
from promptloop.domain.results import AnalyzeResult, ClusterResult, DailyMetrics, Window

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CHECKED = "fast layer checked by an LLM"  # the column of each detector rate's precision/recall estimate
EXAMPLES_PER_CLUSTER = 2
DAILY_COLUMNS = ["interactions", "thumbs_down_rate", "error_rate", "refusal_rate", "latency_p95_ms", "total_cost_usd"]


def _png_uri(figure: Figure) -> str:
    """A figure as an inline PNG data URI."""
    return "data:image/png;base64," + base64.b64encode(figure_png(figure)).decode()


def latency_histogram(latencies: np.ndarray) -> str:
    """The latency histogram (clipped at the p99, with its overflow bin) as a data URI."""
    return _png_uri(latency_figure(latencies))


def daily_trends(daily: list[DailyMetrics], window: Window) -> str:
    """The daily rates and cost, partial days marked, as a data URI."""
    return _png_uri(daily_figure(daily, partial_days(daily, window)))


def latency_alt(latencies: np.ndarray) -> str:
    """The latency chart's alt text: where the axis is clipped and how many rows lie past it."""
    bins = latency_bins(latencies)
    return f"latency histogram clipped at the p99 ({bins.p99:,.0f} ms); overflow bin {bins.overflow_label}"


def daily_alt(daily: list[DailyMetrics], window: Window) -> str:
    """The daily chart's alt text, naming its partial days."""
    partial = partial_days(daily, window)
    return "daily trends" + (f"; partial days: {', '.join(sorted(partial))}" if partial else "")


def daily_table(daily: list[DailyMetrics], window: Window) -> str:
    """One row per day; a day the window covers only in part says so (its rates are of a part-day)."""
    partial = partial_days(daily, window)
    rows = [{**d, "in window": coverage_text(partial.get(str(d["day"])))} for d in daily]
    return _table(rows, ["day", "in window", *DAILY_COLUMNS])


def _table(rows: Sequence[Mapping[str, object]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)


def cluster_examples(cluster: ClusterResult) -> str:
    """A cluster's example questions (already PII-redacted), escaped; ids only where no text was stored."""
    if cluster.examples:
        return "<br>".join(html.escape(e) for e in cluster.examples[:EXAMPLES_PER_CLUSTER])
    ids = ", ".join(cluster.example_ids[:EXAMPLES_PER_CLUSTER])
    return html.escape(f"no question text stored (rows {ids})" if ids else "no question text stored")


def cluster_table(result: AnalyzeResult) -> str:
    """The failure clusters: label (and how it was named), kinds, size, impact, two example questions."""
    columns = ("id", "label", "labelled by", "kinds", "size", "impact", "example questions")
    head = "".join(f"<th>{c}</th>" for c in columns)
    rows = "".join(
        f"<tr><td>{c.id}</td><td>{html.escape(c.label)}</td><td>{c.labelled_by}</td>"
        f"<td>{html.escape(', '.join(c.kinds))}</td><td>{c.size}</td><td>{_fmt(c.impact)}</td>"
        f"<td>{cluster_examples(c)}</td></tr>"
        for c in result.clusters
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def gap_table(result: AnalyzeResult) -> str:
    """The knowledge-base gaps: topic, users, questions, how they failed, the nearest document, example questions."""
    if not result.kb_gaps:
        return "<p>none found (no abstention, refusal or 👎 with weak retrieval that enough users hit)</p>"
    columns = ("id", "topic", "users", "questions", "failed as", "nearest document (score)", "key terms covered",
               "example questions")
    head = "".join(f"<th>{c}</th>" for c in columns)
    rows = "".join(
        f"<tr><td>{g.id}</td><td>{html.escape(g.topic)}</td><td>{g.users}</td><td>{g.questions}</td>"
        f"<td>{html.escape(', '.join(f'{k} {n}' for k, n in g.kinds.items()))}</td>"
        f"<td>{html.escape(g.best_document or 'none')} ({_fmt(g.best_score)})</td>"
        f"<td>{_fmt(g.key_term_coverage)}</td>"
        f"<td>{'<br>'.join(html.escape(e) for e in g.examples)}</td></tr>"
        for g in result.kb_gaps
    )
    intro = ("<p>Questions the app abstained on, refused or got 👎 for while retrieval was weak: the answer is "
             "likely not in the knowledge base, and a prompt change cannot add it. improve drafts an article for "
             "the top gaps.</p>")
    return f"{intro}<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def render_report(result: AnalyzeResult, latencies: np.ndarray) -> str:
    """A self-contained HTML page (charts inlined) for the MLflow run."""
    notes = quality_notes(result.detector_quality)
    metrics = [{"metric": k, "value": v, CHECKED: notes.get(k)} for k, v in result.metrics.items()]
    alerts = [a.model_dump() for a in result.alerts]
    by_version = [{"prompt_version": k, **v} for k, v in result.by_prompt_version.items()]
    sections = [
        f"<h1>analyze {html.escape(result.app)}</h1>",
        f"<p>window {html.escape(result.window.start)} → {html.escape(result.window.end)}</p>",
        "<h2>Alerts</h2>"
        + (_table(alerts, ["metric", "value", "threshold", "rule", "message"]) if alerts else "<p>none</p>"),
        "<h2>Metrics</h2>" + _table(metrics, ["metric", "value", CHECKED])
        + (f"<p>{html.escape(classifier_summary(result.detector_quality))}</p>" if result.detector_quality else ""),
        "<h2>By prompt version</h2>"
        + _table(
            by_version,
            ["prompt_version", "interactions", "thumbs_down_rate", "error_rate", "refusal_rate", "uncertainty_rate",
             "toxicity_rate", "bias_rate", "injection_followed_rate", "latency_p95_ms"],
        ),
        (f'<h2>Latency</h2><img src="{latency_histogram(latencies)}" alt="{html.escape(latency_alt(latencies))}">'
         if len(finite_latencies(latencies)) else ""),
        (f'<h2>Daily</h2><img src="{daily_trends(result.daily, result.window)}"'
         f' alt="{html.escape(daily_alt(result.daily, result.window))}">'
         + daily_table(result.daily, result.window)) if result.daily else "",
        "<h2>Failure clusters</h2>" + cluster_table(result),
        "<h2>Knowledge-base gaps</h2>" + gap_table(result),
    ]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-width:100%;height:auto}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style><title>analyze</title></head>"
            f"<body>{''.join(sections)}</body></html>")
