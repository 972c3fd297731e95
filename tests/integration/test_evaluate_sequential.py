"""The sequential race end to end: the simulated app and judge on the sample golden set, in a real workspace.
It must reach the decisions of a full evaluation with fewer requests, and say so."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from promptloop.core.progress import ProgressHooks
from promptloop.domain.evaluation import EvaluationResult
from promptloop.evaluate import workers
from promptloop.evaluate.stage import evaluate
from promptloop.workspace.workspace import Workspace, open_workspace
from tests.golden_splits import korean_optimizer_split

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
              "retry_after_s": 0.01, "attempt_seed": 22}  # retries escape, the same faults every run
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


def test_the_progress_bar_ends_full_when_the_race_stops_early(workspace: Workspace) -> None:
    """The bar starts with a full evaluation's total; a race that stops early sets it to the work it did."""
    totals: list[int] = []
    advanced: list[int] = []
    result = evaluate(with_sequential(workspace, enabled=True), "support-bot", PATHS,
                      progress=ProgressHooks(start=totals.append, advance=advanced.append))
    assert result.sequential is not None and result.sequential.stopped_at_look < result.sequential.looks_planned
    assert totals[-1] == sum(advanced) < totals[0], (totals, sum(advanced))


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


def test_the_pairwise_judge_runs_after_the_race_for_the_promoted_candidate_only(raced: EvaluationResult) -> None:
    race = raced.sequential
    assert race is not None and race.decided == ["better"]
    win_rates = {c.name: c.pairwise_win_rate for c in raced.candidates}
    assert win_rates["better"] is not None and win_rates["terse"] is None and win_rates["same"] is None
    assert race.pairwise_skipped == ["terse", "same"]
    assert 0 < raced.judge.pairwise_judged <= raced.cases_decided  # the race's cases, the promoted candidate's
    terse = raced.report.split("### terse")[1].split("###")[0]
    assert "Pairwise: not judged (the race decided without it)." in terse
    assert "not judged" not in raced.report.split("### better")[1].split("###")[0]
    assert "What the gate does not read (the pairwise judge) ran after the race for better only." in raced.report


@pytest.fixture(scope="module")
def every_pairwise(workspace: Workspace) -> EvaluationResult:
    return evaluate(with_sequential(workspace, enabled=True, pairwise="all"), "support-bot", PATHS)


def test_pairwise_all_judges_every_candidate_in_every_look_with_the_same_verdicts(
        raced: EvaluationResult, every_pairwise: EvaluationResult) -> None:
    assert every_pairwise.sequential is not None and raced.sequential is not None
    assert every_pairwise.sequential.looks == raced.sequential.looks
    assert every_pairwise.sequential.pairwise_skipped == []
    assert all(c.pairwise_win_rate is not None for c in every_pairwise.candidates)
    fields = {"name", "ci_low", "ci_high", "decision", "reasons", "pairwise_win_rate"}
    assert next(c.model_dump(include=fields) for c in every_pairwise.candidates if c.name == "better") == next(
        c.model_dump(include=fields) for c in raced.candidates if c.name == "better")
    assert [c.decision for c in every_pairwise.candidates] == [c.decision for c in raced.candidates]
    assert raced.usage.calls < every_pairwise.usage.calls  # what `decided` saves


@pytest.fixture(scope="module")
def split_workspace(workspace: Workspace) -> Workspace:
    """The sample workspace with the Korean cases as the optimizer's (the others held out: 30, three looks)."""
    return korean_optimizer_split(workspace)


def test_the_optimizers_cases_are_evaluated_after_the_race_for_the_decided_candidate_only(
        split_workspace: Workspace) -> None:
    decided = evaluate(with_sequential(split_workspace, enabled=True), "support-bot", PATHS)
    every = evaluate(with_sequential(split_workspace, enabled=True, optimize_split="all"), "support-bot", PATHS)
    assert decided.sequential is not None and every.sequential is not None
    assert decided.sequential.looks == every.sequential.looks  # the race never looks at the optimizer's cases
    splits = {c.name: c.optimize_split for c in decided.candidates}
    assert splits["better"] is not None and splits["terse"] is None and splits["same"] is None
    assert decided.sequential.optimize_skipped == ["terse", "same"]
    assert every.sequential.optimize_skipped == [] and all(c.optimize_split for c in every.candidates)
    # The same share of the optimizer's cases, the same seeded answers and verdicts: the same figures.
    assert splits["better"] == next(c.optimize_split for c in every.candidates if c.name == "better")
    golden = split_workspace.path(split_workspace.app_settings("support-bot").golden_set).read_text(encoding="utf-8")
    seen = golden.count('"split": "optimize"')
    held = golden.count('"split": "holdout"')
    assert decided.cases_decided < held  # the race stopped early, and took the same share of the optimizer's cases
    assert splits["better"].n == decided.cases_optimize == round(seen * decided.cases_decided / held) < seen
    assert [c.decision for c in decided.candidates] == [c.decision for c in every.candidates]
    assert "Optimisation split: not evaluated" in decided.report.split("### terse")[1].split("###")[0]
    assert decided.usage.calls < every.usage.calls


def test_the_passes_after_a_race_leave_out_the_judges_they_do_not_need(workspace: Workspace) -> None:
    """The looks run no pairwise judge; the optimizer's cases after the race run neither it nor the guard judge
    files (triage-bot has both, and a primary pairwise judge file): only the rubric's gain is reported there."""
    import dataclasses

    from promptloop.evaluate.plan import judge_scorers, plan_evaluation
    from promptloop.evaluate.scorers import GuardJudge, PairwiseJudge, RubricJudge

    plan = plan_evaluation(workspace, "triage-bot", [])
    runner = workspace.open_runner()
    try:
        def kinds(**flags: bool) -> list[type]:
            return [type(s) for s in judge_scorers(dataclasses.replace(plan, **flags), runner, "baseline")]

        assert kinds() == [RubricJudge, PairwiseJudge, GuardJudge, GuardJudge]
        assert kinds(pairwise=False) == [RubricJudge, GuardJudge, GuardJudge]
        assert kinds(pairwise=False, guards=False) == [RubricJudge]
    finally:
        runner.cache.close()


def test_without_a_cache_the_baselines_answers_are_requested_once(split_workspace: Workspace,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The labelled optimizer's cases: the baseline answers them for the judge's calibration during the race,
    and its answers are scored on the optimizer's cases after it. Without a response cache nothing would
    answer the second request from the first: the answers already made are reused."""
    from collections import Counter

    from promptloop.demo.simulated.provider import OfflineProvider

    requests: Counter[str] = Counter()
    answer = OfflineProvider.acompletion

    async def counted(self: OfflineProvider, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> Any:
        if model == "support-bot":  # the app's requests (the judges' are another model's)
            requests[json.dumps(messages, sort_keys=True)] += 1
        return await answer(self, model, messages, *args, **kwargs)

    monkeypatch.setattr(OfflineProvider, "acompletion", counted)
    result = evaluate(with_sequential(split_workspace, enabled=True), "support-bot", PATHS)
    assert result.cases_optimize and result.judge.calibration.labelled  # both passes ran
    assert requests and max(requests.values()) == 1, [n for n in requests.values() if n > 1]
    app_calls = sum(u.calls for purpose, u in result.usage.by_purpose.items() if purpose.startswith("app:"))
    assert app_calls == len(requests)
