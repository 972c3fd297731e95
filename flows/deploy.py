"""Prefect flow `deploy`: the candidate improve promoted becomes a branch and a pull request.

Thin wiring of promptloop.deploy; the library does the work and is tested without Prefect.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from promptloop.core.runtime import prepare_environment
from promptloop.deploy import stage
from promptloop.domain.results import DeployResult
from promptloop.workspace.handoff import load_outcome
from promptloop.workspace.links import mlflow_ui_url, run_link
from promptloop.workspace.workspace import Workspace, open_workspace


@task(cache_policy=NO_CACHE)
def open_(folder: str) -> Workspace:
    return open_workspace(Path(folder))


@task(cache_policy=NO_CACHE)
def evaluation_run(workspace: Workspace, app: str) -> str | None:
    return load_outcome(workspace, app).evaluation.mlflow_run_id


# Safe to retry: the same candidate never opens a second branch or pull request.
@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=300)
def open_pull_request(workspace: Workspace, app: str) -> DeployResult:
    return stage.deploy(workspace, app)


@task(cache_policy=NO_CACHE)
def publish(result: DeployResult, run_id: str | None, ui_url: str | None) -> None:
    url = result.pull_request.url if result.pull_request else result.compare
    rows = {"decision": result.decision, "branch": result.branch, "created": result.created, "version": result.version,
            "pull request": url, "body": result.body_path, "evaluation MLflow run": run_link(run_id, ui_url)}
    table = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    reasons = "".join(f"- {reason}\n" for reason in result.reasons)
    create_markdown_artifact(
        f"### deploy {result.app}\n\n{reasons}\n| | |\n|---|---|\n{table}\n", key=f"deploy-{result.app}"
    )


@flow(name="deploy", log_prints=True)
def deploy_flow(app: str = "support-bot", workspace: str = ".") -> DeployResult:
    """deploy: open (or find) the pull request of the candidate the last improve run promoted.

    Args:
        app: the app, a name under `apps:` in params.yaml
        workspace: the workspace folder; "." is the folder the deployment was made from
    """
    prepare_environment()
    opened = open_(workspace)
    run_id = evaluation_run(opened, app)
    result = open_pull_request(opened, app)
    publish(result, run_id, mlflow_ui_url(opened))
    return result
