"""Prefect flow `cycle`: merge approved promotions, then collect -> analyze -> improve -> deploy as subflows.

Thin wiring of promptloop.cycle (the skip rule and the result are the library's); each stage is its
own flow run under this one, with its own tasks and artifacts.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from flows.analyze import AnalyzeParameters, analyze_flow
from flows.collect import CollectParameters, collect_flow
from flows.deploy import DeployParameters, deploy_flow
from flows.improve import ImproveParameters, improve_flow
from promptloop.core.runtime import prepare_environment
from promptloop.domain.results import CollectResult, CycleResult
from promptloop.loop import cycle as stage
from promptloop.workspace.locking import writing
from promptloop.workspace.preflight import app_models, preflight
from promptloop.workspace.repository import merge_base_branch
from promptloop.workspace.workspace import Workspace, open_workspace


class CycleParameters(BaseModel):
    """What the Prefect UI shows as the form of a cycle run."""

    app: str = Field(default="support-bot", description="app name under apps: in params.yaml")
    workspace: str = Field(default=".", description="the workspace folder")
    force: bool = Field(default=False, description="analyze and improve even when collect found no new logs")
    window: str | None = Field(default=None, description="analyze window, e.g. 7d [default: params.yaml]")
    candidates: int | None = Field(
        default=None, ge=0, description="prompts the optimizer writes [default: params.yaml improve.candidates]"
    )
    budget_usd: float | None = Field(
        default=None, ge=0, description="evaluation budget in USD [default: params.yaml evaluate.budget_usd]"
    )


@task(cache_policy=NO_CACHE)
def open_(parameters: CycleParameters) -> Workspace:
    return open_workspace(Path(parameters.workspace))


# Safe to retry: a merge that already happened is a no-op.
@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=300)
def merge_approved(workspace: Workspace) -> str | None:
    return merge_base_branch(workspace)


@task(cache_policy=NO_CACHE)
def check_models(workspace: Workspace, app: str) -> None:
    """Keys, prices, the data policy and a clean tree, before anything is spent or written."""
    preflight(workspace, app, app_models(workspace, app, optimizer=True, online_judge=True),
              budget_usd=workspace.params.evaluate.budget_usd, may_deploy=True)


@task(cache_policy=NO_CACHE)
def begin_turn(workspace: Workspace, app: str) -> str | None:
    return stage.begin_turn(workspace, app)


@task(cache_policy=NO_CACHE)
def nothing_new(workspace: Workspace, app: str, collected: CollectResult, force: bool, resumed: str | None) -> bool:
    return stage.nothing_new(workspace, app, collected, force, resumed)


@task(cache_policy=NO_CACHE)
def end_turn(workspace: Workspace, app: str, result: CycleResult) -> CycleResult:
    return stage.end_turn(workspace, app, result)


@task(cache_policy=NO_CACHE)
def publish(result: CycleResult) -> None:
    stages = {"collect": result.collect.mlflow_run_id, "analyze": result.analyze and result.analyze.mlflow_run_id,
              "improve": result.improve and result.improve.evaluation.mlflow_run_id}
    runs = "\n".join(f"| {name} | `{run_id or ''}` |" for name, run_id in stages.items())
    reasons = "".join(f"- {reason}\n" for reason in result.reasons)
    create_markdown_artifact(
        f"### cycle {result.app}: **{result.decision}**\n\n{reasons}\n"
        f"| | |\n|---|---|\n| new rows | {result.collect.rows_valid} |\n"
        f"| branch | {result.deploy.branch if result.deploy else None} |\n"
        f"| LLM calls | {result.llm.calls} (cache: {result.llm.cache_hits}) |\n\n"
        f"| stage | MLflow run |\n|---|---|\n{runs}\n", key=f"cycle-{result.app}")


@flow(name="cycle", log_prints=True)
def cycle_flow(parameters: CycleParameters = CycleParameters()) -> CycleResult:
    """cycle: one turn of the loop; stops after collect when no new logs came in (unless force)."""
    prepare_environment()
    app, folder = parameters.app, parameters.workspace
    # The stages are subflows in this process: they re-enter the hold, so no other writer comes between them.
    with writing(Path(folder), f"cycle flow --app {app}"):
        workspace = open_(parameters)
        check_models(workspace, app)
        resumed = begin_turn(workspace, app)
        merged = merge_approved(workspace)
        collected = collect_flow(CollectParameters(app=app, workspace=folder))
        if nothing_new(workspace, app, collected, parameters.force, resumed):
            result = stage.skipped(app, merged, collected)
        else:
            analyzed = analyze_flow(AnalyzeParameters(app=app, workspace=folder, window=parameters.window))
            improved = improve_flow(ImproveParameters(app=app, workspace=folder, candidates=parameters.candidates,
                                                      budget_usd=parameters.budget_usd))
            deployed = (
                deploy_flow(DeployParameters(app=app, workspace=folder)) if improved.decision == "promote" else None
            )
            result = stage.finished(merged, collected, analyzed, improved, deployed, resumed)
        result = end_turn(workspace, app, result)
    publish(result)
    return result
