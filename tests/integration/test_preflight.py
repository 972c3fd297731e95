"""Preflight in a real workspace: what stops a run before its first call, and what a local-only app
does with a candidate on a hosted model."""

from __future__ import annotations

import json
from pathlib import Path

import git
import pytest
import yaml

from promptloop.core.errors import InputError
from promptloop.evaluate.check import check
from promptloop.evaluate.stage import evaluate
from promptloop.loop.cycle import cycle
from promptloop.ops.initialize import init_workspace
from promptloop.workspace.preflight import app_models, preflight
from promptloop.workspace.workspace import Workspace, open_workspace

APP = "support-bot"
CANDIDATES = Path(__file__).parents[1] / "data" / "candidates"
HOSTED = "openai/gpt-4o-mini"


def local_only(root: Path) -> Workspace:
    """The workspace with its app local-only, committed (every sample model is marked local)."""
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["apps"][APP]["data_policy"] = "local-only"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    repo = git.Repo(root)
    repo.index.add(["params.yaml"])
    repo.index.commit("support-bot is local-only")
    return open_workspace(root)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("preflight") / "ws"
    init_workspace(root)
    return local_only(root)


def test_a_cycle_from_a_dirty_tree_stops_before_collecting_anything(tmp_path: Path) -> None:
    init_workspace(tmp_path / "ws")
    workspace = open_workspace(tmp_path / "ws")
    (workspace.root / "notes.txt").write_text("not committed\n")
    commits = len(list(git.Repo(workspace.root).iter_commits()))
    with pytest.raises(InputError, match=r"uncommitted changes \(notes.txt\)"):
        cycle(workspace, APP)
    assert len(list(git.Repo(workspace.root).iter_commits())) == commits  # nothing was collected or committed
    assert not (workspace.root / ".promptloop" / "llm-cache.sqlite").exists()  # no call was made


def test_a_hosted_judge_for_a_local_only_app_is_refused_before_any_call(workspace: Workspace) -> None:
    evaluate_settings = workspace.params.evaluate.model_copy(update={"judge_model": HOSTED})
    hosted_judge = Workspace(workspace.root, workspace.params.model_copy(update={"evaluate": evaluate_settings}))
    with pytest.raises(InputError, match=rf"local-only .* judge model '{HOSTED}' is hosted"):
        evaluate(hosted_judge, APP, [])


def test_a_candidate_on_a_hosted_model_is_held_and_never_called(workspace: Workspace, tmp_path: Path) -> None:
    prompt = yaml.safe_load((CANDIDATES / "better.yaml").read_text(encoding="utf-8")) | {"model": HOSTED}
    moved = tmp_path / "hosted.yaml"
    moved.write_text(yaml.safe_dump(prompt), encoding="utf-8")
    result = evaluate(workspace, APP, [CANDIDATES / "better.yaml", moved])
    held = next(c for c in result.candidates if c.name == "hosted")
    assert held.decision == "hold" and "local-only" in held.reasons[0] and held.mean_score is None
    assert not any(purpose.endswith(":hosted") for purpose in result.usage.by_purpose)  # not one call for it
    assert next(c for c in result.candidates if c.name == "better").decision == "promote"
    assert result.complete


def test_check_calls_moving_a_local_only_app_to_a_hosted_model_a_regression(workspace: Workspace) -> None:
    prompt_path = workspace.path(workspace.app_settings(APP).prompt)
    original = prompt_path.read_text(encoding="utf-8")
    prompt_path.write_text(original.replace("model: offline/support-bot", f"model: {HOSTED}"), encoding="utf-8")
    try:
        result = check(workspace, APP)
    finally:
        prompt_path.write_text(original, encoding="utf-8")
    assert result.changed and any("local-only" in r for r in result.regressions)


def test_the_probe_sends_each_model_one_request_and_names_the_one_that_fails(workspace: Workspace,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    roles = app_models(workspace, APP, optimizer=True, online_judge=True)
    assert set(roles) == {"app", "judge", "optimizer", "online judge", "classifier"}
    preflight(workspace, APP, roles, probe=True)  # the simulated models answer
    monkeypatch.setenv("PROMPTLOOP_SIMULATION", json.dumps({"down": True}))
    with pytest.raises(InputError, match=r"the app model 'offline/support-bot' did not answer a 1-token probe: "
                                         r"ServiceUnavailableError"):
        preflight(workspace, APP, roles, probe=True)
