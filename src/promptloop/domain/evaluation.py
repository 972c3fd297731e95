"""The result of an evaluation: each prompt's aggregates, each candidate's comparison and decision.

`promptloop evaluate --json` prints `EvaluationResult.model_dump(mode="json")`; improve keeps it in
its outcome, deploy puts its report in the pull request, and MLflow gets the per-prompt parts.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Decision = Literal["promote", "hold", "incomplete"]


class Record(BaseModel):
    """Base of every result: unknown keys are errors, so a stale or hand-edited file fails to load."""

    model_config = ConfigDict(extra="forbid")


class PromptResult(Record):
    """One evaluated prompt: who it is, then its aggregates over the decided cases (absent without scores)."""

    name: str
    source: str
    version: int
    prompt_hash: str
    model: str
    n: int | None = None
    mean_score: float | None = None
    pass_rate: float | None = None
    refusal_on_answerable: float | None = None
    toxicity: float | None = None
    format_invalid: float | None = None
    cost_per_1k_usd: float | None = None
    latency_p95_ms: float | None = Field(default=None, description="p95 of the provider-reported latencies (what the "
                                         "gate uses); none when the provider reported no time")
    wall_latency_p95_ms: float | None = Field(default=None, description="p95 of the wall-clock latencies measured "
                                              "during the evaluation, under its load: informational, not used by "
                                              "the gate")
    license: str | None = None
    registry_version: int | None = Field(default=None, description="its version in the MLflow prompt registry")
    registry_name: str | None = Field(default=None, description="the registry prompt that version belongs to: the "
                                      "app's for the baseline and the winner, `<app>-candidates` for the others")


class BaselineResult(PromptResult):
    """The baseline, and why its results cannot be trusted (empty when they can)."""

    incomplete: list[str] = Field(default_factory=list)


class Flips(Record):
    """Case ids that pass in one prompt and fail in the other."""

    fixed: list[str] = Field(default_factory=list)
    broken: list[str] = Field(default_factory=list)


class GuardResult(Record):
    """A guard metric of a candidate against the baseline and the limit it must stay under."""

    metric: str
    baseline: float
    candidate: float
    limit: float
    ok: bool
    p_value: float | None = Field(default=None, description="one-sided paired p-value of the rise, for guards "
                                  "that need one to be significant (latency)")


class SplitComparison(Record):
    """The paired score difference on a subset of cases, with its confidence interval."""

    n: int
    diff: float
    ci_low: float
    ci_high: float


class CandidateResult(PromptResult):
    """A candidate against the baseline: the paired statistics, the gate's decision and its reasons."""

    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    mcnemar_p: float | None = None
    wins: int = 0
    ties: int = 0
    losses: int = 0
    pairwise_win_rate: float | None = None
    mde: float | None = None
    flips: Flips = Field(default_factory=Flips)
    high_severity_regressions: list[str] = Field(
        default_factory=list, description="high-severity pass -> fail flips confirmed by re-judging: they hold")
    unconfirmed_regressions: list[str] = Field(
        default_factory=list, description="high-severity flips fresh verdicts did not confirm: reported, not held")
    guards: list[GuardResult] = Field(default_factory=list)
    decision: Decision
    reasons: list[str] = Field(default_factory=list)
    optimize_split: SplitComparison | None = Field(
        default=None, description="the gain on the cases the optimizer saw: reported, never decided on")


class SliceAgreement(Record):
    """A judge's agreement with people on the labelled cases of one golden-set slice (reported)."""

    judged: int
    up: int
    down: int
    accuracy: float | None
    balanced_accuracy: float | None
    kappa: float | None


class CalibrationResult(Record):
    """Judge-human agreement on the labelled cases, and whether the gate uses it."""

    labelled: int
    judged: int
    accuracy: float | None
    kappa: float | None
    applied: bool
    decided_by: Literal["kappa", "balanced_accuracy", "accuracy"]
    problem: str | None
    up: int = 0
    down: int = 0
    balanced_accuracy: float | None = None
    uncalibrated: bool = Field(
        default=False, description="too few labels to measure the judge, and the app allows deciding anyway")
    by_slice: dict[str, SliceAgreement] = Field(default_factory=dict)


class JudgeResult(Record):
    """How far the judge can be trusted on this run."""

    model: str
    samples: int
    position_consistency: float | None
    pairwise_judged: int
    rubric_variance: float | None
    calibration: CalibrationResult
    primary: str = "rubric (built-in)"  # or the app's primary judge file
    guard_agreement: dict[str, CalibrationResult] = Field(
        default_factory=dict, description="each guard judge file's agreement with people (reported, not gated)")


class CallCounts(Record):
    """LLM calls of one purpose (or all of them): paid, from the cache, retried, repaired, failed; tokens, cost.

    `retries` answer provider errors (`retry_causes` names them); `repairs` are follow-up turns for
    answers that could not be read (`invalid` counts those answers).
    """

    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    repairs: int = 0
    failures: int = 0
    invalid: int = 0
    retry_causes: dict[str, int] = Field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class UsageResult(CallCounts):
    """All calls of an evaluation, and per purpose (`app:<prompt>`, `judge:<prompt>`, `judge:calibration`)."""

    by_purpose: dict[str, CallCounts] = Field(default_factory=dict)


