"""The workspace's git repository: the base branch on the remote, prompts as committed, promptloop's identity."""

from __future__ import annotations

from pathlib import Path

import git
from pydantic import ValidationError

from promptloop.core.config import parse_yaml_text
from promptloop.core.errors import DeployError, InputError, input_error_from_validation
from promptloop.domain.prompts import PromptVersion
from promptloop.workspace.workspace import COMMITTER, Workspace


def uncommitted_changes(repo: git.Repo) -> str | None:
    """The uncommitted changes and untracked files (ignored ones are fine), listed briefly; None when clean."""
    if not repo.is_dirty(untracked_files=True):
        return None
    changed = [line[3:] for line in str(repo.git.status("--porcelain", "--untracked-files=all")).splitlines()]
    return ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")


def require_clean_tree(repo: git.Repo) -> None:
    """Refuse to deploy from a tree with uncommitted changes or untracked files (ignored ones are fine):
    what is proposed must be what was evaluated and committed."""
    listed = uncommitted_changes(repo)
    if listed is not None:
        raise DeployError(f"{repo.working_dir}: the working tree has uncommitted changes ({listed}); "
                          "commit or stash them before deploying")


def fetch_base(repo: git.Repo, remote: str, base_branch: str, *, tags: bool = False) -> str:
    """`git fetch <remote>`; returns the commit `<remote>/<base_branch>` points at."""
    if remote not in [r.name for r in repo.remotes]:
        raise InputError(
            Path(repo.working_dir) / "params.yaml", f"no git remote named {remote!r}", field="deploy.remote"
        )
    try:
        repo.git.fetch(remote, *(["--tags"] if tags else []))
        return repo.git.rev_parse("--verify", f"refs/remotes/{remote}/{base_branch}^{{commit}}")
    except git.GitCommandError as exc:
        raise DeployError(f"git fetch {remote} / {remote}/{base_branch}: {git_message(exc)}") from None


def prompt_at(repo: git.Repo, rev: str, path: str) -> PromptVersion | None:
    """The prompt file `path` as committed at `rev`, or None when it does not exist there."""
    try:
        text = repo.git.show(f"{rev}:{path}", strip_newline_in_stdout=False)
    except git.GitCommandError:
        return None
    source = f"{rev[:12]}:{path}"
    try:
        return PromptVersion.model_validate(parse_yaml_text(str(text), source))
    except ValidationError as exc:
        raise input_error_from_validation(source, exc) from None


def bot_identity() -> dict[str, str]:
    """Author and committer of what promptloop itself commits and tags."""
    name, email = COMMITTER
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def git_message(exc: git.GitCommandError) -> str:
    """git's own error text, on one line."""
    text = exc.stderr if isinstance(exc.stderr, str) and exc.stderr.strip() else str(exc)
    return " ".join(text.replace("stderr:", "").split()).strip("' ")


def merge_base_branch(workspace: Workspace) -> str | None:
    """Bring what people merged on `<remote>/<base>` (promoted prompts) into the workspace's branch.

    The workspace's own commits (collected data, the grown golden set) stay local; on a conflict
    ours wins, because the local golden set only ever grows from the version a pull request carried.
    Returns the merge commit, or None when there was nothing to merge.
    """
    deploy = workspace.params.deploy
    repo = git.Repo(workspace.root)
    base_commit = fetch_base(repo, deploy.remote, deploy.base_branch)
    if repo.is_ancestor(repo.commit(base_commit), repo.head.commit):
        return None
    require_clean_tree(repo)
    try:
        repo.git.merge(base_commit, "-X", "ours", "--no-edit", "-m",
                       f"Merge {deploy.remote}/{deploy.base_branch}: promotions people approved", env=bot_identity())
    except git.GitCommandError as exc:
        raise DeployError(f"git merge {deploy.remote}/{deploy.base_branch}: {git_message(exc)}") from None
    return repo.head.commit.hexsha
