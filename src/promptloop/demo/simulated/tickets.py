"""Simulated production traffic of a ticket-triage app (the second sample app, `triage-bot`).

A seeded stream of support tickets (several kinds, ~35% Japanese, customers of three tiers) is
triaged by the app's own code, the function its `python:` target names, with its current prompt:
the same two model calls an evaluation makes, here straight through litellm. Support agents rate
~30% of the triaged tickets in their ticket tool, 👎 mostly for a wrong category or priority, a reply
in the wrong language or a broken answer (with noise), and say why. A small share of rows is
malformed on purpose, as for the question traffic.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import litellm as litellm_errors
from pydantic import BaseModel

from promptloop.core.config import DemoSettings
from promptloop.core.jsonl import RawJson, read_jsonl
from promptloop.core.text import language
from promptloop.demo.simulated import structured
from promptloop.demo.simulated.traffic import PROVIDER_ERROR_RATE, malform, simulated_latency_ms
from promptloop.domain.logs import iso
from promptloop.domain.prompts import Message, PromptVersion
from promptloop.llm.client import Completion, acomplete

if TYPE_CHECKING:
    import litellm as litellm_module

BANK_FILE = "tickets.jsonl"
JAPANESE_SHARE = 0.35
TIERS = ("free", "pro", "enterprise")
PRODUCTS = ("web", "ios", "android", "windows", "macos", "sync", "api", "admin console")


@dataclass(frozen=True)
class TicketSample:
    """One ticket of the bank, with the triage a good answer gives it."""

    text: str
    lang: str
    kind: str
    category: str
    priority: str


def has_ticket_bank(traffic_dir: Path) -> bool:
    """Whether an app's traffic folder holds tickets (this traffic) rather than questions."""
    return (traffic_dir / BANK_FILE).is_file()


def load_tickets(traffic_dir: Path) -> list[TicketSample]:
    """The ticket bank (tickets.jsonl)."""
    return [TicketSample(r["text"], r["lang"], r["kind"], r["category"], r["priority"])
            for _, r in read_jsonl(traffic_dir / BANK_FILE)]


@dataclass
class LivePrompt:
    """The production prompt as the app's code sees it (`render`, `complete`), calling the model through litellm.

    The same interface an evaluation gives the app (`TargetPrompt`), so the app's code runs unchanged.
    """

    version: PromptVersion
    model: str
    inputs: dict[str, object]
    litellm: litellm_module
    loop: asyncio.AbstractEventLoop
    timeout_s: float
    api_key: str | None
    overrides: dict[str, Any]
    completions: list[Completion] = field(default_factory=list)

    def render(self, **values: object) -> list[Message]:
        return self.version.render({**self.inputs, **values})

    async def acomplete(self, messages: list[Message] | None = None, *, model: str | None = None,
                        schema: dict[str, Any] | None = None, **parameters: Any) -> str:
        """The model's answer (`schema` is not sent: the simulated models take no response_format)."""
        completion = await acomplete(self.litellm, model or self.model,
                                     messages if messages is not None else self.render(), self.timeout_s, self.api_key,
                                     **{**self.version.parameters, **self.overrides, **parameters})
        self.completions.append(completion)
        return completion.text

    def complete(self, messages: list[Message] | None = None, *, model: str | None = None,
                 schema: dict[str, Any] | None = None, **parameters: Any) -> str:
        """`acomplete` for a sync app function (which runs in a worker thread)."""
        call = self.acomplete(messages, model=model, schema=schema, **parameters)
        return asyncio.run_coroutine_threadsafe(call, self.loop).result()


AppFunction = Callable[[LivePrompt, Mapping[str, object]], object]


def app_output(result: object) -> str:
    """The answer text of what the app's function returned (text, or a mapping with `output`)."""
    if isinstance(result, Mapping):
        return str(result.get("output", ""))
    return str(result)


def agent_feedback(findings: structured.Findings, demo: DemoSettings,
                   rng: random.Random) -> tuple[int | None, str | None]:
    """An agent's rating of ~rating_share of triaged tickets: 👎 for a flawed triage (with noise), and why."""
    if rng.random() >= demo.rating_share:
        return None, None
    good = not findings.problems
    if rng.random() < demo.rating_noise:
        good = not good
    if good:
        return 1, rng.choice([None, None, "thanks", "good triage"])
    return -1, rng.choice([findings.reasons[0], findings.reasons[0], None]) if findings.problems else "not helpful"


