"""A cycle's one-line result and its markdown artifact; MLflow run ids as links when the UI is known."""

from __future__ import annotations

import pytest

from promptloop.core.config import TrackingSettings, load_params
from promptloop.domain.evaluation import BaselineResult, CandidateResult, EvaluationResult
from promptloop.domain.results import (
    BestCandidate,
    CollectResult,
    CycleResult,
    DeployResult,
    ImproveOutcome,
    LLMCalls,
    PullRequestLink,
)
from promptloop.loop.cycle import skipped
from promptloop.loop.summary import FORCE_HINT, cycle_report, result_line
from promptloop.workspace.links import UI_URL_ENV, mlflow_ui_url, run_link
from promptloop.workspace.workspace import Workspace

from conftest import REPO

UI = "http://127.0.0.1:5000/"


def collected(rows: int) -> CollectResult:
    return CollectResult(app="support-bot", rows_in=rows, rows_valid=rows, rows_quarantined=0, rows_duplicate=0,
                         pii_redactions={}, failures={}, snapshot=None, quarantine="data/support-bot/quarantine",
                         dvc_md5=None, git_commit=None,
                         mlflow_run_id="collect-run", sources=[], run="r1")


def finished(decision: str, deploy: DeployResult | None, reasons: list[str]) -> CycleResult:
    """A whole turn, its evaluation built without validation (only what the report reads)."""
    baseline = BaselineResult.model_construct(name="baseline", version=1, model="offline/support-bot", license=None,
                                              mean_score=0.61, pass_rate=0.5, cost_per_1k_usd=0.1, latency_p95_ms=900)
    candidate = CandidateResult.model_construct(
        name="opt-1234abcd", version=2, model="offline/support-bot", license="permissive", mean_score=0.74,
        diff=0.13, ci_low=0.05, ci_high=0.2, p_adjusted=0.01, wins=9, ties=20, losses=2, pass_rate=0.7,
        cost_per_1k_usd=0.1, latency_p95_ms=950, decision=decision)
    evaluation = EvaluationResult.model_construct(confidence=0.95, baseline=baseline, candidates=[candidate],
                                                  mlflow_run_id="eval-run")
    best = BestCandidate.model_construct(name="opt-1234abcd") if decision == "promote" else None
    improve = ImproveOutcome.model_construct(app="support-bot", decision=decision, reasons=reasons, best=best,
                                             evaluation=evaluation)
    return CycleResult.model_construct(app="support-bot", merged=None, resumed=None, collect=collected(40),
                                       analyze=None, improve=improve, deploy=deploy, decision=decision,
                                       reasons=reasons, llm=LLMCalls(calls=120, cache_hits=30))


PROPOSED = DeployResult(app="support-bot", decision="promote", reasons=[], branch="promptloop/support-bot/v2-1234abcd",
                        created=True, version=2, pull_request=PullRequestLink(url="https://github.com/a/b/pull/7",
                                                                              number=7))


def test_a_promotion_reads_in_one_line_with_its_branch_and_pull_request() -> None:
    assert result_line(finished("promote", PROPOSED, [])) == (
        "support-bot: promote opt-1234abcd -> branch promptloop/support-bot/v2-1234abcd, "
        "PR https://github.com/a/b/pull/7")
    local = PROPOSED.model_copy(update={"pull_request": None, "compare": "git diff main...promptloop/x"})
    assert result_line(finished("promote", local, [])).endswith("no PR opened (compare: git diff main...promptloop/x)")


def test_a_hold_and_a_skip_say_why_in_one_line() -> None:
    line = result_line(finished("hold", None, ["no candidate beats the baseline", "budget spent"]))
    assert line == "support-bot: hold: no candidate beats the baseline; budget spent"
    skip = result_line(skipped("support-bot", None, collected(0)))
    assert skip.startswith("support-bot: skipped: no new logs") and "force" in skip


