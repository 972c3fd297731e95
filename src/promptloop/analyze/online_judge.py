"""An online judge over a sample of production answers, within a budget of calls and dollars.

Calls go through the evaluation's runner: retried, cached (re-analyzing the same window makes no
call) and capped; a budget that runs out stops the judging, and what was judged is kept.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pandas as pd

from promptloop.domain.results import OnlineJudgeResult
from promptloop.llm.runner import BudgetExceeded, CallFailed, Runner
from promptloop.quality.judges import RUBRIC_SCHEMA, parse_rubric, rubric_messages


@dataclass
class JudgeRun:
    """What the online judge did: scores by row id, failures, spend, whether the budget stopped it."""

    scores: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    calls: int = 0
    cache_hits: int = 0
    cost_usd: float = 0.0
    stopped_by_budget: bool = False

    def result(self, model: str) -> OnlineJudgeResult:
        """What the judge did, as reported (a score of 2 or less is low)."""
        return OnlineJudgeResult(model=model, judged=len(self.scores), failures=self.failures, calls=self.calls,
                                 cache_hits=self.cache_hits, cost_usd=round(self.cost_usd, 6),
                                 stopped_by_budget=self.stopped_by_budget,
                                 low_scores=sum(1 for s in self.scores.values() if s <= 2))


async def judge_sample(runner: Runner, model: str, rows: pd.DataFrame, seed: int, description: str = "") -> JudgeRun:
    """Grade the answers of `rows` (id, input, output) at temperature 0; stop once the budget is spent."""
    run = JudgeRun()

    async def grade(row_id: str, question: str, answer: str) -> None:
        try:
            messages = rubric_messages(question, answer, description=description)
            completion = await runner.complete("online_judge", model, messages, validate=parse_rubric,
                                               schema=RUBRIC_SCHEMA, temperature=0, seed=seed)
        except BudgetExceeded:
            run.stopped_by_budget = True
            return
        except CallFailed:  # failed after its retries, or never valid JSON: a judge failure, not a score
            run.failures += 1
            return
        run.scores[row_id] = parse_rubric(completion.text).score

    rows_read = zip(rows["id"], rows["input"], rows["output"], strict=True)
    await asyncio.gather(*(grade(str(i), q or "", a) for i, q, a in rows_read))
    usage = runner.usage["online_judge"]
    run.calls, run.cache_hits, run.cost_usd = usage.calls, usage.cache_hits, usage.cost_usd
    return run
