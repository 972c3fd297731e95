"""The sequential race end to end: the simulated app and judge on the sample golden set, in a real workspace.
It must reach the decisions of a full evaluation with fewer requests, and say so."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from promptloop.domain.evaluation import EvaluationResult
from promptloop.evaluate import workers
from promptloop.evaluate.stage import evaluate
from promptloop.workspace.workspace import Workspace, open_workspace

CANDIDATES = Path(__file__).parents[1] / "data" / "candidates"
PATHS = [CANDIDATES / "better.yaml", CANDIDATES / "terse.yaml", CANDIDATES / "same.yaml"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from promptloop.ops.initialize import init_workspace

    root = tmp_path_factory.mktemp("sequential") / "ws"
    init_workspace(root)
    return open_workspace(root)


def with_sequential(workspace: Workspace, **sequential: Any) -> Workspace:
    """The workspace with evaluate.sequential changed and no response cache (every request is made)."""
    params = workspace.params
    evaluate_settings = params.evaluate.model_copy(
        update={"sequential": params.evaluate.sequential.model_copy(update=sequential)})
    return Workspace(workspace.root, params.model_copy(update={
        "evaluate": evaluate_settings, "llm": params.llm.model_copy(update={"cache": None})}))


@pytest.fixture(scope="module")
def raced(workspace: Workspace) -> EvaluationResult:
    return evaluate(with_sequential(workspace, enabled=True), "support-bot", PATHS)


@pytest.fixture(scope="module")
def full(workspace: Workspace) -> EvaluationResult:
    return evaluate(with_sequential(workspace, enabled=False), "support-bot", PATHS)


def test_the_race_reaches_the_full_evaluations_decisions_with_fewer_requests(raced: EvaluationResult,
                                                                              full: EvaluationResult) -> None:
    decisions = {c.name: c.decision for c in raced.candidates}
    assert decisions == {c.name: c.decision for c in full.candidates} == {
        "better": "promote", "terse": "hold", "same": "hold"}
    race = raced.sequential
    assert race is not None and full.sequential is None
    assert race.stopped_at_look < race.looks_planned, race.looks
    spent = raced.usage.calls + raced.usage.cache_hits
    assert spent == race.calls_spent < full.usage.calls + full.usage.cache_hits
    assert race.pairs_evaluated < race.pairs_full == 4 * raced.cases


def test_a_high_severity_regression_past_the_stop_still_holds(raced: EvaluationResult) -> None:
    terse = next(c for c in raced.candidates if c.name == "terse")
    assert terse.high_severity_regressions == ["g004", "g006"], terse.reasons


def test_the_final_gate_uses_the_stopping_looks_level_and_the_report_says_how_the_race_went(
        raced: EvaluationResult) -> None:
    race = raced.sequential
    assert race is not None
    assert raced.confidence == race.final_confidence > 0.95
    better = next(c for c in raced.candidates if c.name == "better")
    assert better.wins + better.ties + better.losses == raced.cases_decided == race.looks[-1].cases
    assert "## Sequential evaluation" in raced.report
    assert f"stopped at look {race.stopped_at_look}" in raced.report
    assert f"Δ score [{race.final_confidence:.2%} CI]" in raced.report


def test_the_same_seed_runs_the_same_race(workspace: Workspace, raced: EvaluationResult) -> None:
    again = evaluate(with_sequential(workspace, enabled=True), "support-bot", PATHS)
    assert again.sequential == raced.sequential
    assert [c.model_dump(include={"name", "ci_low", "ci_high", "decision", "reasons"}) for c in again.candidates] == [
        c.model_dump(include={"name", "ci_low", "ci_high", "decision", "reasons"}) for c in raced.candidates]


def test_a_fifth_of_calls_failing_runs_the_same_race_to_the_same_decisions(
        workspace: Workspace, raced: EvaluationResult, monkeypatch: pytest.MonkeyPatch) -> None:
    faults = {"error_rate": 0.2, "faults": {"rate_limit": 1, "timeout": 1, "server_error": 1, "malformed": 1},
              "retry_after_s": 0.01}
    monkeypatch.setenv("PROMPTLOOP_SIMULATION", json.dumps(faults))
    flaky = with_sequential(workspace, enabled=True)
    flaky = Workspace(flaky.root, flaky.params.model_copy(update={"llm": flaky.params.llm.model_copy(
        update={"retry_base_delay_s": 0.0, "max_retries": 8, "max_repairs": 6})}))
    result = evaluate(flaky, "support-bot", PATHS)
    assert result.complete and result.usage.retries > 0
    assert result.usage.retries + result.usage.repairs == result.usage.calls - raced.usage.calls
    assert result.sequential is not None and raced.sequential is not None
    assert result.sequential.looks == raced.sequential.looks
    fields = {"name", "mean_score", "ci_low", "ci_high", "decision", "reasons"}
    assert [c.model_dump(include=fields) for c in result.candidates] == [
        c.model_dump(include=fields) for c in raced.candidates]


def test_two_worker_processes_run_the_race_of_one(workspace: Workspace, raced: EvaluationResult,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pools: list[int] = []

    class CountedPool(ProcessPoolExecutor):
        def __init__(self, max_workers: int, **kwargs: Any) -> None:
            pools.append(max_workers)
            super().__init__(max_workers, **kwargs)

    monkeypatch.setattr(workers, "ProcessPoolExecutor", CountedPool)
    spread = with_sequential(workspace, enabled=True)
    spread = Workspace(spread.root, spread.params.model_copy(update={"llm": spread.params.llm.model_copy(
        update={"processes": 2})}))
    result = evaluate(spread, "support-bot", PATHS)
    assert result.sequential is not None and raced.sequential is not None
    assert result.sequential.looks == raced.sequential.looks
    # One worker process (this process is the other) started once serves every look.
    assert pools == [1] and len(result.sequential.looks) > 1
    fields = {"name", "mean_score", "ci_low", "ci_high", "p_adjusted", "wins", "ties", "losses", "decision",
              "reasons"}
    assert [c.model_dump(include=fields) for c in result.candidates] == [
        c.model_dump(include=fields) for c in raced.candidates]


def test_every_labelled_case_calibrates_the_judge_however_early_the_race_stops(
        raced: EvaluationResult, full: EvaluationResult) -> None:
    assert raced.judge.calibration == full.judge.calibration
    assert raced.judge.calibration.labelled > 0


def test_a_judge_that_never_answers_ends_the_race_incomplete(workspace: Workspace,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTLOOP_SIMULATION", json.dumps({
        "error_rate": 1.0, "faults": {"rate_limit": 0, "timeout": 0, "server_error": 0, "malformed": 1},
        "fault_seed": 1}))
    broken = with_sequential(workspace, enabled=True)
    broken = Workspace(broken.root, broken.params.model_copy(update={"llm": broken.params.llm.model_copy(
        update={"retry_base_delay_s": 0.0, "max_retries": 1})}))
    result = evaluate(broken, "support-bot", [CANDIDATES / "better.yaml"])
    assert result.candidates[0].decision == "incomplete" and result.judge_failures > 0


def test_mlflow_records_the_race(workspace: Workspace, raced: EvaluationResult) -> None:
    from promptloop.workspace.tracking import tracking_client

    run = tracking_client(workspace.tracking_uri).get_run(raced.mlflow_run_id)
    race = raced.sequential
    assert race is not None
    assert run.data.metrics["sequential.stopped_at_look"] == race.stopped_at_look
    assert run.data.metrics["sequential.calls_spent"] == race.calls_spent
    assert run.data.metrics["sequential.calls_full_estimate"] == race.calls_full_estimate
    assert run.data.metrics["sequential.cases.same"] == race.cases_evaluated["same"]
    assert run.data.params["sequential"] == "true" and run.data.params["sequential_spending"] == "obrien-fleming"
