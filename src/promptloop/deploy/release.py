"""release: after a person merges a prompt's pull request, make the merged version production.

The prompt on `<remote>/<base>` is registered in the MLflow prompt registry, the alias `champion`
points at it (and `challenger`, which named it while its pull request was open, is removed), git
gets the tag `<app>@v<N>` on that commit, and an MLflow run records the link (version, registry
version, commit, tag). `rollback` points `champion` back at the previous release.
The alias is what the app serves (`Workspace.load_app`); the tags are the release history.
"""

from __future__ import annotations

import re
from typing import Any

import git

from promptloop.core.errors import DeployError
from promptloop.domain.prompts import PromptVersion, dump_prompt
from promptloop.domain.results import ReleaseResult
from promptloop.workspace import registry
from promptloop.workspace.locking import holds_workspace
from promptloop.workspace.registry import CHAMPION
from promptloop.workspace.repository import bot_identity, fetch_base, git_message, prompt_at
from promptloop.workspace.workspace import Workspace

RELEASE_TAG = "promptloop.release_tag"
COMMIT_TAG = "promptloop.commit"


@holds_workspace("release")
def release(workspace: Workspace, app: str, *, rollback: bool = False) -> ReleaseResult:
    """Make the prompt merged on the base branch production (or, with `rollback`, the previous release)."""
    from promptloop.workspace.tracking import tracking_client

    deploy = workspace.params.deploy
    prompt_path = workspace.app_settings(app).prompt.as_posix()
    repo = git.Repo(workspace.root)
    base_commit = fetch_base(repo, deploy.remote, deploy.base_branch, tags=True)
    client = tracking_client(workspace.tracking_uri)
    if rollback:
        return roll_back(workspace, repo, client, app, prompt_path)
    return release_merged(workspace, repo, client, app, prompt_path, base_commit)


def release_merged(workspace: Workspace, repo: git.Repo, client: Any, app: str, prompt_path: str,
                   base_commit: str) -> ReleaseResult:
    """Release the prompt at `base_commit`.

    A version released before with its tag and alias in place is a no-op. After a rollback the alias
    points elsewhere: releasing again rolls forward (the alias moves back, the existing tag is kept).
    """
    deploy = workspace.params.deploy
    prompt = prompt_at(repo, base_commit, prompt_path)
    if prompt is None:
        raise DeployError(f"{deploy.remote}/{deploy.base_branch}: {prompt_path} not found; nothing to release")
    tag = release_tag(app, prompt.version)
    tagged = tagged_commit(repo, tag)
    if tagged is not None:
        check_same_release(repo, tag, tagged, prompt_path, prompt)
    commit = tagged or base_commit  # a version keeps the commit it was first released from
    registry_version = registry.register(client, app, prompt)
    # `champion` itself, not the older `production` alias: a registry released before gets it now
    current = registry.version_by_alias(client, app, CHAMPION)
    if tagged is not None:
        push_tag(repo, deploy.remote, tag)  # a no-op unless an earlier push failed
        if current is not None and int(current.version) == registry_version:
            return outcome(
                app,
                prompt,
                registry_version,
                commit,
                tag,
                rollback=False,
                released=False,
                tag_created=False,
                run_id=None,
                message=f"{app} v{prompt.version} is already released ({tag}, registry "
                f"version {registry_version} is {CHAMPION}); nothing changed",
            )
    else:
        create_tag(repo, tag, commit, f"{app} prompt v{prompt.version}: MLflow prompt registry {app} "
                                      f"version {registry_version} ({prompt.content_hash[:8]})")
        push_tag(repo, deploy.remote, tag)
    point_production(client, app, registry_version, prompt, tag, commit)
    run_id = log_release(workspace, client, app, prompt, registry_version, commit, tag, rollback=False)
    message = f"{app} v{prompt.version} is {CHAMPION} (registry version {registry_version}, {tag})"
    return outcome(app, prompt, registry_version, commit, tag, rollback=False, released=True,
                   tag_created=tagged is None, run_id=run_id, message=message)


