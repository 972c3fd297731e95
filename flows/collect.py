"""Prefect flow `collect`: new production logs -> validated, redacted, versioned snapshot.

Thin wiring of promptloop.collect; the library does the work and is tested without Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from promptloop.collect import stage
from promptloop.workspace.locking import writing
from promptloop.core.runtime import prepare_environment
from promptloop.workspace.versioning import dataset_change
from promptloop.workspace.workspace import open_workspace


class CollectParameters(BaseModel):
    """What the Prefect UI shows as the form of a collect run."""

    app: str = Field(default="support-bot", description="app name under apps: in params.yaml")
    workspace: str = Field(default=".", description="the workspace folder")
    source: str | None = Field(default=None, description="read this instead of the app's configured sources")


@task(cache_policy=NO_CACHE)
def plan(parameters: CollectParameters) -> stage.CollectPlan:
    return stage.plan_collect(open_workspace(Path(parameters.workspace)), parameters.app, parameters.source)


@task(cache_policy=NO_CACHE)
def prepare(plan: stage.CollectPlan) -> stage.BatchContext:
    return stage.make_context(plan)


@task(cache_policy=NO_CACHE)
def read_validate_redact(plan: stage.CollectPlan, index: int, ctx: stage.BatchContext) -> stage.Totals:
    return stage.collect_source(plan, index, ctx)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, timeout_seconds=600)
def version(plan: stage.CollectPlan, totals: stage.Totals) -> dict[str, Any]:
    return stage.snapshot(plan, totals)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, timeout_seconds=120)
def log_run(plan: stage.CollectPlan, totals: stage.Totals, versioned: dict[str, Any], suite_version: Any) -> str:
    return stage.log_collect_run(plan, totals, versioned, suite_version)


@task(cache_policy=NO_CACHE)
def summarize(plan: stage.CollectPlan, totals: stage.Totals, versioned: dict[str, Any], run_id: str) -> dict[str, Any]:
    return stage.summary(plan, totals, versioned, run_id)


@task(cache_policy=NO_CACHE)
def publish(summary: dict[str, Any]) -> None:
    rows = "\n".join(f"| {k} | {summary[k]} |" for k in ("rows_in", "rows_valid", "rows_quarantined", "rows_duplicate", "dvc_md5", "mlflow_run_id"))
    create_markdown_artifact(f"| collect {summary['app']} | |\n|---|---|\n{rows}\n", key=f"collect-{summary['app']}")


@flow(name="collect", log_prints=True)
def collect_flow(parameters: CollectParameters = CollectParameters()) -> dict[str, Any]:
    """collect: read each source, validate, quarantine, redact, version with DVC, log to MLflow."""
    prepare_environment()
    root = Path(parameters.workspace)
    with writing(root, f"collect flow --app {parameters.app}"):
        the_plan = plan(parameters)
        ctx = prepare(the_plan)
        totals = stage.Totals()
        with dataset_change(the_plan.workspace.root, stage.versioned_paths(the_plan), f"collect {parameters.app}"):
            for index in range(len(the_plan.sources)):
                totals.add(read_validate_redact(the_plan, index, ctx))
            versioned = version(the_plan, totals)
        summary = summarize(the_plan, totals, versioned, log_run(the_plan, totals, versioned, ctx.validator.version))
    publish(summary)
    return summary
