"""Running the sequential race: each look evaluates the next slice of a seeded random case order for the
baseline and every candidate still in the race, then `sequential.judge_look` drops and stops.

The statistics are in `sequential` (pure); this module only runs looks through the usual batch runner
(response cache, retries, budget, worker processes) and keeps count of what it spent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from promptloop.core.progress import NO_PROGRESS, ProgressHooks
from promptloop.domain.evaluation import LookResult, SequentialResult
from promptloop.domain.golden import GoldenCase
from promptloop.evaluate.plan import BASELINE, EvalPlan, case_batches, judge_scorers, progress_total
from promptloop.evaluate.run import REJUDGE, CaseRow, EvalRun, merge_runs
from promptloop.evaluate.scorers import Answer, JudgeFailed, PairwiseJudge
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
from promptloop.evaluate.summary import LicenseOf, summarise
from promptloop.evaluate.workers import Workers
from promptloop.llm.runner import BudgetExceeded, CallFailed, Usage
from promptloop.workspace.workspace import Workspace


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
    shown = progress  # the caller's bar, whose total is a full evaluation's: the race sets the real one at its end
    counted = UnitCounter(shown)
    progress = ProgressHooks(start=shown.start, advance=counted.advance)
    for index, (size, alpha) in enumerate(zip(sizes, alphas, strict=True), start=1):
        usd, calls = remaining_budget(plan, runs)
        if calls is not None and calls <= 0:
            runs.append(EvalRun(stopped=f"budget of {plan.settings.budget_calls} calls spent before look {index}"))
            break
        # With optimize_split `all` the optimizer's cases come along in the same shares: reported per candidate,
        # never raced on (`decided`: after the race, for the decided candidates only, `report_decided`).
        ids = held_order[before:size] + (seen_order[seen_share(len(seen), before, sizes[-1]):
                                                    seen_share(len(seen), size, sizes[-1])]
                                         if settings.optimize_split == "all" else [])
        look_plan = dataclasses.replace(
            plan, cases=[by_id[i] for i in sorted(ids, key=position.__getitem__)],
            candidates=[c for c in plan.candidates if c.name in running], pairwise=settings.pairwise == "all",
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
        after = dataclasses.replace(
            plan, cases=extra, candidates=[c for c in plan.candidates if c.name in running] if extra else [],
            calibration_cases=[*extra, *labelled], pairwise=settings.pairwise == "all",
            settings=plan.settings.model_copy(update=dict(zip(("budget_usd", "budget_calls"),
                                                              remaining_budget(plan, runs), strict=True))))
        shown.start(counted.done + progress_total(after))
        runs.append(run_look(after, workers, progress, batches=1))  # one batch: each would judge every labelled case
        for name in [BASELINE, *running]:
            evaluated[name] += len(extra)
    shown.start(counted.done)  # what the race did is the whole of it: the bar ends full
    return merge_runs(plan, runs), Race(sizes, alphas, looks, evaluated, len(held),
                                        frozenset(held_order[:reached]), len(extra))


class UnitCounter:
    """Counts the progress units a race advances (it ends before the total a full evaluation would reach,
    and then says so by setting the total to what it did)."""

    def __init__(self, shown: ProgressHooks) -> None:
        self.shown = shown
        self.done = 0

    def advance(self, units: int) -> None:
        self.done += units
        self.shown.advance(units)


def seen_share(seen: int, size: int, held_out: int) -> int:
    """How many of the optimizer's cases (in their seeded order) go with the first `size` held-out cases."""
    return round(seen * size / held_out) if held_out else 0


def severe_rest(plan: EvalPlan, held: list[GoldenCase], done: set[str]) -> list[GoldenCase]:
    """The high-severity held-out cases the race did not reach: evaluated after it for the regression rule."""
    return [c for c in held if c.id not in done and c.severity in plan.settings.high_severity]


def sequential_result(plan: EvalPlan, run: EvalRun, race: Race, reported: Reported | None = None) -> SequentialResult:
    """The race for the result: looks, drops, cases per prompt, and the requests against a full evaluation."""
    pairs = len(run.rows)
    full = len(plan.runnable) * len(plan.cases)
    fixed = {"judge:calibration", REJUDGE}  # not scaled: calibration is the same, re-judging depends on flips
    spent = {purpose: u.calls + u.cache_hits for purpose, u in run.usage.items()}
    reported = reported or Reported([], [], [])
    # The pairwise judge after a race judged some (candidate, case) pairs: its requests are scaled to every
    # candidate's every case apart (a full evaluation judges them all), the rest per (prompt, case) pair.
    scaled = sum(n for purpose, n in spent.items() if purpose not in fixed) - reported.pairwise_requests
    pairwise = math.ceil(reported.pairwise_requests * (len(plan.runnable) - 1) * len(plan.cases)
                         / reported.pairwise_pairs) if reported.pairwise_pairs else 0
    estimate = sum(n for purpose, n in spent.items() if purpose in fixed) + pairwise + (
        math.ceil(scaled * full / pairs) if pairs else 0)
    return SequentialResult(
        decided=reported.decided, pairwise_skipped=reported.pairwise_skipped,
        optimize_skipped=reported.optimize_skipped, looks_planned=len(race.sizes), stopped_at_look=race.stopped_at,
        stop_reason=race.stop_reason,
        spending=plan.settings.sequential.spending, final_confidence=1 - race.final_alpha, held_out=race.held_out,
        cases_evaluated=race.cases_evaluated, dropped=race.dropped, high_severity_after_stop=race.severe_extra,
        pairs_evaluated=pairs, pairs_full=full,
        calls_spent=sum(spent.values()), calls_full_estimate=estimate,
        looks=[LookResult(look=look.index, cases=look.cases, confidence=1 - look.alpha,
                          bounds={name: (b.low, b.high) for name, b in look.bounds.items()},
                          dropped=sorted(look.dropped), leader=look.leader, stop=look.stop) for look in race.looks],
    )


