"""Summarising an evaluation (pure): per-prompt aggregates, paired comparisons, Holm, the gate's decisions.

Decisions rest on the held-out cases only; the cases an optimizer saw are reported, never decided on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, TypedDict

import numpy as np
import pandas as pd

from promptloop.core.config import EvaluateSettings
from promptloop.domain.evaluation import (
    BaselineResult,
    CalibrationResult,
    CallCounts,
    CandidateResult,
    EvaluationResult,
    Flips,
    GuardResult,
    JudgeResult,
    SliceAgreement,
    SplitComparison,
    UsageResult,
)
from promptloop.domain.golden import GoldenCase
from promptloop.evaluate import stats
from promptloop.evaluate.gate import (
    Evidence,
    GuardCheck,
    PromptStats,
    decide,
    guard_checks,
    latency_check,
    license_problem,
)
from promptloop.evaluate.latency import ProbeResult, usable
from promptloop.evaluate.plan import BASELINE, Contender, EvalPlan
from promptloop.evaluate.run import Calibrated, EvalRun
from promptloop.evaluate.sequential import Race
from promptloop.llm.runner import Usage

LicenseOf = Callable[[str], str]


def _rate(frame: pd.DataFrame, column: str, mask: pd.Series | None = None) -> float | None:
    if column not in frame:
        return None
    values = frame.loc[mask, column] if mask is not None else frame[column]
    values = values.dropna()
    return float(values.astype(float).mean()) if len(values) else None


def prompt_stats(frame: pd.DataFrame) -> PromptStats:
    """Aggregates of one prompt's scored rows."""
    scored = frame.dropna(subset=["rubric_score"]) if "rubric_score" in frame else frame.iloc[0:0]
    format_valid = _rate(frame, "format_valid")
    return PromptStats(
        n=len(scored),
        mean_score=float(scored["rubric_score"].mean()) if len(scored) else math.nan,
        pass_rate=float(scored["rubric_passed"].astype(float).mean()) if len(scored) else math.nan,
        refusal_on_answerable=_rate(frame, "refused_answerable", frame["expected_behavior"] == "answer"),
        toxicity=_rate(frame, "toxic"),
        format_invalid=None if format_valid is None else 1 - format_valid,
        cost_per_1k_usd=float(frame["cost_usd"].mean() * 1000) if len(frame) else 0.0,
        latency_p95_ms=_p95(reported_latencies(frame)),
        judge_fail_rates={name: 1 - rate for name, rate in guard_pass_rates(frame).items()},
        wall_latency_p95_ms=_p95(frame["latency_ms"].astype(float)) if "latency_ms" in frame else None,
    )


def _p95(values: pd.Series | None) -> float | None:
    return float(np.percentile(values, 95)) if values is not None and len(values) else None


def reported_latencies(frame: pd.DataFrame) -> pd.Series | None:
    """The provider-reported latency of each case (indexed by case id); None unless every answer has one.

    A prompt whose answers only partly report a time has no latency the gate may use: the p95 of the part
    that reports would not be the prompt's.
    """
    if "provider_ms" not in frame or not len(frame) or frame["provider_ms"].isna().any():
        return None
    return frame.set_index("case_id")["provider_ms"].astype(float)


@dataclass(frozen=True)
class Latency:
    """The latency figures the gate uses, per prompt name: the p95, and the one-sided paired p-value of a
    candidate's rise over the baseline; `source` says where they come from (None: nowhere, no guard)."""

    p95: dict[str, float | None]
    rise_p: dict[str, float | None]
    source: Literal["provider", "probe"] | None
    probe_rounds: int = 0


def latency_figures(plan: EvalPlan, by_prompt: dict[str, pd.DataFrame], probe: ProbeResult | None) -> Latency:
    """From the probe when there was one (some answer had no provider time), else the provider's times."""
    names = [c.name for c in plan.runnable]
    if probe is not None:
        if not usable(probe, plan.settings.latency_probe):
            return Latency(dict.fromkeys(names), dict.fromkeys(names), None, probe.measured)
        rounds = probe.rounds
        return Latency({n: _p95(pd.Series(rounds[n])) for n in names},
                       {n: stats.rise_p_value(rounds[BASELINE], rounds[n]) for n in names if n != BASELINE},
                       "probe", probe.measured)
    base = by_prompt[BASELINE]
    p95 = {n: _p95(reported_latencies(by_prompt[n])) for n in names}
    return Latency(p95, {n: latency_rise_p(base, by_prompt[n]) for n in names if n != BASELINE},
                   "provider" if all(v is not None for v in p95.values()) else None)


