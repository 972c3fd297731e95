"""The whole loop, end to end, with real git (a bare remote), real DVC (a local remote) and real MLflow:
prompt v1 and the sample logs -> one cycle -> one pull-request branch -> a person merges -> release ->
a second cycle with no new data makes no LLM call and no branch."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import git
import pytest

from promptloop.demo.run import write_sample_logs
from promptloop.deploy.release import release
from promptloop.domain.golden import load_golden
from promptloop.domain.prompts import load_prompt
from promptloop.loop.cycle import cycle
from promptloop.ops.initialize import init_workspace
from promptloop.workspace.workspace import open_workspace

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DVC = str(Path(sys.executable).parent / "dvc")


@pytest.fixture(scope="module")
def first_cycle(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("loop") / "ws"
    init_workspace(root)
    workspace = open_workspace(root)
    write_sample_logs(workspace, "support-bot", 1500, NOW)
    remote = git.Repo(root / "remote.git")
    main_before = remote.heads.main.commit.hexsha
    seed_cases = len(load_golden(root / "datasets/support-bot/golden.jsonl"))
    return root, main_before, seed_cases, cycle(workspace, "support-bot", now=NOW)


def test_one_cycle_grows_the_golden_set_and_promotes_on_held_out_cases(first_cycle) -> None:
    root, _, seed_cases, result = first_cycle
    assert result.decision == "promote", result.reasons
    improved = result.improve
    assert improved.golden.added > 0
    assert len(load_golden(root / "datasets/support-bot/golden.jsonl")) == seed_cases + improved.golden.added
    evaluation = improved.evaluation
    assert evaluation.cases_optimize > 0  # the optimizer saw some cases; the decision rests on the others
    best = next(c for c in evaluation.candidates if c.name == improved.best.name)
    assert best.decision == "promote" and best.ci_low > evaluation.min_effect
    assert best.wins + best.ties + best.losses == evaluation.cases_decided


def test_exactly_one_branch_touching_only_the_prompt_the_golden_dvc_the_report_and_kb_drafts(first_cycle) -> None:
    root, main_before, _, result = first_cycle
    remote = git.Repo(root / "remote.git")
    branches = sorted(h.name for h in remote.heads)
    assert branches == ["main", result.deploy.branch]
    assert result.deploy.branch.startswith("promptloop/support-bot/v2-")
    assert remote.heads.main.commit.hexsha == main_before  # main on the remote is unchanged
    changed = remote.git.diff("--name-only", "main", result.deploy.branch).splitlines()
    # Besides the prompt: the knowledge-base articles improve drafted, new files in the app's KB, each a draft.
    drafts = [d.path for d in result.improve.kb_drafts.drafts] if result.improve.kb_drafts else []
    assert all(path.startswith("datasets/support-bot/kb/gap-") for path in drafts)
    assert sorted(changed) == sorted(["datasets/support-bot/golden.jsonl.dvc", "prompts/support-bot/prompt.yaml",
                                      "reports/support-bot/v2.md", *drafts])
    for path in drafts:
        assert "draft: true" in remote.git.show(f"{result.deploy.branch}:{path}").split("---")[1]
    proposed = remote.git.show(f"{result.deploy.branch}:prompts/support-bot/prompt.yaml")
    assert "version: 2" in proposed and "parent: 1" in proposed
    body = Path(result.deploy.body_path).read_text(encoding="utf-8")
    assert "## Prompt diff" in body and "| baseline (v1) |" in body and "**promote**" in body
    # The .dvc on the branch names a golden set the DVC remote really holds.
    status = subprocess.run([DVC, "status", "--cloud", "--json"], cwd=root, capture_output=True, text=True, check=True)
    assert json.loads(status.stdout or "{}") == {}


def test_after_a_merge_release_points_production_at_it_and_a_second_cycle_does_nothing(
    first_cycle, tmp_path: Path
) -> None:
    root, _, _, result = first_cycle
    branch = result.deploy.branch
    # A person merges the pull request (in their own clone) and pushes main.
    clone = git.Repo.clone_from(str(root / "remote.git"), tmp_path / "person")
    with clone.config_writer() as config:
        config.set_value("user", "name", "A Person")
        config.set_value("user", "email", "person@example.com")
    clone.git.merge(f"origin/{branch}", "--no-ff", "-m", f"Merge {branch}")
    clone.git.push("origin", "main")

    workspace = open_workspace(root)
    released = release(workspace, "support-bot")
    assert released.version == 2 and released.alias == "champion" and released.tag == "support-bot@v2"
    assert released.registry_version == result.deploy.challenger_version  # what deploy named the challenger
    assert "support-bot@v2" in [t.name for t in git.Repo(root / "remote.git").tags]
    assert workspace.load_app("support-bot").prompt.content_hash == result.improve.best.prompt_hash

    again = cycle(open_workspace(root), "support-bot", now=NOW)
    assert again.decision == "skipped" and again.llm.calls == 0
    assert again.merged  # the approved promotion came back into the workspace...
    assert load_prompt(root / "prompts/support-bot/prompt.yaml").version == 2  # ...so v2 is the next baseline
    assert sorted(h.name for h in git.Repo(root / "remote.git").heads) == ["main", branch]  # no new branch


def test_with_the_provider_down_the_cycle_ends_incomplete_and_opens_no_pull_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ws"
    init_workspace(root)
    workspace = open_workspace(root)
    write_sample_logs(workspace, "support-bot", 300, NOW)
    monkeypatch.setenv("PROMPTLOOP_SIMULATION", json.dumps({"down": True}))
    params = workspace.params
    down = type(workspace)(
        root,
        params.model_copy(update={"llm": params.llm.model_copy(update={"max_retries": 1, "retry_base_delay_s": 0.0})}),
    )

    result = cycle(down, "support-bot", now=NOW)

    assert result.decision == "incomplete" and result.deploy is None
    assert "ServiceUnavailableError after 2 attempt(s)" in result.reasons[0]
    assert len(result.reasons) == 1 and len(result.reasons[0].splitlines()) == 1, result.reasons
    assert all("optimizer call failed" in r.reason for r in result.improve.candidates.rejected)
    assert [h.name for h in git.Repo(root / "remote.git").heads] == ["main"]  # no branch pushed
