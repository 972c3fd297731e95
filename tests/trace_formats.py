"""The same production interactions written three ways: promptloop's JSON Lines log records, a Langfuse
export (traces, observations and scores as Langfuse's public API returns them) and OTLP JSON (as an
OpenTelemetry file exporter writes GenAI spans).

Schemas followed (see docs/cli.md, "Langfuse and OpenTelemetry sources"): Langfuse's OpenAPI spec
(https://cloud.langfuse.com/generated/api/openapi.yml; TraceWithDetails, ObservationV2, ScoreV3 as the
`langfuse` 5.0.4 package's generated models spell them), the OTLP file exporter
(https://opentelemetry.io/docs/specs/otel/protocol/file-exporter/) and the GenAI semantic conventions
(https://github.com/open-telemetry/semantic-conventions-genai, model/gen-ai/*.yaml).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
APP = "support-bot"
MODEL = "offline/support-bot"
PRICE_IN, PRICE_OUT = 0.15e-6, 0.6e-6  # USD per token, as params.yaml prices the simulated model


@dataclass
class Interaction:
    """One interaction of the app, as it happened."""

    number: int
    trace_id: str
    start: datetime
    latency_ms: int
    question: str
    answer: str | None
    error: str | None
    history: list[dict[str, str]]
    prompt_tokens: int
    completion_tokens: int
    user_id: str
    session_id: str
    feedback: int | None  # -1, 1 or None
    comment: str | None
    feedback_kind: str = "BOOLEAN"  # how Langfuse scored it: BOOLEAN, NUMERIC or CATEGORICAL
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cost(self) -> float:
        return self.prompt_tokens * PRICE_IN + self.completion_tokens * PRICE_OUT

    @property
    def end(self) -> datetime:
        return self.start + timedelta(milliseconds=self.latency_ms)

    @property
    def feedback_time(self) -> datetime:
        return self.end + timedelta(seconds=30)


def trace_id_of(number: int) -> str:
    return hashlib.sha256(f"trace-{number}".encode()).hexdigest()[:32]


def span_id_of(number: int, part: str) -> str:
    return hashlib.sha256(f"span-{number}-{part}".encode()).hexdigest()[:16]


def interactions(count: int = 200) -> list[Interaction]:
    """`count` interactions over the two days before NOW: every 5th multi-turn, every 13th failed,
    every 3rd rated (thumbs up or down, some with a comment)."""
    made = []
    for n in range(count):
        failed = n % 13 == 7
        history = ([{"role": "user", "content": f"Earlier question {n}"},
                    {"role": "assistant", "content": f"Earlier answer {n}"}] if n % 5 == 2 else [])
        rated = n % 3 == 0
        made.append(Interaction(
            number=n, trace_id=trace_id_of(n), start=NOW - timedelta(days=2) + timedelta(seconds=37 * n),
            latency_ms=300 + (n * 71) % 900, question=f"How do I change setting number {n}?",
            answer=None if failed else f"Open Settings and change number {n}.",
            error="RateLimitError: too many requests" if failed else None, history=history,
            prompt_tokens=60 + n % 40 + 20 * len(history), completion_tokens=12 + n % 17,
            user_id=f"user-{n % 23}", session_id=f"session-{n // 3}",
            feedback=(1 if n % 2 == 0 else -1) if rated else None,
            comment="wrong setting" if rated and n % 2 == 1 and n % 9 == 3 else None,
            feedback_kind=("BOOLEAN", "NUMERIC", "CATEGORICAL")[n % 3 if n % 3 else (n // 3) % 3],
        ))
    return made


def iso_z(stamp: datetime) -> str:
    return stamp.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- JSON Lines log records -----------------------------------------------------------------------


def log_record(item: Interaction) -> dict[str, Any]:
    return {
        "id": item.trace_id, "timestamp": item.start.isoformat(), "app": APP, "prompt_version": "1", "model": MODEL,
        "input": item.question, "output": item.answer, "latency_ms": item.latency_ms,
        "prompt_tokens": item.prompt_tokens, "completion_tokens": item.completion_tokens, "cost_usd": item.cost,
        "error": item.error, "feedback": item.feedback, "feedback_comment": item.comment, "user_id": item.user_id,
        "metadata": {"session_id": item.session_id},
        "inputs": {"history": item.history} if item.history else None,
    }


def write_jsonl(items: list[Interaction], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(log_record(i)) + "\n" for i in items), encoding="utf-8")
    return path


# --- Langfuse --------------------------------------------------------------------------------------


def chat_input(item: Interaction) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are the support assistant."}, *item.history,
            {"role": "user", "content": item.question}]


def langfuse_trace(item: Interaction) -> dict[str, Any]:
    """A trace as GET /api/public/traces lists it (TraceWithDetails)."""
    return {
        "id": item.trace_id, "timestamp": iso_z(item.start), "name": "support_bot",
        "input": {"question": item.question}, "output": item.answer, "sessionId": item.session_id,
        "release": None, "version": None, "userId": item.user_id, "metadata": {"app": APP}, "tags": ["production"],
        "public": False, "environment": "default", "htmlPath": f"/project/p1/traces/{item.trace_id}",
        "latency": item.latency_ms / 1000, "totalCost": item.cost,
        "observations": [f"obs-{item.number}-root", f"obs-{item.number}-gen"],
        "scores": [f"score-{item.number}"] if item.feedback is not None else [],
    }


def langfuse_observations(item: Interaction, *, usage: bool = True, model: bool = True) -> list[dict[str, Any]]:
    """The root span and the model call (GENERATION), as GET /api/public/v2/observations returns them."""
    base = {"traceId": item.trace_id, "projectId": "p1", "environment": "default", "userId": item.user_id,
            "sessionId": item.session_id, "version": None, "metadata": {}}
    root = {**base, "id": f"obs-{item.number}-root", "type": "SPAN", "name": "support_bot",
            "parentObservationId": None, "startTime": iso_z(item.start), "endTime": iso_z(item.end),
            "level": "ERROR" if item.error else "DEFAULT", "statusMessage": item.error,
            "input": json.dumps({"question": item.question}), "output": item.answer}
    generation = {
        **base, "id": f"obs-{item.number}-gen", "type": "GENERATION", "name": "chat",
        "parentObservationId": root["id"],
        "startTime": iso_z(item.start + timedelta(milliseconds=5)),
        "endTime": iso_z(item.end - timedelta(milliseconds=5)),
        "completionStartTime": None, "level": "ERROR" if item.error else "DEFAULT", "statusMessage": item.error,
        "input": json.dumps(chat_input(item)),
        "output": None if item.answer is None else json.dumps({"role": "assistant", "content": item.answer}),
        "model": MODEL if model else None, "modelParameters": {"temperature": 0},
        "usageDetails": {"input": item.prompt_tokens, "output": item.completion_tokens,
                         "total": item.prompt_tokens + item.completion_tokens} if usage else {},
        "costDetails": {"input": item.prompt_tokens * PRICE_IN, "output": item.completion_tokens * PRICE_OUT,
                        "total": item.cost} if usage else {},
        "totalCost": item.cost if usage else 0,
        "promptName": "support-bot", "promptVersion": 1,
    }
    return [root, generation]


def langfuse_score(item: Interaction, value: int | None = None, *, when: datetime | None = None,
                   suffix: str = "") -> dict[str, Any]:
    """A user-feedback score as GET /api/public/v3/scores returns it (value typed by dataType)."""
    value = item.feedback if value is None else value
    kind = item.feedback_kind
    typed: Any = {"BOOLEAN": value > 0, "NUMERIC": float(value),
                  "CATEGORICAL": "thumbs_up" if value > 0 else "thumbs_down"}[kind]
    stamp = iso_z(when or item.feedback_time)
    return {"id": f"score-{item.number}{suffix}", "projectId": "p1", "name": "user_feedback", "value": typed,
            "dataType": kind, "source": "API", "timestamp": stamp, "createdAt": stamp, "updatedAt": stamp,
            "environment": "default", "comment": item.comment,
            "subject": {"kind": "trace", "id": item.trace_id}}


def write_langfuse_export(items: list[Interaction], folder: Path) -> Path:
    """An export folder: traces.jsonl, observations.jsonl, scores.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = {"traces": [langfuse_trace(i) for i in items],
             "observations": [o for i in items for o in langfuse_observations(i)],
             "scores": [langfuse_score(i) for i in items if i.feedback is not None]}
    for name, records in lines.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


