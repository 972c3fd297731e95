"""Reporting an evaluation as markdown: the decision table first, then why, then the evidence.

The same text is an MLflow artifact, the output of `promptloop check`, and the body of the pull
request that proposes a promotion.
"""

from __future__ import annotations

from promptloop.domain.evaluation import (
    CalibrationResult,
    CallCounts,
    CandidateResult,
    EvaluationResult,
    SequentialResult,
    SliceAgreement,
)


def _num(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _ci(c: CandidateResult) -> str:
    if c.diff is None:
        return "n/a"
    return f"{c.diff:+.3f} [{_num(c.ci_low, '+.3f')}, {_num(c.ci_high, '+.3f')}]"


def decision_table(result: EvaluationResult) -> list[str]:
    """One row per prompt: quality, the paired difference with its CI, cost, latency, license, decision."""
    whole = round(result.confidence, 2) == result.confidence  # 95%; a race's final level such as 98.75%
    level = f"{result.confidence:.0%}" if whole else f"{result.confidence:.2%}"
    lines = [f"| prompt | model | license | score | Δ score [{level} CI] | p (Holm) | W/T/L | pass rate | cost / 1k "
             "| p95 ms (provider) | decision |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    b = result.baseline
    lines.append(f"| {b.name} (v{b.version}) | {b.model} | {b.license or ''} | {_num(b.mean_score)} | | | | "
                 f"{_num(b.pass_rate, '.0%')} | ${_num(b.cost_per_1k_usd, '.4f')} | {_num(b.latency_p95_ms, '.0f')} "
                 "| baseline |")
    for c in result.candidates:
        lines.append(f"| {c.name} (v{c.version}) | {c.model} | {c.license} | {_num(c.mean_score)} | {_ci(c)} | "
                     f"{_num(c.p_adjusted, '.3g')} | {c.wins}/{c.ties}/{c.losses} | {_num(c.pass_rate, '.0%')} | "
                     f"${_num(c.cost_per_1k_usd, '.4f')} | {_num(c.latency_p95_ms, '.0f')} | **{c.decision}** |")
    return lines


def candidate_section(c: CandidateResult) -> list[str]:
    """Why this decision, which cases flipped, and the guard metrics."""
    lines = [f"### {c.name}: {c.decision}", "", f"`{c.source}` · prompt hash `{c.prompt_hash[:12]}`", ""]
    lines += [f"- {reason}" for reason in c.reasons] or ["- every condition of the gate holds"]
    if c.optimize_split:
        o = c.optimize_split
        lines += ["", f"On the optimisation split ({o.n} cases the optimizer saw): Δ {o.diff:+.3f} "
                      f"[{o.ci_low:+.3f}, {o.ci_high:+.3f}]; held out: Δ {_num(c.diff, '+.3f')}."]
    fixed, broken = c.flips.fixed, c.flips.broken
    lines += ["", f"Cases fixed ({len(fixed)}): {', '.join(fixed) or 'none'}",
              f"Cases broken ({len(broken)}): {', '.join(broken) or 'none'}"]
    if c.high_severity_regressions or c.unconfirmed_regressions:
        confirmed, unconfirmed = c.high_severity_regressions, c.unconfirmed_regressions
        lines.append(f"High-severity flips re-judged: {len(confirmed)} confirmed "
                     f"({', '.join(confirmed) or 'none'}), {len(unconfirmed)} not confirmed "
                     f"({', '.join(unconfirmed) or 'none'}; judge noise, not held)")
    if c.mde is not None:
        lines.append(f"Smallest gain the gate passes with 80% power on these paired cases: {c.mde:.3f}")
    if c.pairwise_win_rate is not None:
        lines.append(
            f"Pairwise preference over the baseline (both orders): {c.pairwise_win_rate:.2f} (0.5 = no preference)"
        )
    if c.mcnemar_p is not None:
        lines.append(f"McNemar exact p on pass/fail: {c.mcnemar_p:.3g}")
    if c.guards:
        lines += ["", "| guard | baseline | candidate | limit | ok |", "|---|---|---|---|---|"]
        lines += [
            f"| {g.metric} | {g.baseline:.4g} | {g.candidate:.4g} | {g.limit:.4g} | {'yes' if g.ok else '**no**'} |"
            for g in c.guards
        ]
    return lines + [""]


def judge_section(result: EvaluationResult) -> list[str]:
    """How far the judge can be trusted: failures, repeat variance, position consistency, human agreement."""
    j = result.judge
    cal = j.calibration
    lines = ["## Judge", "",
             f"- model `{j.model}`, {j.samples} sample(s) per answer; judge failures: {result.judge_failures}"]
    if j.rubric_variance is not None and j.samples > 1:
        lines.append(f"- mean variance of repeated rubric scores: {j.rubric_variance:.4f}")
    if j.position_consistency is not None:
        lines.append(f"- pairwise position consistency: {j.position_consistency:.0%} of {j.pairwise_judged} pairs")
    if cal.labelled:
        lines.append(f"- rubric judge: {agreement_words(cal)} ({gate_words(cal)})")
        lines += slice_lines(cal)
    else:
        lines.append("- no human-labelled cases: judge-human agreement not measured")
    if cal.problem:
        lines.append(f"- **{cal.problem}**")
    if cal.uncalibrated:
        lines.append("- **the judge is not calibrated (too few labels) and `evaluate.allow_uncalibrated` lets the "
                     "gate decide anyway**")
    if j.primary != "rubric (built-in)":
        lines.append(f"- the primary score comes from the app's judge file `{j.primary}`")
    for name, agreement in sorted(j.guard_agreement.items()):
        measured = agreement_words(agreement) if agreement.judged else "no labelled case judged"
        lines.append(f"- guard judge `{name}`: {measured} (reported, not gated)")
        lines += slice_lines(agreement)
    return lines + [""]


def agreement_words(cal: CalibrationResult | SliceAgreement) -> str:
    """`agreement with people on 17 labelled case(s) (5 👍, 12 👎): accuracy 94%, balanced accuracy 0.90, ...`."""
    kappa = "undefined" if cal.kappa is None else f"{cal.kappa:.2f}"
    return (f"agreement with people on {cal.judged} labelled case(s) ({cal.up} 👍, {cal.down} 👎): accuracy "
            f"{_num(cal.accuracy, '.0%')}, balanced accuracy {_num(cal.balanced_accuracy, '.2f')}, "
            f"Cohen's kappa {kappa}")


def gate_words(cal: CalibrationResult) -> str:
    """What the gate made of the agreement."""
    if cal.applied:
        return f"the gate uses {cal.decided_by.replace('_', ' ')}"
    return "too few labels to measure the judge" + ("; allowed by `evaluate.allow_uncalibrated`" if cal.uncalibrated
                                                   else ": the gate holds")


def slice_lines(cal: CalibrationResult) -> list[str]:
    """One indented line per golden-set slice, when the labels span more than one."""
    if len(cal.by_slice) < 2:
        return []
    return [f"  - slice `{name}`: {agreement_words(part)}" for name, part in sorted(cal.by_slice.items())]


def retries(usage: CallCounts) -> str:
    """`12 retries: 5 RateLimitError, 4 Timeout, 3 InternalServerError; 2 repair turns for unreadable answers`."""
    causes = ", ".join(f"{n} {cause}" for cause, n in usage.retry_causes.items())
    repaired = f"; {usage.repairs} repair turn(s) for answers that could not be read" if usage.repairs else ""
    return f"{usage.retries} retries" + (f": {causes}" if causes else "") + repaired


def header(result: EvaluationResult) -> list[str]:
    """What was evaluated, on which golden-set version, under which rule; why a run is incomplete."""
    lines = [f"# Evaluation of `{result.app}` on {result.cases} golden cases", "",
             f"Golden set `{result.golden_set}` (DVC md5 `{result.golden_md5 or 'untracked'}`), seed {result.seed}, "
             f"{result.resamples:,} bootstrap resamples, promote only if the CI's lower bound exceeds "
             f"{result.min_effect:+.3f}.", ""]
    if result.cases_optimize:
        lines += [f"Decided on the {result.cases_decided} held-out cases; the optimizer saw the other "
                  f"{result.cases_optimize} (their results are shown per candidate, not decided on).", ""]
    if result.stopped:
        lines += [f"**Incomplete: {result.stopped}.** Nothing is promoted.", ""]
    return lines


def latency_note(result: EvaluationResult) -> list[str]:
    """Where the latency column comes from, and the wall-clock p95s, labelled as not used by the gate."""
    wall = ", ".join(f"{p.name} {_num(p.wall_latency_p95_ms, '.0f')}" for p in result.prompts)
    source = {
        "provider": "p95 ms: of the processing times the provider reported for each call (the latency guard uses "
                    "these)",
        "probe": f"p95 ms: measured by a sequential, interleaved, uncached probe ({result.latency_probe_rounds} "
                 "rounds; the provider reported no time for some calls), which the latency guard uses",
    }.get(result.latency_source or "", "p95 ms: none (the provider reported no time for some calls and no probe "
                                       "measured enough rounds): the latency guard is not applied")
    if result.latency_source is None and len(result.prompts) < 2:
        source = ("p95 ms: none (the provider reported no time for some calls, and with no candidate there is no "
                  "latency to compare, so no probe ran)")
    return [f"{source}. Wall-clock p95 ms during this run, not used by the gate: {wall}.", ""]


def power_line(result: EvaluationResult) -> str:
    """The smallest gain the gate reliably passes, and how many cases a target MDE would take."""
    assert result.mde is not None
    source = "the paired differences' spread" if result.mde_paired else "the baseline's spread (no candidate to pair)"
    line = (f"With {result.cases_decided} cases this golden set cannot reliably see a gain under {result.mde:.3f} "
            f"(80% power, min_effect included, from {source}); smaller true gains will usually be held.")
    target = result.target_mde
    if target is None:
        return line
    if result.mde <= target:
        return line + f" That meets the target {target:.3f}."
    if result.cases_for_target_mde is None:
        return line + f" No golden-set size reaches the target {target:.3f}: it is not above min_effect."
    more = max(0, result.cases_for_target_mde - result.cases_decided)
    return line + f" About {more} more decided case(s) would bring it to the target {target:.3f}."


def sequential_section(race: SequentialResult) -> list[str]:
    """How the race went: each look, who was dropped, where it stopped, the requests against a full run."""
    lines = ["## Sequential evaluation", "",
             f"Held-out cases in a seeded random order, {race.looks_planned} looks ({race.spending} spending); "
             f"stopped at look {race.stopped_at_look}: {race.stop_reason or 'the run stopped'}. The gate used "
             f"the stopping look's level: CIs at {race.final_confidence:.2%}, Holm at "
             f"{1 - race.final_confidence:.4g}.", "",
             f"{race.calls_spent:,} LLM requests (calls and cache hits) against about {race.calls_full_estimate:,} "
             f"for a full evaluation ({race.pairs_evaluated} of {race.pairs_full} (prompt, case) pairs evaluated).",
             "", "| look | held-out cases | CI level | leader | dropped | stop |", "|---|---|---|---|---|---|"]
    for look in race.looks:
        lines.append(f"| {look.look} | {look.cases}/{race.held_out} | {look.confidence:.2%} | {look.leader or ''} | "
                     f"{', '.join(look.dropped)} | {look.stop or ''} |")
    evaluated = ", ".join(f"{name} {n}" for name, n in race.cases_evaluated.items())
    severe = (f" After the stop, the {race.high_severity_after_stop} high-severity held-out case(s) the race had "
              "not reached were evaluated too, for the regression rule only (the statistics use the race's cases)."
              if race.high_severity_after_stop else "")
    after = [what for what, skipped in (("the pairwise judge", race.pairwise_skipped),
                                        ("the optimizer's cases", race.optimize_skipped)) if skipped]
    decided = (f" What the gate does not read ({' and '.join(after)}) ran after the race for "
               f"{', '.join(race.decided) or 'no candidate'} only." if after else "")
    return [*lines, "", f"Held-out cases evaluated per prompt: {evaluated}.{severe}{decided}", ""]


def skipped_lines(name: str, race: SequentialResult) -> list[str]:
    """What a race left out for a candidate it did not decide for (reported figures, never gated on)."""
    left = [what for what, skipped in (("Pairwise: not judged", race.pairwise_skipped),
                                       ("Optimisation split: not evaluated", race.optimize_skipped))
            if name in skipped]
    return [*(f"{what} (the race decided without it)." for what in left), ""] if left else []


def markdown_report(result: EvaluationResult) -> str:
    """The whole report."""
    usage = result.usage
    lines = header(result) + decision_table(result) + [""] + latency_note(result)
    if result.mde is not None:
        lines += [power_line(result), ""]
    if result.candidates:
        lines += ["## Candidates", ""]  # each candidate's section is a ### under it: no jump from # to ###
    race = result.sequential
    for c in result.candidates:
        lines += candidate_section(c)
        if race is not None:
            lines += skipped_lines(c.name, race)
    if result.sequential is not None:
        lines += sequential_section(result.sequential)
    lines += judge_section(result)
    lines += ["## Calls", "",
              f"{usage.calls} LLM calls ({retries(usage)}), {usage.cache_hits} answered from the cache, "
              f"${usage.cost_usd:.4f}.", ""]
    if result.mlflow_run_id:
        lines.append(f"MLflow run `{result.mlflow_run_id}` in experiment `{result.experiment}`.")
    return "\n".join(lines) + "\n"
