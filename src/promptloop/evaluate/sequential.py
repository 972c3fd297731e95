"""The sequential race (pure): looks over a seeded random order of held-out cases, losers dropped, an early stop.

Why it cannot inflate false promotions: at look k the gate's CI is taken at level 1 - alpha_k, where the
alpha_k of all looks add up to at most alpha (`look_alphas`). A candidate whose true gain is at most
`min_effect` is promoted only if at the look where the race stopped its lower bound cleared the margin,
and by the union bound the chance that this happens at ANY look is at most sum(alpha_k) / 2 <= alpha / 2,
whatever rule chose the look. Dropping and stopping only ever make a promotion rarer, never likelier.

Dropping is a futility decision: it can only cost power, never add a promotion, so it has a level of its
own (`drop_alpha`, the gate's alpha split equally over the looks: a candidate whose true gain clears the
margin is dropped with probability at most alpha / 2 over the whole race). The O'Brien-Fleming spending
keeps the promotion level tiny at the first looks, where a few cases make the percentile bootstrap too
narrow; the equal split of the drop level still lets a clear loser leave early.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from promptloop.evaluate import stats

Spending = Literal["bonferroni", "obrien-fleming"]


def look_sizes(cases: int, looks: int, min_cases_per_look: int) -> list[int]:
    """Cumulative held-out cases at each look: equal shares, fewer looks when a share would be under
    `min_cases_per_look` (a golden set that small gets a single look: the plain gate)."""
    count = max(1, min(looks, cases // max(1, min_cases_per_look)))
    return [math.ceil(cases * i / count) for i in range(1, count + 1)]


def look_alphas(alpha: float, sizes: Sequence[int], spending: Spending) -> list[float]:
    """Each look's share of the gate's alpha; the shares add up to `alpha`.

    bonferroni: equal shares. obrien-fleming: the increments of the Lan-DeMets spending function
    a(t) = 2 - 2 * Phi(z_{1 - alpha/2} / sqrt(t)) at the looks' information fractions t (little early,
    most at the last look). Both are used as plain per-look levels (a union bound), which ignores the
    correlation between looks: conservative, and valid for any stopping rule.
    """
    if not sizes:
        return []
    if spending == "bonferroni":
        return [alpha / len(sizes)] * len(sizes)
    z = stats.STANDARD_NORMAL.inv_cdf(1 - alpha / 2)
    spent = [2 - 2 * stats.STANDARD_NORMAL.cdf(z / math.sqrt(size / sizes[-1])) for size in sizes]
    spent[-1] = alpha  # a(1) = alpha exactly, whatever the float rounding
    return [b - a for a, b in zip([0.0, *spent[:-1]], spent, strict=True)]


def case_order(case_ids: Sequence[str], seed: int) -> list[str]:
    """The cases in a seeded random order (the same seed, the same order, on any machine)."""
    rng = np.random.default_rng(seed)
    return [case_ids[i] for i in rng.permutation(len(case_ids))]


def order_seed(evaluate_seed: int, seed: int | None) -> int:
    """The case order's seed: the one configured, else one derived from evaluate.seed (never the same stream
    as the bootstrap's, which uses evaluate.seed itself)."""
    return seed if seed is not None else int(np.random.SeedSequence([evaluate_seed, 0x5E9]).generate_state(1)[0])


@dataclass(frozen=True)
class Bounds:
    """A paired CI of a mean difference (candidate minus baseline, or rival minus leader), and for a candidate
    its Holm-adjusted p-value among the running candidates."""

    mean: float
    low: float
    high: float
    p_adjusted: float = 1.0

    def clears(self, min_effect: float, alpha: float) -> bool:
        """The gate's score conditions: lower bound above the margin, significant after Holm."""
        return self.low > min_effect and self.p_adjusted < alpha


def paired_bounds(diffs: np.ndarray, alpha: float, resamples: int, seed: int) -> Bounds:
    """The seeded percentile-bootstrap CI of the mean of `diffs` at level 1 - alpha (the gate's own CI)."""
    low, high = stats.bootstrap_ci(diffs, confidence=1 - alpha, resamples=resamples, seed=seed)
    return Bounds(float(np.mean(diffs)), low, high)


