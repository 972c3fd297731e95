"""Issue 18: the gate's power (MDE with the margin, from paired differences), re-judging high-severity
flips before they hold, and judge sample seeds that do not overlap between neighbouring run seeds."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from promptloop.core.config import EvaluateSettings
from promptloop.domain.evaluation import CandidateResult
from promptloop.domain.golden import GoldenCase
from promptloop.evaluate.report import candidate_section
from promptloop.evaluate.scorers import RubricJudge, sample_seed
from promptloop.evaluate.stats import (
    cases_for_mde,
    compare_paired,
    gate_mde,
    higher_p,
    least_rejudge_samples,
    regression_confirmed,
)
from promptloop.evaluate.summary import compare
from promptloop.llm.runner import ResponseCache, Runner


def gate_passes(diffs: np.ndarray, min_effect: float, alpha: float, resamples: int, seed: int) -> bool:
    """The gate's two statistical conditions on one candidate: CI lower bound above min_effect, p under alpha."""
    found = compare_paired(np.zeros_like(diffs), diffs, 1 - alpha, resamples, seed)
    return found.ci_low > min_effect and found.p_value < alpha


def simulated_power(delta: float, sd: float, n: int, min_effect: float, trials: int = 400) -> float:
    """Share of simulated golden sets (normal paired differences of mean `delta`) the gate passes."""
    rng = np.random.default_rng(18)
    return float(np.mean([gate_passes(rng.normal(delta, sd, n), min_effect, 0.05, 2000, i) for i in range(trials)]))


def test_the_gate_passes_a_true_gain_at_the_reported_mde_with_about_80_percent_power() -> None:
    sd, n, min_effect = 0.25, 60, 0.02
    mde = gate_mde(sd, n, min_effect)
    assert simulated_power(mde, sd, n, min_effect) == pytest.approx(0.8, abs=0.06)
    # The old MDE (no margin) reaches far less than 80% power once the gate asks for min_effect.
    without_margin = gate_mde(sd, n, 0.0)
    assert simulated_power(without_margin, sd, n, min_effect) < 0.7


def test_the_mde_includes_the_margin_and_holms_strictest_step() -> None:
    se = 0.2 / math.sqrt(50)
    assert gate_mde(0.2, 50, 0.02) == pytest.approx(0.02 + (1.959964 + 0.841621) * se, rel=1e-5)
    # With three candidates and no margin, significance at alpha/3 is what limits the gate.
    assert gate_mde(0.2, 50, 0.0, comparisons=3) == pytest.approx((2.393980 + 0.841621) * se, rel=1e-5)
    assert gate_mde(0.2, 1, 0.02) == math.inf and gate_mde(math.nan, 50, 0.02) == math.inf


def test_cases_for_a_target_mde_are_the_fewest_that_reach_it() -> None:
    for sd, target, margin, m in ((0.2, 0.1, 0.02, 1), (0.35, 0.08, 0.0, 3), (0.1, 0.05, 0.03, 2)):
        n = cases_for_mde(sd, target, margin, comparisons=m)
        assert n is not None
        assert gate_mde(sd, n, margin, comparisons=m) <= target < gate_mde(sd, n - 1, margin, comparisons=m)
    assert cases_for_mde(0.2, 0.02, 0.02) is None  # no size gets under the margin itself


def noisy_verdicts(rng: np.random.Generator, true_score: int, k: int, temperature: float) -> list[int]:
    """The simulated judge's noise model: one point up or down with probability 0.15 * temperature."""
    moved = rng.random(k) < 0.15 * temperature
    step = rng.choice([-1, 1], size=k)
    return [int(min(5, max(1, true_score + (s if m else 0)))) for m, s in zip(moved, step, strict=True)]


def test_fresh_verdicts_confirm_a_flip_of_two_equal_answers_rarely_and_a_real_one_usually() -> None:
    rng = np.random.default_rng(5)
    k = EvaluateSettings().rejudge_samples
    for temperature, power in ((1.0, 0.9), (2.0, 0.75)):
        false = [regression_confirmed(noisy_verdicts(rng, 4, k, temperature), noisy_verdicts(rng, 4, k, temperature),
                                      4, 0.05) for _ in range(1000)]
        assert np.mean(false) < 0.03, temperature
        real = [regression_confirmed(noisy_verdicts(rng, 4, k, temperature), noisy_verdicts(rng, 3, k, temperature),
                                     4, 0.05) for _ in range(300)]
        assert np.mean(real) > power, temperature
    assert regression_confirmed([4] * 4, [3] * 4, 4)  # a deterministic judge confirms what it saw
    assert not regression_confirmed([3] * 5, [3] * 5, 4)  # equal verdicts: no evidence the candidate is worse
    assert not regression_confirmed([5] * 5, [4] * 5, 4)  # the candidate still passes
    assert not regression_confirmed([4] * 3, [3] * 3, 4, 1 - 0.95)  # 3 each: the exact p is 0.05, not under it


