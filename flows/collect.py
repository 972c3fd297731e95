"""Prefect flow `collect`: new production logs -> validated, redacted, versioned snapshot.

Thin wiring of promptloop.collect; the library does the work and is tested without Prefect.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from promptloop.collect import stage
from promptloop.core.runtime import prepare_environment
from promptloop.domain.results import CollectResult
from promptloop.workspace.locking import writing
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
def version(plan: stage.CollectPlan, totals: stage.Totals) -> stage.Snapshot:
    return stage.snapshot(plan, totals)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, timeout_seconds=120)
def log_run(plan: stage.CollectPlan, totals: stage.Totals, versioned: stage.Snapshot, suite_version: object) -> str:
    return stage.log_collect_run(plan, totals, versioned, suite_version)


@task(cache_policy=NO_CACHE)
def summarize(plan: stage.CollectPlan, totals: stage.Totals, versioned: stage.Snapshot, run_id: str) -> CollectResult:
    return stage.summary(plan, totals, versioned, run_id)


@task(cache_policy=NO_CACHE)
def publish(result: CollectResult) -> None:
    keys = ("rows_in", "rows_valid", "rows_quarantined", "rows_duplicate", "dvc_md5", "mlflow_run_id")
    rows = "\n".join(f"| {k} | {getattr(result, k)} |" for k in keys)
    create_markdown_artifact(f"| collect {result.app} | |\n|---|---|\n{rows}\n", key=f"collect-{result.app}")


@flow(name="collect", log_prints=True)
def collect_flow(parameters: CollectParameters = CollectParameters()) -> CollectResult:
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
