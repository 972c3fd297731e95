"""Prefect flow `collect`: new production logs -> validated, redacted, versioned snapshot.

Thin wiring of promptloop.collect; the library does the work and is tested without Prefect.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from promptloop.collect import stage
from promptloop.core.runtime import prepare_environment
from promptloop.domain.results import CollectResult
from promptloop.ops.flow_form import OptionalText
from promptloop.workspace.links import mlflow_ui_url, run_link
from promptloop.workspace.locking import writing
from promptloop.workspace.versioning import dataset_change
from promptloop.workspace.workspace import open_workspace


@task(cache_policy=NO_CACHE)
def plan(workspace: str, app: str, source: str | None) -> stage.CollectPlan:
    return stage.plan_collect(open_workspace(Path(workspace)), app, source)


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
def publish(result: CollectResult, ui_url: str | None) -> None:
    keys = ("rows_in", "rows_valid", "rows_quarantined", "rows_duplicate", "dvc_md5")
    rows = "\n".join(f"| {k} | {getattr(result, k)} |" for k in keys)
    rows += f"\n| mlflow_run_id | {run_link(result.mlflow_run_id, ui_url)} |"
    create_markdown_artifact(f"| collect {result.app} | |\n|---|---|\n{rows}\n", key=f"collect-{result.app}")


@flow(name="collect", log_prints=True)
def collect_flow(app: str = "support-bot", workspace: str = ".", source: OptionalText = None) -> CollectResult:
    """collect: read each source, validate, quarantine, redact, version with DVC, log to MLflow.

    Args:
        app: the app, a name under `apps:` in params.yaml
        workspace: the workspace folder; "." is the folder the deployment was made from
        source: a log file or glob inside the workspace to read instead of the app's sources; empty: from params.yaml
    """
    prepare_environment()
    with writing(Path(workspace), f"collect flow --app {app}"):
        the_plan = plan(workspace, app, source)
        ctx = prepare(the_plan)
        totals = stage.Totals()
        with dataset_change(the_plan.workspace.root, stage.versioned_paths(the_plan), f"collect {app}"):
            for index in range(len(the_plan.sources)):
                totals.add(read_validate_redact(the_plan, index, ctx))
            versioned = version(the_plan, totals)
        summary = summarize(the_plan, totals, versioned, log_run(the_plan, totals, versioned, ctx.validator.version))
    publish(summary, mlflow_ui_url(the_plan.workspace))
    return summary
