"""Data versions: `dvc add` + `dvc push` of dataset folders, and the git commit of their .dvc files."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Iterator

import git
import yaml

from promptloop.workspace import COMMITTER


@contextlib.contextmanager
def quiet_dvc() -> Iterator[None]:
    """DVC reports through its logger and stdout; our stdout carries the JSON result only."""
    dvc_logger = logging.getLogger("dvc")
    level = dvc_logger.level
    dvc_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        dvc_logger.setLevel(level)


def dvc_add_and_push(root: Path, targets: list[Path]) -> dict[str, str]:
    """Track `targets` with DVC, push them to the default remote; returns target -> md5 of its version."""
    from dvc.repo import Repo as DvcRepo

    with quiet_dvc(), DvcRepo(str(root)) as dvc:
        dvc.add([str(t) for t in targets])
        dvc.push([str(t) for t in targets])
    return {str(t.relative_to(root)): dvc_md5(t) for t in targets}


def dvc_md5(target: Path) -> str:
    """The md5 DVC recorded for `target` in its .dvc file."""
    meta = yaml.safe_load(Path(f"{target}.dvc").read_text(encoding="utf-8"))
    return str(meta["outs"][0]["md5"])


def commit_paths(root: Path, paths: list[Path], message: str) -> str:
    """Commit `paths` on the workspace's current branch (never pushes); returns the commit sha."""
    repo = git.Repo(root)
    repo.index.add([str(p.relative_to(root)) for p in paths])
    actor = committer(repo)
    return repo.index.commit(message, author=actor, committer=actor).hexsha


def committer(repo: git.Repo) -> git.Actor:
    """The user's git identity when configured, else promptloop's own."""
    reader = repo.config_reader()
    name = reader.get_value("user", "name", default="")
    email = reader.get_value("user", "email", default="")
    return git.Actor(name or COMMITTER[0], email or COMMITTER[1])
