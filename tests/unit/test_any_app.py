"""Prompts with any variables (MLflow's format), golden cases with inputs and expectations, targets
and the generic judge and optimizer instructions: an app promptloop did not design."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.entities.model_registry import PromptVersion as MlflowPromptVersion

from promptloop.core.errors import InputError
from promptloop.domain.golden import GoldenCase, load_golden
from promptloop.domain.prompts import MissingVariable, PromptVersion, dump_prompt, load_prompt
from promptloop.evaluate.run import answer_case
from promptloop.evaluate.targets import PythonTarget, Request, TemplateTarget, target_result
from promptloop.improve.candidates import as_candidate, check_candidate, optimizer_messages
from promptloop.llm.runner import ResponseCache, Runner
from promptloop.quality.judges import pairwise_messages, rubric_messages

REPO = Path(__file__).resolve().parents[2]
TIERED = PromptVersion.model_validate({
    "app": "concierge", "version": 1, "model": "offline/support-bot", "parameters": {"temperature": 0},
    "messages": [
        {"role": "system", "content": "You help {{ customer_tier }} customers of a hotel.\nAnswer briefly."},
        {"role": "user", "content": "What time is breakfast?"},
        {"role": "assistant", "content": "Breakfast is served from 7 to 10."},
        {"role": "user", "content": "{{question}}"},
    ],
})
CASE = GoldenCase.model_validate({
    "id": "c1", "inputs": {"question": "Can I check out late?", "customer_tier": "gold",
                           "history": [{"role": "user", "content": "Hi, I'm in room 12."},
                                       {"role": "assistant", "content": "Hello! How can I help?"}]},
    "expectations": {"expected_response": "Gold members may check out at 2 pm.", "guidelines": ["mentions 2 pm"],
                     "tone": "warm"},
    "lang": "ja-JP",
})


def test_a_messages_prompt_renders_any_variable_as_mlflow_format_does() -> None:
    inputs = {"question": "Is there {{ parking }}? {context}", "customer_tier": "gold"}
    ours = TIERED.render(inputs)
    mlflow = MlflowPromptVersion(name="concierge", version=1, template=TIERED.templates).format(**inputs)
    assert ours == mlflow
    assert ours[-1]["content"] == "Is there {{ parking }}? {context}"  # user text is never interpreted
    assert TIERED.variables == {"question", "customer_tier"} == set(MlflowPromptVersion(
        name="concierge", version=1, template=TIERED.templates).variables)


def test_a_missing_variable_is_named_and_the_first_form_keeps_rendering_as_before() -> None:
    with pytest.raises(MissingVariable, match=r"\{\{ customer_tier \}\}.*inputs hold only \['question'\]"):
        TIERED.render({"question": "Hi"})
    assert TIERED.missing_variables({"question": "Hi"}) == ["customer_tier"]  # what planning checks before a call
    assert TIERED.missing_variables({"question": "Hi", "customer_tier": "gold", "extra": 1}) == []
    legacy = load_prompt(REPO / "prompts" / "support-bot" / "prompt.yaml")
    assert legacy.legacy and legacy.variables == {"question", "context"}
    rendered = legacy.render({"question": "Refund?"})
    assert [m["role"] for m in rendered] == ["system", "user"] and rendered[1]["content"] == "Refund?"


def test_history_reaches_the_model_as_messages_before_the_question() -> None:
    rendered = TIERED.render(CASE.inputs)
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert rendered[3]["content"] == "Hi, I'm in room 12." and rendered[-1]["content"] == "Can I check out late?"
    assert rendered[0]["content"].startswith("You help gold customers")


def test_prompt_files_of_both_forms_load_and_dump_back(tmp_path: Path) -> None:
    path = tmp_path / "prompt.yaml"
    path.write_text(dump_prompt(TIERED), encoding="utf-8")
    assert load_prompt(path) == TIERED and "system:" not in path.read_text(encoding="utf-8")
    path.write_text("app: a\nversion: 1\nmodel: m\nsystem: s\nmessages: [{role: user, content: x}]\n")
    with pytest.raises(InputError, match="either `messages` or `system`"):
        load_prompt(path)
    path.write_text("app: a\nversion: 1\nmodel: m\nmessages: [{role: robot, content: x}]\n")
    with pytest.raises(InputError, match=r"messages\[0\]\.role: Input should be"):
        load_prompt(path)


def test_golden_cases_hold_inputs_and_expectations_and_first_form_files_still_load(tmp_path: Path) -> None:
    assert CASE.input == "Can I check out late?" and CASE.other_inputs == {"customer_tier": "gold"}
    assert CASE.criteria == ["mentions 2 pm"] and CASE.expectations.model_extra == {"tone": "warm"}
    old = load_golden(REPO / "datasets" / "support-bot" / "golden.jsonl")[0]
    assert old.inputs == {"question": old.input} and old.reference.startswith("Yes. Plus and Team")
    assert old.criteria and old.expectations.expected_sources == ["billing-refunds"]
    summariser = GoldenCase.model_validate({"id": "s", "inputs": {"document": "A long text."}, "lang": "de"})
    assert json.loads(summariser.input) == {"document": "A long text."}
    bad = tmp_path / "golden.jsonl"
    bad.write_text(json.dumps({"id": "x", "inputs": {"history": [{"role": "bot", "content": "hi"}]}}) + "\n")
    with pytest.raises(InputError, match=r"line 1\.inputs"):
        load_golden(bad)
    bad.write_text(json.dumps({"id": "x", "inputs": {"question": "q"}, "lang": "Japanese!"}) + "\n")
    with pytest.raises(InputError, match=r"line 1\.lang"):
        load_golden(bad)


def test_judges_see_the_conversation_and_the_other_inputs_as_data_and_name_no_domain() -> None:
    rubric = rubric_messages(CASE.input, "Yes, until 2 pm.", inputs=CASE.other_inputs, history=CASE.history,
                             description="a hotel concierge")
    pairwise = pairwise_messages(CASE.input, "a", "b", description="")
    for messages in (rubric, pairwise):
        assert "customer" not in messages[0]["content"].lower()
    assert "an AI assistant (a hotel concierge)" in rubric[0]["content"]
    assert '<inputs>\n{"customer_tier": "gold"}\n</inputs>' in rubric[1]["content"]
    assert "<history>\nuser: Hi, I'm in room 12.\nassistant: Hello! How can I help?\n</history>" in rubric[1]["content"]
    # A single question adds no blocks: the judge prompts of first-form cases are what they were.
    assert "<inputs>" not in pairwise[1]["content"] and "<history>" not in pairwise[1]["content"]


def test_the_optimizer_keeps_every_variable_of_the_prompt() -> None:
    messages = optimizer_messages(TIERED, "## late checkout (3 failures)", "a hotel concierge")
    assert "keep the {{ customer_tier }} placeholder" in messages[0]["content"]
    assert "hotel concierge" in messages[0]["content"] and "customer-support" not in messages[0]["content"]
    dropped = as_candidate(TIERED, {"system": "You help customers.", "changelog": "shorter"})
    assert check_candidate(TIERED, dropped, [], set()) == "drops the {{ customer_tier }} placeholder"
    kept = as_candidate(TIERED, {"system": "You help {{ customer_tier }} guests. Offer late checkout.",
                                 "changelog": "late checkout"})
    assert check_candidate(TIERED, kept, [], set()) is None
    assert kept.version == 2 and kept.parent == 1 and kept.messages is not None
    assert kept.templates[1:] == TIERED.templates[1:]  # few-shot turns and the user template untouched
    invented = as_candidate(TIERED, {"system": "You help {{ customer_tier }} guests in {{ city }}.", "changelog": ""})
    assert check_candidate(TIERED, invented, [], set()) == "adds the placeholder(s) {{ city }}: no case has them"


def test_a_target_result_is_text_a_mapping_or_an_object() -> None:
    class Result:
        output = "Done."
        context = "doc 1"
        tool_calls = [{"name": "lookup"}]

    assert target_result("Hi", "t") == ("Hi", "", (), {})
    assert target_result({"output": "Hi", "context": "c", "score": 3}, "t") == ("Hi", "c", (), {"score": 3})
    assert target_result(Result(), "t") == ("Done.", "doc 1", (), {"tool_calls": [{"name": "lookup"}]})
    with pytest.raises(TypeError, match="without an `output` string"):
        target_result({"answer": 3}, "mod:fn")


def _runner(litellm: Any) -> Runner:
    return Runner(litellm, ResponseCache(Path(":memory:")), timeout_s=10)


def test_python_targets_sync_and_async_call_models_through_the_runner(litellm: Any) -> None:
    def sync_app(prompt: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        draft = prompt.complete()
        second = prompt.complete([{"role": "user", "content": f"Shorten: {draft}"}], temperature=0)
        return {"output": second, "context": f"tier={inputs['customer_tier']}"}

    async def async_app(prompt: Any, inputs: dict[str, Any]) -> str:
        return await prompt.acomplete(prompt.render(question=inputs["question"].upper()))

    runner = _runner(litellm)
    request = Request("app:baseline", TIERED, TIERED.model, CASE, seed=0)

    async def both() -> tuple[Any, Any, Any]:
        first = await PythonTarget("python:t:sync_app", sync_app).answer(runner, request)
        again = await PythonTarget("python:t:sync_app", sync_app).answer(runner, request)
        other = await PythonTarget("python:t:async_app", async_app).answer(runner, request)
        return first, again, other

    first, again, other = asyncio.run(both())
    usage = runner.usage["app:baseline"]
    assert usage.calls == 3 and usage.cache_hits == 2  # two calls, then the same two from the cache, then one
    assert first.text == again.text and first.context == "tier=gold" and first.prompt_tokens > 0
    assert other.text and other.cost_usd > 0
    assert (first.requests, other.requests) == (2, 1)  # the model calls that made each answer
    # An answer an earlier pass made is reused, its two requests counted as two cache hits (paid for once).
    plan = SimpleNamespace(settings=SimpleNamespace(seed=0), baseline_answers={CASE.id: first})
    baseline = SimpleNamespace(name="baseline", prompt=TIERED, model=TIERED.model)
    later = _runner(litellm)
    assert asyncio.run(answer_case(later, plan, None, baseline, CASE)) is first  # type: ignore[arg-type]
    assert (later.usage["app:baseline"].calls, later.usage["app:baseline"].cache_hits) == (0, 2)


def test_the_template_target_answers_messages_prompts_with_retrieval_left_out(litellm: Any) -> None:
    runner = _runner(litellm)
    answer = asyncio.run(TemplateTarget().answer(runner, Request("app:x", TIERED, TIERED.model, CASE, seed=0)))
    assert answer.text and answer.context == "" and runner.usage["app:x"].calls == 1


def test_a_mined_failure_becomes_a_case_with_the_logged_inputs_and_conversation() -> None:
    import pandas as pd

    from promptloop.core.config import ImproveSettings
    from promptloop.domain.results import ClusterResult
    from promptloop.improve.growth import draft_case

    logged = {"question": "raw question", "customer_tier": "gold",
              "history": [{"role": "user", "content": "I booked room 12."}]}
    row = pd.Series({"id": "log-7", "input": "Can I check out late?", "output": "No.", "kinds": "thumbs_down",
                     "feedback": -1, "feedback_comment": "wrong", "inputs": json.dumps(logged)})
    cluster = ClusterResult(id=0, label="late checkout", kinds=["thumbs_down"], size=1, impact=1.0,
                            thumbs_down_share=1.0, mean_severity=2.0, example_ids=["log-7"])
    case = draft_case(row, cluster, "optimize", None, ImproveSettings(), is_injection=False)
    assert case.inputs == {"question": "Can I check out late?", "customer_tier": "gold",
                           "history": [{"role": "user", "content": "I booked room 12."}]}
    assert case.history and case.human_label is not None and case.human_label.rating == "down"
    assert case.criteria == ["does what the request asks"]  # no knowledge base: no "cites the source"
    unlogged = draft_case(row.drop("inputs"), cluster, "optimize", None, ImproveSettings(), is_injection=False)
    assert unlogged.inputs == {"question": "Can I check out late?"}


def test_a_thumbs_up_on_a_row_mined_only_for_a_low_judge_score_does_not_calibrate_the_judge() -> None:
    """The row was chosen because a judge scored it low: the person's 👍 disagrees with a judge by
    construction, so it is not a label the judge's agreement is measured on."""
    import pandas as pd

    from promptloop.core.config import ImproveSettings
    from promptloop.domain.results import ClusterResult
    from promptloop.improve.growth import draft_case

    cluster = ClusterResult(id=0, label="api tokens", kinds=["low_judge_score"], size=1, impact=1.0,
                            thumbs_down_share=0.0, mean_severity=2.0, example_ids=["log-8"])
    row = pd.Series({"id": "log-8", "input": "Where is my API token?", "output": "Under Settings.",
                     "kinds": "low_judge_score", "feedback": 1, "feedback_comment": "helpful"})
    assert draft_case(row, cluster, "optimize", None, ImproveSettings(), is_injection=False).human_label is None
    flagged = row.copy()
    flagged["kinds"] = "low_judge_score,refusal"  # also mined for what a detector found: the label stays
    label = draft_case(flagged, cluster, "optimize", None, ImproveSettings(), is_injection=False).human_label
    assert label is not None and label.rating == "up" and label.comment == "helpful"