# --- OTLP JSON -------------------------------------------------------------------------------------


def any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a string in OTLP JSON
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": str(value)}


def otlp_attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": any_value(v)} for k, v in values.items() if v is not None]


def nanos(stamp: datetime) -> str:
    return str(int(stamp.timestamp() * 1000) * 1_000_000)


def genai_messages(messages: list[dict[str, str]]) -> str:
    """Messages as gen_ai.input.messages / gen_ai.output.messages hold them (JSON, content in parts)."""
    return json.dumps([{"role": m["role"], "parts": [{"type": "text", "content": m["content"]}]} for m in messages])


def otel_spans(item: Interaction, *, model: bool = True) -> list[dict[str, Any]]:
    """The root span, the chat span (GenAI conventions) and, when rated, a feedback span."""
    root_id, chat_id = span_id_of(item.number, "root"), span_id_of(item.number, "chat")
    error_status = {"code": 2, "message": item.error} if item.error else {"code": 0}
    root = {"traceId": item.trace_id, "spanId": root_id, "parentSpanId": "", "name": "support_bot", "kind": 2,
            "startTimeUnixNano": nanos(item.start), "endTimeUnixNano": nanos(item.end),
            "attributes": otlp_attributes({"app": APP, "prompt_version": "1", "user.id": item.user_id,
                                           "session.id": item.session_id}),
            "status": error_status}
    chat_attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "offline",
                  "gen_ai.request.model": MODEL if model else None, "gen_ai.response.model": MODEL if model else None,
                  "gen_ai.usage.input_tokens": item.prompt_tokens,
                  "gen_ai.usage.output_tokens": item.completion_tokens,
                  "gen_ai.input.messages": genai_messages(chat_input(item))}
    if item.answer is not None:
        chat_attrs["gen_ai.output.messages"] = genai_messages([{"role": "assistant", "content": item.answer}])
    if item.error:
        chat_attrs["error.type"] = "RateLimitError"
    chat = {"traceId": item.trace_id, "spanId": chat_id, "parentSpanId": root_id, "name": f"chat {MODEL}",
            "kind": 3, "startTimeUnixNano": nanos(item.start + timedelta(milliseconds=5)),
            "endTimeUnixNano": nanos(item.end - timedelta(milliseconds=5)), "attributes": otlp_attributes(chat_attrs),
            "events": [{"timeUnixNano": nanos(item.end - timedelta(milliseconds=5)), "name": "exception",
                        "attributes": otlp_attributes({"exception.type": "RateLimitError",
                                                       "exception.message": "too many requests"})}]
            if item.error else [],
            "status": error_status}
    spans = [chat, root]  # children end (and are exported) first
    if item.feedback is not None:
        spans.append(otel_feedback_span(item, item.feedback))
    return spans


