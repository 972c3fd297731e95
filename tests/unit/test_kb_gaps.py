"""Knowledge-base gaps (analyze) and the articles drafted for them (improve): weak retrieval, key-term
coverage, logged retrieval, grouping by users, drafts that invent nothing and are never retrieved."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from promptloop.analyze.gaps import coverage, find_gaps, gap_rows, is_weak, retrieval_of
from promptloop.core.config import ImproveSettings, KbDraftSettings, KbGapSettings
from promptloop.core.errors import InputError
from promptloop.core.text import sentences
from promptloop.demo.simulated.optimizer import DRAFT_LABELS
from promptloop.domain.golden import GoldenCase
from promptloop.domain.kb import PLACEHOLDER, Document, Retriever, document_from_text, load_kb, render_document
from promptloop.domain.results import KbGapResult
from promptloop.improve.kb_drafts import (
    article_validator,
    cases_to_relabel,
    draft_articles,
    unsupported_numbers,
)
from promptloop.llm.runner import ResponseCache, Runner

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_KB = ROOT / "datasets/support-bot/kb"
SUPPORT_HOURS = "Do you offer phone support, and what are your support hours?"  # an unanswerable question of the demo
REFUND = "How do I request a refund for my Plus subscription?"  # billing-refunds answers it
SETTINGS = KbGapSettings(min_users=1)


@pytest.fixture(scope="module")
def retriever() -> Retriever:
    return Retriever(load_kb(SAMPLE_KB))


def logs(rows: list[dict[str, object]]) -> pd.DataFrame:
    """Flagged log rows as analyze has them (detector flags set, the rest defaulted)."""
    base = {"output": "I'm not sure.", "feedback": np.nan, "uncertain": False, "refusal": False, "injection": False,
            "metadata": None, "judge_score": np.nan}
    frame = pd.DataFrame([{**base, "id": f"r{i}", "user_hash": f"u{i}", **r} for i, r in enumerate(rows)])
    return frame


def test_an_abstention_is_a_gap_only_where_retrieval_was_weak(retriever: Retriever) -> None:
    frame = logs([{"input": SUPPORT_HOURS, "uncertain": True}, {"input": REFUND, "uncertain": True}])
    found = gap_rows(frame, retriever, SETTINGS)
    # The refund question's document was found: abstaining on it is the prompt's failure, not the KB's.
    assert found["input"].tolist() == [SUPPORT_HOURS]
    assert found["kinds"].tolist() == [["abstained"]]
    assert found["best_score"].iloc[0] < SETTINGS.min_score


def test_only_abstentions_refusals_and_bad_ratings_count_and_never_an_injection(retriever: Retriever) -> None:
    frame = logs([
        {"input": SUPPORT_HOURS, "output": "Here is a long answer."},  # answered, nobody complained
        {"input": SUPPORT_HOURS, "refusal": True, "injection": True},  # refusing an injection attempt is right
        {"input": SUPPORT_HOURS, "refusal": True},
        {"input": SUPPORT_HOURS, "output": "We are open 24/7.", "feedback": -1},
        {"input": SUPPORT_HOURS, "output": "See the pricing page.", "judge_score": 1.0},
        {"input": SUPPORT_HOURS, "output": None, "error": "Timeout"},
    ])
    assert gap_rows(frame, retriever, SETTINGS)["kinds"].tolist() == [["refused"], ["thumbs_down"],
                                                                     ["low_judge_score"]]


def test_key_term_coverage_flags_a_document_that_scores_but_does_not_cover_the_question() -> None:
    doc = "Nimbus Plus costs $8 per month. Team costs $12 per user per month."
    assert coverage("How much does Nimbus Plus cost per year?", [doc]) == pytest.approx(3 / 4)  # "cost" in "costs"
    assert coverage("Is there a lifetime licence or perpetual deal?", [doc]) == 0.0
    # Logged scores on the app's own scale are not compared with BM25's threshold (min_logged_score unset) ...
    weak = retrieval_of("Is there a lifetime licence or perpetual deal?",
                        json.dumps({"retrieved": [{"id": "plans", "score": 0.91, "text": doc}]}), None, {}, 3)
    assert weak is not None and weak.source == "logged" and weak.best_score == 0.91
    assert is_weak(weak, KbGapSettings())  # ... so it is the missing key terms that say weak
    strong = retrieval_of("How much does Nimbus Plus cost per month?",
                          json.dumps({"retrieved": [{"id": "plans", "score": 0.91, "text": doc}]}), None, {}, 3)
    assert strong is not None and not is_weak(strong, KbGapSettings())
    assert is_weak(strong, KbGapSettings(min_logged_score=0.95))  # with a threshold for logged scores, it is weak


def test_a_python_or_http_app_s_gaps_come_from_its_logged_retrieval() -> None:
    """No knowledge base in params.yaml: the rows' metadata.retrieved (ids, scores, texts) is all there is."""
    logged = json.dumps({"retrieved": [{"id": "pricing", "score": 0.2, "text": "Plans and prices of Nimbus."}]})
    frame = logs([{"input": "Do you run a bug bounty program?", "uncertain": True, "metadata": logged,
                   "user_hash": f"u{i}"} for i in range(3)]
                 + [{"input": "Do you run a bug bounty?", "uncertain": True, "metadata": None}])  # nothing logged
    [gap] = find_gaps(frame, None, KbGapSettings(min_logged_score=0.5, min_users=2))
    assert (gap.source, gap.best_document, gap.best_score, gap.users, gap.questions) == ("logged", "pricing", 0.2, 3, 3)


