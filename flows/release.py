"""Prefect flow `release`: after a person merged a prompt's pull request, make it production.

Thin wiring of promptloop.release; the library does the work and is tested without Prefect.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from promptloop.core.runtime import prepare_environment
from promptloop.deploy import release as stage
from promptloop.domain.results import ReleaseResult
from promptloop.workspace.workspace import Workspace, open_workspace

HEADLINE = ("version", "tag", "registry_version", "alias", "commit", "released", "rollback", "mlflow_run_id")


class ReleaseParameters(BaseModel):
    """What the Prefect UI shows as the form of a release run."""

    app: str = Field(default="support-bot", description="app name under apps: in params.yaml")
    workspace: str = Field(default=".", description="the workspace folder")
    rollback: bool = Field(default=False, description="point production back at the previous release instead")


@task(cache_policy=NO_CACHE)
def open_(parameters: ReleaseParameters) -> Workspace:
    return open_workspace(Path(parameters.workspace))


# Safe to retry: releasing a version that is already production changes nothing.
@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=300)
def release(workspace: Workspace, app: str, rollback: bool) -> ReleaseResult:
    return stage.release(workspace, app, rollback=rollback)


@task(cache_policy=NO_CACHE)
def publish(result: ReleaseResult) -> None:
    rows = "\n".join(f"| {k} | {getattr(result, k)} |" for k in HEADLINE)
    create_markdown_artifact(f"### release {result.app}\n\n{result.message}\n\n| | |\n|---|---|\n{rows}\n",
                             key=f"release-{result.app}")


@flow(name="release", log_prints=True)
def release_flow(parameters: ReleaseParameters = ReleaseParameters()) -> ReleaseResult:
    """release: the prompt merged on the base branch becomes production (MLflow alias, git tag, run)."""
    prepare_environment()
    result = release(open_(parameters), parameters.app, parameters.rollback)
    publish(result)
    return result
