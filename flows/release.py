"""Prefect flow `release`: after a person merged a prompt's pull request, make it production.

Thin wiring of promptloop.release; the library does the work and is tested without Prefect.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from promptloop.core.runtime import prepare_environment
from promptloop.deploy import release as stage
from promptloop.domain.results import ReleaseResult
from promptloop.workspace.links import mlflow_ui_url, run_link
from promptloop.workspace.workspace import Workspace, open_workspace

HEADLINE = ("version", "tag", "registry_version", "alias", "commit", "released", "rollback")


@task(cache_policy=NO_CACHE)
def open_(folder: str) -> Workspace:
    return open_workspace(Path(folder))


# Safe to retry: releasing a version that is already production changes nothing.
@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=300)
def release(workspace: Workspace, app: str, rollback: bool) -> ReleaseResult:
    return stage.release(workspace, app, rollback=rollback)


@task(cache_policy=NO_CACHE)
def publish(result: ReleaseResult, ui_url: str | None) -> None:
    rows = "\n".join(f"| {k} | {getattr(result, k)} |" for k in HEADLINE)
    rows += f"\n| mlflow_run_id | {run_link(result.mlflow_run_id, ui_url)} |"
    create_markdown_artifact(f"### release {result.app}\n\n{result.message}\n\n| | |\n|---|---|\n{rows}\n",
                             key=f"release-{result.app}")


@flow(name="release", log_prints=True)
def release_flow(app: str = "support-bot", workspace: str = ".", rollback: bool = False) -> ReleaseResult:
    """release: the prompt merged on the base branch becomes production (MLflow alias, git tag, run).

    Args:
        app: the app, a name under `apps:` in params.yaml
        workspace: the workspace folder; "." is the folder the deployment was made from
        rollback: point production back at the previous release instead of the merged prompt
    """
    prepare_environment()
    opened = open_(workspace)
    result = release(opened, app, rollback)
    publish(result, mlflow_ui_url(opened))
    return result
