"""triage-bot evaluated in a real workspace: its code is a python: target making two calls per ticket,
and a hand-written prompt that fixes v1's failures is promoted on the held-out cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptloop.domain.evaluation import EvaluationResult
from promptloop.evaluate.stage import evaluate
from promptloop.workspace.workspace import open_workspace

BETTER = Path(__file__).parents[1] / "data" / "candidates" / "triage-better.yaml"


@pytest.fixture(scope="module")
def decided(tmp_path_factory: pytest.TempPathFactory) -> EvaluationResult:
    from promptloop.ops.initialize import init_workspace

    root = tmp_path_factory.mktemp("triage") / "ws"
    init_workspace(root)
    return evaluate(open_workspace(root), "triage-bot", [BETTER])


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
