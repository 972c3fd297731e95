"""stats: does a prompt candidate beat the baseline on a golden set, from PAIRED per-case scores?

Each golden case is scored under the baseline and under the candidate; we work on the per-case
differences `candidate - baseline` (positive = candidate better) and report:
- a seeded, vectorised percentile bootstrap confidence interval of the mean difference,
- a bootstrap p-value (two-sided, centred bootstrap, add-one smoothed),
- win / tie / loss counts, an exact sign test, and McNemar's exact test for pass/fail metrics,
- Holm–Bonferroni adjusted p-values when several candidates are compared with one baseline,
- the minimum detectable effect of a golden set of a given size.

Everything is pure (no import-time side effects) and returns plain Python numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "PairedComparison",
    "paired_differences",
    "bootstrap_ci",
    "bootstrap_p_value",
    "win_tie_loss",
    "compare_paired",
    "mcnemar",
    "sign_test",
    "holm",
    "minimum_detectable_effect",
    "gate_mde",
    "cases_for_mde",
    "regression_confirmed",
    "least_rejudge_samples",
    "higher_p",
    "Agreement",
    "agreement",
]

# Upper bound on the number of int64 indices drawn at once (~32 MB), to bound bootstrap memory.
_MAX_CHUNK_ELEMENTS = 4_000_000


# The normal quantiles and CDF of the power and alpha-spending formulas: the standard library's (exact to
# ~1e-15, as scipy's), so that runs needing no test from scipy.stats never import it (most of a second).
STANDARD_NORMAL = NormalDist()


def scipy_stats() -> Any:
    """scipy.stats, imported when a test first needs it: it takes most of a second, and an evaluation's
    worker processes, which only make calls, never need it."""
    from scipy import stats

    return stats


@dataclass(frozen=True)
class PairedComparison:
    """Summary of a paired baseline-vs-candidate comparison (diff = candidate - baseline)."""

    n: int
    mean_baseline: float
    mean_candidate: float
    mean_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    wins: int
    ties: int
    losses: int


def _as_scores(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one paired case")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN at index {int(np.flatnonzero(np.isnan(arr))[0])}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains an infinite value")
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_resamples(resamples: int) -> None:
    if int(resamples) != resamples or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples}")


def paired_differences(baseline: ArrayLike, candidate: ArrayLike) -> np.ndarray:
    """Per-case `candidate - baseline`; ValueError on unequal lengths, NaN/inf or no cases."""
    b = _as_scores(baseline, "baseline")
    c = _as_scores(candidate, "candidate")
    if b.shape != c.shape:
        raise ValueError(
            f"baseline and candidate must be paired (same length): got {b.size} and {c.size}"
        )
    return c - b


def _bootstrap_means(diffs: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` with-replacement resamples of `diffs`, drawn in bounded chunks."""
    n = diffs.size
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, _MAX_CHUNK_ELEMENTS // n))
    out = np.empty(resamples, dtype=float)
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = diffs[idx].mean(axis=1)
    return out


