"""The HTML report of an analyze run: metrics, latency histogram, daily trends, failure clusters."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from promptloop.analyze.classifier import classifier_summary, quality_notes
from promptloop.domain.results import AnalyzeResult, DailyMetrics

CHECKED = "fast layer checked by an LLM"  # the column of each detector rate's precision/recall estimate


def _figure_png(draw: Any) -> str:
    """Render a matplotlib drawing function to an inline PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")  # headless; chosen here, not at import time
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3))
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def latency_histogram(latencies: np.ndarray) -> str:
    def draw(ax: Any) -> None:
        ax.hist(latencies, bins=50, color="#4c72b0")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("interactions")
        ax.set_title("Latency")
    return _figure_png(draw)


def daily_trends(daily: list[DailyMetrics]) -> str:
    def draw(ax: Any) -> None:
        days = [d["day"] for d in daily]
        for key, label in (
            ("thumbs_down_rate", "thumbs-down rate"),
            ("error_rate", "error rate"),
            ("refusal_rate", "refusal rate"),
        ):
            ax.plot(days, [d.get(key) if d.get(key) is not None else np.nan for d in daily], marker="o", label=label)
        twin = ax.twinx()
        twin.bar(days, [d.get("total_cost_usd") or 0 for d in daily], alpha=0.2, color="gray", label="cost (USD)")
        twin.set_ylabel("cost (USD)")
        ax.set_ylabel("rate")
        ax.legend(loc="upper left", fontsize=7)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
        ax.set_title("Daily trends")
    return _figure_png(draw)


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


def cluster_table(result: AnalyzeResult) -> str:
    """The failure clusters: label (and how it was named), kinds, size, impact, two example questions."""
    head = "".join(f"<th>{c}</th>" for c in ("id", "label", "labelled by", "kinds", "size", "impact", "examples"))
    rows = "".join(
        f"<tr><td>{c.id}</td><td>{html.escape(c.label)}</td><td>{c.labelled_by}</td>"
        f"<td>{html.escape(', '.join(c.kinds))}</td><td>{c.size}</td><td>{_fmt(c.impact)}</td>"
        f"<td>{'<br>'.join(html.escape(e) for e in c.examples)}</td></tr>"
        for c in result.clusters
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


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
        f'<h2>Latency</h2><img src="{latency_histogram(latencies)}" alt="latency histogram">' if len(latencies) else "",
        f'<h2>Daily</h2><img src="{daily_trends(result.daily)}" alt="daily trends">' if result.daily else "",
        "<h2>Failure clusters</h2>" + cluster_table(result),
    ]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style><title>analyze</title></head>"
            f"<body>{''.join(sections)}</body></html>")
