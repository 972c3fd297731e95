"""Benchmark: how often the sequential race promotes a candidate exactly as good as the baseline (issue 18,
item 6). A seeded sweep, not a timing: its numbers do not depend on the machine.

The null scenario on the support-bot's golden set: the baseline is the `terse` prompt
(tests/data/candidates/terse.yaml, some of its answers at the pass mark); each of `--candidates` candidates
answers with the baseline's own answers plus a different trailing whitespace, so the quality is the same
exactly and only the judge's calls differ. The answers are made once by the simulated bot; then for each of
`--trials` run seeds the simulated judge (temperature `--temperature`, evaluate.judge_samples verdicts,
seeded by the run seed) grades every answer, the cases are put in the race's seeded random order
(`sequential.case_order`, seeded by the run seed), and the race runs with the evaluation's own code
(`sequential.simulate_race`: the looks, drops and stops of `evaluate.sequential`), followed by the final
gate's score conditions at the stopping look's level (CI lower bound above min_effect, Holm-adjusted
p under that level). A promotion here is a false promotion. The rate's 95% interval is Clopper-Pearson's
(scipy.stats.binomtest(...).proportion_ci). Every call goes through the Runner (cached in a temporary
file) to the offline judge.

    .venv/bin/python benchmarks/bench_sequential_null.py [--trials 1000] [--candidates 1 3] [--temperature 1]
        [--results DIR]
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).parent))
from bench_gate_sweep import CANDIDATES, REPO, all_answers
from common import benchmark_parser, machine, write_result

from promptloop.core.runtime import prepare_environment
from promptloop.domain.prompts import load_prompt
from promptloop.evaluate import stats
from promptloop.evaluate.plan import BASELINE, plan_evaluation
from promptloop.evaluate.scorers import Answer, RubricJudge
from promptloop.evaluate.sequential import Race, case_order, look_alphas, look_sizes, simulate_race
from promptloop.llm.client import litellm_module_configured
from promptloop.llm.runner import ResponseCache, Runner
from promptloop.workspace.workspace import open_workspace

TRAILING = (" ", "  ", "\n", " \n", "\t")  # one per null candidate: the same answer, other judge calls


@dataclass
class Tally:
    """Trials, the false promotions, and what the races spent."""

    trials: int = 0
    promoted: int = 0
    looks: int = 0  # summed stopping looks
    pairs: int = 0  # (prompt, case) pairs evaluated
    pairs_full: int = 0


def promoted(race: Race, scores: dict[str, np.ndarray], baseline: np.ndarray, min_effect: float, resamples: int,
             seed: int) -> list[str]:
    """The candidates the final gate's score conditions pass (as `summary.summarise` after a race)."""
    alpha = race.final_alpha
    n = race.cases_evaluated[BASELINE]
    running = [name for name in scores if name not in race.dropped]
    found = {name: stats.compare_paired(baseline[:n], scores[name][:n], 1 - alpha, resamples, seed)
             for name in running}
    adjusted = dict(zip(found, stats.holm([f.p_value for f in found.values()]), strict=True))
    return [name for name, f in found.items() if f.ci_low > min_effect and adjusted[name] < alpha]


async def rubric_scores(judge: RubricJudge, plan_cases: list, answers: dict[tuple[str, str], Answer],
                        name: str) -> np.ndarray:
    """One prompt's rubric scores (the mean verdict mapped to 0..1) on every case, in golden-set order."""
    found = []
    for case in plan_cases:
        answer = answers[name, case.id]
        found.append((float(np.mean(await judge.verdicts(case, answer.text, answer.context))) - 1) / 4)
    return np.array(found)


async def sweep(runner: Runner, trials: int, candidates: int, temperature: float) -> Tally:
    """`trials` null races of `candidates` candidates."""
    workspace = open_workspace(REPO)
    terse = CANDIDATES / "terse.yaml"
    plan = plan_evaluation(workspace, "support-bot", [terse], (load_prompt(terse), str(terse)))
    settings = plan.settings
    cases = plan.cases
    answers = await all_answers(plan, runner, cases)
    names = [f"null-{i}" for i in range(candidates)]
    for name, tail in zip(names, TRAILING, strict=False):
        answers |= {(name, c.id): dataclasses.replace(answers[BASELINE, c.id], text=answers[BASELINE, c.id].text + tail)
                    for c in cases}
    sequential = settings.sequential
    sizes = look_sizes(len(cases), sequential.looks, sequential.min_cases_per_look)
    alphas = look_alphas(1 - settings.confidence, sizes, sequential.spending)
    tally = Tally()
    for seed in range(trials):
        judge = RubricJudge(runner, settings.judge_model, settings.judge_samples, temperature, seed)
        order = case_order([c.id for c in cases], seed)
        position = [next(i for i, c in enumerate(cases) if c.id == case_id) for case_id in order]
        baseline = (await rubric_scores(judge, cases, answers, BASELINE))[position]
        scores = {name: (await rubric_scores(judge, cases, answers, name))[position] for name in names}
        race = simulate_race(scores, baseline, sizes, alphas, settings.min_effect, settings.bootstrap_resamples,
                             settings.seed)
        tally.trials += 1
        tally.promoted += bool(promoted(race, scores, baseline, settings.min_effect, settings.bootstrap_resamples,
                                        settings.seed))
        tally.looks += race.stopped_at
        tally.pairs += sum(race.cases_evaluated.values())
        tally.pairs_full += len(cases) * (candidates + 1)
    return tally


async def run(trials: int, counts: list[int], temperature: float) -> dict[int, Tally]:
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(litellm_module_configured(open_workspace(REPO).params.llm),
                        ResponseCache(Path(tmp) / "cache.sqlite"))
        try:
            return {n: await sweep(runner, trials, n, temperature) for n in counts}
        finally:
            runner.cache.close()


def table(tallies: dict[int, Tally], temperature: float) -> str:
    """One row per number of null candidates in a race."""
    lines = ["| null candidates per race | judge temperature | races | races with a false promotion | rate "
             "| 95% CI (Clopper-Pearson) | one-sided 95% upper bound | mean stopping look | pairs evaluated |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n, t in tallies.items():
        ci = binomtest(t.promoted, t.trials).proportion_ci(0.95, method="exact")
        upper = binomtest(t.promoted, t.trials).proportion_ci(0.90, method="exact").high
        lines.append(f"| {n} | {temperature:g} | {t.trials} | {t.promoted} | {t.promoted / t.trials:.2%} "
                     f"| [{ci.low:.2%}, {ci.high:.2%}] | {upper:.2%} | {t.looks / t.trials:.2f} "
                     f"| {t.pairs / t.pairs_full:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = benchmark_parser(__doc__ or "")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()
    prepare_environment()
    tallies = asyncio.run(run(args.trials, args.candidates, args.temperature))
    row = {**machine(), "trials": args.trials, "temperature": args.temperature,
           "results": [{"candidates": n, **vars(t)} for n, t in tallies.items()]}
    write_result(args.results, "sequential_null", row, table(tallies, args.temperature))


if __name__ == "__main__":
    main()