def bootstrap_ci(
    diffs: ArrayLike, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Paired percentile bootstrap CI of the mean difference (seeded, vectorised).

    With one case, or when every difference is equal, the interval is the point (d, d).
    """
    d = _as_scores(diffs, "diffs")
    _check_confidence(confidence)
    _check_resamples(resamples)
    if d.size == 1 or np.all(d == d[0]):
        return float(d[0]), float(d[0])
    means = _bootstrap_means(d, int(resamples), seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_p_value(diffs: ArrayLike, resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided bootstrap p-value for H0: mean difference == 0.

    The diffs are centred (d - mean(d)) so the null holds, then resampled B times; k counts the
    bootstrap means with |mean*| >= |observed mean| (up to a float-rounding tolerance), and
    p = (k + 1) / (B + 1) (add-one smoothing, so p is never 0). All-zero diffs give p = 1.
    """
    d = _as_scores(diffs, "diffs")
    _check_resamples(resamples)
    observed = abs(float(d.mean()))
    centred = d - d.mean()
    means = _bootstrap_means(centred, int(resamples), seed)
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    k = int(np.count_nonzero(np.abs(means) >= observed - tol))
    return (k + 1) / (int(resamples) + 1)


def win_tie_loss(diffs: ArrayLike, tolerance: float = 0.0) -> tuple[int, int, int]:
    """Counts of diffs > tolerance (wins), |diff| <= tolerance (ties) and < -tolerance (losses)."""
    d = _as_scores(diffs, "diffs")
    if not tolerance >= 0.0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    wins = int(np.count_nonzero(d > tolerance))
    losses = int(np.count_nonzero(d < -tolerance))
    return wins, d.size - wins - losses, losses


def compare_paired(
    baseline: ArrayLike,
    candidate: ArrayLike,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Full paired comparison: means, bootstrap CI and p-value of the mean diff, win/tie/loss."""
    d = paired_differences(baseline, candidate)
    b = np.asarray(baseline, dtype=float)
    c = np.asarray(candidate, dtype=float)
    low, high = bootstrap_ci(d, confidence=confidence, resamples=resamples, seed=seed)
    wins, ties, losses = win_tie_loss(d)
    return PairedComparison(
        n=int(d.size),
        mean_baseline=float(b.mean()),
        mean_candidate=float(c.mean()),
        mean_diff=float(d.mean()),
        ci_low=low,
        ci_high=high,
        confidence=float(confidence),
        p_value=bootstrap_p_value(d, resamples=resamples, seed=seed),
        wins=wins,
        ties=ties,
        losses=losses,
    )


def _as_bools(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one paired case")
    if arr.dtype != bool:
        if not np.isin(arr, [0, 1]).all():
            raise ValueError(f"{name} must hold booleans (or 0/1)")
        arr = arr.astype(bool)
    return arr


def mcnemar(baseline_pass: ArrayLike, candidate_pass: ArrayLike) -> tuple[int, int, float]:
    """Exact McNemar test for paired pass/fail outcomes; returns (b, c, p).

    b = baseline pass & candidate fail, c = baseline fail & candidate pass; p is the exact
    two-sided binomial p of c out of b + c at 0.5 (1.0 when there are no discordant pairs).
    """
    bp = _as_bools(baseline_pass, "baseline_pass")
    cp = _as_bools(candidate_pass, "candidate_pass")
    if bp.shape != cp.shape:
        raise ValueError(
            "baseline_pass and candidate_pass must be paired (same length): "
            f"got {bp.size} and {cp.size}"
        )
    b = int(np.count_nonzero(bp & ~cp))
    c = int(np.count_nonzero(~bp & cp))
    if b + c == 0:
        return b, c, 1.0
    return b, c, float(scipy_stats().binomtest(c, b + c, 0.5).pvalue)


def sign_test(diffs: ArrayLike) -> float:
    """Exact two-sided sign test on the non-zero diffs (binomial at 0.5); 1.0 if all are zero."""
    d = _as_scores(diffs, "diffs")
    positive = int(np.count_nonzero(d > 0))
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return 1.0
    return float(scipy_stats().binomtest(positive, nonzero, 0.5).pvalue)


def rise_p_value(baseline: ArrayLike, candidate: ArrayLike) -> float:
    """One-sided Wilcoxon signed-rank p-value that `candidate` is larger than `baseline`, paired by position
    (e.g. per-case latencies); 1.0 when no pair differs. Ties (zero diffs) are left out (Wilcox)."""
    d = paired_differences(baseline, candidate)
    if not np.count_nonzero(d):
        return 1.0
    return float(scipy_stats().wilcoxon(d, zero_method="wilcox", alternative="greater").pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given; monotone in p and capped at 1."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional, got shape {p.shape}")
    if p.size == 0:
        return []
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("p_values must be in [0, 1] with no NaN")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted_sorted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    adjusted = np.empty(m, dtype=float)
    adjusted[order] = adjusted_sorted
    return [float(x) for x in adjusted]


def minimum_detectable_effect(
    diffs_sd: float, n: int, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest true mean difference a paired two-sided test detects with the given power.

    (z_{1-alpha/2} + z_{power}) * sd / sqrt(n), normal approximation. Lets the report say
    "this golden set is too small to see a gain under X". n < 2 or a NaN sd gives inf.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if n < 2 or math.isnan(diffs_sd):
        return math.inf
    if diffs_sd < 0:
        raise ValueError(f"diffs_sd must be >= 0, got {diffs_sd}")
    z = STANDARD_NORMAL.inv_cdf(1.0 - alpha / 2.0) + STANDARD_NORMAL.inv_cdf(power)
    return z * float(diffs_sd) / math.sqrt(n)


def _gate_z(alpha: float, power: float, comparisons: int) -> tuple[float, float]:
    """(z of the CI test on `diff - min_effect`, z of the significance test after Holm) plus z_power.

    The gate needs both: the CI's lower bound (level 1 - alpha, not adjusted) above `min_effect`, and
    the Holm-adjusted p under alpha; Holm's strictest step is Bonferroni's alpha / m, so planning on
    it never overstates the power when several candidates compete.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    z_power = STANDARD_NORMAL.inv_cdf(power)
    z_ci = STANDARD_NORMAL.inv_cdf(1.0 - alpha / 2.0)
    z_holm = STANDARD_NORMAL.inv_cdf(1.0 - alpha / (2.0 * max(1, comparisons)))
    return z_ci + z_power, z_holm + z_power


def gate_mde(diffs_sd: float, n: int, min_effect: float, alpha: float = 0.05, power: float = 0.8,
             comparisons: int = 1) -> float:
    """Smallest true mean gain the promotion gate passes with the given power, from the paired diffs' sd.

    max(min_effect + (z_{1-alpha/2} + z_power) * se, (z_{1-alpha/(2m)} + z_power) * se), se = sd / sqrt(n):
    the first term is the CI's lower bound clearing `min_effect`, the second the significance test after
    Holm's correction for m candidates. n < 2 or a NaN sd gives inf.
    """
    z_ci, z_holm = _gate_z(alpha, power, comparisons)
    if n < 2 or math.isnan(diffs_sd):
        return math.inf
    if diffs_sd < 0:
        raise ValueError(f"diffs_sd must be >= 0, got {diffs_sd}")
    se = float(diffs_sd) / math.sqrt(n)
    return max(min_effect + z_ci * se, z_holm * se)


def cases_for_mde(diffs_sd: float, target: float, min_effect: float, alpha: float = 0.05, power: float = 0.8,
                  comparisons: int = 1) -> int | None:
    """Paired cases the gate needs for `gate_mde` to reach `target`; None when no size can (target <= min_effect)."""
    z_ci, z_holm = _gate_z(alpha, power, comparisons)
    if target <= min_effect or math.isnan(diffs_sd):
        return None
    needed = max((z_ci * diffs_sd / (target - min_effect)) ** 2, (z_holm * diffs_sd / target) ** 2)
    return max(2, math.ceil(needed - 1e-9))


def regression_confirmed(baseline: Sequence[float], candidate: Sequence[float], threshold: float,
                         alpha: float = 0.05) -> bool:
    """Whether fresh verdicts on one case confirm a pass -> fail flip of the candidate.

    Both: the candidate's mean fails (< threshold), and a one-sided exact permutation test finds the
    baseline's verdicts higher (p < alpha). The verdicts must be fresh (not the ones that flagged the
    case): those were selected for looking like a regression, so for two answers of equal quality the
    test's level bounds the chance of a confirmation by alpha. The baseline's fresh mean is not asked
    to pass: an answer right at the threshold fails half its re-judgings, and asking would let half
    the real regressions through without making equal answers any less likely to be confirmed.
    """
    b = np.asarray(baseline, dtype=float)
    c = np.asarray(candidate, dtype=float)
    if b.size == 0 or c.size == 0:
        raise ValueError("need at least one verdict of each prompt")
    if not c.mean() < threshold:
        return False
    # 1 - 0.95 is 0.05000000000000004: an exact p of 0.05 is not under it.
    return higher_p(b.astype(int).tolist(), c.astype(int).tolist()) < round(alpha, 12)


def higher_p(first: list[int], second: list[int]) -> float:
    """One-sided exact permutation p that `first`'s verdicts are higher than `second`'s (integer verdicts).

    The share of the ways to split the pooled verdicts into groups of these sizes whose first group sums
    to at least `first`'s (the difference of means is monotone in that sum): counted by dynamic programming
    over (group size, sum), where enumerating every split (12,870 for 8 + 8) is far slower.
    """
    pooled, size = first + second, len(first)
    ways: list[dict[int, int]] = [{0: 1}] + [{} for _ in range(size)]
    for value in pooled:
        for taken in range(size, 0, -1):  # downwards: each verdict joins a group at most once
            for total, count in ways[taken - 1].items():
                ways[taken][total + value] = ways[taken].get(total + value, 0) + count
    observed = sum(first)
    return sum(count for total, count in ways[size].items() if total >= observed) / math.comb(len(pooled), size)


def least_rejudge_samples(alpha: float) -> int:
    """Fresh verdicts per prompt below which `regression_confirmed` can never confirm (exact p >= alpha)."""
    k = 1
    while 1.0 / math.comb(2 * k, k) >= round(alpha, 12):
        k += 1
    return k


@dataclass(frozen=True)
class Agreement:
    """How often a judge agrees with people, judged against chance.

    `accuracy` alone flatters a judge when one class dominates (19 👎 and 3 👍: a judge that fails
    everything scores 0.86), so `balanced_accuracy` averages the recall of each human class (a constant
    judge scores 0.5) and `kappa` is Cohen's kappa (None if undefined).
    """

    n: int
    accuracy: float
    kappa: float | None
    up: int = 0  # human 👍 labels
    down: int = 0  # human 👎 labels
    balanced_accuracy: float | None = None  # None without labels of both classes


def agreement(human: ArrayLike, judge: ArrayLike) -> Agreement:
    """Judge-human agreement on paired pass/fail labels.

    Kappa is None when it is undefined: both raters gave one and the same class to every item.
    """
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score

    h = _as_bools(human, "human")
    j = _as_bools(judge, "judge")
    if h.shape != j.shape:
        raise ValueError(f"human and judge must be paired (same length): got {h.size} and {j.size}")
    accuracy = float(np.mean(h == j))
    up, down = int(h.sum()), int((~h).sum())
    balanced = float(balanced_accuracy_score(h, j)) if up and down else None
    if np.unique(np.concatenate([h, j])).size < 2:
        return Agreement(int(h.size), accuracy, None, up, down, balanced)
    return Agreement(int(h.size), accuracy, float(cohen_kappa_score(h, j)), up, down, balanced)
