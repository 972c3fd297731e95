"""evaluate: real runs of the simulated app and judge on the sample golden set, in a real workspace
(git, DVC, MLflow). The decision must follow the statistics, and every way a run can go wrong must
end `incomplete`, never `promote`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from promptloop.domain.evaluation import CandidateResult, EvaluationResult
from promptloop.evaluate.stage import evaluate
from promptloop.workspace.workspace import Workspace, open_workspace
from tests.golden_splits import korean_optimizer_split

CANDIDATES = Path(__file__).parents[1] / "data" / "candidates"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A fresh workspace for this module (evaluations write runs, registry versions and a cache)."""
    from promptloop.ops.initialize import init_workspace

    root = tmp_path_factory.mktemp("evaluate") / "ws"
    init_workspace(root)
    return full_evaluation(open_workspace(root))


def full_evaluation(workspace: Workspace) -> Workspace:
    """Every case evaluated once (evaluate.sequential off): these tests are about the full evaluation; the
    race has its own (tests/integration/test_evaluate_sequential.py)."""
    params = workspace.params
    settings = params.evaluate.model_copy(
        update={"sequential": params.evaluate.sequential.model_copy(update={"enabled": False})})
    return Workspace(workspace.root, params.model_copy(update={"evaluate": settings}))


def with_settings(workspace: Workspace, llm: dict[str, Any] | None = None, **evaluate_settings: Any) -> Workspace:
    """The same workspace with some llm / evaluate settings changed (params.yaml on disk untouched)."""
    params = workspace.params
    changed = params.model_copy(update={
        "llm": params.llm.model_copy(update=llm or {}),
        "evaluate": params.evaluate.model_copy(update=evaluate_settings),
    })
    return Workspace(workspace.root, changed)


def by_name(result: EvaluationResult) -> dict[str, CandidateResult]:
    return {c.name: c for c in result.candidates}


@pytest.fixture(scope="module")
def decided(workspace: Workspace) -> EvaluationResult:
    """One evaluation of three hand-written candidates against prompt v1."""
    paths = [CANDIDATES / "better.yaml", CANDIDATES / "terse.yaml", CANDIDATES / "same.yaml"]
    return evaluate(workspace, "support-bot", paths)


def test_a_truly_better_candidate_is_promoted(decided: EvaluationResult) -> None:
    better = by_name(decided)["better"]
    assert better.decision == "promote", better.reasons
    assert better.reasons == []
    assert better.ci_low > decided.min_effect
    assert better.ci_low <= better.diff <= better.ci_high
    assert better.p_adjusted < 0.05
    assert better.wins > better.losses
    # The fix is visible case by case: Korean and injection cases now pass.
    assert {"g021", "g041"} <= set(better.flips.fixed)


def test_an_identical_copy_of_the_baseline_is_held_with_a_ci_containing_zero(decided: EvaluationResult) -> None:
    same = by_name(decided)["same"]
    assert same.decision == "hold"
    assert same.ci_low <= 0 <= same.ci_high
    assert (same.wins, same.losses) == (0, 0)
    assert "same prompt and model as the baseline" in same.reasons


def test_a_candidate_that_breaks_a_high_severity_case_is_held(decided: EvaluationResult) -> None:
    terse = by_name(decided)["terse"]
    assert terse.diff > 0 and terse.ci_low > decided.min_effect  # better on average...
    assert terse.decision == "hold"  # ...but it breaks high-severity cases
    assert terse.high_severity_regressions == ["g004", "g006"]
    assert any("high-severity" in reason for reason in terse.reasons)


def test_holm_adjusts_across_candidates_and_the_summary_has_every_field(decided: EvaluationResult) -> None:
    for field in ("baseline", "candidates", "llm_calls", "cache_hits", "cost_usd", "judge_failures", "mlflow_run_id"):
        assert getattr(decided, field) is not None, field
    for c in decided.candidates:
        for field in ("name", "prompt_hash", "mean_score", "diff", "ci_low", "ci_high", "p_value", "p_adjusted",
                      "wins", "ties", "losses", "decision", "reasons"):
            assert getattr(c, field) is not None, field
        assert c.p_value <= c.p_adjusted <= 1
        assert c.wins + c.ties + c.losses == decided.cases
    assert decided.llm_calls > 0 and decided.judge_failures == 0
    # App and judge usage are kept apart, per prompt.
    purposes = decided.usage.by_purpose
    assert {"app:baseline", "app:better", "judge:baseline", "judge:better"} <= set(purposes)
    assert purposes["app:better"].cost_usd > 0
    json.dumps(decided.model_dump(mode="json"))  # the --json summary is plain JSON