def test_a_logged_retrieval_that_found_nothing_is_weak_and_an_unknown_injection_flag_is_no_injection() -> None:
    """An app that logs `retrieved: []` found no document for the question: with no knowledge base to search
    again, that alone says the documents lack the answer."""
    frame = logs([{"input": "Do you sell gift cards?", "uncertain": True, "metadata": json.dumps({"retrieved": []}),
                   "injection": np.nan if i == 0 else False, "user_hash": f"u{i}"} for i in range(2)])
    [gap] = find_gaps(frame, None, KbGapSettings(min_users=2))
    assert (gap.source, gap.users, gap.key_term_coverage, gap.best_document) == ("logged", 2, 0.0, None)


def test_paraphrases_share_a_gap_counted_by_distinct_users(retriever: Retriever) -> None:
    asked = [("Do you offer phone support, and what are your support hours?", "a"),
             ("Do you offer phone support, and what are your support hours?", "a"),  # the same user twice
             ("What are your phone support hours?", "b"),
             ("Is there phone support on weekends?", "c"),
             ("Can I buy a Nimbus Plus gift card for a friend?", "d")]
    frame = logs([{"input": q, "uncertain": True, "user_hash": u} for q, u in asked])
    gaps = find_gaps(frame, retriever, KbGapSettings(min_users=1))
    support = gaps[0]
    assert (support.users, support.questions) == (3, 4)
    assert support.examples[0] == SUPPORT_HOURS  # most asked first
    assert "support" in support.topic.split() and "phone" in support.topic.split()
    assert support.best_document is not None and support.best_score is not None and support.best_score < 7
    assert [g.examples for g in gaps[1:]] == [["Can I buy a Nimbus Plus gift card for a friend?"]]
    # One user is not a gap worth a person's time at min_users 2.
    assert [g.topic for g in find_gaps(frame, retriever, KbGapSettings(min_users=2))] == [support.topic]
    assert find_gaps(frame, retriever, KbGapSettings(enabled=False)) == []


