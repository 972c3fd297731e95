"""deploy as a pull request: a branch with exactly the prompt, the golden set's .dvc file and the report,
pushed to a real bare remote without touching the user's tree; the PR opened on a loopback stand-in
for the GitHub API; the token nowhere but in the request header."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import git
import pytest
import yaml

from promptloop.core.errors import DeployError, InputError
from promptloop.deploy.pull_request import github_repo, open_pull_request
from promptloop.domain.prompts import PromptVersion, load_prompt
from promptloop.domain.results import ProposedBranch, PullRequestLink
from promptloop.workspace.versioning import commit_paths, dvc_add_and_push
from promptloop.workspace.workspace import Workspace

APP = "support-bot"
CANDIDATES = Path(__file__).parents[1] / "data" / "candidates"
GOLDEN_DVC = Path("datasets/support-bot/golden.jsonl.dvc")
REPORT = "# support-bot: candidate better\n\nΔ +0.52 [+0.37, +0.67], promote.\n"
GITHUB_URL = "https://github.com/acme/support-bot.git"
TOKEN = "ghp_promptloopTestToken0123456789abcdef"


def grow_golden_set(workspace: Workspace) -> None:
    """What improve does: one more golden case, DVC-added and pushed, its .dvc committed to the local main."""
    golden = workspace.path("datasets/support-bot/golden.jsonl")
    first = json.loads(golden.read_text(encoding="utf-8").splitlines()[0])
    with golden.open("a", encoding="utf-8") as out:
        out.write(json.dumps({**first, "id": "g999", "description": "mined failure"}, ensure_ascii=False) + "\n")
    dvc_add_and_push(workspace.root, [golden])
    commit_paths(workspace.root, [workspace.root / GOLDEN_DVC], "improve: grow the golden set")


def use_github_remote(workspace: Workspace) -> None:
    """`origin` reads as github.com/acme/support-bot while git still talks to the local bare repository."""
    repo = git.Repo(workspace.root)
    with repo.config_writer() as config:
        config.set_value(f'url "{workspace.root / "remote.git"}"', "insteadOf", GITHUB_URL)
    repo.git.remote("set-url", "origin", GITHUB_URL)


def remote_branches(workspace: Workspace) -> list[str]:
    bare = git.Repo(workspace.root / "remote.git")
    return sorted(h.name for h in bare.heads)


def test_branch_holds_exactly_the_prompt_the_golden_set_and_the_report(workspace: Workspace, better) -> None:
    grow_golden_set(workspace)
    repo = git.Repo(workspace.root)
    bare = git.Repo(workspace.root / "remote.git")
    local_main, remote_main = repo.head.commit.hexsha, bare.commit("main").hexsha
    assert local_main != remote_main  # the golden-set commit stays local

    result = open_pull_request(workspace, APP, better, REPORT, GOLDEN_DVC)

    branch = f"promptloop/{APP}/v2-{better.content_hash[:8]}"
    body_path = workspace.root / ".promptloop/pull-requests" / f"promptloop-{APP}-v2-{better.content_hash[:8]}.md"
    assert result == ProposedBranch(branch=branch, created=True, version=2, prompt_hash=better.content_hash,
                                    commit=result.commit, remote="origin", pull_request=None,
                                    body_path=str(body_path), compare=f"git diff origin/main...origin/{branch}")
    commit = bare.commit(branch)
    assert commit.hexsha == result.commit and [p.hexsha for p in commit.parents] == [remote_main]
    changed = bare.git.diff("--name-only", f"main...{branch}").splitlines()
    assert sorted(changed) == [GOLDEN_DVC.as_posix(), f"prompts/{APP}/prompt.yaml", f"reports/{APP}/v2.md"]

    proposed = PromptVersion.model_validate(yaml.safe_load(bare.git.show(f"{branch}:prompts/{APP}/prompt.yaml")))
    assert (proposed.version, proposed.parent, proposed.content_hash) == (2, 1, better.content_hash)
    assert proposed.model_dump(exclude={"version", "parent"}) == better.model_dump(exclude={"version", "parent"})
    assert bare.git.show(f"{branch}:{GOLDEN_DVC.as_posix()}") == (workspace.root / GOLDEN_DVC).read_text().rstrip("\n")
    assert bare.git.show(f"{branch}:reports/{APP}/v2.md") == REPORT.rstrip("\n")
    assert (commit.author.name, commit.author.email) == ("promptloop", "promptloop@localhost")
    assert (commit.committer.name, commit.committer.email) == ("promptloop", "promptloop@localhost")
    assert APP in commit.message and "v2" in commit.message and better.content_hash[:8] in commit.message

    # main on the remote, the local main, the index, the working tree and the current branch: all untouched
    assert bare.commit("main").hexsha == remote_main
    assert repo.head.commit.hexsha == local_main and repo.active_branch.name == "main"
    assert not repo.is_dirty(untracked_files=True) and repo.git.diff("--cached") == ""
    assert load_prompt(workspace.path(f"prompts/{APP}/prompt.yaml")).version == 1
    assert [h.name for h in repo.heads] == ["main"]
    assert len(repo.git.worktree("list").splitlines()) == 1
    assert Path(result.body_path).read_text(encoding="utf-8") == REPORT
    assert subprocess.run(result.compare.split(), cwd=workspace.root, capture_output=True, text=True,
                          check=True).stdout.count("diff --git") == 3


def test_the_same_candidate_never_opens_a_second_branch(workspace: Workspace, better) -> None:
    first = open_pull_request(workspace, APP, better, REPORT, GOLDEN_DVC)
    again = open_pull_request(workspace, APP, better, "# another report\n", GOLDEN_DVC)
    assert again == first.model_copy(update={"created": False})
    assert remote_branches(workspace) == sorted(["main", first.branch])
    assert Path(first.body_path).read_text(encoding="utf-8") == REPORT  # "do nothing": not rewritten

    # local main moves on (another stage commits data): still the same branch, not a v2 with a new base
    grow_golden_set(workspace)
    assert open_pull_request(workspace, APP, better, REPORT, GOLDEN_DVC).commit == first.commit
    # another candidate is another branch
    terse = load_prompt(CANDIDATES / "terse.yaml")
    other = open_pull_request(workspace, APP, terse, REPORT, None)
    assert other.created and other.branch == f"promptloop/{APP}/v2-{terse.content_hash[:8]}"
    assert len(remote_branches(workspace)) == 3


def test_a_dirty_tree_is_refused_and_nothing_is_pushed(workspace: Workspace, better) -> None:
    params = workspace.path("params.yaml")
    original = params.read_text()
    params.write_text(original + "\n# edited\n")
    with pytest.raises(DeployError, match=r"uncommitted changes \(params.yaml\)"):
        open_pull_request(workspace, APP, better, REPORT, GOLDEN_DVC)
    params.write_text(original)

    workspace.path("notes.txt").write_text("draft")
    with pytest.raises(DeployError, match="notes.txt"):
        open_pull_request(workspace, APP, better, REPORT, GOLDEN_DVC)
    assert remote_branches(workspace) == ["main"]

    workspace.path("notes.txt").unlink()
    workspace.path(".promptloop").mkdir(exist_ok=True)
    (workspace.path(".promptloop") / "scratch").write_text("ignored files are fine")
    assert open_pull_request(workspace, APP, better, REPORT, GOLDEN_DVC).created


def test_bad_input_is_an_input_error(workspace: Workspace, better) -> None:
    with pytest.raises(InputError, match="unknown app 'other-bot'"):
        open_pull_request(workspace, "other-bot", better, REPORT, None)
    with pytest.raises(InputError, match="for app 'other-bot', not 'support-bot'"):
        open_pull_request(workspace, APP, better.model_copy(update={"app": "other-bot"}), REPORT, None)
    with pytest.raises(InputError, match="golden-set .dvc file not found"):
        open_pull_request(workspace, APP, better, REPORT, Path("datasets/support-bot/missing.jsonl.dvc"))
    current = load_prompt(workspace.path(f"prompts/{APP}/prompt.yaml"))
    with pytest.raises(DeployError, match="already the prompt on origin/main"):
        open_pull_request(workspace, APP, current.model_copy(update={"version": 5}), REPORT, None)
    assert remote_branches(workspace) == ["main"]


@dataclass
class FakeGitHub:
    """Records every request; answers the pulls endpoint like api.github.com (or with an error)."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    fail_with: tuple[int, dict[str, Any]] | None = None


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub()

    class Api(BaseHTTPRequestHandler):
        def _answer(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            request = {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "body": body}
            fake.requests.append(request)
            return request

        def do_GET(self) -> None:  # noqa: N802
            self._record()
            query = parse_qs(urlsplit(self.path).query)
            head = query.get("head", [""])[0].partition(":")[2]
            self._answer(200, [p for p in fake.pulls if p["head"]["ref"] == head])

        def do_POST(self) -> None:  # noqa: N802
            request = self._record()
            if fake.fail_with:
                self._answer(*fake.fail_with)
                return
            sent = json.loads(request["body"])
            number = 40 + len(fake.pulls) + 1
            pull = {"number": number, "html_url": f"https://github.com/acme/support-bot/pull/{number}",
                    "head": {"ref": sent["head"]}, "base": {"ref": sent["base"]}}
            fake.pulls.append(pull)
            self._answer(201, pull)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Api)
    fake.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


