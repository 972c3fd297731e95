"""Prefect flow `analyze`: metrics, alerts and failure clusters over a window of collected logs.

Thin wiring of promptloop.analyze; the library does the work and is tested without Prefect.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from promptloop.analyze import stage
from promptloop.analyze.classifier import quality_notes
from promptloop.core.runtime import prepare_environment
from promptloop.domain.results import AnalyzeResult
from promptloop.ops.flow_form import OptionalText
from promptloop.workspace.links import mlflow_ui_url, run_link
from promptloop.workspace.locking import writing
from promptloop.workspace.workspace import open_workspace

HEADLINE = ("interactions", "latency_p95_ms", "error_rate", "thumbs_down_rate", "refusal_rate",
            "injection_attempt_rate", "total_cost_usd")


@task(cache_policy=NO_CACHE)
def plan(workspace: str, app: str, window: str | None, until: str | None) -> stage.AnalyzePlan:
    return stage.plan_analyze(open_workspace(Path(workspace)), app, window, until)


@task(cache_policy=NO_CACHE)
def load(the_plan: stage.AnalyzePlan, previous: bool) -> pd.DataFrame:
    return stage.load_window(the_plan, *(the_plan.previous if previous else (the_plan.start, the_plan.end)))


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=1800)
def measure_and_mine(the_plan: stage.AnalyzePlan, frame: pd.DataFrame, previous: pd.DataFrame) -> stage.Mined:
    return stage.analyze_frame(the_plan, frame, previous)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, timeout_seconds=600)
def store(the_plan: stage.AnalyzePlan, mined: stage.Mined) -> AnalyzeResult:
    return stage.store_failures(the_plan, mined)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, timeout_seconds=60)
def notify(the_plan: stage.AnalyzePlan, result: AnalyzeResult) -> AnalyzeResult:
    return result.model_copy(update={"webhook": stage.send_webhook(the_plan.settings.webhook_url, the_plan.app,
                                                                   result.alerts)})


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, timeout_seconds=120)
def log_run(the_plan: stage.AnalyzePlan, result: AnalyzeResult, frame: pd.DataFrame) -> AnalyzeResult:
    run_id = stage.log_analyze_run(the_plan, result, frame["latency_ms"].to_numpy())
    return result.model_copy(update={"mlflow_run_id": run_id})


@task(cache_policy=NO_CACHE)
def publish(result: AnalyzeResult, ui_url: str | None) -> None:
    """The headline table on the flow run, and the breached alerts as a failed-check artifact."""
    notes = quality_notes(result.detector_quality)  # each detector rate's check by the LLM classifier
    rows = "\n".join(f"| {k} | {result.metrics[k]} | {notes.get(k, '')} |" for k in HEADLINE)
    clusters = "\n".join(f"| {c.id} | {c.label} | {c.size} | {c.impact} |" for c in result.clusters)
    create_markdown_artifact(
        f"### analyze {result.app} ({result.window.start} → {result.window.end})\n\n"
        f"| metric | value | fast layer checked by an LLM |\n|---|---|---|\n{rows}\n\n"
        f"| cluster | label | size | impact |\n|---|---|---|---|\n{clusters}\n\n"
        f"MLflow run: {run_link(result.mlflow_run_id, ui_url)}\n",
        key=f"analyze-{result.app}",
    )
    checks = "\n".join(f"- ❌ {a.message}" for a in result.alerts) or "- ✅ no alert rule breached"
    create_markdown_artifact(
        f"### alert checks: {len(result.alerts)} failed\n\n{checks}\n", key=f"analyze-{result.app}-alerts"
    )


@flow(name="analyze", log_prints=True)
def analyze_flow(app: str = "support-bot", workspace: str = ".", window: OptionalText = None,
                 until: OptionalText = None) -> AnalyzeResult:
    """analyze: window -> metrics, alerts, failure clusters -> DVC, MLflow, Prefect artifacts.

    Args:
        app: the app, a name under `apps:` in params.yaml
        workspace: the workspace folder; "." is the folder the deployment was made from
        window: length of the analysed window, e.g. 7d or 24h; empty: from params.yaml (analyze.window_days)
        until: end of the window, ISO-8601 (2026-11-30T00:00:00+00:00); empty: the newest collected row
    """
    prepare_environment()
    with writing(Path(workspace), f"analyze flow --app {app}"):
        the_plan = plan(workspace, app, window, until)
        frame = load(the_plan, previous=False)
        summary = store(the_plan, measure_and_mine(the_plan, frame, load(the_plan, previous=True)))
        summary = log_run(the_plan, notify(the_plan, summary), frame)
    publish(summary, mlflow_ui_url(the_plan.workspace))
    return summary