def test_a_draft_is_read_but_never_retrieved_and_placeholders_keep_it_a_draft(tmp_path: Path) -> None:
    for source in SAMPLE_KB.glob("billing-*.md"):
        (tmp_path / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    draft = Document(id="gap-support-hours", title="Support hours", lang="en", topic="support", draft=True,
                     body="Phone support is open [[TODO: confirm the opening hours]].")
    (tmp_path / "gap-support-hours.md").write_text(render_document(draft), encoding="utf-8")
    assert document_from_text(render_document(draft), tmp_path / "gap-support-hours.md") == draft
    assert "gap-support-hours" not in {d.id for d in load_kb(tmp_path)}
    assert all(h.doc.id != draft.id for h in Retriever(load_kb(tmp_path)).search("phone support hours", 5))
    # A person removed the marker but left a placeholder: the app would quote it, so the KB does not load.
    live = draft.model_copy(update={"draft": False})
    (tmp_path / "gap-support-hours.md").write_text(render_document(live), encoding="utf-8")
    with pytest.raises(InputError, match="placeholder"):
        load_kb(tmp_path)
    filled = live.model_copy(update={"body": "Phone support is open on weekdays."})
    (tmp_path / "gap-support-hours.md").write_text(render_document(filled), encoding="utf-8")
    assert Retriever(load_kb(tmp_path)).search("phone support hours", 1)[0].doc.id == draft.id


def test_a_reply_stating_a_number_no_source_gives_is_sent_back() -> None:
    sources = ["What are your support hours?", "Refunds take 5 to 10 business days."]
    assert unsupported_numbers("Refunds take 5 to 10 days. Call 1-800-555 [[TODO: confirm 24/7]]", sources) == [
        "1", "555", "800"]
    check = article_validator(sources)
    with pytest.raises(ValueError, match="24/7|24"):
        check(json.dumps({"title": "Support", "body": "We answer 24/7."}))
    assert check(json.dumps({"title": "Support", "body": "We answer [[TODO: confirm hours]]."}))["title"] == "Support"


def test_the_numbers_of_an_ordered_list_are_not_facts() -> None:
    sources = ["How do I reach support?", "Open Settings > Help to write to us."]
    steps = "1. Open Settings > Help.\n2) Write to us.\n  3. Wait [[TODO: confirm how long]].\nCall 12 times."
    assert unsupported_numbers(steps, sources) == ["12"]  # a number inside a sentence still counts
    assert article_validator(sources)(json.dumps({"title": "Reaching support", "body": steps.rsplit("\n", 1)[0]}))


def gap(questions: list[str], users: int = 3) -> KbGapResult:
    return KbGapResult(id=1, topic="support phone hours", questions=users, users=users, kinds={"abstained": users},
                       examples=questions[:3], asked=questions, best_document="notes-trash-restore", best_score=6.3,
                       key_term_coverage=0.5, source="kb")


def simulated_drafts(litellm: object, tmp_path: Path, retriever: Retriever, gaps: list[KbGapResult],
                     golden: list[GoldenCase] | None = None, **options: int) -> object:
    runner = Runner(litellm, ResponseCache(tmp_path / "responses.db"))
    settings = ImproveSettings(kb_drafts=KbDraftSettings(**options))
    try:
        return asyncio.run(draft_articles(runner, "offline/optimizer", gaps, retriever, golden or [], settings,
                                          "datasets/support-bot/kb", str))
    finally:
        runner.cache.close()


def test_the_simulated_draft_invents_nothing(litellm, tmp_path: Path, retriever: Retriever) -> None:
    """Every line of the body is a question of the gap, a sentence of a knowledge-base document, a fixed label
    or a [[TODO: ...]] placeholder; the file is marked as a draft."""
    questions = [SUPPORT_HOURS, "고객센터 전화번호가 뭐예요?", "Is there phone support on weekends?"]
    drafted = simulated_drafts(litellm, tmp_path, retriever, [gap(questions)])
    [draft] = drafted.drafts  # type: ignore[attr-defined]
    doc = document_from_text(draft.text, Path(f"{draft.id}.md"))
    assert doc.draft and draft.path == f"datasets/support-bot/kb/{draft.id}.md" and draft.placeholders >= 1
    known = {s for d in retriever.docs for s in sentences(d.body)}
    labels = {label for by_lang in DRAFT_LABELS.values() for label in by_lang.values()}
    lines = [line.strip() for line in doc.body.splitlines() if line.strip()]
    from_kb = []
    for line in lines:
        text = re.sub(r" \[source: [a-z0-9-]+\]$", "", line.removeprefix("- "))
        assert text in questions or text in known or text in labels or PLACEHOLDER.fullmatch(text), line
        if text in known:
            from_kb.append(text)
    assert from_kb, "the draft quotes nothing of the nearest documents"
    assert doc.title in questions


def test_cases_that_would_change_are_the_abstain_cases_the_article_would_answer(retriever: Retriever) -> None:
    draft = Document(id="gap-support", title="Phone support and support hours", lang="en", topic="support",
                     draft=True, body=f"{SUPPORT_HOURS}\n[[TODO: confirm the support hours and phone number]]")
    cases = [GoldenCase(id="m-hours", inputs={"question": "What are your phone support hours?"},
                        expectations={"expected_behavior": "abstain"}),
             GoldenCase(id="m-gift", inputs={"question": "Can I buy a Nimbus Plus gift card for a friend?"},
                        expectations={"expected_behavior": "abstain"}),
             GoldenCase(id="g-hours", inputs={"question": "What are your phone support hours?"},
                        expectations={"expected_behavior": "answer"})]  # already 'answer': nothing to re-label
    assert cases_to_relabel(draft, retriever.docs, cases, 7.0) == ["m-hours"]


def test_only_gaps_enough_users_hit_get_a_draft_at_most_max_drafts(litellm, tmp_path: Path,
                                                                   retriever: Retriever) -> None:
    gaps = [gap([SUPPORT_HOURS], users=5), gap(["Can I buy a Nimbus Plus gift card for a friend?"], users=4),
            gap(["What year was Nimbus Labs founded?"], users=1)]
    drafted = simulated_drafts(litellm, tmp_path, retriever, gaps, max_drafts=5, min_users=2)
    assert [d.examples for d in drafted.drafts] == [[SUPPORT_HOURS],  # type: ignore[attr-defined]
                                                    ["Can I buy a Nimbus Plus gift card for a friend?"]]
    ids = [d.id for d in drafted.drafts]  # type: ignore[attr-defined]
    assert len(set(ids)) == 2 and not {d.id for d in retriever.docs} & set(ids)
    assert simulated_drafts(litellm, tmp_path, retriever, gaps, max_drafts=0).drafts == []  # type: ignore[attr-defined]


def test_once_a_person_fills_and_merges_the_draft_the_gap_s_question_gets_answered(litellm, tmp_path: Path,
                                                                                   retriever: Retriever) -> None:
    """The loop's promise for a gap: the draft (placeholders filled by a person, marker removed) is retrieved,
    and the app answers the gap's question from it, where before it could only answer from the wrong document."""
    from promptloop.demo.simulated.judge import assess
    from promptloop.domain.app import App
    from promptloop.domain.prompts import load_prompt

    question = "Will there be a Black Friday sale this year?"  # the demo asks it; the sample KB has no answer
    fact = "Nimbus Labs does not run a Black Friday sale."  # what the person writes: a test fixture, not a claim
    [draft] = simulated_drafts(litellm, tmp_path, retriever, [gap([question])]).drafts  # type: ignore[attr-defined]
    kb = tmp_path / "kb"
    kb.mkdir()
    for source in SAMPLE_KB.glob("*.md"):
        (kb / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    (kb / f"{draft.id}.md").write_text(draft.text, encoding="utf-8")
    prompt = load_prompt(ROOT / "prompts/support-bot/prompt.yaml")
    case = f"<question>\n{question}\n</question>\n<expected_behavior>answer</expected_behavior>\n" \
           f"<expected_facts>\n{fact}\n</expected_facts>"

    def ask() -> tuple[str, list[str], float]:
        app = App("support-bot", prompt, "offline/support-bot", Retriever(load_kb(kb)), 3)
        completion, retrieved = asyncio.run(app.ask(litellm, question, 10.0, temperature=0.0, seed=1))
        return completion.text, retrieved, assess(completion.text, case).quality

    before, retrieved_before, quality_before = ask()  # the draft is in the folder, but not retrieved
    assert draft.id not in retrieved_before and fact not in before
    doc = document_from_text(draft.text, kb / f"{draft.id}.md")
    filled = doc.model_copy(update={"draft": False, "body": PLACEHOLDER.sub(fact, doc.body)})
    (kb / f"{draft.id}.md").write_text(render_document(filled), encoding="utf-8")
    after, retrieved_after, quality_after = ask()
    assert retrieved_after[0] == draft.id and fact in after
    assert quality_after > quality_before


def test_a_draft_id_is_a_valid_unused_document_id_readable_where_the_topic_is_english() -> None:
    from promptloop.improve.kb_drafts import draft_id

    def of(topic: str, taken: set[str] = frozenset()) -> str:  # type: ignore[assignment]
        return draft_id(gap([topic]).model_copy(update={"topic": topic}), set(taken))

    assert of("run bug bounty program") == "gap-run-bug-bounty-program"
    assert of("run bug bounty program", {"gap-run-bug-bounty-program"}) == "gap-run-bug-bounty-program-2"
    korean = of("plus 플랜 연간 결제하면")  # mostly Korean: a hash, not `gap-plus`
    assert re.fullmatch(r"gap-[0-9a-f]{8}", korean) and korean == of("plus 플랜 연간 결제하면")
    Document(id=of("Wi-Fi sync / 2FA!"), title="t", lang="en", topic="t", body="b")  # the id pattern holds


def test_deploy_takes_only_files_that_read_back_as_drafts_into_the_app_s_knowledge_base(repo_workspace) -> None:
    from promptloop.deploy.stage import draft_files
    from promptloop.domain.results import ImproveOutcome, KbDraftResult, KbDraftsResult

    def outcome(text: str, draft_id: str = "gap-phone-support") -> ImproveOutcome:
        draft = KbDraftResult(id=draft_id, path="elsewhere/x.md", gap=1, topic="phone support", users=3,
                              questions=3, examples=[], placeholders=1, text=text, cases_to_relabel=[])
        return ImproveOutcome.model_construct(app="support-bot", kb_drafts=KbDraftsResult(drafts=[draft]))

    doc = Document(id="gap-phone-support", title="Phone support", lang="en", topic="support", draft=True,
                   body="[[TODO: confirm the support hours]]")
    # The file goes where the app's KB is, whatever path the outcome file claims.
    assert draft_files(repo_workspace, outcome(render_document(doc))) == {
        "datasets/support-bot/kb/gap-phone-support.md": render_document(doc).encode()}
    with pytest.raises(InputError, match="draft: true"):  # an edited outcome cannot publish a live article
        draft_files(repo_workspace, outcome(render_document(doc.model_copy(update={
            "draft": False, "body": "Phone support is open 24/7."}))))
    with pytest.raises(InputError, match="does not match the file name"):
        draft_files(repo_workspace, outcome(render_document(doc), draft_id="billing-refunds"))