def test_the_cycle_artifact_has_the_decision_table_pull_request_and_linked_runs() -> None:
    report = cycle_report(finished("promote", PROPOSED, []), UI)
    assert report.startswith("### cycle support-bot: **promote** opt-1234abcd\n")
    assert "Pull request: [https://github.com/a/b/pull/7](https://github.com/a/b/pull/7)" in report
    assert "| opt-1234abcd (v2) |" in report and "| baseline |" in report and "**promote** |" in report
    assert "| improve (evaluation) | [eval-run](http://127.0.0.1:5000/#/runs/eval-run) |" in report
    assert "| analyze | not run |" in report
    assert FORCE_HINT not in report
    # Without a UI address the ids stay plain code, no link to a guessed place.
    assert "| collect | `collect-run` |" in cycle_report(finished("hold", None, ["x"]), None)


def test_a_cycle_that_stopped_after_collect_says_so_and_how_to_force_it() -> None:
    report = cycle_report(skipped("support-bot", None, collected(0)), None)
    assert "**skipped**" in report and FORCE_HINT in report and "`force: true`" in FORCE_HINT
    assert "| prompt |" not in report and "Pull request" not in report  # no decision table without an improve


def test_the_mlflow_ui_address_comes_from_params_then_from_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    params = load_params(REPO / "params.yaml")

    def workspace(ui_url: str | None) -> Workspace:
        return Workspace(REPO, params.model_copy(update={"tracking": TrackingSettings(ui_url=ui_url)}))

    monkeypatch.delenv(UI_URL_ENV, raising=False)
    assert mlflow_ui_url(workspace(None)) is None
    monkeypatch.setenv(UI_URL_ENV, "http://127.0.0.1:41234")
    assert mlflow_ui_url(workspace(None)) == "http://127.0.0.1:41234"
    assert mlflow_ui_url(workspace("https://mlflow.acme.dev")) == "https://mlflow.acme.dev"
    assert run_link("abc", "https://mlflow.acme.dev/") == "[abc](https://mlflow.acme.dev/#/runs/abc)"
    assert run_link(None, "https://mlflow.acme.dev") == ""


def test_the_cycle_artifact_lists_the_knowledge_base_gaps_with_their_drafts() -> None:
    from promptloop.domain.results import AnalyzeResult, KbDraftResult, KbDraftsResult, KbGapResult

    gaps = [KbGapResult(id=1, topic="phone support hours", questions=9, users=7, kinds={"abstained": 9},
                        examples=["Do you | offer <b>phone</b> support?"], best_document="notes-trash-restore",
                        best_score=6.3, key_term_coverage=0.4, source="kb"),
            KbGapResult(id=2, topic="gift card", questions=2, users=2, kinds={"thumbs_down": 2},
                        examples=["Gift card?"], best_document=None, best_score=None, key_term_coverage=None,
                        source="kb")]
    draft = KbDraftResult(id="gap-phone-support-hours", path="kb/gap-phone-support-hours.md", gap=1,
                          topic="phone support hours", users=7, questions=9, examples=[], placeholders=1, text="",
                          cases_to_relabel=[])
    turn = finished("promote", PROPOSED, [])
    turn.analyze = AnalyzeResult.model_construct(kb_gaps=gaps, mlflow_run_id="analyze-run")
    turn.improve.kb_drafts = KbDraftsResult(drafts=[draft])
    report = cycle_report(turn, None)
    assert "Knowledge-base gaps: 2" in report
    rows = [line for line in report.splitlines() if line.startswith("| phone") or line.startswith("| gift")]
    assert rows == [
        "| phone support hours | 7 | Do you \\| offer \\<b>phone\\</b> support? | `notes-trash-restore` (6.3) | "
        "`kb/gap-phone-support-hours.md` (draft: true) |",
        "| gift card | 2 | Gift card? | none | not drafted |"]
    assert "Knowledge-base gaps" not in cycle_report(finished("promote", PROPOSED, []), None)
