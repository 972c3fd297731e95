"""The second sample app, triage-bot: its data, its code (two calls per ticket), the simulated model it
runs on, and what the simulated judge and optimizer make of its JSON answers."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any

import pytest

from promptloop.core.text import language, terms
from promptloop.demo.simulated import optimizer, structured, triage
from promptloop.demo.simulated.judge import verdict
from promptloop.demo.simulated.tickets import load_tickets
from promptloop.domain.golden import load_golden
from promptloop.domain.prompts import load_prompt
from promptloop.quality.judge_files import load_judges
from promptloop.quality.judges import parse_rubric, rubric_messages

from conftest import REPO

PROMPT = REPO / "prompts" / "triage-bot" / "prompt.yaml"
GOLDEN = REPO / "datasets" / "triage-bot" / "golden.jsonl"
BETTER = REPO / "tests" / "data" / "candidates" / "triage-better.yaml"
OUTAGE_JA = "1時間前からAPIがダウンしていて、全社の業務が止まっています。"
BILLING_ERROR = "The invoice page shows an error when our finance team tries to pay the annual renewal."
HOW_TO = "How do I export a notebook to PDF?"


class RecordingPrompt:
    """A stand-in for promptloop's TargetPrompt: renders the real prompt, answers with the simulated model."""

    def __init__(self, path: Any = PROMPT) -> None:
        self.version = load_prompt(path)
        self.calls: list[list[dict[str, str]]] = []

    def render(self, **values: object) -> list[dict[str, str]]:
        return self.version.render(values)

    async def acomplete(self, messages: list[dict[str, str]] | None = None, **_: Any) -> str:
        assert messages is not None
        self.calls.append(messages)
        return triage.answer(messages, 0.2, random.Random(0))


def triaged(ticket: str, prompt_path: Any = PROMPT, tier: str = "pro") -> tuple[dict[str, Any], RecordingPrompt]:
    from apps.triage_bot import answer

    prompt = RecordingPrompt(prompt_path)
    result = asyncio.run(answer(prompt, {"ticket": ticket, "customer_tier": tier, "product": "web"}))
    return json.loads(result["output"]), prompt


@pytest.fixture(autouse=True)
def _app_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))  # the app's code lives in the workspace: apps/triage_bot.py


def test_golden_set_has_english_and_japanese_cases_split_and_labelled() -> None:
    cases = load_golden(GOLDEN)
    assert len(cases) >= 30
    assert Counter(c.lang for c in cases)["ja"] >= 10 and Counter(c.lang for c in cases)["en"] >= 10
    assert {c.split for c in cases} == {"optimize", "holdout"}
    assert sum(c.split == "holdout" for c in cases) > len(cases) / 2  # decisions rest on most of them
    assert sum(c.human_label is not None for c in cases) >= 3
    for case in cases:
        assert set(case.inputs) == {"ticket", "customer_tier", "product"}
        assert language(case.inputs["ticket"]) == case.lang, case.id
        extra = case.expectations.model_extra or {}
        assert {f"category is {extra['category']}", f"priority is {extra['priority']}"} <= set(case.criteria)


def test_prompt_v1_uses_the_ticket_variables_and_names_the_schema() -> None:
    prompt = load_prompt(PROMPT)
    assert prompt.variables == {"ticket", "customer_tier", "product"}
    assert prompt.response_format is not None
    assert prompt.response_format["required"] == ["category", "priority", "reply"]


def test_the_app_makes_two_calls_the_second_given_the_first_classification() -> None:
    answer, prompt = triaged(HOW_TO)
    assert len(prompt.calls) == 2
    first, second = prompt.calls
    assert json.loads(triage.answer(first, 0.0, random.Random(0))) == {"category": "how_to", "priority": "low"}
    assert second[-2]["role"] == "assistant" and json.loads(second[-2]["content"])["category"] == "how_to"
    assert answer["category"] == "how_to"


def test_weak_v1_misroutes_billing_errors_underrates_outages_answers_in_english_and_drops_low_priority() -> None:
    assert triaged(BILLING_ERROR)[0]["category"] == "bug"
    outage = triaged(OUTAGE_JA)[0]
    assert outage["priority"] == "normal" and language(outage["reply"]) == "en"
    assert "priority" not in triaged(HOW_TO)[0]


