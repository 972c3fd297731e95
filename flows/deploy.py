"""Prefect flow `deploy`: the candidate improve promoted becomes a branch and a pull request.

Thin wiring of promptloop.deploy; the library does the work and is tested without Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from promptloop.deploy import stage
from promptloop.core.runtime import prepare_environment
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
    return stage.load_outcome(workspace, app)["evaluation"].get("mlflow_run_id")


# Safe to retry: the same candidate never opens a second branch or pull request.
@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=300)
def open_pull_request(workspace: Workspace, app: str) -> dict[str, Any]:
    return stage.deploy(workspace, app)


@task(cache_policy=NO_CACHE)
def publish(result: dict[str, Any], run_id: str | None) -> None:
    pr = result.get("pull_request") or {}
    rows = {"decision": result["decision"], "branch": result.get("branch"), "created": result.get("created"),
            "version": result.get("version"), "pull request": pr.get("url") or result.get("compare"),
            "body": result.get("body_path"), "evaluation MLflow run": run_id}
    table = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    reasons = "".join(f"- {reason}\n" for reason in result.get("reasons", []))
    create_markdown_artifact(f"### deploy {result['app']}\n\n{reasons}\n| | |\n|---|---|\n{table}\n", key=f"deploy-{result['app']}")


@flow(name="deploy", log_prints=True)
def deploy_flow(parameters: DeployParameters = DeployParameters()) -> dict[str, Any]:
    """deploy: open (or find) the pull request of the candidate the last improve run promoted."""
    prepare_environment()
    workspace = open_(parameters)
    run_id = evaluation_run(workspace, parameters.app)
    result = open_pull_request(workspace, parameters.app)
    publish(result, run_id)
    return result
