"""Benchmark: how often the high-severity rule holds a candidate because of judge noise alone, before and
after re-judging (issue 18). A seeded sweep, not a timing: its numbers do not depend on the machine.

Three scenarios on the support-bot's golden set: `better` (tests/data/candidates/better.yaml) against the
app's prompt (prompts/support-bot/prompt.yaml): clearly better, no high-severity case regresses at judge
temperature 0; `tie`: the candidate's answers are the baseline's own (the `terse` prompt's, some at the
pass mark) with a trailing space, so every flip is judge noise; `terse` against the app's prompt: it truly
breaks two high-severity cases (g004, g006). The answers to the high-severity cases are made once by the
simulated bot (seeded by evaluate.seed); then, for each of `--trials` run seeds and each judge
temperature (1 and 2), the simulated judge grades every answer (evaluate.judge_samples verdicts, seeded
by the run seed) and the rule is applied:

- before: any high-severity case that passes in the baseline and fails in the candidate holds it;
- after: such a flip holds only if `evaluate.rejudge_samples` fresh verdicts on both answers confirm it
  (promptloop.evaluate.run.fresh_verdicts and promptloop.evaluate.stats.regression_confirmed, the code
  the evaluation runs).

The false-hold rate is the share of trials that hold `better` or `tie`; the detection rate the share
that hold `terse`. Every call goes through the Runner (cached in a temporary file), to the offline judge.

    .venv/bin/python benchmarks/bench_gate_sweep.py [--trials 400] [--rejudge-samples 8] [--scenarios better tie terse]
        [--results DIR]
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_parser, machine, write_result

from promptloop.core.runtime import prepare_environment
from promptloop.domain.golden import GoldenCase
from promptloop.domain.prompts import load_prompt
from promptloop.evaluate.plan import BASELINE, EvalPlan, plan_evaluation
from promptloop.evaluate.run import answer_case, fresh_verdicts
from promptloop.evaluate.scorers import PASS_SCORE, Answer, JudgeFailed, RubricJudge
from promptloop.evaluate.stats import regression_confirmed
from promptloop.evaluate.targets import build_target
from promptloop.llm.client import litellm_module_configured
from promptloop.llm.runner import ResponseCache, Runner
from promptloop.workspace.workspace import open_workspace

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = REPO / "tests" / "data" / "candidates"
TEMPERATURES = (1.0, 2.0)


@dataclass
class Tally:
    """Trials, and those in which the rule held the candidate before and after re-judging."""

    trials: int = 0
    held_before: int = 0
    held_after: int = 0
    flips: int = 0
    confirmed: int = 0


async def all_answers(plan: EvalPlan, runner: Runner, cases: list[GoldenCase]) -> dict[tuple[str, str], Answer]:
    """Each prompt's answer to each case, from the simulated bot (seeded by the plan: the same every trial)."""
    target = build_target(plan.app, plan.app_settings.target, REPO, plan.retriever, plan.top_k)
    try:
        return {(c.name, case.id): await answer_case(runner, plan, target, c, case)
                for c in plan.contenders for case in cases}
    finally:
        target.close()


async def passes(judge: RubricJudge, case: GoldenCase, answer: Answer) -> bool:
    """The rule's first look: the mean of the judge's own verdicts passes."""
    verdicts = await judge.verdicts(case, answer.text, answer.context)
    return sum(verdicts) / len(verdicts) >= PASS_SCORE


async def trial(judge: RubricJudge, cases: list[GoldenCase], answers: dict[tuple[str, str], Answer], name: str,
                rejudge: int, alpha: float) -> tuple[int, int]:
    """(flips, confirmed flips) of candidate `name` under one run seed."""
    flipped = [case for case in cases if await passes(judge, case, answers[BASELINE, case.id])
               and not await passes(judge, case, answers[name, case.id])]
    confirmed = 0
    for case in flipped:
        before, after = (await fresh_verdicts(judge, case, answers[BASELINE, case.id], rejudge),
                         await fresh_verdicts(judge, case, answers[name, case.id], rejudge))
        if isinstance(before, JudgeFailed) or isinstance(after, JudgeFailed):
            confirmed += 1  # a judge failure never lets a flip through
        else:  # the candidate's flips share the level, as in the evaluation
            confirmed += regression_confirmed(before, after, PASS_SCORE, alpha / len(flipped))
    return len(flipped), confirmed