def futility_bounds(diffs: np.ndarray, alpha: float, resamples: int, seed: int) -> Bounds:
    """The paired CI the drop rule reads: the bootstrap's, except where no case has gained yet.

    With no positive difference the bootstrap cannot put the upper bound above 0 (every difference 0 gives
    [0, 0]), and a candidate whose gains lie in a few cases not yet reached was dropped: 10 drops in 8 of 100
    case orders of the demo's support-bot, each of a candidate the full evaluation promotes
    (benchmarks/bench_race_orders.py on the code before this rule; none with it). The mean gain is then bounded
    by what it may still gain minus what it surely loses, each at alpha / 2: the exact one-sided bound on the
    share of cases it improves (Clopper-Pearson with none seen, 1 - (alpha/2)^(1/n); a score difference is at
    most 1) minus the bootstrap's lower bound of its mean loss. A candidate that only ties is kept; one that
    loses on most cases is still dropped early.
    """
    found = paired_bounds(diffs, alpha, resamples, seed)
    if not len(diffs) or (diffs > 0).any():
        return found
    gains_at_most = 1 - (alpha / 2) ** (1 / len(diffs))
    loses_at_least, _ = stats.bootstrap_ci(-diffs, confidence=1 - alpha, resamples=resamples, seed=seed)
    return replace(found, high=max(found.high, gains_at_most - loses_at_least))


def candidate_bounds(scores: Mapping[str, np.ndarray], baseline: np.ndarray, running: Sequence[str], alpha: float,
                     resamples: int, seed: int) -> dict[str, Bounds]:
    """Each running candidate against the baseline as the gate computes it: the paired bootstrap CI at
    1 - alpha and the bootstrap p-value, Holm-adjusted across the running candidates."""
    found = {name: stats.compare_paired(baseline, scores[name], 1 - alpha, resamples, seed) for name in running}
    adjusted = stats.holm([f.p_value for f in found.values()]) if found else []
    return {name: Bounds(f.mean_diff, f.ci_low, f.ci_high, p)
            for (name, f), p in zip(found.items(), adjusted, strict=True)}


@dataclass(frozen=True)
class Look:
    """What one look saw and settled."""

    index: int  # 1-based
    cases: int  # held-out cases evaluated so far
    alpha: float  # this look's share of the gate's alpha
    bounds: dict[str, Bounds]  # each running candidate against the baseline
    dropped: dict[str, str] = field(default_factory=dict)  # candidate -> why it was dropped here
    stop: str | None = None  # why the race stopped here (None: it goes on)
    leader: str | None = None


def leader_of(bounds: Mapping[str, Bounds]) -> str | None:
    """The running candidate with the highest lower bound (then mean, then name: the winner order's parts
    that a look knows)."""
    return min(bounds, key=lambda name: (-bounds[name].low, -bounds[name].mean, name), default=None)


def judge_look(scores: Mapping[str, np.ndarray], baseline: np.ndarray, running: Sequence[str], index: int,
               total: int, alpha: float, min_effect: float, resamples: int, seed: int, last: bool,
               drop_alpha: float | None = None) -> Look:
    """One look: each running candidate's paired CI at 1 - alpha; drop those whose upper bound at
    1 - `drop_alpha` (default: alpha) is under the margin; stop once the leader passes the gate's score
    conditions (lower bound above the margin, Holm-adjusted p under alpha) and no running rival can still
    beat it, when every candidate is dropped, or at the last look.

    A rival can no longer beat the leader when it passes those conditions too (its decision is settled: the
    same gate decides it at the end), when its upper bound is under the leader's lower bound, or when the
    paired CI of (rival - leader) on the same cases lies below `min_effect` (an indifference zone: a rival
    at most that much better is no better by the gate's own measure).
    """
    n = len(baseline)
    bounds = candidate_bounds(scores, baseline, running, alpha, resamples, seed)
    level = alpha if drop_alpha is None else drop_alpha
    futile = {name: futility_bounds(scores[name] - baseline, level, resamples, seed) for name in running}
    dropped = {name: (f"dropped after {n}/{total} cases: upper bound {b.high:+.3f} < margin {min_effect:+.3f} "
                      f"(look {index}, CI at {1 - level:.2%})")
               for name, b in futile.items() if b.high < min_effect}
    alive = {name: b for name, b in bounds.items() if name not in dropped}
    leader = leader_of(alive)
    if not alive:
        return Look(index, n, alpha, bounds, dropped, "every candidate dropped", None)
    assert leader is not None
    best = alive[leader]
    if best.clears(min_effect, alpha) and all(
        rival_settled(alive[name], best, scores[name] - scores[leader], alpha, min_effect, resamples, seed)
        for name in alive if name != leader
    ):
        return Look(index, n, alpha, bounds, dropped,
                    f"leader {leader} clears the margin (lower bound {best.low:+.3f}) and no rival can catch up",
                    leader)
    return Look(index, n, alpha, bounds, dropped, "every held-out case evaluated" if last else None, leader)


