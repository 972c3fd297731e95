"""deploy: a candidate that beats the baseline becomes a git branch and a pull request.

The branch is built from `<remote>/<base>` with git plumbing on a temporary index (read-tree,
update-index, write-tree, commit-tree), so the user's working tree, index and current branch are
never touched, and only that branch is pushed: never main. It holds the next prompt version, the
golden set's .dvc file and the evaluation report. A person approves by merging; `release` follows.

On GitHub the pull request is opened through the REST API with a token read from the environment;
the token goes into one request header and nowhere else.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git

from promptloop.core.errors import DeployError, InputError
from promptloop.deploy.prompt_file import dump_prompt_like
from promptloop.domain.prompts import PromptVersion
from promptloop.domain.results import ProposedBranch, PullRequestLink
from promptloop.workspace.repository import bot_identity, fetch_base, git_message, prompt_at, require_clean_tree
from promptloop.workspace.workspace import Workspace

PR_DIR = Path(".promptloop/pull-requests")
GITHUB_TIMEOUT_S = 30.0
_GITHUB_REMOTE = re.compile(
    r"^(?:https://(?:[^@/]+@)?github\.com/|git@github\.com:|ssh://git@github\.com/)"
    r"(?P<owner>[A-Za-z0-9_.-]+)/(?P<repo>[A-Za-z0-9_.-]+?)(?:\.git)?/?$"
)


@dataclass(frozen=True)
class GitHubRepo:
    """OWNER/REPO of a github.com remote."""

    owner: str
    repo: str


def open_pull_request(
    workspace: Workspace,
    app: str,
    candidate: PromptVersion,
    report_md: str,
    golden_dvc: Path | None,
    *,
    github_api_url: str = "https://api.github.com",
    token_env: str = "GITHUB_TOKEN",
    body: str | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> ProposedBranch:
    """Propose `candidate` as the next version of `app`'s prompt: a branch on the remote and a pull request.

    `report_md` is the report file on the branch; `body` the pull request's text (default: the report);
    `extra_files` more files for the branch (drafted knowledge-base articles), by workspace-relative path.
    Idempotent: the same candidate (same content hash) never opens a second branch or pull request.
    """
    body = report_md if body is None else body
    settings = workspace.app_settings(app)
    deploy = workspace.params.deploy
    check_candidate_app(app, candidate)
    repo = git.Repo(workspace.root)
    require_clean_tree(repo)
    base_commit = fetch_base(repo, deploy.remote, deploy.base_branch)
    prompt_path = settings.prompt.as_posix()
    current = prompt_at(repo, base_commit, prompt_path)
    if current is not None and current.content_hash == candidate.content_hash:
        raise DeployError(f"{app}: the candidate is already the prompt on {deploy.remote}/{deploy.base_branch} "
                          f"(v{current.version}, {candidate.content_hash[:8]}); nothing to propose")
    prompt = next_version(candidate, current)
    existing = existing_branch(repo, deploy.remote, app, candidate.content_hash)
    if existing is None:
        branch = branch_name(app, prompt)
        files = branch_files(workspace, app, prompt, prompt_path, report_md, golden_dvc,
                             file_at(repo, base_commit, prompt_path))
        # A draft never replaces a file the base has (a person's article, or a draft they are working on).
        files.update({path: data for path, data in (extra_files or {}).items()
                      if path not in files and file_at(repo, base_commit, path) is None})
        commit = commit_files(repo, base_commit, files, commit_message(app, prompt))
        push_branch(repo, deploy.remote, commit, branch)
    else:
        branch, commit = existing  # proposed before, perhaps as another version number: report that one
    created = existing is None
    version = branch_version(branch)
    title = pull_request_title(app, version, candidate.content_hash)
    github = github_repo(push_url(repo, deploy.remote))
    token = os.environ.get(token_env) or None
    pull_request = body_path = compare = None
    if github is not None and token is not None:
        pull_request = github_pull_request(github_api_url, token, github, title, branch, deploy.base_branch,
                                           body, look_up_first=not created)
    else:
        body_path = str(write_body(workspace.root, branch, body, overwrite=created))
        compare = compare_hint(github, deploy.remote, deploy.base_branch, branch)
    return ProposedBranch(branch=branch, created=created, version=version, prompt_hash=candidate.content_hash,
                          commit=commit, remote=deploy.remote, pull_request=pull_request, body_path=body_path,
                          compare=compare)


def check_candidate_app(app: str, candidate: PromptVersion) -> None:
    """A candidate names the app it was written for."""
    if candidate.app != app:
        raise InputError("candidate", f"the candidate is for app {candidate.app!r}, not {app!r}", field="app")


def next_version(candidate: PromptVersion, current: PromptVersion | None) -> PromptVersion:
    """The candidate numbered after the base's prompt (N+1, parent N); its other fields unchanged."""
    if current is None:
        return candidate.model_copy(update={"version": 1, "parent": None})
    return candidate.model_copy(update={"version": current.version + 1, "parent": current.version})