def test_pairwise_judge_is_position_consistent_at_temperature_zero(decided: EvaluationResult) -> None:
    assert decided.judge.position_consistency == 1.0
    assert decided.judge.pairwise_judged > 0
    assert by_name(decided)["better"].pairwise_win_rate > 0.5


def test_the_report_shows_the_decision_table_and_the_golden_set_size_limit(decided: EvaluationResult) -> None:
    report = decided.report
    assert "| better (v2) | offline/support-bot |" in report and "**promote**" in report
    assert "cannot reliably see a gain under" in report
    assert "high-severity case(s) pass in the baseline and fail here: g004, g006" in report


def test_high_severity_flips_are_rejudged_through_the_runner_before_they_hold(decided: EvaluationResult) -> None:
    terse = by_name(decided)["terse"]
    # At judge temperature 0 the fresh verdicts repeat what the judge saw: both flips are confirmed.
    assert terse.high_severity_regressions == ["g004", "g006"] and terse.unconfirmed_regressions == []
    rejudged = decided.usage.by_purpose["judge:rejudge"]
    # Two cases, `rejudge_samples` fresh verdicts on each prompt's answer (the baseline's once, whatever
    # the number of candidates that flipped there); nothing else is re-judged.
    assert rejudged.calls + rejudged.cache_hits == 2 * 2 * 8
    assert "High-severity flips re-judged: 2 confirmed (g004, g006), 0 not confirmed" in decided.report


def test_the_mde_comes_from_the_paired_differences_and_says_what_a_target_needs(decided: EvaluationResult) -> None:
    assert decided.mde_paired and decided.mde is not None and decided.mde > decided.min_effect
    assert decided.target_mde == 0.10
    if decided.mde > decided.target_mde:
        assert decided.cases_for_target_mde is not None and decided.cases_for_target_mde > decided.cases_decided
        assert f"About {decided.cases_for_target_mde - decided.cases_decided} more decided case(s)" in decided.report
    else:
        assert "That meets the target 0.100" in decided.report
    for candidate in decided.candidates:
        assert candidate.mde is None or candidate.mde > decided.min_effect


def test_a_second_evaluation_of_the_same_prompts_makes_no_llm_call(
    workspace: Workspace, decided: EvaluationResult
) -> None:
    again = evaluate(
        workspace, "support-bot", [CANDIDATES / "better.yaml", CANDIDATES / "terse.yaml", CANDIDATES / "same.yaml"]
    )
    assert again.llm_calls == 0
    assert again.cache_hits == decided.cache_hits + decided.llm_calls
    assert [c.mean_score for c in again.candidates] == [c.mean_score for c in decided.candidates]
    assert [c.decision for c in again.candidates] == [c.decision for c in decided.candidates]


def test_mlflow_has_a_parent_run_a_child_per_prompt_tables_and_registry_versions(
    workspace: Workspace, decided: EvaluationResult
) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=workspace.tracking_uri, registry_uri=workspace.tracking_uri)
    parent = client.get_run(decided.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["golden_md5"] == decided.golden_md5 and decided.golden_md5
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"decision.json", "report.md", "eval_cases.json"} <= artifacts
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["baseline", "better", "same", "terse"]
    better = next(r for r in children if r.info.run_name == "better")
    assert better.data.params["prompt_hash"] == by_name(decided)["better"].prompt_hash
    assert better.data.tags["promptloop.decision"] == "promote"
    assert better.data.metrics["ci_low"] == pytest.approx(by_name(decided)["better"].ci_low)
    table = json.loads(Path(client.download_artifacts(better.info.run_id, "eval_cases.json")).read_text())
    assert len(table["data"]) == decided.cases and {"input", "answer", "rubric_score"} <= set(table["columns"])
    linked = json.loads(better.data.tags["mlflow.linkedPrompts"])
    assert linked == [{"name": "support-bot", "version": str(better.data.params["registry_version"])}]
    registered = client.get_prompt_version("support-bot", int(better.data.params["registry_version"]))
    assert "{{context}}" in registered.template[0]["content"]