def rival_settled(rival: Bounds, leader: Bounds, rival_minus_leader: np.ndarray, alpha: float, min_effect: float,
                  resamples: int, seed: int) -> bool:
    """Whether more cases could no longer show this rival better than the leader by more than the margin
    (see `judge_look`): a gain of `min_effect` or less is what the gate itself calls no gain."""
    if rival.clears(min_effect, alpha) or rival.high < leader.low:
        return True
    return paired_bounds(rival_minus_leader, alpha, resamples, seed).high < min_effect


@dataclass(frozen=True)
class Race:
    """How the race went: the looks, where it stopped, the cases each prompt was evaluated on."""

    sizes: list[int]  # planned cumulative held-out cases per look
    alphas: list[float]
    looks: list[Look]
    cases_evaluated: dict[str, int]  # per prompt (baseline included): held-out cases evaluated
    held_out: int  # held-out cases in the golden set
    # The held-out cases of the random order up to the stopping look: the paired statistics use these only.
    # (Past them, the high-severity cases are evaluated too, for the regression rule alone.)
    sample: frozenset[str] = frozenset()
    severe_extra: int = 0  # high-severity held-out cases evaluated after the stop, for the regression rule

    @property
    def stopped_at(self) -> int:
        return self.looks[-1].index if self.looks else 0

    @property
    def final_alpha(self) -> float:
        """The level the final gate uses: the stopping look's share of alpha."""
        return self.looks[-1].alpha if self.looks else (self.alphas[-1] if self.alphas else 0.0)

    @property
    def dropped(self) -> dict[str, str]:
        return {name: why for look in self.looks for name, why in look.dropped.items()}

    @property
    def stop_reason(self) -> str | None:
        return self.looks[-1].stop if self.looks else None


def drop_alpha(alpha: float, sizes: Sequence[int]) -> float:
    """The futility level of every look: the gate's alpha split equally over the looks."""
    return alpha / max(1, len(sizes))


def simulate_race(scores: Mapping[str, np.ndarray], baseline: np.ndarray, sizes: Sequence[int],
                  alphas: Sequence[float], min_effect: float, resamples: int, seed: int) -> Race:
    """The race on score arrays already in the random case order (for tests and benchmarks: the evaluation
    runs the same `judge_look` on the answers of each look's cases)."""
    running = list(scores)
    looks: list[Look] = []
    evaluated = dict.fromkeys([*scores, "baseline"], 0)
    for index, (size, alpha) in enumerate(zip(sizes, alphas, strict=True), start=1):
        for name in [*running, "baseline"]:
            evaluated[name] = size
        look = judge_look({name: scores[name][:size] for name in running}, baseline[:size], running, index,
                          sizes[-1], alpha, min_effect, resamples, seed, index == len(sizes),
                          drop_alpha(sum(alphas), sizes))
        looks.append(look)
        running = [name for name in running if name not in look.dropped]
        if look.stop:
            break
    return Race(list(sizes), list(alphas), looks, evaluated, sizes[-1] if sizes else 0)


def final_gate(diffs: np.ndarray, alpha: float, min_effect: float, resamples: int, seed: int,
               p_adjusted: float | None = None) -> bool:
    """The score part of the gate at the final look's level: CI lower bound above the margin and significant
    (Holm-adjusted p under alpha when given, else the candidate's own bootstrap p)."""
    found = stats.compare_paired(np.zeros(len(diffs)), diffs, 1 - alpha, resamples, seed)
    p = found.p_value if p_adjusted is None else p_adjusted
    return found.ci_low > min_effect and p < alpha