def scenarios() -> list[tuple[str, Path | None, Path]]:
    """(name, baseline prompt file or None for the app's, candidate file). In `tie` the candidate's answers
    are the baseline's (`terse`, whose answers sit at the pass mark on some cases) with a trailing space:
    the same quality exactly, but other judge calls, so every flip in it is judge noise."""
    terse = CANDIDATES / "terse.yaml"
    return [("better", None, CANDIDATES / "better.yaml"), ("tie", terse, terse), ("terse", None, terse)]


async def scenario(runner: Runner, name: str, baseline: Path | None, candidate: Path, trials: int,
                   rejudge: int) -> dict[tuple[str, float], Tally]:
    """One baseline and candidate: their answers once, then every judge temperature and run seed."""
    workspace = open_workspace(REPO)
    plan = plan_evaluation(workspace, "support-bot", [candidate],
                           (load_prompt(baseline), str(baseline)) if baseline else None)
    settings = plan.settings
    cases = [c for c in plan.cases if c.severity in settings.high_severity]
    answers = await all_answers(plan, runner, cases)
    cand = plan.candidates[0].name
    if name == "tie":
        answers |= {(cand, case.id): dataclasses.replace(answers[BASELINE, case.id],
                                                         text=answers[BASELINE, case.id].text + " ") for case in cases}
    strict = RubricJudge(runner, settings.judge_model, 1, 0.0, 0)  # a noiseless look: which flips are real
    real = [case.id for case in cases if await passes(strict, case, answers[BASELINE, case.id])
            and not await passes(strict, case, answers[cand, case.id])]
    print(f"{name}: high-severity cases that truly flip (judge temperature 0): {', '.join(real) or 'none'}")
    tallies = {(name, t): Tally() for t in TEMPERATURES}
    for (_, temperature), tally in tallies.items():
        for seed in range(trials):
            judge = RubricJudge(runner, settings.judge_model, settings.judge_samples, temperature, seed)
            flips, confirmed = await trial(judge, cases, answers, cand, rejudge, 1 - settings.confidence)
            tally.trials += 1
            tally.flips += flips
            tally.confirmed += confirmed
            tally.held_before += flips > 0
            tally.held_after += confirmed > 0
    return tallies


async def sweep(trials: int, rejudge: int, wanted: list[str]) -> dict[tuple[str, float], Tally]:
    """Every (scenario, temperature): the trials and how many held before and after re-judging."""
    tallies: dict[tuple[str, float], Tally] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(litellm_module_configured(open_workspace(REPO).params.llm),
                        ResponseCache(Path(tmp) / "cache.sqlite"))
        try:
            for name, baseline, candidate in (s for s in scenarios() if s[0] in wanted):
                tallies |= await scenario(runner, name, baseline, candidate, trials, rejudge)
        finally:
            runner.cache.close()
    return tallies


def table(tallies: dict[tuple[str, float], Tally], rejudge: int) -> str:
    """One row per (candidate, judge temperature)."""
    lines = [f"| candidate | judge temperature | trials | held before | held after ({rejudge} fresh verdicts) "
             "| flips | confirmed |", "|---|---|---|---|---|---|---|"]
    for (name, temperature), t in tallies.items():
        lines.append(f"| {name} | {temperature:g} | {t.trials} | {t.held_before / t.trials:.1%} "
                     f"| {t.held_after / t.trials:.1%} | {t.flips} | {t.confirmed} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = benchmark_parser(__doc__ or "")
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--rejudge-samples", type=int, default=8)
    parser.add_argument("--scenarios", nargs="+", default=["better", "tie", "terse"])
    args = parser.parse_args()
    prepare_environment()
    tallies = asyncio.run(sweep(args.trials, args.rejudge_samples, args.scenarios))
    row = {**machine(), "trials": args.trials, "rejudge_samples": args.rejudge_samples,
           "results": [{"candidate": name, "temperature": temperature, **vars(t)}
                       for (name, temperature), t in tallies.items()]}
    write_result(args.results, "gate_sweep", row, table(tallies, args.rejudge_samples))


if __name__ == "__main__":
    main()
