"""Prefect flow `cycle`: merge approved promotions, then collect -> analyze -> improve -> deploy as subflows.

Thin wiring of promptloop.cycle (the skip rule and the result are the library's); each stage is its
own flow run under this one, with its own tasks and artifacts.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.analyze import analyze_flow
from flows.collect import collect_flow
from flows.deploy import deploy_flow
from flows.improve import improve_flow
from promptloop.core.runtime import prepare_environment
from promptloop.domain.results import CollectResult, CycleResult
from promptloop.loop import cycle as stage
from promptloop.loop.summary import cycle_report, result_line
from promptloop.ops.flow_form import OptionalAmount, OptionalCount, OptionalText
from promptloop.workspace.links import mlflow_ui_url
from promptloop.workspace.locking import writing
from promptloop.workspace.preflight import app_models, preflight
from promptloop.workspace.repository import merge_base_branch
from promptloop.workspace.workspace import Workspace, open_workspace


@task(cache_policy=NO_CACHE)
def open_(folder: str) -> Workspace:
    return open_workspace(Path(folder))


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
def publish(workspace: Workspace, result: CycleResult) -> str:
    """The decision, the pull request and the stages' MLflow runs on the cycle run's own page; its one-line result."""
    create_markdown_artifact(cycle_report(result, mlflow_ui_url(workspace)), key=f"cycle-{result.app}",
                             description=f"cycle {result.app}: {result.decision}")
    return result_line(result)


@flow(name="cycle", log_prints=True)
def cycle_flow(app: str = "support-bot", workspace: str = ".", force: bool = False, window: OptionalText = None,
               candidates: OptionalCount = None, budget_usd: OptionalAmount = None) -> CycleResult:
    """cycle: one turn of the loop; stops after collect when no new logs came in (unless force).

    Args:
        app: the app, a name under `apps:` in params.yaml
        workspace: the workspace folder; "." is the folder the deployment was made from
        force: analyze and improve even when collect found no new logs (they were improved on already)
        window: length of the analysed window, e.g. 7d or 24h; empty: from params.yaml (analyze.window_days)
        candidates: prompts the optimizer writes; empty: from params.yaml (improve.candidates)
        budget_usd: most the evaluation may spend, in USD; empty: from params.yaml (evaluate.budget_usd)
    """
    prepare_environment()
    # The stages are subflows in this process: they re-enter the hold, so no other writer comes between them.
    with writing(Path(workspace), f"cycle flow --app {app}"):
        opened = open_(workspace)
        check_models(opened, app)
        resumed = begin_turn(opened, app)
        merged = merge_approved(opened)
        collected = collect_flow(app=app, workspace=workspace)
        if nothing_new(opened, app, collected, force, resumed):
            result = stage.skipped(app, merged, collected)
        else:
            analyzed = analyze_flow(app=app, workspace=workspace, window=window)
            improved = improve_flow(app=app, workspace=workspace, candidates=candidates, budget_usd=budget_usd)
            deployed = deploy_flow(app=app, workspace=workspace) if improved.decision == "promote" else None
            result = stage.finished(merged, collected, analyzed, improved, deployed, resumed)
        result = end_turn(opened, app, result)
    get_run_logger().info(publish(opened, result))
    return result
