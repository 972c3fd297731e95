"""Prefect flow `improve`: mined failures -> a bigger golden set -> prompt candidates -> evaluation -> decision.

Thin wiring of promptloop.improve; the library does the work and is tested without Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from promptloop.core.runtime import prepare_environment
from promptloop.domain.evaluation import EvaluationResult
from promptloop.domain.results import ClusterResult, GrowthResult, ImproveOutcome
from promptloop.evaluate.plan import hand_written_candidates
from promptloop.evaluate.report import decision_table
from promptloop.evaluate.stage import evaluate as evaluate_prompts
from promptloop.improve import stage
from promptloop.ops.flow_form import OptionalAmount, OptionalCount
from promptloop.workspace.handoff import save_outcome
from promptloop.workspace.links import mlflow_ui_url, run_link
from promptloop.workspace.locking import writing
from promptloop.workspace.preflight import app_models, preflight
from promptloop.workspace.workspace import Workspace, open_workspace, with_overrides


@task(cache_policy=NO_CACHE)
def open_(folder: str, candidates: int | None, budget_usd: float | None) -> Workspace:
    return with_overrides(open_workspace(Path(folder)), {"improve": {"candidates": candidates},
                                                         "evaluate": {"budget_usd": budget_usd}})


@task(cache_policy=NO_CACHE)
def check_models(workspace: Workspace, app: str) -> None:
    """Keys, prices and the data policy of the app's, judge's and optimizer's models, before any call."""
    budget = workspace.params.evaluate.budget_usd
    preflight(workspace, app, app_models(workspace, app, optimizer=True), budget_usd=budget)


@task(cache_policy=NO_CACHE)
def load_failures(workspace: Workspace, app: str) -> tuple[pd.DataFrame, list[ClusterResult]]:
    return stage.load_failures(workspace, app)


# Safe to retry: a failed write, push or commit rolls the golden set back to its last commit
# (versioning.dataset_change), so the retry grows it from the same state.
@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=600)
def grow_golden_set(workspace: Workspace, app: str, mined: tuple[pd.DataFrame, list[ClusterResult]]) -> GrowthResult:
    return stage.grow_golden_set(workspace, app, *mined)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=1800)
def propose_candidates(
    workspace: Workspace, app: str, mined: tuple[pd.DataFrame, list[ClusterResult]]
) -> stage.Proposed:
    return stage.propose_candidates(workspace, app, *mined)


@task(cache_policy=NO_CACHE)
def hand_written(workspace: Workspace, app: str) -> list[Path]:
    return hand_written_candidates(workspace, app)


@task(cache_policy=NO_CACHE)
def fingerprint(workspace: Workspace, app: str, candidate_paths: list[Path]) -> str | None:
    return stage.evaluation_fingerprint(workspace, app, candidate_paths)


def evaluation_key(context: TaskRunContext, arguments: dict[str, Any]) -> str | None:
    """Cache an evaluation by the hash of everything it reads; None (a dirty tree) never hits the cache."""
    return arguments["fingerprint"] and f"evaluate-{arguments['fingerprint']}"


@task(cache_key_fn=evaluation_key, persist_result=True, retries=1, retry_delay_seconds=30, timeout_seconds=3600)
def evaluate(workspace: Workspace, app: str, candidate_paths: list[Path], fingerprint: str | None) -> EvaluationResult:
    return evaluate_prompts(workspace, app, candidate_paths)


@task(cache_policy=NO_CACHE)
def decide(workspace: Workspace, app: str, growth: GrowthResult, proposed: stage.Proposed, written: list[Path],
           result: EvaluationResult) -> ImproveOutcome:
    outcome = stage.improve_outcome(app, growth, proposed, written, result)
    save_outcome(workspace, outcome)
    return outcome


@task(cache_policy=NO_CACHE)
def publish(outcome: ImproveOutcome, ui_url: str | None) -> None:
    golden, best = outcome.golden, outcome.best
    headline = f"### improve {outcome.app}: **{outcome.decision}** {best.name if best else ''}\n\n"
    reasons = "".join(f"- {reason}\n" for reason in outcome.reasons)
    growth = "\n".join(f"| {k} | {getattr(golden, k)} |" for k in ("added", "optimize", "holdout", "dvc_md5"))
    table = "\n".join(decision_table(outcome.evaluation))
    run = run_link(outcome.evaluation.mlflow_run_id, ui_url)
    create_markdown_artifact(f"{headline}{reasons}\n| golden set | |\n|---|---|\n{growth}\n\n{table}\n\n"
                             f"MLflow run: {run}\n", key=f"improve-{outcome.app}")


@flow(name="improve", log_prints=True)
def improve_flow(app: str = "support-bot", workspace: str = ".", candidates: OptionalCount = None,
                 budget_usd: OptionalAmount = None) -> ImproveOutcome:
    """improve: grow the golden set, propose candidates, evaluate them against the baseline, decide.

    Args:
        app: the app, a name under `apps:` in params.yaml
        workspace: the workspace folder; "." is the folder the deployment was made from
        candidates: prompts the optimizer writes; empty: from params.yaml (improve.candidates)
        budget_usd: most the evaluation may spend, in USD; empty: from params.yaml (evaluate.budget_usd)
    """
    prepare_environment()
    with writing(Path(workspace), f"improve flow --app {app}"):
        opened = open_(workspace, candidates, budget_usd)
        check_models(opened, app)
        mined = load_failures(opened, app)
        growth = grow_golden_set(opened, app, mined)
        proposed = propose_candidates(opened, app, mined)
        written = hand_written(opened, app)
        paths = written + proposed.paths
        result = evaluate(opened, app, paths, fingerprint(opened, app, paths))
        outcome = decide(opened, app, growth, proposed, written, result)
    publish(outcome, mlflow_ui_url(opened))
    return outcome