def test_the_app_prompt_holds_the_baseline_and_the_winner_and_the_rest_are_candidates(
    workspace: Workspace, decided: EvaluationResult
) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=workspace.tracking_uri, registry_uri=workspace.tracking_uri)
    children = {r.info.run_name: r for r in client.search_runs(
        [client.get_run(decided.mlflow_run_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{decided.mlflow_run_id}'")}
    app = {int(v.version): v for v in client.search_prompt_versions("support-bot")}
    # Three candidates were evaluated; only the baseline and the winner are versions of the app's prompt,
    # and the latest of them is the winner, not the last (or weakest) candidate evaluated.
    assert sorted(v.tags["promptloop.content_hash"] for v in app.values()) == sorted(
        [decided.baseline.prompt_hash, by_name(decided)["better"].prompt_hash])
    latest = app[max(app)]
    assert latest.tags["promptloop.content_hash"] == by_name(decided)["better"].prompt_hash
    assert (decided.baseline.registry_name, by_name(decided)["better"].registry_name) == ("support-bot",) * 2
    # terse and same (held) are versions of support-bot-candidates, "same" although it equals the baseline
    held = client.search_prompt_versions("support-bot-candidates")
    assert sorted(v.tags["promptloop.content_hash"] for v in held) == sorted(
        by_name(decided)[name].prompt_hash for name in ("terse", "same"))
    assert {by_name(decided)[name].registry_name for name in ("terse", "same")} == {"support-bot-candidates"}
    assert children["terse"].data.params["registry_name"] == "support-bot-candidates"
    # Each version's commit message is its changelog and names the run that evaluated it (also a tag).
    for version in [*app.values(), *held]:
        run_id = version.tags["promptloop.evaluation_run"]
        assert run_id in {r.info.run_id for r in children.values()}
        changelog = version.tags["promptloop.changelog"] or f"v{version.tags['promptloop.version']}"
        assert version.commit_message == f"{changelog}\n\nevaluation run: {run_id}"
    assert latest.tags["promptloop.evaluation_run"] == children["better"].info.run_id


def test_a_provider_that_fails_past_its_retries_makes_the_run_incomplete(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMPTLOOP_SIMULATION", json.dumps({"down": True}))
    broken = with_settings(workspace, llm={"max_retries": 2, "retry_base_delay_s": 0.0, "cache": None})
    result = evaluate(broken, "support-bot", [CANDIDATES / "better.yaml"])
    better = result.candidates[0]
    assert better.decision == "incomplete" and not result.complete
    assert any("ServiceUnavailableError after 3 attempt(s)" in r for r in better.reasons), better.reasons
    assert result.usage.retries >= 2


def test_a_spent_budget_stops_the_run_and_never_promotes(workspace: Workspace) -> None:
    capped = with_settings(workspace, llm={"cache": None}, budget_calls=20)
    result = evaluate(capped, "support-bot", [CANDIDATES / "better.yaml"])
    assert result.candidates[0].decision == "incomplete"
    assert "budget of 20 calls spent" in result.stopped
    assert result.usage.calls <= 20


def test_a_fifth_of_calls_failing_gives_the_same_scores_and_decisions_and_reports_the_retries(
        workspace: Workspace, decided: EvaluationResult, monkeypatch: pytest.MonkeyPatch) -> None:
    # 20% of calls fail: 429 with Retry-After, timeouts, 500s and (judge) verdicts that are not JSON.
    # attempt_seed: a retry draws afresh, yet every run of this test meets the same faults.
    faults = {"error_rate": 0.2, "faults": {"rate_limit": 1, "timeout": 1, "server_error": 1, "malformed": 1},
              "retry_after_s": 0.01, "attempt_seed": 21}
    monkeypatch.setenv("PROMPTLOOP_SIMULATION", json.dumps(faults))
    # Budgets are set as for random faults: a verdict stays unreadable only if 7 turns in a row are malformed
    # (0.05**7, about 1e-9 per verdict); with the default 2 repairs it is 1.25e-4 per verdict, which over
    # ~1,000 verdicts would fail about one seed in eight.
    flaky = with_settings(workspace, llm={"cache": None, "retry_base_delay_s": 0.0, "max_retries": 8,
                                          "max_repairs": 6})
    result = evaluate(
        flaky, "support-bot", [CANDIDATES / "better.yaml", CANDIDATES / "terse.yaml", CANDIDATES / "same.yaml"]
    )
    usage = result.usage
    assert result.complete and result.judge_failures == 0 and usage.failures == 0
    # Provider errors are retried; malformed verdicts get repair turns, counted apart.
    assert set(usage.retry_causes) == {"RateLimitError", "Timeout", "InternalServerError"}
    assert usage.repairs > 0 and usage.invalid == usage.repairs
    assert sum(usage.retry_causes.values()) == usage.retries
    assert usage.retries + usage.repairs == usage.calls - decided.usage.calls
    got = {c.name: (c.mean_score, c.ci_low, c.ci_high, c.decision, c.reasons) for c in result.candidates}
    assert got == {c.name: (c.mean_score, c.ci_low, c.ci_high, c.decision, c.reasons) for c in decided.candidates}
    assert result.baseline.mean_score == decided.baseline.mean_score
    assert f"({usage.retries} retries: " in result.report  # the report says how many and why


def test_a_judge_that_never_returns_valid_json_is_a_judge_failure_not_a_score(workspace: Workspace,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # fault_seed makes every judge call malformed whatever the retry: the verdict never comes.
    monkeypatch.setenv(
        "PROMPTLOOP_SIMULATION",
        json.dumps(
            {
                "error_rate": 1.0,
                "faults": {"rate_limit": 0, "timeout": 0, "server_error": 0, "malformed": 1},
                "fault_seed": 1,
            }
        ),
    )
    flaky = with_settings(workspace, llm={"cache": None, "retry_base_delay_s": 0.0, "max_retries": 1})
    result = evaluate(flaky, "support-bot", [CANDIDATES / "better.yaml"])
    assert result.judge_failures == 2 * result.cases
    assert result.candidates[0].decision == "incomplete"
    assert result.candidates[0].mean_score is None


def test_repeated_judging_reports_the_judges_own_variance(workspace: Workspace) -> None:
    noisy = with_settings(workspace, judge_samples=3, judge_temperature=1.0)
    result = evaluate(noisy, "support-bot", [CANDIDATES / "better.yaml"])
    assert result.judge.samples == 3
    assert result.judge.rubric_variance > 0
    judge_calls = result.usage.by_purpose["judge:baseline"]
    assert judge_calls.calls + judge_calls.cache_hits == 3 * result.cases
    # At temperature > 0 the judge leans to the first position; both orders expose it as inconsistency.
    assert result.judge.position_consistency < 1.0


def test_model_candidates_report_cost_and_license_and_non_commercial_is_never_promoted(
    workspace: Workspace, tmp_path: Path
) -> None:
    from promptloop.domain.prompts import dump_prompt, load_prompt

    better = load_prompt(CANDIDATES / "better.yaml")
    paths = []
    for model in ("offline/open-bot", "offline/research-bot"):
        path = tmp_path / f"{model.split('/')[1]}.yaml"
        path.write_text(dump_prompt(better.model_copy(update={"model": model})), encoding="utf-8")
        paths.append(path)
    found = by_name(evaluate(workspace, "support-bot", paths))
    open_bot, research = found["open-bot"], found["research-bot"]
    assert open_bot.license == "permissive" and open_bot.decision == "promote", open_bot.reasons
    assert (
        open_bot.cost_per_1k_usd
        < by_name(evaluate(workspace, "support-bot", [CANDIDATES / "better.yaml"]))["better"].cost_per_1k_usd
    )
    assert research.license == "non-commercial" and research.decision == "hold"
    assert research.reasons == ["model offline/research-bot has a non-commercial license and the app is commercial"]


def calibration_golden(workspace: Workspace, agree: bool) -> Workspace:
    """A golden set whose first 12 answerable cases, and only those, carry a human label on a logged
    answer that cites its source (the candidate cites: the labels must cover citing answers)."""
    split = korean_optimizer_split(workspace)
    golden = split.path(split.app_settings("support-bot").golden_set).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in golden.splitlines() if line.strip()]

    result = evaluate(split, "support-bot", [CANDIDATES / "language-only.yaml", CANDIDATES / "better.yaml"])
    korean = sum(r["lang"] == "ko" for r in rows)
    assert (result.cases_decided, result.cases_optimize) == (len(rows) - korean, korean)
    overfit, better = by_name(result)["language-only"], by_name(result)["better"]
    assert overfit.optimize_split.ci_low > 0.2  # a large gain where the optimizer looked...
    assert overfit.ci_low <= 0 <= overfit.ci_high  # ...and none held out
    assert overfit.decision == "hold"
    assert overfit.wins + overfit.ties + overfit.losses == result.cases_decided
    assert better.decision == "promote", better.reasons  # a real fix also wins where the optimizer never looked
    assert "Decided on the" in result.report and "On the optimisation split" in result.report


def test_two_worker_processes_give_the_results_of_one(workspace: Workspace, decided: EvaluationResult) -> None:
    spread = with_settings(workspace, llm={"processes": 2, "cache": None})
    result = evaluate(
        spread, "support-bot", [CANDIDATES / "better.yaml", CANDIDATES / "terse.yaml", CANDIDATES / "same.yaml"]
    )
    # No cache between runs (cache: null): the calls are made there; only identical requests in flight are shared.
    assert result.usage.calls > 0
    assert result.usage.calls + result.usage.cache_hits == decided.usage.calls + decided.usage.cache_hits
    assert result.timings["setup_s"] > 0 and result.timings["calls_cpu_s"] > 0
    fields = {"name", "mean_score", "ci_low", "ci_high", "p_adjusted", "wins", "ties", "losses", "decision", "reasons"}
    assert [c.model_dump(include=fields) for c in result.candidates] == [
        c.model_dump(include=fields) for c in decided.candidates
    ]