def test_the_instructions_fix_each_failure() -> None:
    assert triaged(BILLING_ERROR, BETTER)[0]["category"] == "billing"
    outage = triaged(OUTAGE_JA, BETTER)[0]
    assert (outage["category"], outage["priority"]) == ("bug", "high") and language(outage["reply"]) == "ja"
    assert triaged(HOW_TO, BETTER)[0]["priority"] == "low"
    features = triage.read_features(load_prompt(BETTER).instructions)
    assert features == triage.TriageFeatures(True, True, True, True)
    assert triage.read_features(load_prompt(PROMPT).instructions) == triage.TriageFeatures()


def test_the_fixed_prompt_triages_every_golden_and_bank_ticket_as_expected() -> None:
    features = triage.read_features(load_prompt(BETTER).instructions)
    for case in load_golden(GOLDEN):
        extra = case.expectations.model_extra or {}
        assert triage.classify(case.inputs["ticket"], features) == (extra["category"], extra["priority"]), case.id
    for ticket in load_tickets(REPO / "datasets" / "triage-bot" / "traffic"):
        assert triage.classify(ticket.text, features) == (ticket.category, ticket.priority), ticket.text


def test_japanese_is_told_apart_and_split_into_terms() -> None:
    assert language(OUTAGE_JA) == "ja"
    assert language("今日は天気") == "ja" and language("今天天气很好") == "en"  # kanji alone could be Chinese
    assert language("비밀번호를 잊어버렸어요") == "ko" and language("Reset my password") == "en"
    assert "ダウ" in terms(OUTAGE_JA) and "api" in terms(OUTAGE_JA)


URGENT_JA = "緊急の案件として対応しています。"
GOOD = json.dumps({"category": "bug", "priority": "high", "reply": URGENT_JA}, ensure_ascii=False)
WRONG_CATEGORY = json.dumps({"category": "account", "priority": "high", "reply": URGENT_JA}, ensure_ascii=False)
ENGLISH = json.dumps({"category": "bug", "priority": "high", "reply": "We are on it."})
INPUTS = {"ticket": OUTAGE_JA, "customer_tier": "enterprise", "product": "api"}
EXPECTATIONS = {"category": "bug", "priority": "high", "guidelines": ["category is bug", "priority is high"]}


def file_verdict(name: str, answer: str | tuple[str, str], inputs: dict[str, Any] = INPUTS,
                 expectations: dict[str, Any] = EXPECTATIONS) -> Any:
    judge = next(j for j in load_judges(REPO / "judges" / "triage-bot") if j.name == name)
    messages = judge.messages("sorts support tickets", inputs, expectations, answer)
    return judge.verdict(verdict(messages, 0.0, random.Random(0)))


def test_the_simulated_judge_applies_the_rules_its_instructions_state_to_a_mined_case() -> None:
    """A case mined from the logs names no category or priority; judges/triage-bot/triage.yaml says
    "outages are priority high; charges, refunds and invoices are billing", and the judge holds the
    answer to that, as a real judge given those rules would."""
    mined = {"guidelines": ["does what the request asks", "answers in Japanese"], "expected_behavior": "answer"}
    outage = {"question": OUTAGE_JA}
    normal = json.dumps({"category": "bug", "priority": "normal", "reply": URGENT_JA}, ensure_ascii=False)
    assert file_verdict("triage", normal, outage, mined).score == 3
    assert file_verdict("triage", GOOD, outage, mined).score == 5
    # routing.yaml states no rule: without expectations it has nothing to hold the priority to.
    assert file_verdict("routing", normal, outage, mined).label == "correct"
    billing = json.dumps({"category": "bug", "priority": "normal", "reply": "We are on it."})
    assert file_verdict("triage", billing, {"question": BILLING_ERROR}, {}).score == 3
    # The case's own expectations win over the rules; a judge without the rules has nothing to hold it to.
    told = {**mined, "priority": "normal"}
    assert file_verdict("triage", normal, outage, told).score == 5
    assert structured.with_ruled_fields(mined, "grade the triage.", OUTAGE_JA) == mined


