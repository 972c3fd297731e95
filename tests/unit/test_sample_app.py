"""The sample app's data: knowledge base, golden set, prompt v1, question bank."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from promptloop.core.errors import InputError
from promptloop.demo.simulated.traffic import load_bank
from promptloop.domain.golden import load_golden
from promptloop.domain.kb import Retriever, load_kb, parse_document
from promptloop.domain.prompts import load_prompt

from conftest import REPO

APP_DIR = REPO / "datasets" / "support-bot"


def test_knowledge_base_has_30_plus_documents_in_english_and_korean() -> None:
    docs = load_kb(APP_DIR / "kb")
    langs = Counter(d.lang for d in docs)
    assert len(docs) >= 30
    assert langs["en"] >= 20 and langs["ko"] >= 8


def test_golden_set_has_the_hard_cases() -> None:
    cases = load_golden(APP_DIR / "golden.jsonl")
    slices = Counter(c.slice for c in cases)
    assert len(cases) >= 40
    assert slices["ko"] >= 8 and slices["unanswerable"] >= 4 and slices["injection"] >= 4 and slices["pii"] >= 3
    assert {c.expected_behavior for c in cases} == {"answer", "abstain", "refuse_injection"}
    assert all(c.severity in {"high", "critical"} for c in cases if c.slice in {"injection", "pii"})


def test_expected_facts_are_in_the_cited_documents() -> None:
    bodies = {d.id: d.body for d in load_kb(APP_DIR / "kb")}
    for case in load_golden(APP_DIR / "golden.jsonl"):
        assert all(s in bodies for s in case.expected_sources), case.id
        for fact in case.expected_facts:
            assert any(fact in bodies[s] for s in case.expected_sources), (case.id, fact)


def test_retrieval_finds_the_right_document_for_answerable_golden_cases() -> None:
    retriever = Retriever(load_kb(APP_DIR / "kb"))
    answerable = [c for c in load_golden(APP_DIR / "golden.jsonl") if c.expected_sources]
    found = sum(1 for c in answerable if retriever.search(c.input, 3)[0].doc.id in c.expected_sources)
    assert found / len(answerable) >= 0.9


def test_prompt_v1_is_the_weak_first_version() -> None:
    prompt = load_prompt(REPO / "prompts" / "support-bot" / "prompt.yaml")
    assert (prompt.app, prompt.version, prompt.parent) == ("support-bot", 1, None)
    assert "{context}" in prompt.system
    assert "cite" not in prompt.system.lower() and "language" not in prompt.system.lower()
    assert len(prompt.content_hash) == 64


def test_prompt_placeholders_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "prompt.yaml"
    bad.write_text("app: a\nversion: 1\nmodel: m\nsystem: 'Hi {name}'\n")
    with pytest.raises(InputError, match=r"system: .*unknown placeholder"):
        load_prompt(bad)


def test_rendering_substitutes_user_text_without_interpreting_it() -> None:
    prompt = load_prompt(REPO / "prompts" / "support-bot" / "prompt.yaml")
    messages = prompt.render({"question": "What is {context}? {{x}}", "context": "<doc>"})
    assert messages[1]["content"] == "What is {context}? {{x}}"
    assert "<doc>" in messages[0]["content"]


def test_golden_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "golden.jsonl"
    good = (APP_DIR / "golden.jsonl").read_text(encoding="utf-8").splitlines()[0]
    path.write_text(good + "\n" + good.replace('"severity": "', '"severity": "x') + "\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_golden(path)
    assert f"{path}: line 2.severity:" in str(caught.value)


def test_kb_document_id_must_match_file_name(tmp_path: Path) -> None:
    doc = tmp_path / "refunds.md"
    doc.write_text("---\nid: other\ntitle: T\nlang: en\ntopic: billing\n---\nBody.\n")
    with pytest.raises(InputError, match="does not match the file name"):
        parse_document(doc)


def test_question_bank_covers_topics_korean_unanswerable_and_injection() -> None:
    bank, pii = load_bank(APP_DIR / "traffic")
    kinds = Counter((q.kind, q.lang) for q in bank)
    assert kinds[("answerable", "en")] >= 50 and kinds[("answerable", "ko")] >= 20
    assert kinds[("unanswerable", "ko")] and kinds[("injection", "ko")]
    assert pii["emails"] and pii["phones"] and pii["rrns"]
    docs = {d.id for d in load_kb(APP_DIR / "kb")}
    assert {q.doc_id for q in bank if q.kind == "answerable"} <= docs
