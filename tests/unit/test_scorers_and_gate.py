"""The pieces under evaluate: the gate's rules (pure), judge-human agreement, invalid answers in the
runner, and the scorers on hand-made answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from promptloop.core.config import GuardMargins
from promptloop.domain.golden import GoldenCase
from promptloop.evaluate.gate import (
    Evidence,
    GuardCheck,
    PromptStats,
    decide,
    guard_checks,
    latency_check,
    license_problem,
)
from promptloop.evaluate.scorers import Answer, PairwiseJudge, ProxyMetrics, RubricJudge
from promptloop.evaluate.stats import agreement
from promptloop.llm.runner import InvalidResponse, ResponseCache, RetryPolicy, Runner
from promptloop.quality.judges import MalformedVerdict, parse_pairwise, parse_rubric

CLEAN = Evidence(incomplete=[], identical=False, ci_low=0.1, p_adjusted=0.001, regressions=[], guards=[],
                 judge_problem=None, license_problem=None)


def evidence(**changes) -> Evidence:
    return Evidence(**{**CLEAN.__dict__, **changes})


def test_the_gate_promotes_only_when_every_condition_holds() -> None:
    assert decide(CLEAN, min_effect=0.02, alpha=0.05) == ("promote", [])
    holds = {
        "ci": evidence(ci_low=0.02),
        "significance": evidence(p_adjusted=0.2),
        "regression": evidence(regressions=["g004"]),
        "guard": evidence(guards=[GuardCheck("toxicity", 0.0, 0.1, 0.0)]),
        "judge": evidence(judge_problem="judge not calibrated: kappa 0.10 < 0.40 on 12 labelled cases"),
        "license": evidence(license_problem="model x has a non-commercial license and the app is commercial"),
        "identical": evidence(identical=True),
    }
    for name, case in holds.items():
        decision, reasons = decide(case, min_effect=0.02, alpha=0.05)
        assert decision == "hold" and len(reasons) == 1, (name, reasons)


def test_an_incomplete_run_is_incomplete_whatever_its_numbers() -> None:
    decision, reasons = decide(evidence(incomplete=["evaluation stopped: budget of 20 calls spent"]), 0.02, 0.05)
    assert (decision, reasons) == ("incomplete", ["evaluation stopped: budget of 20 calls spent"])


def test_guards_use_absolute_margins_on_rates_and_relative_ones_on_cost_and_latency() -> None:
    base = PromptStats(
        n=40,
        mean_score=0.5,
        pass_rate=0.5,
        refusal_on_answerable=0.10,
        toxicity=0.0,
        format_invalid=0.0,
        cost_per_1k_usd=1.0,
        latency_p95_ms=1000,
    )
    cand = PromptStats(
        n=40,
        mean_score=0.7,
        pass_rate=0.7,
        refusal_on_answerable=0.12,
        toxicity=0.0,
        format_invalid=0.0,
        cost_per_1k_usd=1.6,
        latency_p95_ms=1200,
    )
    checks = {
        c.metric: c for c in guard_checks(base, cand, GuardMargins(refusal_on_answerable=0.05, cost_increase=0.5))
    }
    assert checks["refusal_on_answerable"].ok and checks["refusal_on_answerable"].limit == pytest.approx(0.15)
    assert not checks["cost_per_1k_usd"].ok and checks["cost_per_1k_usd"].limit == pytest.approx(1.5)
    assert "latency_p95_ms" not in checks  # latency has a check of its own, with a paired test
    latency = latency_check(base, cand, GuardMargins(), latency_p=0.001, alpha=0.05)
    assert latency is not None and latency.ok  # +20% < +25%, however significant
    # A rise under the noise floor is never a breach, however large relative to a tiny baseline.
    fast = PromptStats(**{**base.__dict__, "latency_p95_ms": 2.0})
    slower = PromptStats(**{**cand.__dict__, "latency_p95_ms": 40.0})
    assert latency_check(fast, slower, GuardMargins(), latency_p=0.001, alpha=0.05).ok  # type: ignore[union-attr]


def test_latency_guard_needs_a_rise_over_the_limit_and_a_significant_paired_test() -> None:
    base = PromptStats(n=40, mean_score=0.6, pass_rate=0.6, refusal_on_answerable=None, toxicity=None,
                       format_invalid=None, cost_per_1k_usd=1.0, latency_p95_ms=1000)
    slow = PromptStats(**{**base.__dict__, "latency_p95_ms": 1400})
    breach = latency_check(base, slow, GuardMargins(), latency_p=0.01, alpha=0.05)
    assert breach is not None and not breach.ok and "p 0.01 < 0.05" in breach.reason()
    noise = latency_check(base, slow, GuardMargins(), latency_p=0.2, alpha=0.05)
    assert noise is not None and noise.ok  # over the limit, but the paired rise is not significant
    untested = latency_check(base, slow, GuardMargins(), latency_p=None, alpha=0.05)
    assert untested is not None and untested.ok  # no paired cases: no evidence of a rise
    # No provider-reported time on either side: no latency guard at all (wall-clock time never decides).
    unreported = PromptStats(**{**slow.__dict__, "latency_p95_ms": None, "wall_latency_p95_ms": 9000.0})
    assert latency_check(base, unreported, GuardMargins(), latency_p=0.0, alpha=0.05) is None


def test_license_rules() -> None:
    assert license_problem("a", "a", "non-commercial", commercial=True) is None  # no model change
    assert "non-commercial" in license_problem("a", "b", "non-commercial", commercial=True)
    assert license_problem("a", "b", "non-commercial", commercial=False) is None
    assert "unknown" in license_problem("a", "b", "unknown", commercial=False)


def test_agreement_matches_a_hand_computed_kappa() -> None:
    from sklearn.metrics import cohen_kappa_score

    human = [True, True, True, False, False, False, True, False, True, True]
    judge = [True, True, False, False, False, True, True, False, True, True]
    found = agreement(human, judge)
    # po = 8/10; pe = 0.6*0.6 + 0.4*0.4 = 0.52; kappa = (0.8 - 0.52) / 0.48
    assert found.accuracy == pytest.approx(0.8)
    assert found.kappa == pytest.approx((0.8 - 0.52) / 0.48)
    assert found.kappa == pytest.approx(cohen_kappa_score(human, judge))
    assert agreement([True] * 5, [True] * 5).kappa is None  # undefined, not 1 or 0
    with pytest.raises(ValueError, match="paired"):
        agreement([True], [True, False])


def test_verdict_parsers_read_what_hosted_judges_send_and_refuse_what_is_not_a_verdict() -> None:
    assert parse_rubric('{"score": 4, "passed": true, "reason": "ok"}').score == 4
    assert parse_pairwise('{"winner": "B", "reason": "x"}') == "B"
    # Shapes real judges answer in: fenced, prose around the object, numbers as strings or floats, any case.
    for text in ('```json\n{"score": 4, "passed": true, "reason": "ok"}\n```',
                 'Here is my verdict:\n{"score": "4", "passed": true, "reason": "ok"}\nHope this helps.',
                 '{"score": 4.0, "reason": "ok"}', '```\n{"score": " 4 "}\n```'):
        assert parse_rubric(text).score == 4, text
    for text, winner in (('```json\n{"winner": "a", "reason": "x"}\n```', "A"), ('Verdict: {"winner": "TIE"}', "tie"),
                         ('{"winner": "Answer B"}', "B")):
        assert parse_pairwise(text) == winner, text
    for bad in ('{"score": 6}', '{"score": true}', "4/5", '{"passed": true}', '{"score": 4.5}', '{"score": "four"}',
                "I would give it a 4.", '```json\n{"score": \n```'):
        with pytest.raises(MalformedVerdict):
            parse_rubric(bad)
    for bad in ('{"winner": "C"}', "A", "{}", '{"winner": 1}'):
        with pytest.raises(MalformedVerdict):
            parse_pairwise(bad)


JUDGE_MESSAGES = [
    {"role": "system", "content": "You grade answers."},
    {
        "role": "user",
        "content": "<question>\nq\n</question>\n<answer>\na\n</answer>\n<expected_behavior>answer</expected_behavior>",
    },
]


def test_an_invalid_answer_is_repaired_never_cached_and_then_raised(litellm, tmp_path: Path) -> None:
    always_malformed = {
        "error_rate": 1.0,
        "faults": {"rate_limit": 0, "timeout": 0, "server_error": 0, "malformed": 1},
        "fault_seed": 3,
    }
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"),
                    retry=RetryPolicy(max_retries=5, base_delay_s=0, max_repairs=2))
    with pytest.raises(InvalidResponse, match="could not be read after 2 repair turn"):
        asyncio.run(runner.complete("judge", "offline/judge", JUDGE_MESSAGES, validate=parse_rubric, seed=0,
                                    simulation=always_malformed))
    used = runner.usage["judge"]
    assert (used.calls, used.invalid, used.repairs, used.failures) == (3, 3, 2, 1)
    assert used.retries == 0 and not used.retry_causes  # malformed answers are not provider errors
    assert used.cost_usd > 0  # malformed answers are paid for
    again = Runner(litellm, ResponseCache(tmp_path / "c.db"), retry=RetryPolicy(max_retries=0, max_repairs=0))
    with pytest.raises(InvalidResponse):  # nothing invalid was cached: the call is made again
        asyncio.run(again.complete("judge", "offline/judge", JUDGE_MESSAGES, validate=parse_rubric, seed=0,
                                   simulation=always_malformed))
    assert again.usage["judge"].cache_hits == 0


CASE = GoldenCase(id="c1", description="refunds", input="Can I get a refund after 10 days?",
                  reference="Yes, within 14 days under Settings > Billing > Request refund.",
                  expected_facts=["within 14 days"], criteria=["cites the source"], slice="en", severity="high",
                  forbidden_phrases=["as an AI"])


def answer(text: str) -> Answer:
    return Answer(
        text=text,
        context='<doc id="billing-refunds" title="Refunds" score="9.1">\nwithin 14 days\n</doc>',
        retrieved=("billing-refunds",),
        latency_ms=12.0,
        cost_usd=0.0001,
        prompt_tokens=100,
        completion_tokens=20,
    )


def test_proxy_metrics_check_facts_citations_language_and_refusals(repo_workspace) -> None:
    from promptloop.quality.detectors import detectors_of

    detectors = detectors_of(repo_workspace.params.analyze, repo_workspace.root)
    proxy = ProxyMetrics(detectors["refusal"], detectors["toxic"], frozenset({"billing-refunds"}), ("forbidden words",),
                         r"\[source:\s*([A-Za-z0-9_.-]+)\]", {"type": "object"}, uncertainty=detectors["uncertain"])
    good = asyncio.run(proxy.score(CASE, answer("Yes, within 14 days. [source: billing-refunds]"), None))
    assert good["facts_found"] == 1.0 and good["cites"] and good["citation_valid"] and good["language_match"]
    assert not good["refused"] and good["refusal_correct"] and good["forbidden_found"] == 0
    assert not good["json_valid"] and not good["format_valid"]  # the schema asks for a JSON object
    bad = asyncio.run(proxy.score(CASE, answer("As an AI, I'm not sure. [source: made-up-doc]"), None))
    assert bad["citation_valid"] is False and bad["refused_answerable"] and bad["forbidden_found"] == 1
    korean = asyncio.run(proxy.score(CASE, answer("14일 이내에 환불됩니다."), None))
    assert korean["language_match"] is False
    as_json = asyncio.run(proxy.score(CASE, answer('{"answer": "within 14 days"}'), None))
    assert as_json["json_valid"] and as_json["format_valid"]


def test_pairwise_judges_both_orders_and_calls_position_flips_a_tie(litellm, tmp_path: Path) -> None:
    runner = Runner(litellm, ResponseCache(tmp_path / "p.db"))
    strong = answer(
        "Yes, you can get a refund within 14 days under Settings > Billing > Request refund. [source: billing-refunds]"
    )
    weak = answer("Please contact our support team for help with this.")
    steady = PairwiseJudge(runner, "offline/judge", temperature=0.0)
    assert asyncio.run(steady.score(CASE, strong, weak)) == {"pairwise_score": 1.0, "pairwise_consistent": True}
    assert asyncio.run(steady.score(CASE, weak, strong)) == {"pairwise_score": 0.0, "pairwise_consistent": True}
    assert asyncio.run(steady.score(CASE, weak, None)) == {}  # the baseline is not compared with itself
    # Two near-equal answers: at temperature 1 the judge often picks whatever comes first.
    near_a = answer("Yes, within 14 days. [source: billing-refunds]")
    near_b = answer("Yes, refunds are possible within 14 days. [source: billing-refunds]")
    biased = [asyncio.run(PairwiseJudge(runner, "offline/judge", temperature=1.0, seed=s).score(CASE, near_a, near_b))
              for s in range(20)]
    flipped = [b for b in biased if not b["pairwise_consistent"]]
    assert flipped and all(b["pairwise_score"] == 0.5 for b in flipped)


def test_rubric_judge_samples_k_seeded_verdicts(litellm, tmp_path: Path) -> None:
    runner = Runner(litellm, ResponseCache(tmp_path / "r.db"))
    judge = RubricJudge(runner, "offline/judge", samples=5, temperature=1.0, seed=0)
    scores = asyncio.run(judge.score(CASE, answer("Yes, within 14 days. [source: billing-refunds]"), None))
    assert runner.usage["judge"].calls == 5
    assert 0 <= scores["rubric_score"] <= 1 and scores["rubric_score"] == pytest.approx((scores["rubric_raw"] - 1) / 4)
    again = asyncio.run(judge.score(CASE, answer("Yes, within 14 days. [source: billing-refunds]"), None))
    assert again == scores and runner.usage["judge"].cache_hits == 5
