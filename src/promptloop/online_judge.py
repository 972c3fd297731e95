"""An online judge over a sample of production answers, within a budget of calls and dollars."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from promptloop.judges import MalformedVerdict, parse_rubric, rubric_messages
from promptloop.llm import acomplete

if TYPE_CHECKING:
    import litellm as litellm_module


@dataclass
class JudgeRun:
    """What the online judge did: scores by row id, failures, spend, whether the budget stopped it."""

    scores: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    calls: int = 0
    cost_usd: float = 0.0
    stopped_by_budget: bool = False

    def summary(self, model: str) -> dict[str, Any]:
        return {"model": model, "judged": len(self.scores), "failures": self.failures, "calls": self.calls,
                "cost_usd": round(self.cost_usd, 6), "stopped_by_budget": self.stopped_by_budget,
                "low_scores": sum(1 for s in self.scores.values() if s <= 2)}


async def judge_sample(
    litellm: "litellm_module", model: str, rows: pd.DataFrame, *, max_calls: int, max_usd: float,
    timeout_s: float, concurrency: int, retries: int, seed: int,
) -> JudgeRun:
    """Grade the answers of `rows` (id, input, output); stop starting calls once the budget is spent."""
    run = JudgeRun()
    gate = asyncio.Semaphore(concurrency)

    async def grade(row_id: str, question: str, answer: str) -> None:
        async with gate:
            if run.calls >= max_calls or run.cost_usd >= max_usd:
                run.stopped_by_budget = True
                return
            run.calls += 1
            try:
                completion = await acomplete(litellm, model, rubric_messages(question, answer), timeout_s,
                                             temperature=0, seed=seed, num_retries=retries)
            except Exception:  # a judge call that failed after its retries is a judge failure, not a score
                run.failures += 1
                return
            run.cost_usd += completion.cost_usd or 0.0
            try:
                run.scores[row_id] = parse_rubric(completion.text).score
            except MalformedVerdict:
                run.failures += 1

    await asyncio.gather(*(grade(str(i), q or "", a) for i, q, a in zip(rows["id"], rows["input"], rows["output"])))
    return run
