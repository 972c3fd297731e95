"""Prefect flow `evaluate`: the baseline and candidates over the golden set, its cases in batches
that run as tasks side by side (threads by default; a Dask cluster with `on_dask`).

Thin wiring of promptloop.evaluate: plan -> one task per batch of cases -> statistics, decision,
MLflow. Every batch has its own runner (and a share of the budget); calls are cached in the
workspace, so a retried batch pays only for what it had not finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from promptloop.core.runtime import prepare_environment
from promptloop.domain.evaluation import EvaluationResult
from promptloop.evaluate import plan as planning
from promptloop.evaluate import run as running
from promptloop.evaluate import stage
from promptloop.evaluate.report import decision_table
from promptloop.ops.flow_form import Count, OptionalTexts
from promptloop.workspace.links import mlflow_ui_url, run_link
from promptloop.workspace.locking import writing
from promptloop.workspace.preflight import preflight
from promptloop.workspace.workspace import Workspace, open_workspace


@task(cache_policy=NO_CACHE)
def open_(folder: str) -> Workspace:
    return open_workspace(Path(folder))


@task(cache_policy=NO_CACHE)
def plan(workspace: Workspace, app: str, candidates: list[str] | None) -> planning.EvalPlan:
    paths = [Path(p) for p in candidates] if candidates is not None else None
    return planning.plan_evaluation(workspace, app, paths)


@task(cache_policy=NO_CACHE)
def check_models(workspace: Workspace, the_plan: planning.EvalPlan) -> None:
    """Keys, prices and the data policy of every model the evaluation calls, before any call."""
    preflight(workspace, the_plan.app, stage.plan_roles(the_plan), budget_usd=the_plan.settings.budget_usd)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=3600)
def run_batch(workspace: Workspace, the_plan: planning.EvalPlan, case_ids: list[str], share: float) -> running.EvalRun:
    # The batches run side by side: each takes its share of the concurrency and of the rate limits.
    return running.evaluate_batch(workspace, the_plan, case_ids, share, None, max(1, round(1 / share)))


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, timeout_seconds=600)
def finish(workspace: Workspace, the_plan: planning.EvalPlan, runs: list[running.EvalRun]) -> EvaluationResult:
    return stage.finish_evaluation(workspace, the_plan, running.merge_runs(the_plan, runs))


@task(cache_policy=NO_CACHE)
def publish(result: EvaluationResult, ui_url: str | None) -> None:
    table = "\n".join(decision_table(result))
    run = run_link(result.mlflow_run_id, ui_url)
    create_markdown_artifact(f"### evaluate {result.app}\n\n{table}\n\nMLflow run: {run}\n",
                             key=f"evaluate-{result.app}")


@flow(name="evaluate", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=4))
def evaluate_flow(app: str = "support-bot", workspace: str = ".", candidates: OptionalTexts = None,
                  batches: Count = 4) -> EvaluationResult:
    """evaluate: plan -> batches of cases as parallel tasks -> statistics, decision, MLflow, artifact.

    Args:
        app: the app, a name under `apps:` in params.yaml
        workspace: the workspace folder; "." is the folder the deployment was made from
        candidates: candidate prompt files; empty: every prompts/<app>/candidates/*.yaml
        batches: parts the golden set is split into; each runs as one task
    """
    prepare_environment()
    with writing(Path(workspace), f"evaluate flow --app {app}"):
        opened = open_(workspace)
        the_plan = plan(opened, app, candidates)
        check_models(opened, the_plan)
        parts = planning.case_batches(the_plan, batches)
        runs = run_batch.map(unmapped(opened), unmapped(the_plan), parts, unmapped(1 / len(parts)))
        summary = finish(opened, the_plan, runs)
    publish(summary, mlflow_ui_url(opened))
    return summary


def on_dask(parameters: dict[str, Any], address: str | None = None, workers: int = 2) -> EvaluationResult:
    """Run the flow with `parameters` (its arguments by name) and its batches on a Dask cluster:
    `address` of a running scheduler, else a local cluster of `workers` processes (what a test or a
    laptop can do)."""
    import os

    from prefect_dask import DaskTaskRunner

    # Workers unpickle the tasks by reference (flows.evaluate.run_batch): the folder holding flows/
    # must be importable there too. A real cluster gets it from its image or a Prefect pull step.
    importable = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p
    )
    runner = DaskTaskRunner(address=address) if address else DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
                        "env": {"PYTHONPATH": importable}})
    return evaluate_flow.with_options(task_runner=runner)(**parameters)


def main() -> None:
    """`python flows/evaluate.py --workspace W [--candidate F]... [--batches N] [--dask [ADDRESS]]`: one
    evaluate flow run (on a Dask cluster with --dask), its JSON summary on stdout."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--app", default="support-bot")
    parser.add_argument("--candidate", action="append", default=None)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument(
        "--dask", nargs="?", const="local", default=None, help="a scheduler address, or none for a local cluster"
    )
    args = parser.parse_args()
    prepare_environment()  # before Prefect starts its ephemeral API: telemetry off
    parameters = {"app": args.app, "workspace": args.workspace, "candidates": args.candidate, "batches": args.batches}
    if args.dask is None:
        summary = evaluate_flow(**parameters)
    else:
        summary = on_dask(parameters, None if args.dask == "local" else args.dask)
    print(json.dumps(summary.model_dump(mode="json")))


if __name__ == "__main__":
    main()