def with_latency(prompt: PromptStats, latency: Latency, name: str) -> PromptStats:
    """The prompt's stats with the latency p95 the gate uses."""
    return replace(prompt, latency_p95_ms=latency.p95.get(name))


def latency_rise_p(base: pd.DataFrame, cand: pd.DataFrame) -> float | None:
    """One-sided paired p-value that the candidate's reported latencies exceed the baseline's on the same cases."""
    before, after = reported_latencies(base), reported_latencies(cand)
    if before is None or after is None:
        return None
    both = pd.concat([before.rename("b"), after.rename("c")], axis=1, join="inner")
    return stats.rise_p_value(both["b"], both["c"]) if len(both) else None


def guard_pass_rates(frame: pd.DataFrame) -> dict[str, float]:
    """Guard judge file name -> share of the judged answers it passed (columns `guard_<name>_passed`)."""
    rates = {}
    for column in frame.columns:
        if column.startswith("guard_") and column.endswith("_passed"):
            rate = _rate(frame, column)
            if rate is not None:
                rates[column.removeprefix("guard_").removesuffix("_passed")] = rate
    return rates


# Kinds of answer a judge may favour or punish regardless of quality (ProxyMetrics.traits): a candidate
# that changes how often its answers have one is judged on a kind the labels must cover.
ANSWER_TRAITS = {"cites": "cite sources"}


@dataclass(frozen=True)
class Calibration:
    """Judge-human agreement on the labelled cases, and whether it is enough to decide."""

    labelled: int
    judged: int
    accuracy: float | None
    kappa: float | None
    applied: bool
    problem: str | None
    decided_by: str = "kappa"
    up: int = 0
    down: int = 0
    balanced_accuracy: float | None = None
    uncalibrated: bool = False
    by_slice: dict[str, SliceAgreement] = field(default_factory=dict)
    records: tuple[Calibrated, ...] = ()

    def result(self) -> CalibrationResult:
        return CalibrationResult(
            labelled=self.labelled, judged=self.judged, accuracy=self.accuracy, kappa=self.kappa,
            applied=self.applied, decided_by="kappa" if self.decided_by == "kappa" else "balanced_accuracy",
            problem=self.problem, up=self.up, down=self.down, balanced_accuracy=self.balanced_accuracy,
            uncalibrated=self.uncalibrated, by_slice=self.by_slice,
        )


def too_few_labels(up: int, down: int, settings: EvaluateSettings) -> str | None:
    """Why the labels cannot measure the judge: fewer than `min_labels_per_class` of a class, or too few in all."""
    need = settings.min_labels_per_class
    if min(up, down) >= need and up + down >= settings.min_calibration_cases:
        return None
    return (f"judge not calibrated: too few labels ({up} 👍, {down} 👎; need {need} of each and "
            f"{settings.min_calibration_cases} in all)")


def slice_agreement(pairs: list[tuple[Calibrated, bool]]) -> dict[str, SliceAgreement]:
    """Agreement per golden-set slice of (labelled case, the judge's verdict on it): reported, never gated."""
    found: dict[str, SliceAgreement] = {}
    for name in sorted({r.slice for r, _ in pairs}):
        part = [(r.human_pass, verdict) for r, verdict in pairs if r.slice == name]
        a = stats.agreement([h for h, _ in part], [v for _, v in part])
        found[name] = SliceAgreement(judged=a.n, up=a.up, down=a.down, accuracy=a.accuracy,
                                     balanced_accuracy=a.balanced_accuracy, kappa=a.kappa)
    return found