async def simulate_ticket(litellm: litellm_module, app_name: str, prompt: PromptVersion, model: str,
                          function: AppFunction, index: int, bank: list[TicketSample], demo: DemoSettings,
                          started: datetime, step: timedelta, timeout_s: float, api_key: str | None) -> RawJson:
    """One logged triage: the ticket, the app's JSON answer (or error), latency, tokens, an agent's rating."""
    rng = random.Random(f"{demo.seed}|ticket|{index}")
    lang = "ja" if rng.random() < JAPANESE_SHARE else "en"
    sample = rng.choice([t for t in bank if t.lang == lang] or bank)
    inputs: dict[str, object] = {"ticket": sample.text, "customer_tier": rng.choice(TIERS),
                                 "product": rng.choice(PRODUCTS)}
    row: dict[str, Any] = {
        "id": f"{app_name}-{demo.seed}-{index:07d}",
        "timestamp": iso(started + step * index + timedelta(seconds=rng.random() * step.total_seconds())),
        "app": app_name, "prompt_version": str(prompt.version), "model": model, "input": sample.text,
        "feedback": None, "feedback_comment": None, "user_id": f"agent-{rng.randrange(25):02d}",
        "metadata": {"channel": rng.choice(("email", "chat", "web form"))},
        "inputs": inputs,  # what the prompt was filled with: a case mined from this row replays them
    }
    live = LivePrompt(prompt, model, inputs, litellm, asyncio.get_running_loop(), timeout_s, api_key,
                      {"temperature": demo.temperature, "seed": demo.seed * 1_000_003 + index,
                       "simulation": {"error_rate": PROVIDER_ERROR_RATE, "fault_seed": demo.seed}})
    try:
        if inspect.iscoroutinefunction(function):
            output = app_output(await function(live, inputs))
        else:
            output = app_output(await asyncio.to_thread(function, live, inputs))
    except (litellm_errors.RateLimitError, litellm_errors.Timeout, litellm_errors.InternalServerError) as exc:
        timed_out = isinstance(exc, litellm_errors.Timeout)
        row.update(output=None, error=f"{type(exc).__name__}: {exc}",
                   latency_ms=30000.0 if timed_out else round(80 + rng.random() * 200, 1),
                   prompt_tokens=sum(c.prompt_tokens for c in live.completions),
                   completion_tokens=sum(c.completion_tokens for c in live.completions), cost_usd=0.0)
        return row
    findings = structured.grade(output, {"category": sample.category, "priority": sample.priority}, sample.text)
    feedback, comment = agent_feedback(findings, demo, rng)
    completion_tokens = sum(c.completion_tokens for c in live.completions)
    costs = [c.cost_usd for c in live.completions]
    row.update(
        output=output, error=None, latency_ms=simulated_latency_ms(completion_tokens, rng) + 200,  # two calls
        prompt_tokens=sum(c.prompt_tokens for c in live.completions), completion_tokens=completion_tokens,
        cost_usd=None if rng.random() < 0.2 or None in costs else round(sum(c or 0.0 for c in costs), 8),
        feedback=feedback, feedback_comment=comment,
    )
    return row


async def generate_ticket_logs(
    litellm: litellm_module, app_name: str, prompt: PromptVersion, model: str, function: AppFunction,
    bank: list[TicketSample], demo: DemoSettings, interactions: int, now: datetime, max_concurrency: int,
    timeout_s: float, on_progress: Callable[[], None] = lambda: None, api_key: str | None = None,
) -> tuple[list[RawJson], list[str], dict[str, int]]:
    """`interactions` triaged tickets over `demo.days` up to `now`, plus the malformed lines."""
    started = now - timedelta(days=demo.days)
    step = timedelta(days=demo.days) / interactions
    gate = asyncio.Semaphore(max_concurrency)

    async def one(index: int) -> RawJson:
        async with gate:
            row = await simulate_ticket(litellm, app_name, prompt, model, function, index, bank, demo, started, step,
                                        timeout_s, api_key)
        on_progress()
        return row

    rows = list(await asyncio.gather(*(one(i) for i in range(interactions))))
    malformed, kinds = malform(rows, demo.malformed_share, random.Random(f"{demo.seed}|ticket-malformed"))
    return rows, malformed, dict(kinds)


class TicketTrafficSummary(BaseModel):
    """What the generated ticket traffic holds, for the demo's report."""

    interactions: int
    malformed_rows: int
    malformed_kinds: dict[str, int]
    japanese_share: float
    error_rate: float
    feedback_rate: float
    thumbs_down_rate: float | None


def summarize_tickets(rows: list[RawJson], malformed: dict[str, int]) -> TicketTrafficSummary:
    """What the generated ticket traffic holds."""
    rated = [r for r in rows if r.get("feedback") in (-1, 1)]
    return TicketTrafficSummary(
        interactions=len(rows), malformed_rows=sum(malformed.values()), malformed_kinds=dict(sorted(malformed.items())),
        japanese_share=round(sum(1 for r in rows if language(r["input"]) == "ja") / len(rows), 3),
        error_rate=round(sum(1 for r in rows if r["error"]) / len(rows), 4),
        feedback_rate=round(len(rated) / len(rows), 3),
        thumbs_down_rate=round(sum(1 for r in rated if r["feedback"] == -1) / len(rated), 3) if rated else None,
    )
