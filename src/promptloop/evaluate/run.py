"""Running an evaluation: every (prompt, case) answered and scored through the runner, in batches.

Every LLM call goes through the Runner (cached, retried, budgeted). A batch of cases needs nothing
from another batch, so batches run anywhere (a Dask worker, a worker process) and are merged back
in plan order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from promptloop.core.runtime import end_helper_without_teardown, prepare_environment
from promptloop.domain.golden import GoldenCase
from promptloop.evaluate import stats
from promptloop.evaluate.latency import NoCache, ProbeResult, needs_probe, run_probe
from promptloop.evaluate.plan import BASELINE, Contender, EvalPlan, build_scorers
from promptloop.evaluate.scorers import (
    PASS_SCORE,
    Answer,
    GuardJudge,
    JudgeFailed,
    ProxyMetrics,
    RubricJudge,
    Scorer,
    ScoreValue,
)
from promptloop.evaluate.targets import Request, Target, build_target
from promptloop.llm.client import litellm_module_configured
from promptloop.llm.runner import BudgetExceeded, CallFailed, Runner, Usage
from promptloop.workspace.workspace import Workspace

Progress = Callable[[int], None]
CaseRow = dict[str, ScoreValue]  # one (prompt, case): its answer and every scorer's columns


@dataclass
class Calibrated:
    """The judge's verdict on one answer a person labelled."""

    case_id: str
    human_pass: bool
    judge_pass: bool | None
    judge_failure: str | None = None
    guards: dict[str, bool | None] = field(default_factory=dict)  # each guard judge file's verdict
    slice: str = ""
    traits: dict[str, bool] = field(default_factory=dict)  # the labelled answer's kind (ProxyMetrics.traits)


@dataclass
class EvalRun:
    """The raw outcome: one row per (prompt, case), and the judge's verdicts on human-labelled answers."""

    rows: list[CaseRow] = field(default_factory=list)
    calibration: list[Calibrated] = field(default_factory=list)
    stopped: str | None = None
    usage: dict[str, Usage] = field(default_factory=dict)
    cpu_s: float = 0.0  # CPU time of the process(es) while the calls ran (for benchmarks)
    latency_probe: ProbeResult | None = None  # when the provider reported no time for some answer
    # case id -> the baseline's answer, scored or made only to calibrate the judge on a labelled case: the
    # pairwise judge after a race needs its context (not a row column: rows go to MLflow tables and traces), and
    # a later pass that scores the baseline there (the optimizer's cases after a race) reuses it, not asks again
    baseline_answers: dict[str, Answer] = field(default_factory=dict)


async def answer_case(runner: Runner, plan: EvalPlan, target: Target, contender: Contender,
                      case: GoldenCase) -> Answer:
    """The contender's answer to one case, from the app's target (seeded, cached), or the baseline's answer an
    earlier pass already made (its requests counted as cache hits: paid for once, even with no response cache)."""
    request = Request(f"app:{contender.name}", contender.prompt, contender.model, case, plan.settings.seed)
    made = plan.baseline_answers.get(case.id) if contender.name == BASELINE else None
    if made is not None:
        runner.usage[request.purpose].cache_hits += made.requests
        return made
    return await target.answer(runner, request)


