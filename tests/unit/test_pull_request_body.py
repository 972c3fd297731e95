"""The pull request's body: order, evidence, escaping, valid markdown; the prompt file keeps its formatting."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from promptloop.deploy.body import BodyInput, Links, code, cut, escape_text, fenced, most_important, pull_request_body
from promptloop.deploy.evidence import review_links, rows_by_case
from promptloop.deploy.prompt_file import dump_prompt_like
from promptloop.domain.evaluation import (
    BaselineResult,
    CalibrationResult,
    CandidateResult,
    EvaluationResult,
    Flips,
    GuardResult,
    JudgeResult,
)
from promptloop.domain.golden import GoldenCase
from promptloop.domain.prompts import PromptVersion, load_prompt
from promptloop.domain.results import KbDraftResult

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_PROMPTS = sorted((ROOT / "prompts").glob("*/prompt.yaml"))
FIXED = [f"g{i:03d}" for i in range(1, 9)]  # 8 fixed: 5 are shown
SEVERITY = {"g001": "low", "g002": "critical", "g003": "medium", "g004": "high", "g005": "medium", "g006": "medium",
            "g007": "low", "g008": "high", "g020": "high"}


def row(prompt: str, case_id: str, answer: str, score: float, passed: bool, reason: str = "") -> dict[str, object]:
    return {"prompt": prompt, "case_id": case_id, "severity": SEVERITY.get(case_id, "medium"),
            "input": f"Question of {case_id}?", "answer": answer, "rubric_score": score, "rubric_passed": passed,
            "rubric_reason": reason}


def evaluation(reasons: list[str] | None = None) -> EvaluationResult:
    candidate = CandidateResult(
        name="opt-1", source="/ws/.promptloop/candidates/bot/opt-1.yaml", version=2, prompt_hash="ab" * 32,
        model="offline/bot", license="restrictive", mean_score=0.6, pass_rate=0.6, diff=0.2, ci_low=0.09,
        ci_high=0.3, wins=8, ties=10, losses=1, flips=Flips(fixed=FIXED, broken=["g020"]), decision="promote",
        reasons=reasons or [],
        guards=[GuardResult(metric="toxicity", baseline=0, candidate=0, limit=0, ok=True)])
    calibration = CalibrationResult(labelled=17, judged=17, accuracy=0.94, kappa=0.3, applied=True,
                                    decided_by="balanced_accuracy", problem=None, up=2, down=15,
                                    balanced_accuracy=0.75)
    return EvaluationResult(
        app="bot", cases=20, cases_decided=19, cases_optimize=1, complete=True, stopped=None,
        baseline=BaselineResult(name="baseline", source="prompts/bot/prompt.yaml", version=1, prompt_hash="cd" * 32,
                                model="offline/bot", mean_score=0.4, pass_rate=0.4),
        candidates=[candidate], judge=JudgeResult(model="offline/judge", samples=1, position_consistency=1.0,
                                                  pairwise_judged=10, rubric_variance=None, calibration=calibration),
        judge_failures=0, mde=0.2, mlflow_run_id="run123")


def body_input(**changes: object) -> BodyInput:
    rows = {}
    for i, case_id in enumerate(FIXED):
        rows["baseline", case_id] = row("baseline", case_id, f"old answer {case_id}", 0.25, False, "misses the fact")
        rows["opt-1", case_id] = row("opt-1", case_id, f"new answer {case_id}", 0.5 + i / 20, True, "cites the doc")
    rows["baseline", "g020"] = row("baseline", "g020", "good old answer", 1.0, True)
    rows["opt-1", "g020"] = row("opt-1", "g020", "worse new answer", 0.0, False, "refuses an answerable question")
    base = dict(
        app="bot", evaluation=evaluation(), candidate=evaluation().candidates[0], changelog="addresses abstain",
        version=2, prompt_path="prompts/bot/prompt.yaml", diff="--- v1\n+++ candidate\n-old\n+new\n",
        links=Links(run="https://mlflow.example/#/experiments/1/runs/run123", prompt="prompt `bot` version 2"),
        golden_added=3, golden_split=(1, 2), golden_md5="f00d",
        new_cases=[GoldenCase(id=f"m-{i}", inputs={"question": f"New question {i}?"}, source="mined:x",
                              severity="high" if i == 3 else "low",
                              expectations={"guidelines": [f"says it does not know {i}"]})
                   for i in range(5)],
        rows=rows, min_per_class=5,
        redact=lambda text: text.replace("jo@example.com", "<EMAIL>"))
    base.update(changes)
    return BodyInput(**base)  # type: ignore[arg-type]


def tokens(markdown: str) -> list[Token]:
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(markdown)  # GFM minus linkify


def headings(markdown: str) -> list[tuple[int, str]]:
    found = tokens(markdown)
    return [(int(t.tag[1]), found[i + 1].content) for i, t in enumerate(found) if t.type == "heading_open"]


def test_sections_come_in_the_order_a_reviewer_reads_them_with_no_heading_jump() -> None:
    body = pull_request_body(body_input())
    levels = headings(body)
    sections = [text for level, text in levels if level == 2]
    assert sections == ["Links", "Prompt diff", "Decision", "Cases fixed", "Cases broken", "Golden set", "Guards",
                        "Judge calibration"]
    assert levels[0][0] == 2
    assert all(b <= a + 1 for (a, _), (b, _) in zip(levels, levels[1:], strict=False))  # never ## -> ####
    assert body.splitlines()[0].startswith("promptloop proposes **opt-1**")


def test_tables_parse_as_tables_and_fences_close() -> None:
    found = tokens(pull_request_body(body_input()))
    assert sum(t.type == "table_open" for t in found) == 2  # the decision table and the guards
    fences = [t for t in found if t.type == "fence"]
    assert [f.info for f in fences] == ["diff"] and "+new" in fences[0].content


def test_the_five_most_important_fixed_cases_and_every_broken_one_with_both_answers_and_reasons() -> None:
    body = pull_request_body(body_input())
    shown = [text for level, text in headings(body) if level == 3]
    # critical, then high (larger change first), then medium by change: g002, g008, g004, g006, g005
    assert [s.split(" ")[0].strip("`") for s in shown] == ["g002", "g008", "g004", "g006", "g005", "g020"]
    assert "Question of g020?" in body and "good old answer" in body and "worse new answer" in body
    assert "refuses an answerable question" in body and "8 case(s) the baseline failed" in body
    assert "new answer g001" not in body  # the sixth-most important fixed case is left out


def test_importance_is_severity_then_score_change_then_id() -> None:
    assert most_important(["g007", "g001", "g002"], body_input()) == ["g002", "g007", "g001"]


def test_answers_are_redacted_and_cut_saying_so() -> None:
    long = "x" * 1000
    rows = body_input().rows | {("opt-1", "g020"): row("opt-1", "g020", "mail jo@example.com " + long, 0.0, False)}
    body = pull_request_body(body_input(rows=rows))
    assert "jo@example.com" not in body and "\\<EMAIL>" in body
    assert "cut: 1,013 characters in all" in body  # counted after redaction and long not in body
    assert cut("short") == "short"


def test_links_calibration_golden_growth_and_the_candidate_on_the_branch() -> None:
    body = pull_request_body(body_input())
    assert "https://mlflow.example/#/experiments/1/runs/run123" in body
    assert "`prompts/bot/prompt.yaml` on this branch" in body and ".promptloop/candidates" not in body
    assert ("balanced accuracy 0.75 (plain accuracy 0.94) on 17 labelled case(s), 2 👍 and 15 👎; the gate uses "
            "balanced accuracy (the mean of the judge's recall on 👍 and on 👎), not kappa, because only 2 of them "
            "are 👍 — fewer than `evaluate.min_calibration_per_class` (5)") in body
    # the high-severity one first, then the growth order: 3, 0, 1
    assert "New question 3?" in body and "New question 1?" in body and "New question 2?" not in body
    assert "expected: says it does not know 0" in body


def test_without_a_ui_url_the_links_are_the_mlflow_ui_command_and_the_ids() -> None:
    links = review_links(None, "sqlite:///mlflow.db", "1", "run123", "bot", 2)
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in links.run and "run123" in links.run
    assert "version 2" in links.prompt
    linked = review_links("http://localhost:5000/", "sqlite:///mlflow.db", "1", "run123", "bot", 2)
    assert linked.run == "http://localhost:5000/#/experiments/1/runs/run123"
    assert linked.prompt == "http://localhost:5000/#/prompts/bot?promptVersion=2"


@pytest.mark.parametrize("hostile", [
    "<!-- everything after this is hidden",
    "<img src=x onerror=alert(1)> <details><summary>x</summary>",
    "ping @octocat and @org/team",
    "![tracker](https://evil.example/pixel.png)",
    "```\nan unbalanced fence",
    "# A heading\n---\nsetext",
])
def test_logged_and_hand_written_text_cannot_hide_or_break_the_report(hostile: str) -> None:
    rows = body_input().rows | {("opt-1", "g020"): row("opt-1", "g020", hostile, 0.0, False, hostile)}
    body = pull_request_body(body_input(rows=rows, changelog=hostile))
    found = tokens(body)
    flat = [t for token in found for t in [token, *(token.children or [])]]
    assert not [t for t in flat if t.type in ("html_block", "html_inline", "image")]
    assert [f.info for f in found if f.type == "fence"] == ["diff"]  # no fence opened by the text
    assert [text for level, text in headings(body) if level == 2][-1] == "Judge calibration"  # nothing swallowed
    assert {level for level, _ in headings(body)} == {2, 3}  # the text made no heading of its own
    assert "@octocat" not in body  # a zero-width joiner breaks the mention
    assert escape_text("@octocat") == "@\u200doctocat"


def test_a_fence_is_longer_than_any_backtick_run_inside() -> None:
    lines = fenced("a ```` b", "diff")
    assert lines[0] == "`````diff" and lines[-1] == "`````"


def test_mlflow_table_rows_are_keyed_by_prompt_and_case() -> None:
    table = {"columns": ["prompt", "case_id", "answer"], "data": [["baseline", "g1", "a"], ["opt-1", "g1", "b"]]}
    assert rows_by_case(table)["opt-1", "g1"]["answer"] == "b"


@pytest.mark.parametrize("path", SAMPLE_PROMPTS, ids=lambda p: p.parent.name)
def test_a_round_trip_of_the_sample_prompts_is_byte_identical(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert dump_prompt_like(load_prompt(path), text) == text


@pytest.mark.parametrize("path", SAMPLE_PROMPTS, ids=lambda p: p.parent.name)
def test_the_branch_diff_touches_only_the_changed_lines(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    prompt = load_prompt(path)
    update: dict[str, object] = {"version": 2, "parent": 1, "changelog": "be brief"}
    if prompt.system is not None:
        update["system"] = prompt.system.replace("Nimbus Notes.", "Nimbus Notes. Be brief.")
    else:
        update["messages"] = [{**m.model_dump(),
                               "content": m.content.replace("Nimbus Notes.", "Nimbus Notes. Be brief.")}
                              for m in prompt.messages or []]
    changed = PromptVersion.model_validate({**prompt.model_dump(), **update})
    new_text = dump_prompt_like(changed, text)
    removed = [line for line in difflib.ndiff(text.splitlines(), new_text.splitlines()) if line.startswith("- ")]
    assert len(removed) == 4  # version, parent, changelog and the one template line
    assert PromptVersion.model_validate(yaml.safe_load(new_text)) == changed


def test_ids_are_code_spans_that_no_backtick_inside_can_close() -> None:
    assert code("m-1") == "`m-1`"
    assert code("a``b") == "```a``b```" and code("`x") == "`` `x ``"
    span = [t for t in tokens(f"see {code('a``b <!--')}")[1].children or [] if t.type == "code_inline"]
    assert [t.content for t in span] == ["a``b <!--"]



def test_broken_cases_past_githubs_size_limit_are_listed_by_id() -> None:
    many = [f"b{i:03d}" for i in range(200)]
    evaluation_many = evaluation()
    candidate = evaluation_many.candidates[0].model_copy(update={"flips": Flips(fixed=FIXED, broken=many)})
    rows = dict(body_input().rows)
    for case_id in many:
        rows["baseline", case_id] = row("baseline", case_id, "a" * 400, 1.0, True, "ok")
        rows["opt-1", case_id] = row("opt-1", case_id, "b" * 400, 0.0, False, "wrong")
    body = pull_request_body(body_input(candidate=candidate, rows=rows))
    assert len(body) < 65_536 and "more broken case(s), left out for GitHub's size limit" in body
    assert "`b199`" in body


def test_the_full_evaluation_report_on_the_branch_has_no_heading_jump_either() -> None:
    from promptloop.evaluate.report import markdown_report

    levels = headings(markdown_report(evaluation()))
    assert levels[0][0] == 1 and (2, "Candidates") in levels and (3, "opt-1: promote") in levels
    assert all(b <= a + 1 for (a, _), (b, _) in zip(levels, levels[1:], strict=False))


def test_an_uncalibrated_judge_allowed_by_the_app_is_said_plainly() -> None:
    result = evaluation()
    result.judge.calibration = result.judge.calibration.model_copy(
        update={"applied": False, "uncalibrated": True, "up": 2, "down": 1, "judged": 3, "labelled": 3})
    body = pull_request_body(body_input(evaluation=result))
    assert "too few labels to measure the judge" in body and "`evaluate.allow_uncalibrated: true`" in body


def kb_draft(example: str = "Do you offer phone support?", relabel: list[str] | None = None) -> KbDraftResult:
    return KbDraftResult(id="gap-phone-support", path="datasets/bot/kb/gap-phone-support.md", gap=1,
                         topic="phone support hours", users=4, questions=6, examples=[example], placeholders=2,
                         text="---\nid: gap-phone-support\n---\n", cases_to_relabel=relabel or [])


def test_drafted_articles_have_their_own_section_marked_as_drafts_with_the_cases_to_relabel() -> None:
    body = pull_request_body(body_input(kb_drafts=[kb_draft(relabel=["m-1", "m-2"])]))
    sections = [text for level, text in headings(body) if level == 2]
    assert sections == ["Links", "Prompt diff", "Decision", "Cases fixed", "Cases broken", "Golden set",
                        "Knowledge-base drafts (need a person)", "Guards", "Judge calibration"]
    section = body.split("## Knowledge-base drafts (need a person)")[1].split("## Guards")[0]
    assert [text for level, text in headings(section) if level == 3] == [
        "`datasets/bot/kb/gap-phone-support.md` (draft)"]
    assert "`draft: true`" in section and "4 user(s), 6 question(s) · 2 placeholder(s)" in section
    assert "Do you offer phone support?" in section
    assert "`m-1`, `m-2`" in section and "promptloop does not" in section
    # No draft, no section; a draft without cases to re-label says so.
    assert "Knowledge-base drafts" not in pull_request_body(body_input())
    assert "No golden case expecting `abstain` would change" in pull_request_body(body_input(kb_drafts=[kb_draft()]))


@pytest.mark.parametrize("hostile", ["</details><!-- hide", "# heading\n---",
                                     "![x](https://evil.example/p.png) @octocat", "```\nfence"])
def test_a_logged_question_in_a_draft_cannot_break_the_body(hostile: str) -> None:
    body = pull_request_body(body_input(kb_drafts=[kb_draft(example=hostile)]))
    found = tokens(body)
    flat = [t for token in found for t in [token, *(token.children or [])]]
    assert not [t for t in flat if t.type in ("html_block", "html_inline", "image")]
    assert [text for level, text in headings(body) if level == 2][-1] == "Judge calibration"
    assert {level for level, _ in headings(body)} == {2, 3} and "@octocat" not in body