@dataclass(frozen=True)
class Reported:
    """What the race left out of its looks because the decision does not need it, and whom it did it for after."""

    decided: list[str]  # the candidates the gate promotes (or the race's leader when none is)
    pairwise_skipped: list[str]  # candidates whose pairwise judge did not run
    optimize_skipped: list[str]  # candidates not evaluated on the optimizer's cases
    pairwise_requests: int = 0  # the pairwise judge's requests after the race (calls and cache hits)
    pairwise_pairs: int = 0  # (candidate, case) pairs it judged


def decided_candidates(plan: EvalPlan, run: EvalRun, race: Race, license_of: LicenseOf) -> list[str]:
    """The candidates the gate promotes on what the race evaluated, else the race's last leader (if any)."""
    result = summarise(plan, run, license_of, race)
    promoted = [c.name for c in result.candidates if c.decision == "promote"]
    leader = race.looks[-1].leader if race.looks else None
    return promoted or ([leader] if leader else [])


def report_decided(workspace: Workspace, plan: EvalPlan, run: EvalRun, race: Race,
                   license_of: LicenseOf) -> tuple[EvalRun, Reported]:
    """After the race, what is only reported, for the decided candidates only (`evaluate.sequential.pairwise`
    and `optimize_split` at `decided`): their pairwise verdicts on the race's cases, and the baseline and them on
    the race's share of the optimizer's cases. Neither enters the gate; a pairwise judge failure still makes its
    candidate incomplete, as in a full evaluation."""
    settings = plan.settings.sequential
    runnable = [c.name for c in plan.candidates if c.name not in plan.blocked]
    # A run that stopped (a provider failure, the budget) decides nothing: it gets neither.
    decided = decided_candidates(plan, run, race, license_of) if race.looks and not run.stopped else []
    others = [name for name in runnable if name not in decided]
    _, seen = decision_cases(plan.cases)
    reached = race.sizes[race.stopped_at - 1]
    share = case_order([c.id for c in seen], order_seed(plan.settings.seed, settings.seed) + 1)[
        :seen_share(len(seen), reached, race.sizes[-1])]
    skipped_seen = others if settings.optimize_split == "decided" and share else []
    if settings.optimize_split == "decided" and share and decided:
        wanted = set(share)
        extra = run_look(dataclasses.replace(
            plan, cases=[c for c in plan.cases if c.id in wanted],
            candidates=[c for c in plan.candidates if c.name in decided], calibration_cases=[], pairwise=False,
            guards=False, baseline_answers=run.baseline_answers,
            settings=plan.settings.model_copy(update=dict(zip(("budget_usd", "budget_calls"),
                                                              remaining_budget(plan, [run]), strict=True)))),
            Workers(workspace, 1), NO_PROGRESS, batches=1)
        probe = run.latency_probe
        run = merge_runs(plan, [run, extra])
        run.latency_probe = probe
    skipped_pairwise = others if settings.pairwise == "decided" and plan.has_pairwise else []
    requests = judged = 0
    if settings.pairwise == "decided" and plan.has_pairwise and decided and not run.stopped:
        requests, judged = judge_pairwise(workspace, plan, run, race, decided)
    return run, Reported(decided, skipped_pairwise, skipped_seen, requests, judged)


def judge_pairwise(workspace: Workspace, plan: EvalPlan, run: EvalRun, race: Race,
                   decided: list[str]) -> tuple[int, int]:
    """The pairwise judge on the answers the race already has: each decided candidate's against the baseline's
    on the race's cases (the verdicts, calls and cache keys of a look that judged them; the rows get them).
    Returns its requests (calls and cache hits) and the pairs it judged."""
    usd, calls = remaining_budget(plan, [run])
    runner = workspace.open_runner(max_usd=usd, max_calls=calls)
    with_judge = dataclasses.replace(plan, pairwise=True)
    judges = {name: next(s for s in judge_scorers(with_judge, runner, name) if isinstance(s, PairwiseJudge))
              for name in decided}
    rows = {(str(r["prompt"]), str(r["case_id"])): r for r in run.rows}
    cases = {c.id: c for c in plan.cases}

    async def judge(name: str, case: GoldenCase) -> None:
        row, base = rows[name, case.id], rows[BASELINE, case.id]
        made = run.baseline_answers.get(case.id)
        context = made.context if made is not None else ""
        try:
            row.update(await judges[name].score(case, row_answer(row, ""),
                                                row_answer(base, context)))
        except JudgeFailed as exc:
            row["judge_failure"] = row.get("judge_failure") or str(exc)

    pairs = [(name, case_id) for name in decided for case_id in sorted(race.sample)
             if (name, case_id) in rows and (BASELINE, case_id) in rows]

    async def judge_all() -> None:
        async with asyncio.TaskGroup() as group:
            for name, case_id in pairs:
                group.create_task(judge(name, cases[case_id]))

    try:
        asyncio.run(judge_all())
    except* (CallFailed, BudgetExceeded) as failures:
        run.stopped = str(failures.exceptions[0])
    finally:
        runner.cache.close()
    for purpose, used in runner.usage.items():
        run.usage.setdefault(purpose, Usage()).add(used)
    return sum(u.calls + u.cache_hits for u in runner.usage.values()), len(pairs)


def row_answer(row: CaseRow, context: str) -> Answer:
    """A row's answer as the pairwise judge reads it (the text, and the context the judge is shown)."""
    return Answer(str(row["answer"]), context, (), 0.0, 0.0, 0, 0)
