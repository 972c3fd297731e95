"""`promptloop init`: a fresh workspace with git, a local origin, DVC and its own MLflow store."""

from __future__ import annotations

from pathlib import Path

import git
from pydantic import BaseModel, Field

from promptloop.core.runtime import prepare_environment
from promptloop.workspace.tracking import experiment_id
from promptloop.workspace.versioning import committer, quiet_dvc
from promptloop.workspace.workspace import (
    DVC_REMOTE_DIR,
    REMOTE_DIR,
    Workspace,
    check_empty_target,
    copy_template,
    open_workspace,
    template_root,
)


class InitResult(BaseModel):
    """What `init` created."""

    workspace: str
    commit: str
    origin: str
    dvc_remote: str
    dvc_tracked: list[str]
    tracking_uri: str
    experiments: dict[str, str] = Field(description="MLflow experiment name -> id, one per app")
    apps: list[str]


def init_workspace(dest: Path, template: Path | None = None) -> InitResult:
    """Create the workspace at `dest`; returns what was created."""
    prepare_environment()
    dest = dest.resolve()
    check_empty_target(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copy_template(dest, template or template_root())
    workspace = open_workspace(dest)  # validates the copied params.yaml before anything else
    repo = init_git(dest)
    tracked = init_dvc(workspace)
    repo.git.add(A=True)
    repo.index.commit("Initialise promptloop workspace", author=committer(repo), committer=committer(repo))
    origin = init_origin(repo, dest / REMOTE_DIR)
    experiment_ids = init_tracking(workspace)
    return InitResult(workspace=str(dest), commit=repo.head.commit.hexsha, origin=origin,
                      dvc_remote=str(dest / DVC_REMOTE_DIR), dvc_tracked=tracked, tracking_uri=workspace.tracking_uri,
                      experiments=experiment_ids, apps=sorted(workspace.params.apps))


def init_git(dest: Path) -> git.Repo:
    """A new repository on branch main."""
    return git.Repo.init(dest, initial_branch="main")


def init_dvc(workspace: Workspace) -> list[str]:
    """`dvc init`, a local default remote, and every app's golden set tracked and pushed."""
    from dvc.repo import Repo as DvcRepo

    with quiet_dvc():
        dvc = DvcRepo.init(str(workspace.root))
        with dvc.config.edit() as conf:
            conf["core"]["analytics"] = False
            conf["core"]["autostage"] = True
            conf["core"]["remote"] = "local"
            conf["remote"]["local"] = {"url": str(workspace.root / DVC_REMOTE_DIR)}
        targets = [str(workspace.path(app.golden_set)) for app in workspace.params.apps.values()]
        dvc.add(targets)
        dvc.push()
        dvc.close()
    return [str(Path(t).relative_to(workspace.root)) for t in targets]


def init_origin(repo: git.Repo, bare_path: Path) -> str:
    """A local bare repository as `origin`, with main pushed to it."""
    git.Repo.init(bare_path, bare=True, initial_branch="main")
    origin = repo.create_remote("origin", str(bare_path))
    origin.push("main:main", set_upstream=True).raise_if_error()
    return str(bare_path)


def init_tracking(workspace: Workspace) -> dict[str, str]:
    """Create the workspace's MLflow store and one experiment per app; returns name -> id."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=workspace.tracking_uri)
    names = [workspace.experiment_name(app) for app in workspace.params.apps]
    return {name: experiment_id(client, name, workspace.artifact_root) for name in names}
