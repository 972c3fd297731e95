"""Data versions: `dvc add` + `dvc push` of dataset folders, and the git commit of their .dvc files."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import git
import yaml

from promptloop.core.errors import InputError
from promptloop.core.files import write_atomic
from promptloop.workspace.workspace import COMMITTER

log = logging.getLogger(__name__)


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
    name = str(reader.get_value("user", "name", default=""))
    email = str(reader.get_value("user", "email", default=""))
    return git.Actor(name or COMMITTER[0], email or COMMITTER[1])


JOURNAL_FILE = ".promptloop/journal.json"


@contextlib.contextmanager
def dataset_change(root: Path, paths: list[Path], what: str) -> Iterator[None]:
    """Changes to `paths` (DVC datasets, their .dvc files, git-tracked files) that land whole or not at all.

    A journal naming the paths is written before the block (write, `dvc add`, push, commit) and
    removed after it. A process killed inside leaves the journal, and the next writer of the
    workspace (`roll_back_interrupted`) puts the paths back to their last commit; an exception
    inside rolls them back at once.
    """
    journal = root / JOURNAL_FILE
    entry = {"what": what, "paths": sorted({str(p.relative_to(root)) for p in paths})}
    write_atomic(journal, json.dumps(entry) + "\n")
    try:
        yield
    except BaseException:
        roll_back_interrupted(root)
        raise
    journal.unlink()


def roll_back_interrupted(root: Path) -> None:
    """Undo a dataset change that never finished (see `dataset_change`)."""
    journal = root / JOURNAL_FILE
    if not journal.is_file():
        return
    try:
        entry = json.loads(journal.read_text(encoding="utf-8"))
        paths = [str(p) for p in entry["paths"]]
    except (ValueError, KeyError, TypeError):
        raise InputError(journal, "unreadable journal of an interrupted change; restore its paths by hand "
                                  "(git checkout + dvc checkout) and delete it") from None
    repo = git.Repo(root)
    committed = {str(item.path) for item in repo.head.commit.tree.traverse()
                 if isinstance(item, git.Blob)}
    for relative in paths:
        restore_committed(root, repo, relative, committed)
    journal.unlink()
    log.warning("rolled back an interrupted %s: %s", entry.get("what", "change"), ", ".join(paths))


def restore_committed(root: Path, repo: git.Repo, relative: str, committed: set[str]) -> None:
    """Put one path back as the last commit has it: a DVC output from its committed .dvc, a file
    from git, and a path the commit never had removed."""
    dvc_file = f"{relative}.dvc"
    unstage = [p for p in (relative, dvc_file) if p in committed or (root / p).exists()]
    if unstage:
        repo.git.reset("-q", "HEAD", "--", *unstage)  # an index.add before the crash stays staged otherwise
    if dvc_file in committed:
        repo.git.checkout("HEAD", "--", dvc_file)
        dvc_checkout(root, root / relative)
    elif relative in committed:
        repo.git.checkout("HEAD", "--", relative)
    else:
        for path in (root / relative, root / dvc_file):
            remove(path)


def dvc_checkout(root: Path, target: Path) -> None:
    """Make `target` exactly the version its .dvc file records (extra files in a directory go)."""
    from dvc.repo import Repo as DvcRepo

    remove(target)  # a partly written output; the cache holds the recorded version
    with quiet_dvc(), DvcRepo(str(root)) as dvc:
        dvc.checkout([str(target)], force=True)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def commit_dataset_edit(root: Path, dataset: Path, edit: Callable[[], None], what: str,
                        message: str) -> tuple[str, str]:
    """Edit one DVC-tracked file whole or not at all: `edit` it, `dvc add` and push it, commit its .dvc file
    with `message`; returns (md5 of the new version, commit sha)."""
    dvc_file = Path(f"{dataset}.dvc")
    with dataset_change(root, [dataset, dvc_file], what):
        edit()
        md5 = dvc_add_and_push(root, [dataset])[str(dataset.relative_to(root))]
        commit = commit_paths(root, [dvc_file], message)
    return md5, commit
