"""Prefect flow `deploy`: the candidate improve promoted becomes a branch and a pull request.

Thin wiring of promptloop.deploy; the library does the work and is tested without Prefect.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from promptloop.core.runtime import prepare_environment
from promptloop.deploy import stage
from promptloop.domain.results import DeployResult
from promptloop.workspace.handoff import load_outcome
from promptloop.workspace.workspace import Workspace, open_workspace


class DeployParameters(BaseModel):
    """What the Prefect UI shows as the form of a deploy run."""

    app: str = Field(default="support-bot", description="app name under apps: in params.yaml")
    workspace: str = Field(default=".", description="the workspace folder")


@task(cache_policy=NO_CACHE)
def open_(parameters: DeployParameters) -> Workspace:
    return open_workspace(Path(parameters.workspace))


@task(cache_policy=NO_CACHE)
def evaluation_run(workspace: Workspace, app: str) -> str | None:
    return load_outcome(workspace, app).evaluation.mlflow_run_id


# Safe to retry: the same candidate never opens a second branch or pull request.
@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=300)
def open_pull_request(workspace: Workspace, app: str) -> DeployResult:
    return stage.deploy(workspace, app)


@task(cache_policy=NO_CACHE)
def publish(result: DeployResult, run_id: str | None) -> None:
    url = result.pull_request.url if result.pull_request else result.compare
    rows = {"decision": result.decision, "branch": result.branch, "created": result.created, "version": result.version,
            "pull request": url, "body": result.body_path, "evaluation MLflow run": run_id}
    table = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    reasons = "".join(f"- {reason}\n" for reason in result.reasons)
    create_markdown_artifact(
        f"### deploy {result.app}\n\n{reasons}\n| | |\n|---|---|\n{table}\n", key=f"deploy-{result.app}"
    )


@flow(name="deploy", log_prints=True)
def deploy_flow(parameters: DeployParameters = DeployParameters()) -> DeployResult:
    """deploy: open (or find) the pull request of the candidate the last improve run promoted."""
    prepare_environment()
    workspace = open_(parameters)
    run_id = evaluation_run(workspace, parameters.app)
    result = open_pull_request(workspace, parameters.app)
    publish(result, run_id)
    return result