def test_the_simulated_judge_answers_each_kind_of_judge_file() -> None:
    assert file_verdict("triage", GOOD).score == 5
    assert file_verdict("triage", WRONG_CATEGORY).score == 3
    assert file_verdict("triage", "Category: bug").score == 1
    assert file_verdict("same_language", GOOD).passed is True
    assert file_verdict("same_language", WRONG_CATEGORY).passed is True  # wrong routing is not its business
    assert file_verdict("same_language", ENGLISH).passed is False
    assert file_verdict("routing", GOOD).label == "correct"
    assert file_verdict("routing", WRONG_CATEGORY).label == "wrong_category"
    assert file_verdict("routing", json.dumps({"category": "bug", "reply": "ok"})).label == "broken_format"
    assert file_verdict("preference", (GOOD, ENGLISH)).label == "A"
    assert file_verdict("preference", (ENGLISH, GOOD)).label == "B"


def test_the_built_in_rubric_grades_a_triage_answer_field_by_field() -> None:
    def score(answer: str) -> int:
        messages = rubric_messages(json.dumps(INPUTS, ensure_ascii=False), answer,
                                   criteria=EXPECTATIONS["guidelines"], inputs=INPUTS)
        return parse_rubric(verdict(messages, 0.0, random.Random(0))).score

    assert score(GOOD) == 5 and score(WRONG_CATEGORY) == 3 and score(ENGLISH) == 3
    assert score(json.dumps({"category": "account", "reply": "We are on it."})) == 1  # three findings


def test_structured_findings_name_what_is_wrong() -> None:
    findings = structured.grade(json.dumps({"category": "bug", "reply": "We will look."}),
                                {"category": "billing", "priority": "normal"}, BILLING_ERROR)
    assert findings.reasons == ["missing key: priority", "wrong category: bug instead of billing"]
    assert structured.grade("not json", {}, "x").quality == 0.0


def test_the_simulated_optimizer_fixes_triage_failures_from_agents_comments() -> None:
    digest = "\n".join([
        "## thumbs_down: payment error (9 failures; kinds: thumbs_down)",
        "<example>\nQuestion: The payment page shows an error.\nAnswer: {}\n"
        "User comment: wrong category: bug instead of billing\n</example>",
        "<example>\nQuestion: Sync is down for everyone.\nAnswer: {}\n"
        "User comment: wrong priority: normal instead of high\n</example>",
        "<example>\nQuestion: How do I print?\nAnswer: {}\nUser comment: missing key: priority\n</example>",
        "<example>\nQuestion: 障害でしょうか。\nAnswer: {}\n"
        "User comment: reply not in the customer's language (English instead of Japanese)\n</example>",
    ])
    current = load_prompt(PROMPT)
    messages = [{"role": "user", "content": f"<current_prompt>\n{current.instructions}\n</current_prompt>\n"
                                            f"<failures>\n{digest}\n</failures>"}]
    revisions = [json.loads(optimizer.revise(messages, random.Random(seed)))["system"] for seed in range(6)]
    fixed = [triage.read_features(system) for system in revisions]
    for name in ("matches_language", "outages_high", "money_is_billing", "json_keys"):
        assert any(getattr(f, name) for f in fixed), name
    assert any(f == triage.TriageFeatures(True, True, True, True) for f in fixed)


def test_the_simulated_judge_grades_a_plain_answer_for_a_judge_file_as_the_rubric_does() -> None:
    from promptloop.quality.judge_files import JudgeFile

    judge = JudgeFile(name="facts", kind="pass_fail",
                      instructions="Does {{ outputs }} state the facts in {{ expectations }}?")
    inputs = {"question": "How long is the refund window?"}
    expectations = {"expected_facts": ["within 14 days"]}

    def passed(answer: str) -> bool | None:
        messages = judge.messages("", inputs, expectations, answer)
        return judge.verdict(verdict(messages, 0.0, random.Random(0))).passed

    assert passed("Refunds are possible within 14 days of the charge.") is True
    assert passed("Please contact our support team.") is False