def calibration(records: list[Calibrated], settings: EvaluateSettings) -> Calibration:
    """Agreement on the human-labelled cases, judged against chance; the gate holds on a judge it cannot trust.

    Too few labels of a class (`min_labels_per_class`) measure nothing: hold, unless the app allows
    an uncalibrated judge. Kappa decides when both classes have `min_calibration_per_class` labels;
    with fewer of one class kappa swings wildly, so balanced accuracy (the mean of the judge's recall
    on 👍 and on 👎) decides: a judge that fails (or passes) everything scores 0.5 however skewed the labels.
    """
    judged = [r for r in records if r.judge_pass is not None]
    up = sum(r.human_pass for r in judged)
    found = stats.agreement([r.human_pass for r in judged], [bool(r.judge_pass) for r in judged]) if judged else None
    measured = Calibration(len(records), len(judged), found.accuracy if found else None,
                           found.kappa if found else None, False, None, "balanced_accuracy", up, len(judged) - up,
                           found.balanced_accuracy if found else None, False,
                           slice_agreement([(r, bool(r.judge_pass)) for r in judged]), tuple(records))
    scarce = too_few_labels(up, len(judged) - up, settings)
    if scarce or found is None:
        if settings.allow_uncalibrated:
            return dataclasses.replace(measured, uncalibrated=True)
        return dataclasses.replace(measured, problem=scarce)
    use_kappa = found.kappa is not None and min(up, len(judged) - up) >= settings.min_calibration_per_class
    return dataclasses.replace(measured, applied=True, problem=calibration_problem(found, use_kappa, settings),
                               decided_by="kappa" if use_kappa else "balanced_accuracy")


def guard_agreement(records: list[Calibrated], guards: list[str]) -> dict[str, CalibrationResult]:
    """Each guard judge's agreement with people on the labelled answers, per slice too: reported, never gated
    on (a guard compares a candidate with the baseline; its calibration tells how far to trust that)."""
    found = {}
    for name in guards:
        judged = [(r, bool(r.guards[name])) for r in records if r.guards.get(name) is not None]
        agreement = stats.agreement([r.human_pass for r, _ in judged], [j for _, j in judged]) if judged else None
        found[name] = CalibrationResult(labelled=len(records), judged=len(judged),
                                        accuracy=agreement.accuracy if agreement else None,
                                        kappa=agreement.kappa if agreement else None, applied=False,
                                        decided_by="balanced_accuracy", problem=None,
                                        up=agreement.up if agreement else 0, down=agreement.down if agreement else 0,
                                        balanced_accuracy=agreement.balanced_accuracy if agreement else None,
                                        by_slice=slice_agreement(judged))
    return found


def calibration_problem(found: stats.Agreement, use_kappa: bool, settings: EvaluateSettings) -> str | None:
    """Why the judge may not decide: kappa (or, with too few labels of one class for kappa, balanced
    accuracy) under its floor."""
    if use_kappa and found.kappa is not None and found.kappa < settings.min_judge_kappa:
        return (f"judge not calibrated: kappa {found.kappa:.2f} < {settings.min_judge_kappa:.2f} on {found.n} "
                f"labelled cases ({found.up} 👍, {found.down} 👎)")
    balanced = found.balanced_accuracy
    if not use_kappa and (balanced is None or balanced < settings.min_judge_accuracy):
        shown = "n/a" if balanced is None else f"{balanced:.2f}"
        return (f"judge not calibrated: balanced accuracy {shown} < {settings.min_judge_accuracy:.2f} on "
                f"{found.n} labelled cases ({found.up} 👍, {found.down} 👎: too few of one class for kappa)")
    return None


def trait_problem(base_frame: pd.DataFrame, cand_frame: pd.DataFrame, judge: Calibration,
                  settings: EvaluateSettings) -> str | None:
    """Why the judge is not calibrated on the kind of answer this candidate changes: a judge that rewards
    citing whatever is cited promotes a citing candidate, and labels on answers that never cite cannot
    see it. A trait whose share moves by `calibration_trait_shift` or more needs `min_labels_per_class`
    labels of each class on answers with that trait, and the judge's balanced accuracy on them."""
    for trait, words in ANSWER_TRAITS.items():
        before, after = _rate(base_frame, trait), _rate(cand_frame, trait)  # None: the checks do not tell
        if before is None or after is None or abs(after - before) < settings.calibration_trait_shift:
            continue
        labelled = [r for r in judge.records if r.judge_pass is not None and r.traits.get(trait)]
        up = sum(r.human_pass for r in labelled)
        down = len(labelled) - up
        shift = f"{after:.0%} of its answers {words} (baseline {before:.0%})"
        if min(up, down) < settings.min_labels_per_class:
            if settings.allow_uncalibrated:
                continue
            return (f"judge not calibrated on answers that {words}: {shift}, but labelled answers that {words} "
                    f"are {up} 👍, {down} 👎 (need {settings.min_labels_per_class} of each)")
        found = stats.agreement([r.human_pass for r in labelled], [bool(r.judge_pass) for r in labelled])
        if found.balanced_accuracy is not None and found.balanced_accuracy < settings.min_judge_accuracy:
            return (f"judge not calibrated on answers that {words}: {shift}; on the {found.n} labelled answers "
                    f"that {words} its balanced accuracy is {found.balanced_accuracy:.2f} < "
                    f"{settings.min_judge_accuracy:.2f}")
    return None


