"""`promptloop check` (CI on a hand edit of a prompt) and the DVC `evaluate` stage, in a real workspace
through the real CLI: git for the prompt on main, DVC for the pipeline and its metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import git
import pytest

BIN = Path(sys.executable).parent
CANDIDATES = Path(__file__).parents[1] / "data" / "candidates"
PROMPT = Path("prompts/support-bot/prompt.yaml")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("check") / "ws"
    assert run("promptloop", "init", "--dir", str(root), cwd=root.parent).returncode == 0
    return root


def edit_prompt(workspace: Path, source: Path) -> None:
    shutil.copyfile(source, workspace / PROMPT)


def test_check_passes_an_unchanged_prompt_without_evaluating(workspace: Path) -> None:
    result = run("promptloop", "check", "--app", "support-bot", "--json", cwd=workspace)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["changed"] is False


def test_check_exits_3_on_an_edit_that_breaks_high_severity_cases(workspace: Path) -> None:
    edit_prompt(workspace, CANDIDATES / "terse.yaml")
    try:
        result = run("promptloop", "check", "--app", "support-bot", cwd=workspace)
    finally:
        git.Repo(workspace).git.checkout("--", str(PROMPT))
    assert result.returncode == 3, result.stderr
    assert "# Evaluation of `support-bot`" in result.stdout  # the markdown report, for the PR
    assert "high-severity case(s) broken: g004, g006" in result.stderr


def test_check_refuses_a_pull_request_that_changes_the_code_params_yaml_loads(workspace: Path) -> None:
    """A plug-in is code: `check` never imports one a pull request brings (it would run with CI's keys)."""
    edit_prompt(workspace, CANDIDATES / "better.yaml")
    params = workspace / "params.yaml"
    before = params.read_text()
    params.write_text(before.replace("toxicity: builtin", "toxicity: evil.module:detector"))
    try:
        result = run("promptloop", "check", "--app", "support-bot", "--json", cwd=workspace)
    finally:
        git.Repo(workspace).git.checkout("--", str(PROMPT), "params.yaml")
    assert result.returncode == 2, result.stderr
    error = json.loads(result.stdout)["error"]
    assert "analyze.detectors.toxicity" in error and "does not run code a pull request brings" in error


def test_check_exits_0_on_an_edit_that_improves_the_prompt(workspace: Path) -> None:
    edit_prompt(workspace, CANDIDATES / "better.yaml")
    try:
        result = run("promptloop", "check", "--app", "support-bot", "--json", cwd=workspace)
    finally:
        git.Repo(workspace).git.checkout("--", str(PROMPT))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["regressions"] == [] and summary["candidates"][0]["decision"] == "promote"
    assert summary["baseline"]["source"] == f"main:{PROMPT}"


def test_evaluate_names_a_missing_candidate_file_and_exits_2(workspace: Path) -> None:
    result = run("promptloop", "evaluate", "--app", "support-bot", "--candidate", "nope.yaml", "--json", cwd=workspace)
    assert result.returncode == 2
    assert json.loads(result.stdout)["error"] == "nope.yaml: prompt file not found"


def test_dvc_metrics_diff_shows_what_a_prompt_change_did(workspace: Path) -> None:
    repo = git.Repo(workspace)
    first = run("dvc", "repro", "evaluate", cwd=workspace)
    assert first.returncode == 0, first.stderr + first.stdout
    metrics = json.loads((workspace / "metrics/support-bot/evaluate.json").read_text())
    assert metrics["cases"] == 46 and metrics["prompt_version"] == 1
    repo.index.add(["dvc.lock", "metrics/support-bot/evaluate.json"])
    repo.index.commit("evaluate v1")

    edit_prompt(workspace, CANDIDATES / "better.yaml")
    second = run("dvc", "repro", "evaluate", cwd=workspace)
    assert second.returncode == 0, second.stderr + second.stdout
    repo.index.add([str(PROMPT), "dvc.lock", "metrics/support-bot/evaluate.json"])
    repo.index.commit("prompt v2")
    diff = run("dvc", "metrics", "diff", "HEAD~1", "--json", cwd=workspace)
    assert diff.returncode == 0, diff.stderr
    changes = json.loads(diff.stdout)["metrics/support-bot/evaluate.json"]
    assert changes["mean_score"]["new"] > changes["mean_score"]["old"]
    assert changes["prompt_version"] == {"old": 1, "new": 2, "diff": 1}
    # Nothing changed since: the stage is up to date and reproducing it does nothing.
    status = run("dvc", "status", "evaluate", cwd=workspace)
    assert "up to date" in status.stdout.lower(), status.stdout