def test_too_few_rejudge_samples_to_ever_confirm_are_refused() -> None:
    assert least_rejudge_samples(0.05) == 4 and least_rejudge_samples(0.01) == 5
    EvaluateSettings(rejudge_samples=0)
    EvaluateSettings(rejudge_samples=4)
    with pytest.raises(ValueError, match="can never confirm"):
        EvaluateSettings(rejudge_samples=3)
    with pytest.raises(ValueError, match="can never confirm"):
        EvaluateSettings(rejudge_samples=4, confidence=0.99)


def frame(prompt: str, passed: list[bool], confirmed: list[bool | None] | None = None) -> pd.DataFrame:
    rows = {"prompt": prompt, "case_id": [f"g{i}" for i in range(len(passed))],
            "severity": ["high"] * len(passed), "rubric_passed": passed,
            "rubric_score": [0.75 if p else 0.5 for p in passed]}
    if confirmed is not None:
        rows["rejudge_confirmed"] = confirmed
    return pd.DataFrame(rows)


def test_only_confirmed_flips_hold_and_unconfirmed_ones_are_reported() -> None:
    settings = EvaluateSettings()
    base = frame("baseline", [True, True, True, False], [None, None, None, None])
    cand = frame("c", [False, False, True, True], [True, False, None, None])
    found = compare(base, cand, settings)
    assert found.regressions == ["g0"] and found.unconfirmed == ["g1"]
    assert found.flips.broken == ["g0", "g1"]
    # Not re-judged at all (rejudge_samples 0): every flip holds, as before.
    plain = compare(frame("baseline", [True, True, True, False]), frame("c", [False, False, True, True]), settings)
    assert plain.regressions == ["g0", "g1"] and plain.unconfirmed == []
    result = CandidateResult(name="c", source="c.yaml", version=2, prompt_hash="0" * 12, model="m", license="mit",
                             decision="hold", high_severity_regressions=found.regressions,
                             unconfirmed_regressions=found.unconfirmed)
    assert ("High-severity flips re-judged: 1 confirmed (g0), 1 not confirmed (g1; judge noise, not held)"
            in candidate_section(result))


def test_judge_sample_seeds_never_overlap_between_neighbouring_run_seeds() -> None:
    for case in ("g001", "g002", "g046"):
        seen: dict[int, tuple[int, int]] = {}
        for run in range(50):
            for sample in range(8):
                seed = sample_seed(run, case, sample, "offline/judge|rubric")
                assert 0 <= seed < 2**31
                assert seen.setdefault(seed, (run, sample)) == (run, sample)
    assert sample_seed(3, "g001", 0, "offline/judge|rubric") == sample_seed(3, "g001", 0, "offline/judge|rubric")
    assert sample_seed(3, "g001", 0, "offline/judge|rubric") != sample_seed(3, "g001", 0, "offline/judge|tone")


def test_repetitions_under_neighbouring_seeds_share_no_judge_call(litellm, tmp_path: Path) -> None:
    runner = Runner(litellm, ResponseCache(tmp_path / "r.db"))
    case = GoldenCase(id="g001", description="refund", input="Can I get a refund?", reference="Yes, within 14 days.")
    for seed in (0, 1, 2):
        asyncio.run(RubricJudge(runner, "offline/judge", samples=3, temperature=1.0, seed=seed).verdicts(
            case, "Yes, within 14 days.", ""))
    # With `seed + sample`, run 1's first two samples were run 0's last two: 4 of the 9 calls from the cache.
    assert runner.usage["judge"].calls == 9 and runner.usage["judge"].cache_hits == 0


def test_the_exact_permutation_p_matches_scipys_enumeration() -> None:
    from scipy import stats as st

    rng = np.random.default_rng(7)
    for k in (4, 6):
        first, second = rng.integers(1, 6, k).tolist(), rng.integers(1, 6, k).tolist()
        expected = st.permutation_test((np.array(first), np.array(second)),
                                       lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                                       permutation_type="independent", alternative="greater", vectorized=True,
                                       n_resamples=100_000).pvalue
        assert higher_p(first, second) == pytest.approx(expected)
