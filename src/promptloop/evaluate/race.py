"""Running the sequential race: each look evaluates the next slice of a seeded random case order for the
baseline and every candidate still in the race, then `sequential.judge_look` drops and stops.

The statistics are in `sequential` (pure); this module only runs looks through the usual batch runner
(response cache, retries, budget, worker processes) and keeps count of what it spent.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from promptloop.core.progress import NO_PROGRESS, ProgressHooks
from promptloop.domain.evaluation import LookResult, SequentialResult
from promptloop.domain.golden import GoldenCase
from promptloop.evaluate.plan import BASELINE, EvalPlan, case_batches
from promptloop.evaluate.run import REJUDGE, EvalRun, merge_runs
from promptloop.evaluate.sequential import (
    Look,
    Race,
    case_order,
    drop_alpha,
    judge_look,
    look_alphas,
    look_sizes,
    order_seed,
)
from promptloop.evaluate.workers import Workers


def decision_cases(cases: list[GoldenCase]) -> tuple[list[GoldenCase], list[GoldenCase]]:
    """(held-out cases, cases an optimizer saw); as `summary.decision_split`, without importing the summary."""
    seen = [c for c in cases if c.split == "optimize"]
    return ([c for c in cases if c.split == "holdout"], seen) if seen else (cases, [])


def races(plan: EvalPlan) -> bool:
    """Whether this evaluation runs as a race: enabled, a candidate to race, and room for two looks."""
    settings = plan.settings.sequential
    held, _ = decision_cases(plan.cases)
    runnable = [c for c in plan.candidates if c.name not in plan.blocked]
    return settings.enabled and bool(runnable) and len(look_sizes(len(held), settings.looks,
                                                                   settings.min_cases_per_look)) > 1


def look_scores(run: EvalRun, case_ids: list[str], running: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The rubric scores of the baseline and the running candidates on `case_ids` (in that order), keeping
    only the cases every one of them has a score for (a judge failure makes its candidate incomplete anyway)."""
    frame = pd.DataFrame(run.rows)
    if not len(frame) or "rubric_score" not in frame:
        return {name: np.zeros(0) for name in running}, np.zeros(0)
    wide = frame.pivot_table(index="case_id", columns="prompt", values="rubric_score", aggfunc="first")
    wide = wide.reindex(index=case_ids, columns=[BASELINE, *running]).dropna()
    return {name: wide[name].to_numpy(dtype=float) for name in running}, wide[BASELINE].to_numpy(dtype=float)


def remaining_budget(plan: EvalPlan, runs: list[EvalRun]) -> tuple[float, int | None]:
    """What is left of evaluate.budget_usd and budget_calls after the looks so far."""
    spent_usd = sum(u.cost_usd for run in runs for u in run.usage.values())
    spent_calls = sum(u.calls for run in runs for u in run.usage.values())
    calls = plan.settings.budget_calls
    return max(plan.settings.budget_usd - spent_usd, 0.0), (None if calls is None else calls - spent_calls)


def run_look(plan: EvalPlan, workers: Workers, progress: ProgressHooks, batches: int | None = None) -> EvalRun:
    """One look's cases for its contenders in `batches` batches (default: one per process of the evaluation)."""
    chunks = case_batches(plan, batches or workers.processes) or [[]]  # no case: one batch still calibrates the judge
    return merge_runs(plan, workers.run(plan, chunks, progress.advance))


