"""Replies of reasoning models, which put their thinking before the answer in the content."""

from __future__ import annotations

import asyncio

from promptloop.core.text import without_reasoning
from promptloop.improve.candidates import parse_revision
from promptloop.llm.client import acomplete
from promptloop.quality.judges import parse_rubric

DRAFT = '{"score": 1, "passed": false, "reason": "first impression"}'
THINKING = f"<think>\nLet me draft a verdict: {DRAFT}\nOn reflection the answer is grounded.\n</think>\n"


def test_a_verdict_drafted_while_thinking_is_not_the_verdict() -> None:
    verdict = parse_rubric(THINKING + '```json\n{"score": 4, "passed": true, "reason": "grounded"}\n```')
    assert (verdict.score, verdict.passed, verdict.reason) == (4, True, "grounded")


def test_an_optimizer_revision_after_its_thinking_is_read() -> None:
    revised = parse_revision(THINKING.replace(DRAFT, '{"system": "a draft"}') +
                             '{"system": "You answer from the documents.", "rationale": "grounding"}')
    assert revised["system"] == "You answer from the documents."


def test_only_a_leading_closed_block_is_thinking() -> None:
    assert without_reasoning("<THINKING>x</THINKING>\n\nThe answer.") == "The answer."
    about_tags = "Use <think> and </think> tags to mark reasoning."
    assert without_reasoning(about_tags) == about_tags
    cut = "<think>still thinking when max_tokens ran out"
    assert without_reasoning(cut) == cut


def test_an_answer_is_what_the_user_is_shown(litellm) -> None:
    # litellm's mock_response keeps the block in the text (its OpenAI response parsing would move a block that
    # starts the reply; not one after a newline, nor a <reasoning> block)
    for thinking in (THINKING, "\n" + THINKING, "<reasoning>the user greets me</reasoning>"):
        reply = asyncio.run(acomplete(litellm, "openai/any-model", [{"role": "user", "content": "Hi"}], 5,
                                      mock_response=thinking + "Hello! How can I help?"))
        assert reply.text == "Hello! How can I help?"
