"""The promotion gate: promote, hold or incomplete, with the reasons. Pure functions, no I/O.

`promote` needs all of: a complete run, the CI's lower bound of the primary score difference above
`min_effect`, significance after Holm's correction, no high-severity case that passes in the
baseline and fails in the candidate, guard metrics within their margins, a calibrated judge (where
people labelled cases), and a model license the app may use. Anything missing holds; a run that
did not finish is `incomplete` and never promotes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from promptloop.core.config import GuardMargins

Decision = Literal["promote", "hold", "incomplete"]


@dataclass(frozen=True)
class PromptStats:
    """One prompt's aggregate results over the golden set."""

    n: int
    mean_score: float
    pass_rate: float
    refusal_on_answerable: float | None
    toxicity: float | None
    format_invalid: float | None
    cost_per_1k_usd: float
    latency_p95_ms: float | None  # of the provider-reported times; None when a call reported none
    judge_fail_rates: dict[str, float] = field(default_factory=dict)  # guard judge file -> share of fails
    wall_latency_p95_ms: float | None = None  # wall-clock here: informational, never gated on


@dataclass(frozen=True)
class GuardCheck:
    """One guard metric of a candidate against the baseline and the limit it must stay under."""

    metric: str
    baseline: float
    candidate: float
    limit: float
    # A guard on a noisy measure also needs its rise to be significant in a paired test (one-sided p-value;
    # None: no such test, the limit alone decides).
    p_value: float | None = None
    alpha: float = 0.05

    @property
    def ok(self) -> bool:
        return self.candidate <= self.limit or (self.p_value is not None and self.p_value >= self.alpha)

    def reason(self) -> str:
        tested = "" if self.p_value is None else f", paired rise significant: p {self.p_value:.3g} < {self.alpha:.3g}"
        return (f"guard {self.metric}: {self.candidate:.4g} exceeds the limit {self.limit:.4g} "
                f"(baseline {self.baseline:.4g}{tested})")


def guard_checks(base: PromptStats, cand: PromptStats, margins: GuardMargins,
                 judge_margins: Mapping[str, float] | None = None) -> list[GuardCheck]:
    """Absolute margins on rates (the app's guard judges' fail rates among them, each with its `max_drop`),
    a relative one on cost. Latency has its own check (`latency_check`)."""
    checks = [
        GuardCheck(metric, before, after, before + margin)
        for metric, before, after, margin in (
            (
                "refusal_on_answerable",
                base.refusal_on_answerable,
                cand.refusal_on_answerable,
                margins.refusal_on_answerable,
            ),
            ("toxicity", base.toxicity, cand.toxicity, margins.toxicity),
            ("format_invalid", base.format_invalid, cand.format_invalid, margins.format_invalid),
        )
        if before is not None and after is not None
    ]
    checks += [GuardCheck(f"judge {name} fail rate", base.judge_fail_rates[name], cand.judge_fail_rates[name],
                          base.judge_fail_rates[name] + margin)
               for name, margin in sorted((judge_margins or {}).items())
               if name in base.judge_fail_rates and name in cand.judge_fail_rates]
    checks.append(GuardCheck("cost_per_1k_usd", base.cost_per_1k_usd, cand.cost_per_1k_usd,
                             base.cost_per_1k_usd * (1 + margins.cost_increase)))
    return checks


def latency_check(base: PromptStats, cand: PromptStats, margins: GuardMargins, latency_p: float | None,
                  alpha: float) -> GuardCheck | None:
    """The p95 latency guard, on provider-reported times only (None when either prompt has none: wall-clock
    time measured here depends on the host's load and the calls in flight, so it never decides).

    A breach needs both: the candidate's p95 above the limit (a relative margin, and never less than
    `latency_p95_min_ms` above the baseline: smaller rises are noise), and a significant paired rise over
    the same cases (`latency_p`, one-sided, at the gate's alpha).
    """
    if base.latency_p95_ms is None or cand.latency_p95_ms is None:
        return None
    limit = max(base.latency_p95_ms * (1 + margins.latency_p95_increase),
                base.latency_p95_ms + margins.latency_p95_min_ms)
    return GuardCheck("latency_p95_ms", base.latency_p95_ms, cand.latency_p95_ms, limit,
                      p_value=1.0 if latency_p is None else latency_p, alpha=alpha)


@dataclass(frozen=True)
class Evidence:
    """Everything the gate looks at for one candidate."""

    incomplete: list[str]
    identical: bool
    ci_low: float | None
    p_adjusted: float | None
    regressions: list[str]
    guards: list[GuardCheck]
    judge_problem: str | None
    license_problem: str | None


def decide(evidence: Evidence, min_effect: float, alpha: float) -> tuple[Decision, list[str]]:
    """The decision for one candidate and every reason it is not a promotion."""
    if evidence.incomplete:
        return "incomplete", list(evidence.incomplete)
    reasons: list[str] = []
    if evidence.identical:
        reasons.append("same prompt and model as the baseline")
    if evidence.ci_low is None or evidence.p_adjusted is None:
        reasons.append("no paired scores to compare")
    elif evidence.ci_low <= min_effect:
        reasons.append(f"CI lower bound {evidence.ci_low:+.4f} does not exceed min_effect {min_effect:+.4f}")
    if evidence.p_adjusted is not None and evidence.p_adjusted >= alpha:
        reasons.append(f"not significant after Holm correction (p_adjusted {evidence.p_adjusted:.4g} >= {alpha:.4g})")
    if evidence.regressions:
        reasons.append(f"high-severity case(s) pass in the baseline and fail here: {', '.join(evidence.regressions)}")
    reasons += [check.reason() for check in evidence.guards if not check.ok]
    if evidence.judge_problem:
        reasons.append(evidence.judge_problem)
    if evidence.license_problem:
        reasons.append(evidence.license_problem)
    return ("hold", reasons) if reasons else ("promote", [])


def license_problem(baseline_model: str, model: str, license_class: str, commercial: bool) -> str | None:
    """Why a candidate's model may not be used by the app, if it changes the model."""
    if model == baseline_model:
        return None
    if license_class == "unknown":
        return f"license of model {model} unknown: give it a license in params.yaml llm.models"
    if license_class == "non-commercial" and commercial:
        return f"model {model} has a non-commercial license and the app is commercial"
    return None
