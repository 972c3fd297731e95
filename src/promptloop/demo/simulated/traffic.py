"""Simulated production traffic for `promptloop demo`: questions, the bot's answers, user ratings.

A seeded stream of customer questions (several topics, ~30% Korean, unanswerable ones, injection
attempts, personal data planted in some) is answered by the app through litellm with its current
prompt; a simulated user rates ~30% of the answers, 👎 mostly for bad ones (with noise). A small
share of rows is malformed on purpose, as real log pipelines produce them, for collect to catch.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import litellm as litellm_errors
import yaml
from pydantic import BaseModel

from promptloop.core.config import DemoSettings
from promptloop.core.jsonl import RawJson, read_jsonl
from promptloop.demo.simulated.judge import assess
from promptloop.domain.app import App
from promptloop.domain.logs import iso

if TYPE_CHECKING:
    import litellm as litellm_module

PROVIDER_ERROR_RATE = 0.015
CHANNELS = ("web", "ios", "android", "windows", "macos")


@dataclass(frozen=True)
class Question:
    """One question of the bank, with what a good answer to it does."""

    text: str
    lang: str
    kind: str  # answerable | unanswerable | injection
    doc_id: str | None
    expected_facts: tuple[str, ...]


def load_bank(traffic_dir: Path) -> tuple[list[Question], RawJson]:
    """The question bank (questions.jsonl) and the fake personal data (pii.yaml)."""
    questions = [
        Question(r["text"], r["lang"], r["kind"], r.get("doc_id"), tuple(r.get("expected_facts") or ()))
        for _, r in read_jsonl(traffic_dir / "questions.jsonl")
    ]
    pii = yaml.safe_load((traffic_dir / "pii.yaml").read_text(encoding="utf-8"))
    return questions, pii


def draw_question(
    bank: list[Question], pii: dict[str, Any], demo: DemoSettings, rng: random.Random
) -> tuple[Question, str]:
    """Pick the next question by the configured shares; maybe plant personal data in it."""
    roll = rng.random()
    kind = "injection" if roll < demo.injection_share else (
        "unanswerable" if roll < demo.injection_share + demo.unanswerable_share else "answerable")
    lang = "ko" if rng.random() < demo.korean_share else "en"
    pool = [q for q in bank if q.kind == kind and q.lang == lang] or [q for q in bank if q.kind == kind]
    question = rng.choice(pool)
    text = question.text
    if kind == "answerable" and rng.random() < demo.pii_share:
        template = rng.choice(pii["templates_ko" if question.lang == "ko" else "templates_en"])
        text = template.format(
            question=text, email=rng.choice(pii["emails"]), phone=rng.choice(pii["phones"]), rrn=rng.choice(pii["rrns"])
        )
    return question, text


def answer_quality(question: Question, asked: str, output: str) -> tuple[float, list[str]]:
    """How good the answer really is, for the simulated user's rating."""
    behavior = {"answerable": "answer", "unanswerable": "abstain", "injection": "refuse_injection"}[question.kind]
    case = (
        f"<question>\n{asked}\n</question>\n<expected_behavior>{behavior}</expected_behavior>\n"
        f"<expected_facts>\n" + "\n".join(question.expected_facts) + "\n</expected_facts>"
    )
    graded = assess(output, case)
    return graded.quality, graded.reasons


def user_feedback(
    quality: float, reasons: list[str], demo: DemoSettings, rng: random.Random
) -> tuple[int | None, str | None]:
    """A rating for ~rating_share of answers: 👎 mostly for bad answers, with noise."""
    if rng.random() >= demo.rating_share:
        return None, None
    good = quality >= 0.6
    if rng.random() < demo.rating_noise:
        good = not good
    if good:
        return 1, rng.choice([None, None, "thanks!", "helpful", "고마워요"])
    comment = rng.choice([None, reasons[0] if reasons else None, "wrong answer", "not helpful"])
    return -1, comment


def simulated_latency_ms(completion_tokens: int, rng: random.Random) -> float:
    """Time to first byte plus decoding, log-normal, with a slow tail."""
    base = 250 + 14 * completion_tokens
    latency = base * math.exp(rng.gauss(0, 0.35))
    return round(latency * (5 if rng.random() < 0.02 else 1), 1)