def branch_name(app: str, prompt: PromptVersion) -> str:
    """`promptloop/<app>/v<N>-<hash8>`: the version it proposes and the content that makes it unique."""
    return f"promptloop/{app}/v{prompt.version}-{prompt.content_hash[:8]}"


def branch_version(branch: str) -> int:
    """The version number in a branch name made by `branch_name`."""
    return int(re.search(r"/v(\d+)-[0-9a-f]{8}$", branch).group(1))  # type: ignore[union-attr]


def existing_branch(repo: git.Repo, remote: str, app: str, content_hash: str) -> tuple[str, str] | None:
    """A branch already proposing this content, on the remote or locally: (name, commit), or None.

    Matched on the hash whatever the version number, so a base that moved on since the first
    proposal does not open a second branch for the same candidate.
    """
    pattern = re.compile(rf"^refs/heads/(promptloop/{re.escape(app)}/v\d+-{content_hash[:8]})$")
    try:
        remote_refs = str(repo.git.ls_remote("--heads", remote)).splitlines()
    except git.GitCommandError as exc:
        raise DeployError(f"git ls-remote {remote}: {git_message(exc)}") from None
    local_refs = repo.git.for_each_ref("--format=%(objectname)\t%(refname)", "refs/heads/promptloop/").splitlines()
    for line in remote_refs + local_refs:
        sha, _, ref = line.partition("\t")
        match = pattern.match(ref.strip())
        if match:
            return match.group(1), sha.strip()
    return None


def file_at(repo: git.Repo, rev: str, path: str) -> str | None:
    """The text of `path` as committed at `rev`, or None when it does not exist there."""
    try:
        return str(repo.git.show(f"{rev}:{path}", strip_newline_in_stdout=False))
    except git.GitCommandError:
        return None


def branch_files(workspace: Workspace, app: str, prompt: PromptVersion, prompt_path: str, report_md: str,
                 golden_dvc: Path | None, base_text: str | None = None) -> dict[str, bytes]:
    """What the branch changes: the prompt (in the base file's formatting, so the diff shows only the
    real change), the golden set's .dvc file (as in the workspace now), the report."""
    files = {prompt_path: dump_prompt_like(prompt, base_text).encode("utf-8"),
             f"reports/{app}/v{prompt.version}.md": report_md.rstrip("\n").encode("utf-8") + b"\n"}
    if golden_dvc is not None:
        source = golden_dvc if golden_dvc.is_absolute() else workspace.root / golden_dvc
        source = source.resolve()
        if not source.is_file():
            raise InputError(golden_dvc, "golden-set .dvc file not found")
        if not source.is_relative_to(workspace.root):
            raise InputError(golden_dvc, f"the golden-set .dvc file must be inside the workspace {workspace.root}")
        files[source.relative_to(workspace.root).as_posix()] = source.read_bytes()
    return files


def commit_message(app: str, prompt: PromptVersion) -> str:
    """Names the app, the version and the content hash; the changelog says why."""
    lines = [pull_request_title(app, prompt.version, prompt.content_hash), ""]
    if prompt.changelog:
        lines += [prompt.changelog, ""]
    lines += [
        f"Prompt-Version: {prompt.version}",
        f"Prompt-Parent: {prompt.parent}",
        f"Prompt-Hash: {prompt.content_hash}",
    ]
    return "\n".join(lines)