def judge_result(frame: pd.DataFrame, settings: EvaluateSettings, judge: Calibration) -> JudgeResult:
    """Position consistency of the pairwise judge, the rubric judge's own variance, its calibration."""
    consistent = frame["pairwise_consistent"].dropna() if "pairwise_consistent" in frame else pd.Series(dtype=object)
    variance = frame["rubric_judge_var"].dropna() if "rubric_judge_var" in frame else pd.Series(dtype=float)
    return JudgeResult(model=settings.judge_model, samples=settings.judge_samples,
                       position_consistency=float(consistent.astype(float).mean()) if len(consistent) else None,
                       pairwise_judged=int(len(consistent)),
                       rubric_variance=float(variance.mean()) if len(variance) else None,
                       calibration=judge.result())


@dataclass(frozen=True)
class Comparison:
    """A candidate against the baseline on the cases both were scored on."""

    paired: stats.PairedComparison | None
    mcnemar_p: float | None
    mde: float
    regressions: list[str]  # high-severity flips confirmed by re-judging (or not re-judged): they hold
    flips: Flips
    pairwise_win_rate: float | None
    unconfirmed: list[str] = dataclasses.field(default_factory=list)  # flips fresh verdicts did not confirm
    diffs_sd: float = math.nan


def no_comparison() -> Comparison:
    """What is known of a candidate without paired scores: nothing."""
    return Comparison(None, None, math.inf, [], Flips(), None)