def otel_feedback_span(item: Interaction, value: int, *, when: datetime | None = None, suffix: str = "") -> dict:
    """A span carrying the user's feedback: a gen_ai.evaluation.result event (or the user.feedback
    attribute on every other rated interaction)."""
    stamp = when or item.feedback_time
    attrs: dict[str, Any] = {}
    events = []
    if item.number % 2 == 0:
        events.append({"timeUnixNano": nanos(stamp), "name": "gen_ai.evaluation.result",
                       "attributes": otlp_attributes({"gen_ai.evaluation.name": "user_feedback",
                                                      "gen_ai.evaluation.score.value": float(value),
                                                      "gen_ai.evaluation.explanation": item.comment})})
    else:
        attrs = {"user.feedback": "thumbs_up" if value > 0 else "thumbs_down", "user.feedback.comment": item.comment}
    return {"traceId": item.trace_id, "spanId": span_id_of(item.number, "feedback" + suffix),
            "parentSpanId": span_id_of(item.number, "root"), "name": "user_feedback", "kind": 1,
            "startTimeUnixNano": nanos(stamp), "endTimeUnixNano": nanos(stamp),
            "attributes": otlp_attributes(attrs), "events": events, "status": {"code": 0}}


def otlp_line(spans: list[dict[str, Any]]) -> str:
    """One export request of the file exporter: TracesData with one resource and one scope."""
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": otlp_attributes({"service.name": APP, "deployment.environment": "prod"})},
        "scopeSpans": [{"scope": {"name": "support-bot.instrumentation", "version": "1.0"}, "spans": spans}],
    }]}) + "\n"


def write_otlp(items: list[Interaction], path: Path, batch: int = 16) -> Path:
    """The spans exported in batches (one line each), as a BatchSpanProcessor and file exporter do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    spans = [s for i in items for s in otel_spans(i)]
    path.write_text("".join(otlp_line(spans[k:k + batch]) for k in range(0, len(spans), batch)), encoding="utf-8")
    return path