def roll_back(workspace: Workspace, repo: git.Repo, client: Any, app: str, prompt_path: str) -> ReleaseResult:
    """Point `champion` at the highest release tagged below the version it serves now."""
    current = registry.champion_version(client, app)
    if current is None:
        raise DeployError(f"{app}: nothing to roll back: no prompt version is {CHAMPION} yet")
    serving = int(current.tags.get(registry.VERSION_TAG, 0))
    earlier = [(version, tag) for version, tag in released_versions(repo, app) if version < serving]
    if not earlier:
        raise DeployError(f"{app}: no release before v{serving} to roll back to (no tag {app}@v<N> with N < {serving})")
    version, tag = max(earlier)
    commit = tagged_commit(repo, tag)
    prompt = prompt_at(repo, commit, prompt_path) if commit else None
    if commit is None or prompt is None:
        raise DeployError(f"{tag}: {prompt_path} not found at the tagged commit")
    registry_version = registry.register(client, app, prompt)
    point_production(client, app, registry_version, prompt, tag, commit)
    run_id = log_release(workspace, client, app, prompt, registry_version, commit, tag, rollback=True)
    return outcome(app, prompt, registry_version, commit, tag, rollback=True, released=True, tag_created=False,
                   run_id=run_id, message=f"{app} rolled back from v{serving} to v{version} "
                                          f"(registry version {registry_version}, {tag})")


def release_tag(app: str, version: int) -> str:
    return f"{app}@v{version}"


def released_versions(repo: git.Repo, app: str) -> list[tuple[int, str]]:
    """(version, tag) of every `<app>@v<N>` tag."""
    pattern = re.compile(rf"^{re.escape(app)}@v(\d+)$")
    tags = repo.git.tag("--list", f"{app}@v*").splitlines()
    return [(int(m.group(1)), m.group(0)) for m in map(pattern.match, (t.strip() for t in tags)) if m]


def tagged_commit(repo: git.Repo, tag: str) -> str | None:
    """The commit tag `tag` marks, or None when there is no such tag."""
    try:
        return repo.git.rev_parse("--verify", "--quiet", f"refs/tags/{tag}^{{commit}}")
    except git.GitCommandError:
        return None


def check_same_release(repo: git.Repo, tag: str, commit: str, prompt_path: str, prompt: PromptVersion) -> None:
    """A version number is released once: the tag must mark this same prompt content."""
    released = prompt_at(repo, commit, prompt_path)
    if released is None or released.content_hash != prompt.content_hash:
        raise DeployError(f"{tag} already marks a different prompt than v{prompt.version} on the base branch "
                          f"({prompt.content_hash[:8]}); give the changed prompt a new version number")


def create_tag(repo: git.Repo, tag: str, commit: str, message: str) -> None:
    """An annotated tag by promptloop on `commit`."""
    repo.git.tag("--annotate", tag, commit, "--message", message, env=bot_identity())


def push_tag(repo: git.Repo, remote: str, tag: str) -> None:
    """Push the one tag (never --force: a release tag is not moved)."""
    try:
        repo.git.push(remote, f"refs/tags/{tag}:refs/tags/{tag}")
    except git.GitCommandError as exc:
        raise DeployError(f"git push {remote} {tag}: {git_message(exc)}") from None


def point_production(
    client: Any, app: str, registry_version: int, prompt: PromptVersion, tag: str, commit: str
) -> None:
    """Record the released lineage on the registry version, then move the alias to it."""
    registry.set_lineage(client, app, registry_version, prompt, {RELEASE_TAG: tag, COMMIT_TAG: commit})
    client.set_prompt_alias(app, CHAMPION, registry_version)
    registry.clear_challenger(client, app, registry_version)


def log_release(workspace: Workspace, client: Any, app: str, prompt: PromptVersion, registry_version: int,
                commit: str, tag: str, *, rollback: bool) -> str:
    """The MLflow run that links the git tag and commit to the registry version; returns its id."""
    from promptloop.workspace.tracking import log_run

    name = f"{'rollback' if rollback else 'release'} {app} v{prompt.version}"
    params = {"version": prompt.version, "registry_version": registry_version, "commit": commit, "tag": tag,
              "rollback": rollback}
    tags = {"promptloop.stage": "release", "promptloop.app": app, "promptloop.prompt_hash": prompt.content_hash}
    run_id = log_run(workspace.tracking_uri, workspace.artifact_root, workspace.experiment_name(app), name, params,
                     metrics={}, tags=tags, artifacts={"prompt.yaml": dump_prompt(prompt)})
    registry.link_to_run(client, run_id, app, registry_version)
    return run_id


def outcome(app: str, prompt: PromptVersion, registry_version: int, commit: str, tag: str, *, rollback: bool,
            released: bool, tag_created: bool, run_id: str | None, message: str) -> ReleaseResult:
    """What `release` reports."""
    return ReleaseResult(app=app, version=prompt.version, prompt_hash=prompt.content_hash,
                         registry_version=registry_version, alias=CHAMPION, commit=commit, tag=tag,
                         tag_created=tag_created, rollback=rollback, released=released, mlflow_run_id=run_id,
                         message=message)
