"""The sequential race on synthetic paired rubric scores (pure numpy): alpha spending, drops, early stops,
and the false-promotion rate of candidates exactly as good as the baseline."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest

from promptloop.evaluate import stats
from promptloop.evaluate.sequential import (
    Race,
    case_order,
    drop_alpha,
    look_alphas,
    look_sizes,
    order_seed,
    paired_bounds,
    simulate_race,
)

MIN_EFFECT = 0.02
RESAMPLES = 1_000  # the bootstrap p-value's resolution, 1/1001, is under every look's level but the first's


def rubric_scores(rng: np.random.Generator, quality: np.ndarray, noise: float) -> np.ndarray:
    """A prompt's rubric scores (0, 0.25, ..., 1) on cases of true quality `quality` (0-4 steps), read by a
    judge that is one step off in either direction with probability `noise` each."""
    steps = quality + rng.choice([-1, 0, 1], size=quality.size, p=[noise, 1 - 2 * noise, noise])
    return np.clip(steps, 0, 4) / 4


def promoted(race: Race, scores: dict[str, np.ndarray], baseline: np.ndarray) -> list[str]:
    """The candidates the final gate's score conditions pass: the stopping look's level, Holm across the
    candidates still running, on the cases each was evaluated on (as `summary.summarise` after a race)."""
    alpha = race.final_alpha
    running = [name for name in scores if name not in race.dropped]
    n = race.cases_evaluated["baseline"]
    found = {name: stats.compare_paired(baseline[:n], scores[name][:n], 1 - alpha, RESAMPLES, 0) for name in running}
    adjusted = dict(zip(found, stats.holm([f.p_value for f in found.values()]), strict=True))
    return [name for name, f in found.items() if f.ci_low > MIN_EFFECT and adjusted[name] < alpha]


def null_race(seed: int, candidates: int, cases: int, alphas: list[float] | None = None) -> tuple[Race, list[str]]:
    """One race of `candidates` prompts exactly as good as the baseline (the same true quality per case, an
    independent noisy judge reading each), and the ones the final gate promotes."""
    rng = np.random.default_rng(seed)
    quality = rng.integers(0, 5, size=cases)
    baseline = rubric_scores(rng, quality, 0.2)
    scores = {f"c{i}": rubric_scores(rng, quality, 0.2) for i in range(candidates)}
    sizes = look_sizes(cases, 4, 10)
    race = simulate_race(scores, baseline, sizes, alphas or look_alphas(0.05, sizes, "obrien-fleming"),
                         MIN_EFFECT, RESAMPLES, seed)
    return race, promoted(race, scores, baseline)


def test_each_spending_splits_exactly_the_gates_alpha_over_the_looks() -> None:
    sizes = look_sizes(66, 4, 10)
    assert sizes == [17, 33, 50, 66]
    assert look_alphas(0.05, sizes, "bonferroni") == [0.0125] * 4
    obf = look_alphas(0.05, sizes, "obrien-fleming")
    assert math.isclose(sum(obf), 0.05) and obf == sorted(obf) and obf[0] < 0.001  # little early, most last
    assert look_sizes(15, 4, 10) == [15]  # too small a golden set for two looks: the plain gate


def test_the_case_order_is_seeded_and_the_default_seed_is_not_evaluate_seed_itself() -> None:
    ids = [f"g{i:03d}" for i in range(40)]
    assert case_order(ids, 7) == case_order(ids, 7) and sorted(case_order(ids, 7)) == ids
    assert case_order(ids, 7) != case_order(ids, 8)
    assert order_seed(0, None) == order_seed(0, None) != 0 and order_seed(0, 5) == 5


def test_a_clearly_better_candidate_stops_the_race_early_and_a_worse_one_is_dropped() -> None:
    rng = np.random.default_rng(1)
    quality = rng.integers(0, 4, size=80)
    baseline = rubric_scores(rng, quality, 0.1)
    scores = {"better": rubric_scores(rng, np.minimum(quality + 2, 4), 0.1),
              "worse": rubric_scores(rng, np.maximum(quality - 2, 0), 0.1)}
    sizes = look_sizes(80, 4, 10)
    race = simulate_race(scores, baseline, sizes, look_alphas(0.05, sizes, "bonferroni"), MIN_EFFECT, RESAMPLES, 0)
    assert race.stopped_at == 1, race.looks
    assert race.looks[-1].leader == "better" and promoted(race, scores, baseline) == ["better"]
    assert race.cases_evaluated == {"better": 20, "worse": 20, "baseline": 20}
    # Alone, the worse one (no gain on any case, a loss on most) is dropped at the second look.
    alone = simulate_race({"worse": scores["worse"]}, baseline, sizes, look_alphas(0.05, sizes, "bonferroni"),
                          MIN_EFFECT, RESAMPLES, 0)
    assert alone.stop_reason == "every candidate dropped" and alone.stopped_at == 2, alone.looks
    assert alone.dropped["worse"].startswith("dropped after 40/80 cases: upper bound")


def test_a_candidate_that_has_only_tied_so_far_is_not_dropped() -> None:
    """Its gains lie in cases the race has not reached: the bootstrap of all-zero differences is [0, 0], which
    used to drop it; the drop rule bounds what it may still gain instead, and the race promotes it."""
    rng = np.random.default_rng(3)
    baseline = rubric_scores(rng, rng.integers(0, 3, size=80), 0.0)
    later = np.arange(80) >= 20
    candidate = np.where(later & (rng.random(80) < 0.4), np.minimum(baseline + 0.5, 1.0), baseline)
    sizes = look_sizes(80, 4, 10)
    diffs = (candidate - baseline)[:20]
    assert not diffs.any() and paired_bounds(diffs, drop_alpha(0.05, sizes), RESAMPLES, 0).high < MIN_EFFECT
    race = simulate_race({"late": candidate}, baseline, sizes, look_alphas(0.05, sizes, "obrien-fleming"),
                         MIN_EFFECT, RESAMPLES, 0)
    assert not race.dropped and promoted(race, {"late": candidate}, baseline) == ["late"], race.looks


def test_identical_rivals_do_not_keep_the_race_going() -> None:
    rng = np.random.default_rng(2)
    quality = rng.integers(0, 4, size=80)
    baseline = rubric_scores(rng, quality, 0.1)
    better = rubric_scores(rng, np.minimum(quality + 2, 4), 0.1)
    sizes = look_sizes(80, 4, 10)
    race = simulate_race({"a": better, "b": better.copy()}, baseline, sizes, look_alphas(0.05, sizes, "bonferroni"),
                         MIN_EFFECT, RESAMPLES, 0)
    assert race.stopped_at == 1 and race.stop_reason and "no rival can catch up" in race.stop_reason


NULL_RACES = 2_000
# The bound is Clopper-Pearson's one-sided 95% upper limit; with 2,000 races it stays at or under 1% for up to
# 11 promotions (11 / 2,000: 0.92%), and 0 promotions would bound the rate at 0.15%.


def test_candidates_as_good_as_the_baseline_are_promoted_under_one_percent_of_the_time() -> None:
    """2,000 seeded null races (one candidate exactly as good as the baseline, 60 held-out cases, 4 looks,
    O'Brien-Fleming spending): the one-sided 95% upper bound of the false-promotion rate is under 1%.
    The control shows the test can fail: the same races with every look at the full alpha (no spending)
    promote several times as often, past the 1% bound."""
    promotions = sum(bool(null_race(seed, 1, 60)[1]) for seed in range(NULL_RACES))
    upper = binomtest(promotions, NULL_RACES).proportion_ci(0.90, method="exact").high  # one-sided 95%
    assert upper <= 0.01, (promotions, upper)
    unspent = sum(bool(null_race(seed, 1, 60, [0.05] * 4)[1]) for seed in range(NULL_RACES // 4))
    assert binomtest(unspent, NULL_RACES // 4).proportion_ci(0.90, method="exact").low > 0.01, unspent


def test_three_null_candidates_race_to_no_promotion() -> None:
    """Three candidates as good as the baseline in each of 100 races (Holm across them at every look): none
    is promoted."""
    assert not any(found for _, found in (null_race(seed, 3, 60) for seed in range(100)))
