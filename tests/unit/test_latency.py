"""Latency the gate may use: provider-reported times, the sequential probe, and the winner's tie-break."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from promptloop.core.config import LatencyProbe
from promptloop.domain.evaluation import CandidateResult, EvaluationResult, best_candidate, winner_order
from promptloop.domain.golden import GoldenCase
from promptloop.domain.prompts import PromptVersion
from promptloop.evaluate.latency import NoCache, needs_probe, probe_latency, round_order
from promptloop.evaluate.plan import BASELINE, Contender
from promptloop.evaluate.scorers import Answer
from promptloop.evaluate.stats import rise_p_value
from promptloop.evaluate.targets import Request, reported_ms
from promptloop.llm.client import Completion, provider_ms
from promptloop.llm.runner import CallFailed
from promptloop.llm.runner import reported_ms as header_ms


class Response:
    def __init__(self, headers: dict[str, str] | None) -> None:
        self._hidden_params = {"additional_headers": headers} if headers is not None else {}


def test_the_provider_time_comes_from_its_processing_header_or_is_unknown() -> None:
    assert provider_ms(Response({"llm_provider-openai-processing-ms": "187"})) == 187.0
    assert provider_ms(Response({"openai-processing-ms": "12.5"})) == 12.5
    for headers in (None, {}, {"llm_provider-openai-processing-ms": "soon"}, {"openai-processing-ms": "-3"},
                    {"openai-processing-ms": "nan"}):
        assert provider_ms(Response(headers)) is None
    assert header_ms({"x-processing-ms": "40"}) == 40.0 and header_ms({}) is None


def completion(ms: float | None) -> Completion:
    return Completion("m", "text", 1, 1, 0.0, latency_ms=999.0, provider_ms=ms)


def test_an_answer_has_a_reported_time_only_when_every_call_reported_one() -> None:
    assert reported_ms([completion(10), completion(25)]) == 35
    assert reported_ms([completion(10), completion(None)]) is None  # a partial sum would understate it
    assert reported_ms([]) is None
    assert needs_probe([{"provider_ms": 3.0}, {"provider_ms": None}]) and not needs_probe([{"provider_ms": 3.0}])


def test_the_simulated_model_reports_the_time_it_simulates_the_same_for_the_same_request(litellm: Any) -> None:
    from promptloop.llm.client import acomplete

    simulation = {"latency_ms": 20, "latency_jitter": 0.5}

    def ask(question: str) -> Completion:
        return asyncio.run(acomplete(litellm, "offline/support-bot", [{"role": "user", "content": question}], 10,
                                     seed=1, simulation=simulation))

    first, again, other = ask("How do I export?"), ask("How do I export?"), ask("Can I share a notebook?")
    assert first.provider_ms is not None and 10 <= first.provider_ms <= 30
    assert again.provider_ms == first.provider_ms and other.provider_ms != first.provider_ms
    assert asyncio.run(acomplete(litellm, "offline/support-bot", [{"role": "user", "content": "hi"}], 10,
                                 seed=1)).provider_ms == 0.0  # no simulated latency: it reports 0 ms


def test_the_paired_rise_test_is_one_sided() -> None:
    base = [100.0 + i for i in range(12)]
    assert rise_p_value(base, [b + 40 for b in base]) < 0.01
    assert rise_p_value(base, [b - 40 for b in base]) > 0.99
    assert rise_p_value(base, base) == 1.0


def contender(name: str) -> Contender:
    prompt = PromptVersion(app="a", version=1, parent=None, model="offline/support-bot", parameters={},
                           changelog="", system="s", user="{question}")
    return Contender(name, prompt, "offline/support-bot", "test")


@dataclass
class ScriptedTarget:
    """Answers in the time a function of (prompt, call number) says; records who was asked, in order."""

    ms: Any
    asked: list[tuple[str, str]] = field(default_factory=list)
    fail_at: int | None = None

    def close(self) -> None:
        pass

    async def answer(self, runner: Any, request: Request) -> Answer:
        if self.fail_at is not None and len(self.asked) == self.fail_at:
            raise CallFailed("provider down")
        name = request.prompt.system
        self.asked.append((name, request.case.id))
        return Answer("ok", "", (), self.ms(name, len(self.asked)), 0.0, 0, 0)


def probe_contenders() -> list[Contender]:
    found = []
    for name in (BASELINE, "cand"):
        c = contender(name)
        found.append(Contender(name, c.prompt.model_copy(update={"system": name}), c.model, c.source))
    return found


CASES = [GoldenCase.model_validate({"id": f"g{i}", "inputs": {"question": f"q{i}"}}) for i in range(3)]


def test_the_probe_takes_turns_discards_the_warm_up_and_stops_once_the_difference_is_known() -> None:
    target = ScriptedTarget(lambda name, n: 500.0 if n <= 2 else (120.0 if name == "cand" else 100.0))
    settings = LatencyProbe(max_calls=100, warmup_rounds=1, min_rounds=4, ci_half_width_ms=5)
    result = asyncio.run(probe_latency(NoCache(), target, probe_contenders(), CASES, settings, 0))  # type: ignore[arg-type]
    # AB, BA, AB, ...: the first prompt alternates; every round asks both the same case.
    assert [name for name, _ in target.asked[:6]] == [BASELINE, "cand", "cand", BASELINE, BASELINE, "cand"]
    assert [case for _, case in target.asked[:6]] == ["g0", "g0", "g1", "g1", "g2", "g2"]
    # The warm-up round (500 ms, a cold start) is not measured; a constant 20 ms difference is known at once.
    assert result.rounds == {BASELINE: [100.0] * 4, "cand": [120.0] * 4} and result.calls == 10


def test_the_probe_stops_at_its_call_cap_and_on_a_failure() -> None:
    noise = itertools.cycle([0.0, 300.0, 50.0, 700.0])
    target = ScriptedTarget(lambda name, n: 100.0 + next(noise))
    settings = LatencyProbe(max_calls=21, warmup_rounds=0, min_rounds=2, ci_half_width_ms=1)
    capped = asyncio.run(probe_latency(NoCache(), target, probe_contenders(), CASES, settings, 0))  # type: ignore[arg-type]
    assert capped.calls == 20 and capped.measured == 10 and capped.stopped is None
    failing = ScriptedTarget(lambda name, n: 100.0, fail_at=5)
    patient = LatencyProbe(max_calls=21, warmup_rounds=0, min_rounds=5)
    stopped = asyncio.run(probe_latency(NoCache(), failing, probe_contenders(), CASES, patient, 0))  # type: ignore[arg-type]
    assert stopped.stopped == "provider down" and stopped.measured == 2  # the broken round is not kept


def test_round_order_rotates() -> None:
    a, b, c = (contender(n) for n in "abc")
    assert [x.name for x in round_order([a, b, c], 4)] == ["b", "c", "a"]


def candidate(name: str, ci_low: float, diff: float, cost: float, decision: str = "promote") -> CandidateResult:
    return CandidateResult(name=name, source="t", version=2, prompt_hash="h", model="m", decision=decision,
                           ci_low=ci_low, diff=diff, cost_per_1k_usd=cost)


@pytest.mark.parametrize(("candidates", "winner"), [
    ([candidate("b", 0.10, 0.2, 1.0), candidate("a", 0.05, 0.3, 0.1)], "b"),  # higher CI lower bound first
    ([candidate("b", 0.10, 0.3, 1.0), candidate("a", 0.10, 0.2, 0.1)], "b"),  # then the higher mean difference
    ([candidate("b", 0.10, 0.2, 1.0), candidate("a", 0.10, 0.2, 2.0)], "b"),  # then the lower cost
    ([candidate("b", 0.10, 0.2, 1.0), candidate("a", 0.10, 0.2, 1.0)], "a"),  # then the name
    ([candidate("a", 0.30, 0.4, 1.0, "hold"), candidate("b", 0.10, 0.2, 1.0)], "b"),  # only promotable ones
])
def test_the_winner_follows_the_documented_order(candidates: list[CandidateResult], winner: str) -> None:
    baseline = {"name": "baseline", "source": "t", "version": 1, "prompt_hash": "h0", "model": "m"}
    judge = {"model": "j", "samples": 1, "position_consistency": None, "pairwise_judged": 0, "rubric_variance": None,
             "calibration": {"labelled": 0, "judged": 0, "accuracy": None, "kappa": None, "applied": False,
                             "decided_by": "kappa", "problem": None}}
    result = EvaluationResult.model_validate(json.loads(json.dumps({
        "app": "a", "cases": 1, "cases_decided": 1, "cases_optimize": 0, "complete": True, "stopped": None,
        "baseline": baseline, "candidates": [c.model_dump() for c in candidates], "judge": judge,
        "judge_failures": 0, "mde": None})))
    found = best_candidate(result)
    assert found is not None and found.name == winner
    promotable = [c for c in result.candidates if c.decision == "promote"]
    for order in itertools.permutations(promotable):  # the order they were evaluated in does not matter
        assert min(order, key=winner_order).name == winner