def run_race(plan: EvalPlan, workers: Workers, progress: ProgressHooks = NO_PROGRESS) -> tuple[EvalRun, Race]:
    """The looks, until `judge_look` stops the race (or a provider failure or the budget does)."""
    settings = plan.settings.sequential
    held, seen = decision_cases(plan.cases)
    seed = order_seed(plan.settings.seed, settings.seed)
    held_order = case_order([c.id for c in held], seed)
    seen_order = case_order([c.id for c in seen], seed + 1)
    sizes = look_sizes(len(held), settings.looks, settings.min_cases_per_look)
    alphas = look_alphas(1 - plan.settings.confidence, sizes, settings.spending)
    by_id = {c.id: c for c in plan.cases}
    position = {c.id: i for i, c in enumerate(plan.cases)}
    running = [c.name for c in plan.candidates if c.name not in plan.blocked]
    evaluated = dict.fromkeys([BASELINE, *running], 0)
    runs: list[EvalRun] = []
    looks: list[Look] = []
    before = 0
    for index, (size, alpha) in enumerate(zip(sizes, alphas, strict=True), start=1):
        usd, calls = remaining_budget(plan, runs)
        if calls is not None and calls <= 0:
            runs.append(EvalRun(stopped=f"budget of {plan.settings.budget_calls} calls spent before look {index}"))
            break
        # The optimizer's cases come along in the same shares: reported per candidate, never raced on.
        ids = held_order[before:size] + seen_order[round(len(seen) * before / sizes[-1]):
                                                   round(len(seen) * size / sizes[-1])]
        look_plan = dataclasses.replace(
            plan, cases=[by_id[i] for i in sorted(ids, key=position.__getitem__)],
            candidates=[c for c in plan.candidates if c.name in running],
            settings=plan.settings.model_copy(update={"budget_usd": usd, "budget_calls": calls}))
        runs.append(run_look(look_plan, workers, progress))
        for name in [BASELINE, *running]:
            evaluated[name] = size
        merged = merge_runs(plan, runs)
        if merged.stopped:
            break
        scores, baseline = look_scores(merged, held_order[:size], running)
        if not len(baseline):  # no case with every prompt scored (judge failures): the gate finds them incomplete
            break
        look = judge_look(scores, baseline, running, index, len(held), alpha, plan.settings.min_effect,
                          plan.settings.bootstrap_resamples, plan.settings.seed, index == len(sizes),
                          drop_alpha(1 - plan.settings.confidence, sizes))
        looks.append(look)
        running = [name for name in running if name not in look.dropped]
        before = size
        if look.stop:
            break
    reached = sizes[looks[-1].index - 1] if looks else 0  # the held-out cases of the last look judged
    extra, labelled = [], []
    if looks and not merge_runs(plan, runs).stopped:
        extra = severe_rest(plan, held, set(held_order[:reached]))
        done = {str(row["case_id"]) for run in runs for row in run.rows} | {c.id for c in extra}
        labelled = [c for c in plan.cases if c.human_label is not None and c.id not in done]
    if extra or labelled:
        # A regression on a high-severity case holds a candidate however early the race stopped, and the judge
        # is calibrated on every labelled case, reached or not.
        runs.append(run_look(dataclasses.replace(
            plan, cases=extra, candidates=[c for c in plan.candidates if c.name in running] if extra else [],
            calibration_cases=[*extra, *labelled],
            settings=plan.settings.model_copy(update=dict(zip(("budget_usd", "budget_calls"),
                                                              remaining_budget(plan, runs), strict=True)))),
            workers, progress, batches=1))  # one batch: each batch would judge every case in calibration_cases
        for name in [BASELINE, *running]:
            evaluated[name] += len(extra)
    return merge_runs(plan, runs), Race(sizes, alphas, looks, evaluated, len(held),
                                        frozenset(held_order[:reached]), len(extra))


def severe_rest(plan: EvalPlan, held: list[GoldenCase], done: set[str]) -> list[GoldenCase]:
    """The high-severity held-out cases the race did not reach: evaluated after it for the regression rule."""
    return [c for c in held if c.id not in done and c.severity in plan.settings.high_severity]


def sequential_result(plan: EvalPlan, run: EvalRun, race: Race) -> SequentialResult:
    """The race for the result: looks, drops, cases per prompt, and the requests against a full evaluation."""
    pairs = len(run.rows)
    full = len(plan.runnable) * len(plan.cases)
    fixed = {"judge:calibration", REJUDGE}  # not scaled: calibration is the same, re-judging depends on flips
    spent = {purpose: u.calls + u.cache_hits for purpose, u in run.usage.items()}
    scaled = sum(n for purpose, n in spent.items() if purpose not in fixed)
    estimate = sum(n for purpose, n in spent.items() if purpose in fixed) + (
        math.ceil(scaled * full / pairs) if pairs else 0)
    return SequentialResult(
        looks_planned=len(race.sizes), stopped_at_look=race.stopped_at, stop_reason=race.stop_reason,
        spending=plan.settings.sequential.spending, final_confidence=1 - race.final_alpha, held_out=race.held_out,
        cases_evaluated=race.cases_evaluated, dropped=race.dropped, high_severity_after_stop=race.severe_extra,
        pairs_evaluated=pairs, pairs_full=full,
        calls_spent=sum(spent.values()), calls_full_estimate=estimate,
        looks=[LookResult(look=look.index, cases=look.cases, confidence=1 - look.alpha,
                          bounds={name: (b.low, b.high) for name, b in look.bounds.items()},
                          dropped=sorted(look.dropped), leader=look.leader, stop=look.stop) for look in race.looks],
    )