def commit_files(repo: git.Repo, parent: str, files: dict[str, bytes], message: str) -> str:
    """One commit on top of `parent` that writes `files`, built on a temporary index: no checkout,
    no change to the working tree, the index or any branch. Returns its sha."""
    from gitdb import IStream

    with tempfile.TemporaryDirectory(prefix="promptloop-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), **bot_identity()}
        repo.git.read_tree(parent, env=env)
        for path, data in files.items():
            blob = repo.odb.store(IStream(b"blob", len(data), io.BytesIO(data))).hexsha.decode("ascii")
            repo.git.update_index("--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
        tree = repo.git.write_tree(env=env)
        return repo.git.commit_tree(tree, "-p", parent, "-m", message, env=env)


def push_branch(repo: git.Repo, remote: str, commit: str, branch: str) -> None:
    """Push `commit` as the new branch `branch` and nothing else (never main, never --force)."""
    try:
        repo.git.push(remote, f"{commit}:refs/heads/{branch}")
    except git.GitCommandError as exc:
        raise DeployError(f"git push {remote} {branch}: {git_message(exc)}") from None


def push_url(repo: git.Repo, remote: str) -> str:
    """The remote's URL as configured (pushurl first), before any `insteadOf` rewriting."""
    reader = repo.config_reader()
    section = f'remote "{remote}"'
    return str(reader.get_value(section, "pushurl", default="") or reader.get_value(section, "url", default=""))


def github_repo(url: str) -> GitHubRepo | None:
    """OWNER/REPO when `url` is a github.com remote (https or ssh), else None."""
    match = _GITHUB_REMOTE.match(url.strip())
    return GitHubRepo(match.group("owner"), match.group("repo")) if match else None


def pull_request_title(app: str, version: int, content_hash: str) -> str:
    return f"promptloop: {app} prompt v{version} ({content_hash[:8]})"


def github_pull_request(api_url: str, token: str, github: GitHubRepo, title: str, branch: str, base: str,
                        body: str, *, look_up_first: bool) -> PullRequestLink:
    """Open the pull request (or, for a branch pushed earlier, find the one it already has)."""
    import httpx

    path = f"/repos/{github.owner}/{github.repo}/pulls"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
               "X-GitHub-Api-Version": "2022-11-28"}
    with httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=GITHUB_TIMEOUT_S) as client:
        if look_up_first:
            found = github_call(client, "GET", path, params={"head": f"{github.owner}:{branch}", "state": "all"})
            if isinstance(found, list) and found:
                return PullRequestLink(url=found[0]["html_url"], number=found[0]["number"])
        created = github_call(client, "POST", path, json={"title": title, "head": branch, "base": base, "body": body})
    return PullRequestLink(url=created["html_url"], number=created["number"])


def github_call(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    """One GitHub API call; an HTTP or network error is a DeployError with the status and the API's message."""
    import httpx

    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise DeployError(f"GitHub API {method} {path}: {type(exc).__name__}: {exc}") from None
    if response.is_error:
        raise DeployError(f"GitHub API {method} {path}: HTTP {response.status_code}: {github_message(response)}")
    return response.json()


def github_message(response: Any) -> str:
    """The API's `message` and the messages of its `errors` list, else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if not isinstance(data, dict):
        return str(data)[:200]
    details = [e.get("message") or e.get("code") for e in data.get("errors") or [] if isinstance(e, dict)]
    return "; ".join(str(part) for part in [data.get("message"), *details] if part) or response.reason_phrase


def write_body(root: Path, branch: str, body: str, *, overwrite: bool) -> Path:
    """The pull request's text under `.promptloop/pull-requests/` (git-ignored), for a person to open it."""
    path = root / PR_DIR / f"{branch.replace('/', '-')}.md"
    if overwrite or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body.rstrip("\n") + "\n", encoding="utf-8")
    return path


def compare_hint(github: GitHubRepo | None, remote: str, base: str, branch: str) -> str:
    """Where to see the proposal when no pull request was opened: GitHub's compare page or a git diff."""
    if github is not None:
        return f"https://github.com/{github.owner}/{github.repo}/compare/{base}...{branch}"
    return f"git diff {remote}/{base}...{remote}/{branch}"