def stored_texts(root: Path) -> Iterator[tuple[str, str]]:
    """Every file under `root` as text, and every object of every git repository in it inflated."""
    for path in root.rglob("*"):
        if path.is_file():
            yield str(path), path.read_bytes().decode("utf-8", "replace")
    for git_dir in [root / ".git", root / "remote.git"]:
        objects = subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "--batch-all-objects", "--batch"],
                                 capture_output=True, check=True).stdout
        yield f"{git_dir} objects", objects.decode("utf-8", "replace")


def test_pull_request_opened_on_github_with_the_token_in_the_header_only(
        workspace: Workspace, better, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    use_github_remote(workspace)
    grow_golden_set(workspace)
    monkeypatch.setenv("PROMPTLOOP_TEST_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)

    result = open_pull_request(workspace, APP, better, REPORT, GOLDEN_DVC, github_api_url=github.url,
                               token_env="PROMPTLOOP_TEST_TOKEN")

    assert result.created
    assert result.pull_request == PullRequestLink(url="https://github.com/acme/support-bot/pull/41", number=41)
    assert result.body_path is None and result.compare is None
    [post] = github.requests
    assert (post["method"], post["path"]) == ("POST", "/repos/acme/support-bot/pulls")
    assert json.loads(post["body"]) == {"title": f"promptloop: {APP} prompt v2 ({better.content_hash[:8]})",
                                        "head": result.branch, "base": "main", "body": REPORT}
    assert post["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert post["headers"]["Accept"] == "application/vnd.github+json"
    assert result.branch in remote_branches(workspace)  # pushed through the insteadOf mapping

    # the same candidate again: the open pull request is found, no second one is made
    again = open_pull_request(workspace, APP, better, REPORT, GOLDEN_DVC, github_api_url=github.url,
                              token_env="PROMPTLOOP_TEST_TOKEN")
    assert again == result.model_copy(update={"created": False})
    assert [r["method"] for r in github.requests] == ["POST", "GET"] and len(github.pulls) == 1

    # the token is in one header and nowhere else: not in request paths or bodies, not in anything written
    assert all(TOKEN not in r["path"] + r["body"] for r in github.requests)
    assert TOKEN not in json.dumps([result.model_dump(mode="json"), again.model_dump(mode="json")])
    leaks = [where for where, text in stored_texts(workspace.root) if TOKEN in text]
    assert leaks == []
    out, err = capfd.readouterr()
    assert TOKEN not in out + err + caplog.text


def test_github_api_error_is_surfaced_and_a_retry_opens_the_pull_request(
        workspace: Workspace, better, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch) -> None:
    use_github_remote(workspace)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    github.fail_with = (422, {"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "custom",
                                                                           "message": "base branch protected"}]})
    with pytest.raises(DeployError, match=r"HTTP 422: Validation Failed; base branch protected") as raised:
        open_pull_request(workspace, APP, better, REPORT, None, github_api_url=github.url)
    assert TOKEN not in str(raised.value)

    github.fail_with = None  # the branch was pushed; a second call only opens the missing pull request
    result = open_pull_request(workspace, APP, better, REPORT, None, github_api_url=github.url)
    assert not result.created and result.pull_request.number == 41
    assert [r["method"] for r in github.requests] == ["POST", "GET", "POST"]

    github.fail_with = (401, {"message": "Bad credentials"})
    terse = load_prompt(CANDIDATES / "terse.yaml")
    with pytest.raises(DeployError, match="HTTP 401: Bad credentials"):
        open_pull_request(workspace, APP, terse, REPORT, None, github_api_url=github.url)


def test_github_remote_without_a_token_gives_the_compare_url(workspace: Workspace, better,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    use_github_remote(workspace)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    result = open_pull_request(workspace, APP, better, REPORT, GOLDEN_DVC)
    assert result.pull_request is None
    assert result.compare == f"https://github.com/acme/support-bot/compare/main...{result.branch}"
    assert Path(result.body_path).read_text(encoding="utf-8") == REPORT


@pytest.mark.parametrize("url, expected", [
    ("https://github.com/acme/support-bot.git", ("acme", "support-bot")),
    ("https://github.com/acme/support-bot", ("acme", "support-bot")),
    ("git@github.com:acme/support.bot.git", ("acme", "support.bot")),
    ("ssh://git@github.com/acme/support-bot.git", ("acme", "support-bot")),
    ("https://gitlab.com/acme/support-bot.git", None),
    ("https://github.com.evil.example/acme/support-bot.git", None),
    ("/tmp/ws/remote.git", None),
])
def test_github_remote_urls(url: str, expected: tuple[str, str] | None) -> None:
    found = github_repo(url)
    assert (found and (found.owner, found.repo)) == expected


def test_rows_are_read_back_from_the_evaluation_runs_table_in_mlflow(tmp_path: Path) -> None:
    import pandas as pd

    from promptloop.deploy.evidence import evaluation_rows
    from promptloop.workspace.tracking import tracking_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking_client(uri)
    experiment = client.create_experiment("promptloop/bot", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment).info.run_id
    frame = pd.DataFrame([{"prompt": "opt-1", "case_id": "g1", "answer": "b", "rubric_reason": "cites"}])
    client.log_table(run, frame, "eval_cases.json")
    rows, found = evaluation_rows(uri, run)
    assert found == experiment and rows["opt-1", "g1"]["rubric_reason"] == "cites"
    assert evaluation_rows(uri, "0" * 32) == ({}, None)  # an unknown run: ids only, no failed deploy


def test_the_body_is_the_pull_requests_text_and_the_report_the_branchs_file(workspace: Workspace, better) -> None:
    """The branch's prompt file keeps the base file's formatting: the diff shows only what changed."""
    body = "promptloop proposes **better**.\n\n## Links\n"
    result = open_pull_request(workspace, APP, better, REPORT, None, body=body)
    bare = git.Repo(workspace.root / "remote.git")
    assert Path(result.body_path).read_text(encoding="utf-8") == body
    assert bare.git.show(f"{result.branch}:reports/{APP}/v2.md") == REPORT.rstrip("\n")
    diff = bare.git.diff("main", result.branch, "--", f"prompts/{APP}/prompt.yaml").splitlines()
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    base = load_prompt(workspace.path(f"prompts/{APP}/prompt.yaml"))
    changed_lines = {"version", "parent", "changelog"} | ({"system"} if base.system != better.system else set())
    assert removed and {line.split(":")[0] for line in removed if not line.startswith(" ")} <= changed_lines