class LookResult(Record):
    """One look of the sequential race."""

    look: int
    cases: int = Field(description="held-out cases evaluated by this look")
    confidence: float = Field(description="the CIs' level at this look (its share of the gate's alpha)")
    bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="running candidate -> (lower, upper) bound of its paired CI")
    dropped: list[str] = Field(default_factory=list)
    leader: str | None = None
    stop: str | None = None


class SequentialResult(Record):
    """How the sequential race went and what it spent against a full evaluation."""

    looks_planned: int
    stopped_at_look: int
    stop_reason: str | None = None
    spending: str = "bonferroni"
    final_confidence: float = Field(description="the level of the final gate's CIs and Holm test")
    held_out: int = Field(description="held-out cases in the golden set")
    cases_evaluated: dict[str, int] = Field(
        default_factory=dict, description="prompt -> held-out cases it was evaluated on")
    dropped: dict[str, str] = Field(default_factory=dict, description="candidate -> why it left the race")
    high_severity_after_stop: int = Field(
        default=0, description="high-severity held-out cases evaluated after the stop, for the regression rule only")
    pairs_evaluated: int = Field(default=0, description="(prompt, case) pairs answered and scored")
    pairs_full: int = Field(default=0, description="(prompt, case) pairs a full evaluation answers and scores")
    calls_spent: int = Field(default=0, description="LLM requests of this evaluation (calls + cache hits)")
    calls_full_estimate: int = Field(
        default=0, description="requests a full evaluation would make: the per-pair requests scaled to every "
        "pair, plus the calibration and re-judging requests as they were")
    looks: list[LookResult] = Field(default_factory=list)
    decided: list[str] = Field(
        default_factory=list, description="the candidates the gate promotes after the race (or its leader when "
        "none is): what the decision does not need is evaluated for these only (sequential pairwise / "
        "optimize_split `decided`)")
    pairwise_skipped: list[str] = Field(
        default_factory=list, description="candidates whose pairwise judge did not run (the race decided without it)")
    optimize_skipped: list[str] = Field(
        default_factory=list, description="candidates not evaluated on the optimizer's cases (reported only)")


class EvaluationResult(Record):
    """The baseline and every candidate over the golden set, with the decision per candidate."""

    app: str
    cases: int
    cases_decided: int
    cases_optimize: int
    complete: bool
    stopped: str | None
    baseline: BaselineResult
    candidates: list[CandidateResult]
    judge: JudgeResult
    judge_failures: int
    mde: float | None = Field(description="the smallest gain the gate reliably passes on this golden set (80% power)")
    mde_paired: bool = Field(default=False, description="the MDE comes from paired differences (else a planning value)")
    target_mde: float | None = None
    cases_for_target_mde: int | None = Field(default=None, description="paired cases for the MDE to reach target_mde")
    latency_source: Literal["provider", "probe"] | None = Field(
        default=None, description="where the gated latency comes from: the provider's reported processing times, "
        "a sequential probe (the provider reported none), or nowhere (no latency guard)")
    latency_probe_rounds: int = 0
    sequential: SequentialResult | None = Field(
        default=None, description="the sequential race (evaluate.sequential), None when every case was evaluated")
    usage: UsageResult = Field(default_factory=UsageResult)
    golden_set: str = ""
    golden_md5: str | None = None
    git_commit: str | None = None
    seed: int = 0
    confidence: float = 0.95
    resamples: int = 0
    min_effect: float = 0.0
    experiment: str = ""
    llm_calls: int = 0
    cache_hits: int = 0
    cost_usd: float = 0.0
    mlflow_run_id: str | None = None
    report: str = ""
    timings: dict[str, float] = Field(default_factory=dict)

    @property
    def prompts(self) -> list[PromptResult]:
        """The baseline, then the candidates."""
        return [self.baseline, *self.candidates]


def winner_order(candidate: CandidateResult) -> tuple[float, float, float, str]:
    """The sort key that ranks promotable candidates, best first: the higher CI lower bound, then the higher
    mean difference, then the lower cost per 1k calls, then the name (alphabetically first). Every part is
    computed from the answers and the seeded bootstrap, never from time measured in the run."""
    def high(value: float | None) -> float:
        return -value if value is not None else math.inf

    cost = candidate.cost_per_1k_usd if candidate.cost_per_1k_usd is not None else math.inf
    return high(candidate.ci_low), high(candidate.diff), cost, candidate.name


def best_candidate(result: EvaluationResult) -> CandidateResult | None:
    """The promotable candidate that becomes the winner (the branch, the app's prompt): first by `winner_order`."""
    promotable = [c for c in result.candidates if c.decision == "promote"]
    return min(promotable, key=winner_order, default=None)