def case_row(contender: Contender, case: GoldenCase, answer: Answer) -> CaseRow:
    """The per-case row every scorer adds its columns to."""
    return {"prompt": contender.name, "case_id": case.id, "split": case.split, "slice": case.slice,
            "severity": case.severity, "lang": case.lang, "expected_behavior": case.expected_behavior,
            "input": case.input, "answer": answer.text, "retrieved": " ".join(answer.retrieved),
            "latency_ms": answer.latency_ms, "provider_ms": answer.provider_ms, "cost_usd": answer.cost_usd,
            "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens, "judge_failure": None}


async def scored_row(scorers: list[Scorer], contender: Contender, case: GoldenCase, answer: Answer,
                     baseline: Answer | None) -> CaseRow:
    """The case's row with every scorer's columns; a judge that failed is recorded, not scored."""
    row = case_row(contender, case, answer)
    for scorer in scorers:
        try:
            row.update(await scorer.score(case, answer, baseline))
        except JudgeFailed as exc:
            row["judge_failure"] = str(exc)
    return row


async def calibrated(judge: RubricJudge, guards: list[GuardJudge], case: GoldenCase, context: str,
                     proxy: ProxyMetrics | None = None) -> Calibrated:
    """The judges' verdicts on the answer a person labelled (rubric pass: a mean score of 4 or more)."""
    label = case.human_label
    assert label is not None
    human_pass = label.rating == "up"
    traits = proxy.traits(label.answer) if proxy else {}
    verdicts: dict[str, bool | None] = {}
    for guard in guards:  # each judge is calibrated on its own: one that fails here says nothing of the others
        try:
            verdicts[guard.name] = await guard.passed(case, label.answer, context)
        except JudgeFailed:
            verdicts[guard.name] = None
    try:
        mean = float(np.mean(await judge.verdicts(case, label.answer, context)))
    except JudgeFailed as exc:
        return Calibrated(case.id, human_pass, None, str(exc), verdicts, case.slice, traits)
    return Calibrated(case.id, human_pass, mean >= 4, None, verdicts, case.slice, traits)


REJUDGE = "judge:rejudge"  # the purpose re-judging calls are counted under


def high_severity_flips(plan: EvalPlan, rows: list[CaseRow]) -> list[tuple[Contender, GoldenCase]]:
    """(candidate, case) of every high-severity case that passes in the baseline and fails in the candidate."""
    base = {row["case_id"]: row.get("rubric_passed") for row in rows if row["prompt"] == BASELINE}
    contenders = {c.name: c for c in plan.candidates}
    cases = {c.id: c for c in plan.cases if c.severity in plan.settings.high_severity}
    return [(contenders[str(row["prompt"])], cases[str(row["case_id"])]) for row in rows
            if row["prompt"] in contenders and row["case_id"] in cases and row.get("rubric_passed") is False
            and base.get(row["case_id"]) is True]


async def fresh_verdicts(judge: RubricJudge, case: GoldenCase, answer: Answer, count: int) -> list[int] | JudgeFailed:
    """`count` more verdicts on one answer (sample indices after the judge's own, so none is one already
    seen), or the judge's failure."""
    rejudge = dataclasses.replace(judge, purpose=REJUDGE)
    try:
        return await rejudge.verdicts(case, answer.text, answer.context, range(judge.samples, judge.samples + count))
    except JudgeFailed as exc:
        return exc


async def rejudge_flips(plan: EvalPlan, run: EvalRun, scorers: dict[str, list[Scorer]],
                        answers: dict[tuple[str, str], Answer]) -> None:
    """Re-judge each high-severity pass -> fail flip on both answers with `rejudge_samples` fresh verdicts;
    the candidate's row records whether they confirm it (`rejudge_confirmed`). A judge that stays
    malformed is a judge failure: the candidate is incomplete, never promoted on an unchecked flip."""
    count = plan.settings.rejudge_samples
    flips = high_severity_flips(plan, run.rows) if count else []
    if not flips:
        return
    judges = {name: next(s for s in found if isinstance(s, RubricJudge)) for name, found in scorers.items()}
    rows = {(str(r["prompt"]), str(r["case_id"])): r for r in run.rows}
    flips_of = Counter(contender.name for contender, _ in flips)
    # One re-judging of a baseline answer serves every candidate that flipped on that case.
    baseline: dict[str, asyncio.Task[list[int] | JudgeFailed]] = {}

    async def confirm(contender: Contender, case: GoldenCase) -> None:
        row = rows[contender.name, case.id]
        before = await baseline[case.id]
        after = await fresh_verdicts(judges[contender.name], case, answers[contender.name, case.id], count)
        if isinstance(before, JudgeFailed) or isinstance(after, JudgeFailed):
            row["judge_failure"] = f"re-judging: {before if isinstance(before, JudgeFailed) else after}"
            return
        row["rejudge_baseline_raw"], row["rejudge_raw"] = float(np.mean(before)), float(np.mean(after))
        # Any confirmed flip holds the candidate, so its flips share the level (Bonferroni): a candidate
        # whose flips are all noise is held with probability at most alpha, however many it has.
        alpha = (1 - plan.settings.confidence) / flips_of[contender.name]
        row["rejudge_confirmed"] = stats.regression_confirmed(before, after, PASS_SCORE, alpha)

    async with asyncio.TaskGroup() as group:
        for case in {case.id: case for _, case in flips}.values():
            baseline[case.id] = group.create_task(
                fresh_verdicts(judges[BASELINE], case, answers[BASELINE, case.id], count))
        for contender, case in flips:
            group.create_task(confirm(contender, case))


def calibration_judges(runner: Runner, scorers: dict[str, list[Scorer]]) -> tuple[RubricJudge, list[GuardJudge]]:
    """The baseline's rubric judge and guard judges, their calls counted under `judge:calibration`."""
    judge = next(s for s in scorers[BASELINE] if isinstance(s, RubricJudge))
    guards = [dataclasses.replace(s, purpose="judge:calibration") for s in scorers[BASELINE]
              if isinstance(s, GuardJudge)]
    return dataclasses.replace(judge, purpose="judge:calibration"), guards


def proxy_of(scorers: dict[str, list[Scorer]]) -> ProxyMetrics | None:
    """The baseline's cheap checks, which tell a labelled answer's kind (it cites or not)."""
    return next((s for s in scorers[BASELINE] if isinstance(s, ProxyMetrics)), None)


async def run_evaluation(plan: EvalPlan, runner: Runner, scorers: dict[str, list[Scorer]], target: Target,
                         on_progress: Progress | None = None) -> EvalRun:
    """Every (prompt, case) answered and scored concurrently; a provider failure past its retries or
    a spent budget stops the run (what finished is kept, and cached for the next run)."""
    run = EvalRun()
    answers: dict[tuple[str, str], asyncio.Task[Answer]] = {}
    judge, guards = calibration_judges(runner, scorers)
    proxy = proxy_of(scorers)
    advance = on_progress or (lambda n: None)

    async def score(contender: Contender, case: GoldenCase) -> None:
        answer = await answers[contender.name, case.id]
        baseline = await answers[BASELINE, case.id] if contender.name != BASELINE else None
        run.rows.append(await scored_row(scorers[contender.name], contender, case, answer, baseline))
        advance(1)

    async def calibrate(case: GoldenCase) -> None:
        run.calibration.append(await calibrated(judge, guards, case, (await answers[BASELINE, case.id]).context,
                                                proxy))
        advance(1)

    # Every model's API key before the first call: a missing one stops here, before anything is spent.
    judge_models = {model for found in scorers.values() for scorer in found
                    if isinstance(model := getattr(scorer, "model", None), str)}
    for model in sorted({c.model for c in plan.runnable} | judge_models):
        runner.api_keys.for_model(model)
    try:
        async with asyncio.TaskGroup() as group:
            for contender in plan.runnable:
                for case in plan.cases:
                    answers[contender.name, case.id] = group.create_task(
                        answer_case(runner, plan, target, contender, case))
            for case in plan.labelled:  # the judge's context on a labelled case comes from the baseline's answer
                if (BASELINE, case.id) not in answers:
                    answers[BASELINE, case.id] = group.create_task(
                        answer_case(runner, plan, target, plan.baseline, case))
            for contender in plan.runnable:
                for case in plan.cases:
                    group.create_task(score(contender, case))
            for case in plan.labelled:
                group.create_task(calibrate(case))
        # Every answer is in: the flips that could hold a candidate are re-judged before they may.
        made = {key: task.result() for key, task in answers.items()}
        run.baseline_answers = {case: answer for (name, case), answer in made.items() if name == BASELINE}
        await rejudge_flips(plan, run, scorers, made)
    except* (CallFailed, BudgetExceeded) as failures:
        run.stopped = str(failures.exceptions[0])
    return in_plan_order(plan, run)


def in_plan_order(plan: EvalPlan, run: EvalRun) -> EvalRun:
    """Rows by prompt, then golden-set order. They arrive in completion order, which retries and
    concurrency shuffle; the statistics (the bootstrap draws by position) must see one order."""
    prompt_order = {c.name: i for i, c in enumerate(plan.contenders)}
    # Golden-set order; a labelled case a look calibrates on without scoring it comes after (first place wins).
    case_order = {c.id: i for i, c in reversed(list(enumerate([*plan.cases, *plan.labelled])))}
    run.rows.sort(key=lambda r: (prompt_order[str(r["prompt"])], case_order[str(r["case_id"])]))
    run.calibration.sort(key=lambda c: case_order[c.case_id])
    return run


def evaluate_batch(workspace: Workspace, plan: EvalPlan, case_ids: list[str], share: float = 1.0,
                   on_progress: Progress | None = None, processes: int = 1) -> EvalRun:
    """Answer and score the cases `case_ids` with a runner of their own (a `share` of the budget; one of
    `processes` worker processes running at once, with its part of the concurrency and rate limits).

    A batch needs nothing from another one, so batches can run anywhere (a Dask worker, another
    process); `merge_runs` puts them back together.
    """
    wanted = set(case_ids)
    part = dataclasses.replace(plan, cases=[c for c in plan.cases if c.id in wanted])
    settings = plan.settings
    runner = workspace.open_runner(
        max_usd=settings.budget_usd * share,
        max_calls=math.ceil(settings.budget_calls * share) if settings.budget_calls else None,
        processes=processes,
    )
    target = build_target(plan.app, plan.app_settings.target, workspace.root, plan.retriever, plan.top_k)
    try:
        scorers = build_scorers(part, runner, workspace.root, workspace.params)
        cpu = time.process_time()
        with short_gil_switches():
            run = asyncio.run(runner.pooled(run_evaluation(part, runner, scorers, target, on_progress)))
        run.cpu_s = time.process_time() - cpu
    finally:
        target.close()
        runner.cache.close()
    run.usage = dict(runner.usage)
    return run


def merge_runs(plan: EvalPlan, runs: list[EvalRun]) -> EvalRun:
    """One run from its batches: rows and labels joined, usage added up, the first stop reason kept."""
    usage: dict[str, Usage] = {}
    for run in runs:
        for purpose, used in run.usage.items():
            usage.setdefault(purpose, Usage()).add(used)
    merged = EvalRun([row for run in runs for row in run.rows], [c for run in runs for c in run.calibration],
                     next((run.stopped for run in runs if run.stopped), None), usage, sum(run.cpu_s for run in runs),
                     baseline_answers={case: answer for run in runs for case, answer in run.baseline_answers.items()})
    return in_plan_order(plan, merged)


def probe_if_unreported(workspace: Workspace, plan: EvalPlan, run: EvalRun, cases: list[GoldenCase]) -> EvalRun:
    """The run with a latency probe of its prompts on `cases` when some answer has no provider-reported time
    (and the run finished, there is a candidate whose latency the guard compares with the baseline's, and
    `evaluate.latency_probe.max_calls` allows one); its calls are in the usage."""
    settings = plan.settings.latency_probe
    if run.stopped or not settings.max_calls or len(plan.runnable) < 2 or not needs_probe(run.rows):
        return run
    spent = sum(u.cost_usd for u in run.usage.values())
    # Sequential (one call at a time) and uncached: each call's time is its own.
    runner = dataclasses.replace(workspace.open_runner(max_usd=max(plan.settings.budget_usd - spent, 0.0),
                                                       max_calls=settings.max_calls, cache=NoCache()),
                                 max_concurrency=1)
    target = build_target(plan.app, plan.app_settings.target, workspace.root, plan.retriever, plan.top_k)
    try:
        run.latency_probe = run_probe(runner, target, plan.runnable, cases, settings, plan.settings.seed)
    finally:
        target.close()
    for purpose, used in runner.usage.items():
        run.usage.setdefault(purpose, Usage()).add(used)
    return run


class Stopwatch:
    """Wall seconds per phase, so a slow evaluation says where its time went (reported, never decided on)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def warm_worker(workspace: Workspace) -> None:
    """A worker process's start: offline environment, litellm configured (its imports take seconds)."""
    end_helper_without_teardown()
    prepare_environment()
    litellm_module_configured(workspace.params.llm)


@contextmanager
def short_gil_switches() -> Iterator[None]:
    """A 1 ms GIL switch interval while calls run: litellm runs part of every call in a thread, and the
    default 5 ms wait for the GIL stretches each call under load (measured in benchmarks/bench_runner.py)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