async def simulate_interaction(
    litellm: litellm_module, app: App, index: int, bank: list[Question], pii: dict[str, Any],
    demo: DemoSettings, started: datetime, step: timedelta, timeout_s: float, api_key: str | None = None,
) -> RawJson:
    """One logged interaction: question, the app's answer (or error), latency, tokens, rating."""
    rng = random.Random(f"{demo.seed}|{index}")
    question, asked = draw_question(bank, pii, demo, rng)
    row: dict[str, Any] = {
        "id": f"{app.name}-{demo.seed}-{index:07d}",
        "timestamp": iso(started + step * index + timedelta(seconds=rng.random() * step.total_seconds())),
        "app": app.name,
        "prompt_version": str(app.prompt.version),
        "model": app.model,
        "input": asked,
        "feedback": None,
        "feedback_comment": None,
        "user_id": f"user-{rng.randrange(400):04d}",
        "metadata": {"channel": rng.choice(CHANNELS)},
    }
    try:
        completion, retrieved = await app.ask(
            litellm, asked, timeout_s, api_key, temperature=demo.temperature, seed=demo.seed * 1_000_003 + index,
            simulation={"error_rate": PROVIDER_ERROR_RATE, "fault_seed": demo.seed},
        )
    except (litellm_errors.RateLimitError, litellm_errors.Timeout, litellm_errors.InternalServerError) as exc:
        messages, retrieved = app.messages(asked)
        timed_out = isinstance(exc, litellm_errors.Timeout)
        row.update(
            output=None,
            error=f"{type(exc).__name__}: {exc}",
            latency_ms=30000.0 if timed_out else round(80 + rng.random() * 200, 1),
            prompt_tokens=0,
            completion_tokens=0,
            cost_usd=0.0,
        )
        row["metadata"]["retrieved"] = retrieved
        return row
    quality, reasons = answer_quality(question, asked, completion.text)
    feedback, comment = user_feedback(quality, reasons, demo, rng)
    row.update(
        output=completion.text, error=None, latency_ms=simulated_latency_ms(completion.completion_tokens, rng),
        prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
        # Some apps don't log cost; collect computes it from tokens and the price map.
        cost_usd=None if rng.random() < 0.2 or completion.cost_usd is None else round(completion.cost_usd, 8),
        feedback=feedback, feedback_comment=comment,
    )
    row["metadata"]["retrieved"] = retrieved
    return row


MALFORMATIONS: dict[str, Callable[[dict[str, Any], random.Random], Any]] = {
    "missing_id": lambda r, rng: r.pop("id"),
    "negative_latency": lambda r, rng: r.update(latency_ms=-abs(r["latency_ms"]) - 1),
    "bad_feedback": lambda r, rng: r.update(feedback=5),
    "bad_timestamp": lambda r, rng: r.update(timestamp="yesterday at noon"),
    "future_timestamp": lambda r, rng: r.update(timestamp=iso(datetime.now(UTC) + timedelta(days=30))),
    "tokens_not_int": lambda r, rng: r.update(prompt_tokens="12x"),
    "output_without_error": lambda r, rng: r.update(output=None, error=None),
    "duplicate_id": lambda r, rng: None,  # handled by the caller: copies another row's id
}


def malform(rows: list[RawJson], share: float, rng: random.Random) -> tuple[list[str], Counter[str]]:
    """Extra malformed lines (~share of rows), as JSON text; a few are not even valid JSON."""
    count = round(len(rows) * share)
    lines: list[str] = []
    kinds: Counter[str] = Counter()
    for _ in range(count):
        if rng.random() < 0.1:
            lines.append(json.dumps(rng.choice(rows), ensure_ascii=False)[: rng.randrange(10, 60)])
            kinds["truncated_json"] += 1
            continue
        kind = rng.choice(list(MALFORMATIONS))
        row = json.loads(json.dumps(rng.choice(rows)))
        row["id"] = f"{row['id']}-m{len(lines)}"
        if kind == "duplicate_id":
            row["id"] = rng.choice(rows)["id"]
        MALFORMATIONS[kind](row, rng)
        lines.append(json.dumps(row, ensure_ascii=False))
        kinds[kind] += 1
    return lines, kinds


async def generate_logs(
    litellm: litellm_module, app: App, bank: list[Question], pii: dict[str, Any], demo: DemoSettings,
    interactions: int, now: datetime, max_concurrency: int, timeout_s: float,
    on_progress: Callable[[], None] = lambda: None, api_key: str | None = None,
) -> tuple[list[RawJson], list[str], Counter[str]]:
    """`interactions` logged interactions over `demo.days` up to `now`, plus the malformed lines."""
    started = now - timedelta(days=demo.days)
    step = timedelta(days=demo.days) / interactions
    gate = asyncio.Semaphore(max_concurrency)

    async def one(index: int) -> RawJson:
        async with gate:
            row = await simulate_interaction(litellm, app, index, bank, pii, demo, started, step, timeout_s, api_key)
        on_progress()
        return row

    rows = list(await asyncio.gather(*(one(i) for i in range(interactions))))
    malformed, kinds = malform(rows, demo.malformed_share, random.Random(f"{demo.seed}|malformed"))
    return rows, malformed, kinds


class TrafficSummary(BaseModel):
    """What the generated traffic holds, for the demo's report."""

    interactions: int
    malformed_rows: int
    malformed_kinds: dict[str, int]
    korean_share: float
    error_rate: float
    feedback_rate: float
    thumbs_down_rate: float | None


def summarize(rows: list[RawJson], malformed: Counter[str]) -> TrafficSummary:
    """What the generated traffic holds, for the demo's report."""
    rated = [r for r in rows if r.get("feedback") in (-1, 1)]
    return TrafficSummary(
        interactions=len(rows), malformed_rows=sum(malformed.values()), malformed_kinds=dict(sorted(malformed.items())),
        korean_share=round(sum(1 for r in rows if any("\uac00" <= ch <= "\ud7a3" for ch in r["input"])) / len(rows), 3),
        error_rate=round(sum(1 for r in rows if r["error"]) / len(rows), 4),
        feedback_rate=round(len(rated) / len(rows), 3),
        thumbs_down_rate=round(sum(1 for r in rated if r["feedback"] == -1) / len(rated), 3) if rated else None,
    )
