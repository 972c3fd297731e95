"""stats: paired bootstrap CI / p-value, McNemar, sign test, Holm and minimum detectable effect."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from promptloop.evaluate.stats import (
    PairedComparison,
    bootstrap_ci,
    bootstrap_p_value,
    compare_paired,
    holm,
    mcnemar,
    minimum_detectable_effect,
    paired_differences,
    sign_test,
    win_tie_loss,
)


def _normal_diffs(n: int = 400, mean: float = 0.1, sd: float = 1.0, seed: int = 42) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, size=n)


# --- paired_differences / validation ---------------------------------------------------------


def test_paired_differences_is_candidate_minus_baseline():
    d = paired_differences([0.5, 1.0, 0.0], [1.0, 1.0, 0.25])
    assert d.tolist() == [0.5, 0.0, 0.25]


@pytest.mark.parametrize(
    ("baseline", "candidate", "match"),
    [
        ([1.0, 2.0], [1.0], "same length"),
        ([1.0, float("nan")], [1.0, 2.0], "NaN"),
        ([1.0, 2.0], [float("nan"), 2.0], "NaN"),
        ([], [], "empty"),
    ],
)
def test_paired_differences_rejects_bad_input(baseline, candidate, match):
    with pytest.raises(ValueError, match=match):
        paired_differences(baseline, candidate)


def test_other_functions_validate_input():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_p_value([0.1, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([0.1, 0.2], confidence=1.5)
    with pytest.raises(ValueError, match="same length"):
        compare_paired([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="same length"):
        mcnemar([True, False], [True])


# --- bootstrap CI ----------------------------------------------------------------------------


def test_bootstrap_ci_is_seeded_and_deterministic():
    d = _normal_diffs(n=100)
    assert bootstrap_ci(d, seed=7) == bootstrap_ci(d, seed=7)
    other = bootstrap_ci(d, seed=8)
    assert other != bootstrap_ci(d, seed=7)
    # a different seed moves the interval only slightly
    width = bootstrap_ci(d, seed=7)[1] - bootstrap_ci(d, seed=7)[0]
    assert abs(other[0] - bootstrap_ci(d, seed=7)[0]) < 0.05 * width


def test_bootstrap_ci_contains_the_mean():
    d = _normal_diffs(n=60, mean=0.3)
    low, high = bootstrap_ci(d)
    assert low < d.mean() < high


def test_bootstrap_ci_matches_scipy_bootstrap_and_t_interval():
    d = _normal_diffs(n=400, mean=0.2, sd=1.0)
    low, high = bootstrap_ci(d, confidence=0.9, resamples=10_000, seed=0)
    width = high - low

    ref = st.bootstrap(
        (d,),
        np.mean,
        confidence_level=0.9,
        n_resamples=10_000,
        method="percentile",
        rng=np.random.default_rng(1),
    ).confidence_interval
    ref_width = ref.high - ref.low
    assert width == pytest.approx(ref_width, rel=0.1)
    assert abs(low - ref.low) < 0.1 * ref_width
    assert abs(high - ref.high) < 0.1 * ref_width

    t_low, t_high = st.t.interval(0.9, df=d.size - 1, loc=d.mean(), scale=st.sem(d))
    assert width == pytest.approx(t_high - t_low, rel=0.1)
    assert abs(low - t_low) < 0.1 * (t_high - t_low)
    assert abs(high - t_high) < 0.1 * (t_high - t_low)


def test_identical_copy_gives_zero_interval():
    scores = np.linspace(0.0, 1.0, 50)
    d = paired_differences(scores, scores.copy())
    assert bootstrap_ci(d) == (0.0, 0.0)
    result = compare_paired(scores, scores.copy())
    assert result.ci_low <= 0.0 <= result.ci_high
    assert result.p_value == 1.0
    assert (result.wins, result.ties, result.losses) == (0, 50, 0)


def test_single_case_and_constant_diffs_give_point_interval():
    assert bootstrap_ci([0.25]) == (0.25, 0.25)
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)


def test_clearly_better_candidate_has_positive_lower_bound():
    rng = np.random.default_rng(3)
    baseline = rng.uniform(0.0, 0.6, size=80)
    candidate = baseline + rng.uniform(0.05, 0.3, size=80)
    result = compare_paired(baseline, candidate)
    assert result.ci_low > 0.0
    assert result.wins == 80 and result.losses == 0
    assert result.p_value < 0.01


def test_bootstrap_is_vectorised_on_a_full_golden_set():
    d = _normal_diffs(n=500)
    low, high = bootstrap_ci(d, resamples=10_000)
    assert low < high
    assert 0.0 < bootstrap_p_value(d, resamples=10_000) <= 1.0


# --- bootstrap p-value -----------------------------------------------------------------------


def test_bootstrap_p_value_near_one_for_zero_mean_symmetric_diffs():
    half = np.random.default_rng(5).normal(0.0, 1.0, size=50)
    d = np.concatenate([half, -half])  # exactly symmetric, mean 0
    assert bootstrap_p_value(d) > 0.95


def test_bootstrap_p_value_small_for_strong_effect():
    d = _normal_diffs(n=100, mean=1.0, sd=1.0)
    p = bootstrap_p_value(d, resamples=10_000)
    assert p < 0.01
    assert p >= 1 / 10_001  # add-one smoothing: never zero


def test_bootstrap_p_value_is_seeded():
    d = _normal_diffs(n=50, mean=0.2)
    assert bootstrap_p_value(d, seed=1) == bootstrap_p_value(d, seed=1)


# --- win / tie / loss ------------------------------------------------------------------------


def test_win_tie_loss_with_tolerance():
    d = [0.3, 0.0, -0.2, 0.05, -0.05]
    assert win_tie_loss(d) == (2, 1, 2)
    assert win_tie_loss(d, tolerance=0.1) == (1, 3, 1)


def test_compare_paired_fields():
    result = compare_paired([0.0, 0.5, 1.0, 0.5], [0.5, 0.5, 1.0, 1.0], confidence=0.9)
    assert isinstance(result, PairedComparison)
    assert result.n == 4
    assert result.mean_baseline == pytest.approx(0.5)
    assert result.mean_candidate == pytest.approx(0.75)
    assert result.mean_diff == pytest.approx(0.25)
    assert result.confidence == 0.9
    assert (result.wins, result.ties, result.losses) == (2, 2, 0)


# --- McNemar / sign test ---------------------------------------------------------------------


def test_mcnemar_known_case():
    # b = 1 (baseline pass, candidate fail), c = 9 (baseline fail, candidate pass), 5 concordant.
    baseline = [True] + [False] * 9 + [True] * 3 + [False] * 2
    candidate = [False] + [True] * 9 + [True] * 3 + [False] * 2
    b, c, p = mcnemar(baseline, candidate)
    assert (b, c) == (1, 9)
    # exact: 2 * (C(10,0) + C(10,1)) / 2^10 = 2 * 11 / 1024
    assert p == pytest.approx(2 * (math.comb(10, 0) + math.comb(10, 1)) / 2**10)
    assert p == pytest.approx(0.021484375)


def test_mcnemar_no_discordant_pairs_and_int_input():
    assert mcnemar([1, 0, 1], [1, 0, 1]) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="booleans"):
        mcnemar([0.5, 1.0], [1.0, 0.0])


def test_sign_test_known_case():
    # 9 positive, 1 negative, zeros ignored -> same binomial as above
    d = [0.1] * 9 + [-0.3] + [0.0] * 4
    assert sign_test(d) == pytest.approx(0.021484375)
    assert sign_test([0.0, 0.0]) == 1.0
    assert sign_test([0.2, -0.1]) == pytest.approx(1.0)


# --- Holm ------------------------------------------------------------------------------------


def test_holm_known_case():
    # m = 4; sorted: 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04;
    # running max -> 0.02, 0.03, 0.06, 0.06; back to input order -> [0.03, 0.06, 0.06, 0.02].
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_monotone_capped_and_empty():
    p = [0.2, 0.01, 0.6, 0.04, 0.5, 0.03]
    adj = holm(p)
    order = np.argsort(p)
    assert all(np.diff(np.asarray(adj)[order]) >= 0)
    assert all(a >= x for a, x in zip(adj, p, strict=True))
    assert max(adj) <= 1.0
    assert holm([0.5, 0.6, 0.9]) == [1.0, 1.0, 1.0]
    assert holm([]) == []
    assert holm([0.04]) == [0.04]


# --- minimum detectable effect ---------------------------------------------------------------


def test_minimum_detectable_effect_closed_form():
    # (z_0.975 + z_0.8) / sqrt(40) = (1.959964 + 0.841621) / 6.324555 = 0.44297
    mde = minimum_detectable_effect(1.0, 40)
    assert mde == pytest.approx((1.959963985 + 0.841621234) / math.sqrt(40), rel=1e-6)
    assert mde == pytest.approx(0.443, abs=1e-3)
    assert minimum_detectable_effect(1.0, 160) == pytest.approx(mde / 2)
    assert minimum_detectable_effect(1.0, 500) < minimum_detectable_effect(1.0, 100) < mde


def test_minimum_detectable_effect_degenerate():
    assert minimum_detectable_effect(1.0, 1) == math.inf
    assert minimum_detectable_effect(float("nan"), 100) == math.inf