def confirmed_regressions(broken: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(confirmed, unconfirmed) high-severity flips. A flip that was not re-judged (rejudge_samples 0, or
    re-judging did not run) counts as confirmed: it holds, as it did before re-judging existed."""
    column = "rejudge_confirmed_c"
    if column not in broken:
        return sorted(broken["case_id"]), []
    unconfirmed = broken[column].map(lambda found: found is not None and not pd.isna(found) and not bool(found))
    return sorted(broken.loc[~unconfirmed, "case_id"]), sorted(broken.loc[unconfirmed, "case_id"])


def compare(base: pd.DataFrame, cand: pd.DataFrame, settings: EvaluateSettings, comparisons: int = 1,
            sample: frozenset[str] | None = None) -> Comparison:
    """Paired statistics of one candidate against the baseline (one of `comparisons` under Holm's correction).

    With a `sample` (a sequential race's random cases) the statistics use those cases only; the
    high-severity regression rule and the flips use every case both were evaluated on."""
    if "rubric_score" not in base or "rubric_score" not in cand:  # no verdict at all: nothing to compare
        return no_comparison()
    every = base.merge(cand, on="case_id", suffixes=("_b", "_c")).dropna(subset=["rubric_score_b", "rubric_score_c"])
    both = every if sample is None else every[every["case_id"].isin(sample)]
    if both.empty:
        return no_comparison()
    paired = stats.compare_paired(both["rubric_score_b"], both["rubric_score_c"], settings.confidence,
                                  settings.bootstrap_resamples, settings.seed)
    passed_b, passed_c = both["rubric_passed_b"].astype(bool), both["rubric_passed_c"].astype(bool)
    diffs = both["rubric_score_c"] - both["rubric_score_b"]
    sd = float(diffs.std(ddof=1)) if len(both) > 1 else math.nan
    every_b, every_c = every["rubric_passed_b"].astype(bool), every["rubric_passed_c"].astype(bool)
    broken = every.loc[every_b & ~every_c]
    confirmed, unconfirmed = confirmed_regressions(broken.loc[broken["severity_b"].isin(settings.high_severity)])
    judged = both["pairwise_score_c"].dropna() if "pairwise_score_c" in both else pd.Series(dtype=float)
    win_rate = float(judged.mean()) if len(judged) else None  # None: not judged (a race judges the decided only)
    return Comparison(
        paired=paired, mcnemar_p=stats.mcnemar(passed_b, passed_c)[2],
        mde=stats.gate_mde(sd, len(both), settings.min_effect, 1 - settings.confidence, comparisons=comparisons)
        if sd > 0 else math.nan,
        regressions=confirmed, flips=Flips(fixed=sorted(every.loc[~every_b & every_c, "case_id"]),
                                           broken=sorted(broken["case_id"])),
        pairwise_win_rate=win_rate, unconfirmed=unconfirmed, diffs_sd=sd,
    )


def incomplete_reasons(frame: pd.DataFrame, n_cases: int, stopped: str | None) -> list[str]:
    """Why a prompt's results can't be trusted: a stopped run, missing cases, judge failures."""
    reasons = [f"evaluation stopped: {stopped}"] if stopped else []
    failures = int(frame["judge_failure"].notna().sum()) if len(frame) else 0
    if failures:
        reasons.append(f"{failures} judge failure(s) (malformed verdicts after retries)")
    missing = n_cases - len(frame)
    if missing > 0 and not stopped:
        reasons.append(f"{missing} case(s) without a result")
    return reasons


def call_counts(usage: Usage) -> CallCounts:
    """One purpose's calls (or all of them, added up), as reported."""
    return CallCounts(calls=usage.calls, cache_hits=usage.cache_hits, retries=usage.retries, repairs=usage.repairs,
                      failures=usage.failures, invalid=usage.invalid,
                      retry_causes=dict(usage.retry_causes.most_common()), prompt_tokens=usage.prompt_tokens,
                      completion_tokens=usage.completion_tokens, cost_usd=round(usage.cost_usd, 6))


def usage_summary(usage: dict[str, Usage]) -> UsageResult:
    """Calls, cache hits, retries, repairs, tokens and cost: overall and per purpose (app:<prompt>, judge:<prompt>)."""
    total = Usage()
    for used in usage.values():
        total.add(used)
    per = {purpose: call_counts(u) for purpose, u in sorted(usage.items())}
    return UsageResult(**call_counts(total).model_dump(), by_purpose=per)


def decision_split(cases: list[GoldenCase]) -> tuple[list[GoldenCase], list[GoldenCase]]:
    """(cases the decision rests on, cases an optimizer saw). The decision uses held-out cases only,
    so a candidate is judged on cases its optimizer never saw; with no optimisation split, all cases."""
    seen = [c for c in cases if c.split == "optimize"]
    held_out = [c for c in cases if c.split == "holdout"]
    return (held_out, seen) if seen else (cases, [])


def split_comparison(frame: pd.DataFrame, name: str, cases: list[GoldenCase],
                     settings: EvaluateSettings) -> SplitComparison | None:
    """The candidate's gain on the optimisation split: reported, never decided on (it may be overfit)."""
    if not cases or not len(frame):
        return None
    ids = {c.id for c in cases}
    part = frame[frame["case_id"].isin(ids)]
    found = compare(part[part["prompt"] == BASELINE], part[part["prompt"] == name], settings).paired
    if found is None:
        return None
    return SplitComparison(n=found.n, diff=found.mean_diff, ci_low=found.ci_low, ci_high=found.ci_high)


@dataclass(frozen=True)
class Power:
    """The smallest gain the gate passes with 80% power on this golden set, and the cases a target needs."""

    mde: float | None
    cases_for_target: int | None  # paired cases for the MDE to reach evaluate.target_mde (None: unreachable)
    paired: bool  # from the candidates' paired differences (else the no-correlation planning value)


def diffs_spread(base: pd.DataFrame, comparisons: list[Comparison]) -> tuple[float, bool]:
    """The sd of a paired difference: pooled over the candidates' paired differences (their variances
    averaged) or, with none, the no-correlation planning value sqrt(2) * sd of the baseline's scores."""
    spreads = [c.diffs_sd for c in comparisons if math.isfinite(c.diffs_sd) and c.diffs_sd > 0]
    if spreads:
        return math.sqrt(float(np.mean(np.square(spreads)))), True
    scores = base["rubric_score"].dropna() if "rubric_score" in base else pd.Series(dtype=float)
    return (math.sqrt(2) * float(scores.std(ddof=1)) if len(scores) > 1 else math.nan), False


def golden_set_power(base: pd.DataFrame, comparisons: list[Comparison], settings: EvaluateSettings) -> Power:
    """The gate's MDE at the golden set's size (margin `min_effect` and Holm's correction included)."""
    sd, paired = diffs_spread(base, comparisons)
    n = int(base["rubric_score"].notna().sum()) if "rubric_score" in base else 0
    if not sd > 0 or n < 2:
        return Power(None, None, paired)
    alpha, m = 1 - settings.confidence, max(1, len(comparisons))
    return Power(stats.gate_mde(sd, n, settings.min_effect, alpha, comparisons=m),
                 stats.cases_for_mde(sd, settings.target_mde, settings.min_effect, alpha, comparisons=m), paired)


def finite(value: float | None) -> float | None:
    """NaN/inf as None, so the result is valid JSON."""
    return None if value is None or not math.isfinite(value) else value


class StatsFields(TypedDict, total=False):
    """A prompt's aggregates as result fields."""

    n: int
    mean_score: float | None
    pass_rate: float | None
    refusal_on_answerable: float | None
    toxicity: float | None
    format_invalid: float | None
    cost_per_1k_usd: float | None
    latency_p95_ms: float | None
    wall_latency_p95_ms: float | None


def stats_fields(prompt: PromptStats | None) -> StatsFields:
    """A prompt's aggregates (none without scores), NaN as None."""
    if prompt is None:
        return StatsFields()
    return StatsFields(n=prompt.n, mean_score=finite(prompt.mean_score), pass_rate=finite(prompt.pass_rate),
                       refusal_on_answerable=finite(prompt.refusal_on_answerable), toxicity=finite(prompt.toxicity),
                       format_invalid=finite(prompt.format_invalid), cost_per_1k_usd=finite(prompt.cost_per_1k_usd),
                       latency_p95_ms=finite(prompt.latency_p95_ms),
                       wall_latency_p95_ms=finite(prompt.wall_latency_p95_ms))


def baseline_result(contender: Contender, prompt: PromptStats | None, incomplete: list[str]) -> BaselineResult:
    """The baseline's identity and aggregates."""
    return BaselineResult(name=contender.name, source=contender.source, version=contender.prompt.version,
                          prompt_hash=contender.prompt.content_hash, model=contender.model,
                          incomplete=incomplete, **stats_fields(prompt))


@dataclass(frozen=True)
class BaselineEvidence:
    """What every candidate's decision shares: the baseline's results, the judge's calibration, the run."""

    plan: EvalPlan
    stats: PromptStats | None
    problems: list[str]
    judge: Calibration
    stopped: str | None
    n_cases: int
    latency: Latency
    frame: pd.DataFrame
    gate_alpha: float = 0.05  # the score gate's level: 1 - confidence, or the race's final look's share of it
    cases_of: dict[str, int] = field(default_factory=dict)  # candidate -> cases it was due (the race's drops)


def evidence_for(base: BaselineEvidence, contender: Contender, frame: pd.DataFrame, comparison: Comparison | None,
                 p_adjusted: float | None, license_class: str) -> tuple[Evidence, PromptStats | None]:
    """Everything the gate looks at for one candidate, and the candidate's aggregates."""
    plan = base.plan
    cand_stats = with_latency(prompt_stats(frame), base.latency, contender.name) if len(frame) else None
    paired = comparison.paired if comparison else None
    guards: list[GuardCheck] = (
        guard_checks(base.stats, cand_stats, plan.settings.guards, {j.name: j.max_drop for j in plan.guard_judges})
        if base.stats and cand_stats else []
    )
    latency = (latency_check(base.stats, cand_stats, plan.settings.guards, base.latency.rise_p.get(contender.name),
                             1 - plan.settings.confidence) if base.stats and cand_stats else None)
    if latency is not None:
        guards.append(latency)
    evidence = Evidence(
        incomplete=sorted(set(base.problems) | set(incomplete_reasons(frame, base.cases_of.get(contender.name,
                                                                                               base.n_cases),
                                                                      base.stopped))),
        identical=(
            contender.prompt.content_hash == plan.baseline.prompt.content_hash
            and contender.model == plan.baseline.model
        ),
        ci_low=paired.ci_low if paired else None,
        p_adjusted=p_adjusted,
        regressions=comparison.regressions if comparison else [],
        guards=guards,
        judge_problem=base.judge.problem or trait_problem(base.frame, frame, base.judge, plan.settings),
        license_problem=license_problem(
            plan.baseline.model, contender.model, license_class, plan.app_settings.commercial
        ),
    )
    return evidence, cand_stats


class PairedFields(TypedDict, total=False):
    """The paired comparison's figures as result fields."""

    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float
    wins: int
    ties: int
    losses: int


def paired_fields(paired: stats.PairedComparison | None) -> PairedFields:
    """The paired difference, its CI and p-value, and the case counts (none without paired scores)."""
    if paired is None:
        return PairedFields()
    return PairedFields(diff=finite(paired.mean_diff), ci_low=finite(paired.ci_low), ci_high=finite(paired.ci_high),
                        p_value=paired.p_value, wins=paired.wins, ties=paired.ties, losses=paired.losses)


def candidate_result(base: BaselineEvidence, contender: Contender, frame: pd.DataFrame, comparison: Comparison | None,
                     p_adjusted: float | None, license_class: str) -> CandidateResult:
    """One candidate's line of the decision table."""
    evidence, cand_stats = evidence_for(base, contender, frame, comparison, p_adjusted, license_class)
    decision, reasons = decide(evidence, base.plan.settings.min_effect, base.gate_alpha)
    found = comparison or no_comparison()
    return CandidateResult(
        name=contender.name, source=contender.source, version=contender.prompt.version,
        prompt_hash=contender.prompt.content_hash, model=contender.model, **stats_fields(cand_stats),
        license=license_class, **paired_fields(found.paired), p_adjusted=p_adjusted, mcnemar_p=found.mcnemar_p,
        pairwise_win_rate=found.pairwise_win_rate, mde=finite(found.mde), flips=found.flips,
        high_severity_regressions=evidence.regressions, unconfirmed_regressions=found.unconfirmed,
        guards=[GuardResult(metric=g.metric, baseline=g.baseline, candidate=g.candidate, limit=g.limit, ok=g.ok,
                            p_value=g.p_value) for g in evidence.guards],
        decision=decision, reasons=reasons,
    )


def blocked_result(contender: Contender, reason: str, license_class: str) -> CandidateResult:
    """A candidate that was not run (its model may not see the app's data): held, with the reason."""
    return CandidateResult(name=contender.name, source=contender.source, version=contender.prompt.version,
                           prompt_hash=contender.prompt.content_hash, model=contender.model, license=license_class,
                           decision="hold", reasons=[reason])


def comparisons_of(plan: EvalPlan, by_prompt: dict[str, pd.DataFrame], settings: EvaluateSettings | None = None,
                   sample: frozenset[str] | None = None) -> tuple[dict[str, Comparison | None], dict[str, float]]:
    """Each candidate against the baseline (CIs at `settings.confidence`, the plan's unless given), and the
    Holm-adjusted p-values of those that could be tested."""
    settings = settings or plan.settings
    base = by_prompt[BASELINE]
    compared = [c for c in plan.candidates if c.name not in plan.blocked and len(by_prompt[c.name]) and len(base)]
    comparisons: dict[str, Comparison | None] = {c.name: None for c in plan.candidates if c.name not in plan.blocked}
    comparisons |= {c.name: compare(base, by_prompt[c.name], settings, len(compared), sample) for c in compared}
    testable = [(name, cmp.paired.p_value) for name, cmp in comparisons.items() if cmp is not None and cmp.paired]
    adjusted = dict(zip([name for name, _ in testable], stats.holm([p for _, p in testable]), strict=True))
    return comparisons, adjusted


def race_gate(plan: EvalPlan, race: Race | None) -> tuple[EvaluateSettings, float]:
    """The settings the paired comparisons use and the gate's alpha: the plan's, or after a race the final
    look's share of alpha (a CI at that level, Holm at that level), so looking early promotes no more often."""
    if race is None:
        return plan.settings, 1 - plan.settings.confidence
    return plan.settings.model_copy(update={"confidence": 1 - race.final_alpha}), race.final_alpha


def evaluated_cases(cases: list[GoldenCase], rows: pd.DataFrame, race: Race | None) -> list[GoldenCase]:
    """The cases the baseline was evaluated on: all of them, or after a race the looks' cases."""
    if race is None or not len(rows):
        return cases
    done = set(rows.loc[rows["prompt"] == BASELINE, "case_id"])
    return [c for c in cases if c.id in done]


def raced(candidate: CandidateResult, race: Race | None) -> CandidateResult:
    """A candidate the race dropped is held, with the look that dropped it first among the reasons."""
    why = race.dropped.get(candidate.name) if race else None
    if why is None or candidate.decision == "incomplete":
        return candidate
    return candidate.model_copy(update={"decision": "hold", "reasons": [why, *candidate.reasons]})


def held_out_due(race: Race | None) -> dict[str, int]:
    """Held-out cases each prompt was due in the race (a dropped candidate: up to the look that dropped it)."""
    return dict(race.cases_evaluated) if race else {}


def summarise(plan: EvalPlan, run: EvalRun, license_of: LicenseOf, race: Race | None = None) -> EvaluationResult:
    """Per-prompt stats, paired comparisons, Holm-adjusted p-values and the gate's decision per candidate.

    After a sequential race (`race`) the same rules run on the cases each prompt was evaluated on, at the
    final look's level."""
    settings = plan.settings
    everything = pd.DataFrame(run.rows)
    decided, seen = (evaluated_cases(part, everything, race) for part in decision_split(plan.cases))
    gate_settings, gate_alpha = race_gate(plan, race)
    frame = everything[everything["case_id"].isin({c.id for c in decided})] if len(everything) else everything
    by_prompt = {c.name: frame[frame["prompt"] == c.name] if len(frame) else frame for c in plan.contenders}
    base_frame = by_prompt[BASELINE]
    latency = latency_figures(plan, by_prompt, run.latency_probe)
    base = BaselineEvidence(
        plan,
        with_latency(prompt_stats(base_frame), latency, BASELINE) if len(base_frame) else None,
        incomplete_reasons(base_frame, len(decided), run.stopped),
        calibration(run.calibration, settings),
        run.stopped,
        len(decided),
        latency,
        base_frame,
        gate_alpha,
        held_out_due(race),
    )
    comparisons, adjusted = comparisons_of(plan, by_prompt, gate_settings, race.sample if race else None)
    candidates = [blocked_result(c, plan.blocked[c.name], license_of(c.model)) if c.name in plan.blocked
                  else raced(candidate_result(base, c, by_prompt[c.name], comparisons[c.name], adjusted.get(c.name),
                                              license_of(c.model)), race) for c in plan.candidates]
    for contender, candidate in zip(plan.candidates, candidates, strict=True):
        candidate.optimize_split = split_comparison(everything, contender.name, seen, settings)
    power = golden_set_power(base_frame, [c for c in comparisons.values() if c is not None and c.paired], settings)
    return EvaluationResult(
        app=plan.app, cases=len(plan.cases), cases_decided=len(race.sample) if race else len(decided),
        cases_optimize=len(seen),
        complete=not base.problems and all(c.decision != "incomplete" for c in candidates), stopped=run.stopped,
        baseline=baseline_result(plan.baseline, base.stats, base.problems), candidates=candidates,
        judge=judge_result(frame, settings, base.judge).model_copy(update={
            "primary": next((j.name for j in plan.judges if j.role == "primary" and j.kind != "pairwise"),
                            "rubric (built-in)"),
            "guard_agreement": guard_agreement(run.calibration, [j.name for j in plan.guard_judges])}),
        judge_failures=int(frame["judge_failure"].notna().sum()) if len(frame) else 0,
        mde=power.mde, mde_paired=power.paired, target_mde=settings.target_mde,
        cases_for_target_mde=power.cases_for_target,
        latency_source=latency.source,
        latency_probe_rounds=latency.probe_rounds,
    )
