"""triage-bot evaluated in a real workspace: its code is a python: target making two calls per ticket,
and a hand-written prompt that fixes v1's failures is promoted on the held-out cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptloop.domain.evaluation import EvaluationResult
from promptloop.evaluate.stage import evaluate
from promptloop.workspace.workspace import Workspace, open_workspace

BETTER = Path(__file__).parents[1] / "data" / "candidates" / "triage-better.yaml"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from promptloop.ops.initialize import init_workspace

    root = tmp_path_factory.mktemp("triage") / "ws"
    init_workspace(root)
    return open_workspace(root)


def sequential(workspace: Workspace, enabled: bool) -> Workspace:
    """The workspace with the sequential race on or off."""
    params = workspace.params
    settings = params.evaluate.model_copy(
        update={"sequential": params.evaluate.sequential.model_copy(update={"enabled": enabled})})
    return Workspace(workspace.root, params.model_copy(update={"evaluate": settings}))


@pytest.fixture(scope="module")
def decided(workspace: Workspace) -> EvaluationResult:
    """Every case evaluated (the race off): the fixes and the calls are checked case by case."""
    return evaluate(sequential(workspace, False), "triage-bot", [BETTER])


def test_a_prompt_that_fixes_routing_priority_language_and_format_is_promoted(decided: EvaluationResult) -> None:
    better = decided.candidates[0]
    assert better.decision == "promote", better.reasons
    assert better.ci_low > decided.min_effect and better.losses == 0
    # The held-out cases it fixes: a billing error, outages, a low-priority question, Japanese tickets.
    assert {"t003", "t011", "t018", "t029"} <= set(better.flips.fixed)
    assert decided.baseline.pass_rate < 0.5 < better.pass_rate


def test_each_case_took_two_app_calls(decided: EvaluationResult) -> None:
    app = {name: u for name, u in decided.usage.by_purpose.items() if name.startswith("app:")}
    assert len(app) == 2  # the baseline and the candidate
    assert all(u.calls + u.cache_hits == 2 * decided.cases for u in app.values())


def test_the_race_promotes_it_too_on_fewer_cases(workspace: Workspace, decided: EvaluationResult) -> None:
    raced = evaluate(sequential(workspace, True), "triage-bot", [BETTER])
    assert raced.sequential is not None and raced.candidates[0].decision == "promote", raced.candidates[0].reasons
    assert raced.sequential.pairs_evaluated < raced.sequential.pairs_full
    assert raced.cases_decided < decided.cases_decided
