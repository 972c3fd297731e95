"""OpenTelemetry GenAI spans as production logs: `otel:<file, folder or glob>` of OTLP JSON, as an
OpenTelemetry collector's file exporter (or an SDK's OTLP file exporter) writes it: one
`{"resourceSpans": [{"resource": ..., "scopeSpans": [{"scope": ..., "spans": [...]}]}]}` per line.

One trace (`traceId`) is one log record, its spans gathered from every line and file. Mapping, by
the OpenTelemetry GenAI semantic conventions: the model call spans are those with
`gen_ai.operation.name` or `gen_ai.request.model`; model = the last one's `gen_ai.response.model`
(else `gen_ai.request.model`); tokens = the sum of `gen_ai.usage.input_tokens` / `output_tokens`
(older `prompt_tokens` / `completion_tokens`); the conversation = `gen_ai.input.messages` /
`gen_ai.output.messages` (JSON, messages with `parts`), else the events `gen_ai.system.message`,
`gen_ai.user.message`, `gen_ai.assistant.message`, `gen_ai.choice`, else the older attributes
`gen_ai.prompt` / `gen_ai.completion` (JSON or `gen_ai.prompt.<i>.role/content`); input = the last
user message, output = the answer, `inputs.history` = the turns before it; timestamp and latency =
the root span's start and duration; error = a span with status ERROR: its `exception` event
(`exception.type: exception.message`), else its status message, else `error.type`; user and session
= `user.id` (`enduser.id`), `session.id` (`gen_ai.conversation.id`); app and prompt version =
attributes `app` / `prompt_version` (`promptloop.` prefixed too), else the collected app and the
version released then; `gen_ai.usage.cost` when an instrumentation records it.

Feedback: a span event `collect.otel_feedback_event` (default `gen_ai.evaluation.result`) whose
`gen_ai.evaluation.name` is in `collect.feedback_names` (`gen_ai.evaluation.score.value`, else
`.score.label`; a number read by its sign or on the app's `feedback_scale`; comment
`gen_ai.evaluation.explanation`; time the event's), or a span attribute
`collect.otel_feedback_attribute` (default `user.feedback`; comment `<attribute>.comment`; time the
span's end). The newest wins; feedback spans exported later (a new line for an old trace) update
stored rows as late feedback.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from promptloop.collect.exports import (
    ExportRecord,
    FeedbackMark,
    Interaction,
    Loaded,
    TraceExportSource,
    check_export_path,
    empty_row,
    iso_ms,
    read_exports,
    score_of,
)
from promptloop.collect.sources import Unreadable
from promptloop.collect.traces import content_text
from promptloop.core.jsonl import RawJson

SCHEME = "otel:"
DEFAULT_FEEDBACK_EVENT = "gen_ai.evaluation.result"
DEFAULT_FEEDBACK_ATTRIBUTE = "user.feedback"
STATUS_ERROR = (2, "STATUS_CODE_ERROR")
MODEL_CALLS = frozenset({"chat", "text_completion", "generate_content", "completion"})
USER_KEYS = ("user.id", "enduser.id", "langfuse.user.id")
SESSION_KEYS = ("session.id", "gen_ai.conversation.id", "langfuse.session.id")


def attribute_value(value: Any) -> Any:
    """An OTLP JSON AnyValue as Python (intValue is a string in JSON: int64)."""
    if not isinstance(value, dict):
        return None
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        try:
            return int(value["intValue"])
        except (TypeError, ValueError):
            return None
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [attribute_value(v) for v in (value["arrayValue"] or {}).get("values") or []]
    if "kvlistValue" in value:
        return attributes((value["kvlistValue"] or {}).get("values"))
    return None


def attributes(items: Any) -> RawJson:
    """An OTLP attribute list [{key, value}] as a dict."""
    if not isinstance(items, list):
        return {}
    return {str(a["key"]): attribute_value(a.get("value")) for a in items if isinstance(a, dict) and "key" in a}


def nanos(value: Any) -> int | None:
    """A `...UnixNano` field (a string or a number in OTLP JSON) as int."""
    try:
        return int(value) if value not in (None, "", 0, "0") else None
    except (TypeError, ValueError):
        return None


@dataclass
class Span:
    """The parts of an OTLP span a log record needs."""

    trace_id: str
    span_id: str
    parent: str
    name: str
    start_ns: int | None
    end_ns: int | None
    attrs: RawJson
    events: list[tuple[str, int | None, RawJson]]
    status_code: Any
    status_message: str | None
    resource: RawJson
    origin: str

    @property
    def failed(self) -> bool:
        return self.status_code in STATUS_ERROR


def spans_of(records: list[ExportRecord]) -> tuple[list[Span], list[Unreadable]]:
    """Every span of the OTLP JSON records; records that are not TracesData, and spans without a
    traceId, are unreadable."""
    spans: list[Span] = []
    unreadable: list[Unreadable] = []
    for record in records:
        value = record.value
        if not isinstance(value.get("resourceSpans"), list):
            unreadable.append(Unreadable(record.origin, "not_otlp_traces: no resourceSpans",
                                         orjson.dumps(value, default=str).decode()[:2000]))
            continue
        for resource_spans in value["resourceSpans"]:
            resource = attributes(((resource_spans or {}).get("resource") or {}).get("attributes"))
            for scope in (resource_spans or {}).get("scopeSpans") or []:
                for raw in (scope or {}).get("spans") or []:
                    if not isinstance(raw, dict) or not raw.get("traceId"):
                        unreadable.append(Unreadable(record.origin, "no_trace_id: a span without traceId",
                                                     orjson.dumps(raw, default=str).decode()[:2000]))
                        continue
                    status = raw.get("status") or {}
                    spans.append(Span(
                        str(raw["traceId"]), str(raw.get("spanId") or ""), str(raw.get("parentSpanId") or ""),
                        str(raw.get("name") or ""), nanos(raw.get("startTimeUnixNano")),
                        nanos(raw.get("endTimeUnixNano")), attributes(raw.get("attributes")),
                        [(str(e.get("name") or ""), nanos(e.get("timeUnixNano")), attributes(e.get("attributes")))
                         for e in raw.get("events") or [] if isinstance(e, dict)],
                        status.get("code"), status.get("message") or None, resource, record.origin))
    return spans, unreadable


def normal_messages(value: Any) -> list[dict[str, Any]] | None:
    """GenAI messages (`{role, parts: [{type: text, content}]}` or `{role, content}`), as {role, content}."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, dict) and "role" in value:
        value = [value]
    if not isinstance(value, list):
        return None
    messages = []
    for message in value:
        if not isinstance(message, dict):
            continue
        if isinstance(message.get("message"), dict):  # a gen_ai.choice body: {index, finish_reason, message}
            message = message["message"]
        if isinstance(message.get("parts"), list):
            texts = [str(p.get("content")) for p in message["parts"]
                     if isinstance(p, dict) and p.get("type") == "text" and p.get("content") is not None]
            content: Any = "\n".join(texts)
        else:
            content = content_text(message.get("content"))
        messages.append({"role": str(message.get("role") or "assistant"), "content": content})
    return messages or None


def indexed_messages(attrs: RawJson, prefix: str) -> list[dict[str, Any]] | None:
    """`<prefix>.<i>.role/content` attributes (older instrumentations) as a message list."""
    found: dict[int, dict[str, Any]] = defaultdict(dict)
    for key, value in attrs.items():
        if key.startswith(prefix + "."):
            index, _, name = key[len(prefix) + 1:].partition(".")
            if index.isdigit() and name in ("role", "content"):
                found[int(index)][name] = value
    return [{"role": str(m.get("role") or "user"), "content": m.get("content")} for _, m in sorted(found.items())] \
        or None


def conversation(span: Span) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """(input messages, output messages) of a model call span, by whichever convention it follows."""
    inputs = normal_messages(span.attrs.get("gen_ai.input.messages"))
    outputs = normal_messages(span.attrs.get("gen_ai.output.messages"))
    if inputs is None:
        events = [(name.removeprefix("gen_ai.").removesuffix(".message"), attrs) for name, _, attrs in span.events
                  if name in ("gen_ai.system.message", "gen_ai.user.message", "gen_ai.assistant.message",
                              "gen_ai.tool.message")]
        inputs = [{"role": str(a.get("role") or role), "content": content_text(a.get("content"))}
                  for role, a in events] or None
    if outputs is None:
        choices = [a for name, _, a in span.events if name == "gen_ai.choice"]
        outputs = [m for a in choices for m in (normal_messages(a.get("message")) or
                                                [{"role": "assistant", "content": content_text(a.get("content"))}])] \
            or None
    if inputs is None:
        prompt = span.attrs.get("gen_ai.prompt")
        inputs = normal_messages(prompt) or (
            [{"role": "user", "content": prompt}] if isinstance(prompt, str) else indexed_messages(span.attrs,
                                                                                                  "gen_ai.prompt"))
    if outputs is None:
        completion = span.attrs.get("gen_ai.completion")
        outputs = normal_messages(completion) or (
            [{"role": "assistant", "content": completion}] if isinstance(completion, str)
            else indexed_messages(span.attrs, "gen_ai.completion"))
    return inputs, outputs


def last_of(messages: list[dict[str, Any]] | None, role: str) -> tuple[int, str | None] | None:
    for index in range(len(messages or []) - 1, -1, -1):
        assert messages is not None
        if messages[index].get("role") == role:
            return index, messages[index].get("content")
    return None


def first_attribute(spans: list[Span], keys: tuple[str, ...]) -> Any:
    for span in spans:
        for key in keys:
            if span.attrs.get(key) not in (None, ""):
                return span.attrs[key]
    return None


def error_of(span: Span) -> str:
    for name, _, attrs in reversed(span.events):
        if name == "exception" and (attrs.get("exception.type") or attrs.get("exception.message")):
            kind, message = attrs.get("exception.type"), attrs.get("exception.message")
            return f"{kind}: {message}" if kind and message else str(kind or message)
    return span.status_message or str(span.attrs.get("error.type") or f"span {span.name} ended with status ERROR")


@dataclass
class FeedbackSettings:
    """Where user feedback is in a trace."""

    event: str = DEFAULT_FEEDBACK_EVENT
    attribute: str = DEFAULT_FEEDBACK_ATTRIBUTE
    names: tuple[str, ...] = ("user_feedback", "user-feedback", "feedback")


def feedback_marks_of(spans: list[Span], settings: FeedbackSettings,
                      scale: tuple[float, float] | None = None) -> list[FeedbackMark]:
    marks = []
    for span in spans:
        for name, time_ns, attrs in span.events:
            if name == settings.event and attrs.get("gen_ai.evaluation.name") in settings.names:
                value = attrs.get("gen_ai.evaluation.score.value")
                score = score_of(value if value is not None else attrs.get("gen_ai.evaluation.score.label"),
                                 scale=scale)
                comment = attrs.get("gen_ai.evaluation.explanation")
                when = time_ns or span.end_ns or 0
                marks.append(FeedbackMark(when // 1_000_000, score, str(comment) if comment else None))
        if settings.attribute in span.attrs:
            comment = span.attrs.get(f"{settings.attribute}.comment")
            marks.append(FeedbackMark((span.end_ns or span.start_ns or 0) // 1_000_000,
                                      score_of(span.attrs[settings.attribute], scale=scale),
                                      str(comment) if comment else None))
    return marks


def is_model_call(span: Span) -> bool:
    return span.attrs.get("gen_ai.operation.name") in MODEL_CALLS or "gen_ai.request.model" in span.attrs


def _sum(values: list[Any]) -> Any:
    known = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(known) if known else None


def interaction(trace_id: str, spans: list[Span], feedback: FeedbackSettings,
                scale: tuple[float, float] | None = None) -> Interaction:
    """One trace's spans as a log-record row."""
    spans = sorted(spans, key=lambda s: (s.start_ns or 0, s.span_id))
    root = next((s for s in spans if not s.parent), None)
    calls = [s for s in spans if is_model_call(s)]
    last = calls[-1] if calls else None
    start_ns = root.start_ns if root is not None else min((s.start_ns for s in spans if s.start_ns), default=None)
    end_ns = root.end_ns if root is not None else None
    inputs, outputs = conversation(last) if last is not None else (None, None)
    failed = next((s for s in ([root] if root is not None and root.failed else []) + spans if s.failed), None)
    asked = last_of(inputs, "user")
    answered = last_of(outputs, "assistant")
    history = [m for m in (inputs or [])[: asked[0]] if m.get("role") in ("user", "assistant")] if asked else []
    marks = feedback_marks_of(spans, feedback, scale)
    latest = max(marks, key=lambda m: m.time_ms) if marks else None
    ordered = ([root] if root is not None else []) + spans
    session = first_attribute(ordered, SESSION_KEYS)
    usage_in = [s.attrs.get("gen_ai.usage.input_tokens", s.attrs.get("gen_ai.usage.prompt_tokens")) for s in calls]
    usage_out = [s.attrs.get("gen_ai.usage.output_tokens", s.attrs.get("gen_ai.usage.completion_tokens"))
                 for s in calls]
    version = first_attribute(ordered, ("prompt_version", "promptloop.prompt_version",
                                        "langfuse.observation.prompt.version"))
    row = empty_row(trace_id, f"otel:{(root or spans[0]).origin}")
    row.update({
        "timestamp": None if start_ns is None else iso_ms(start_ns // 1_000_000),
        "app": first_attribute(ordered, ("app", "promptloop.app")),
        "prompt_version": None if version is None else str(version),
        "model": None if last is None else (last.attrs.get("gen_ai.response.model") or
                                            last.attrs.get("gen_ai.request.model")),
        "input": None if asked is None else asked[1],
        "output": None if failed is not None or answered is None else answered[1],
        "latency_ms": None if start_ns is None or end_ns is None else (end_ns - start_ns) / 1_000_000,
        "prompt_tokens": _sum(usage_in),
        "completion_tokens": _sum(usage_out),
        "cost_usd": _sum([s.attrs.get("gen_ai.usage.cost") for s in calls]),
        "error": None if failed is None else error_of(failed),
        "feedback": None if latest is None else latest.score,
        "feedback_comment": None if latest is None else latest.comment,
        "user_id": first_attribute(ordered, USER_KEYS),
        "metadata": {"source": "otel", **({"session_id": str(session)} if session else {}),
                     **({"service": root.resource["service.name"]} if root and root.resource.get("service.name")
                        else {})},
        "inputs": {"history": history} if history else None,
    })
    # Spans end before their parent: a trace is whole once its root span is written.
    return Interaction(trace_id, (start_ns or 0) // 1_000_000, root is not None, row, marks)


@dataclass
class OtelFileSource(TraceExportSource):
    """OTLP JSON files of GenAI spans: a file, a folder or a glob."""

    pattern: str = ""
    root: Path = Path(".")
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)

    @classmethod
    def from_uri(cls, uri: str, root: Path) -> OtelFileSource:
        pattern = uri[len(SCHEME):]
        check_export_path(uri, pattern, root, "otel:<file, folder or glob of OTLP JSON (.jsonl/.json)>")
        return cls(pattern=pattern, root=Path(root).resolve())

    @property
    def key(self) -> str:
        return f"{SCHEME}{self.pattern}"

    def _traces(self, watermark: dict[str, Any]) -> tuple[dict[str, list[Span]], list[Unreadable],
                                                          dict[str, Any]] | None:
        found = read_exports(self.pattern, self.root, watermark)
        if found is None:
            return None
        records, unreadable, states = found
        spans, bad = spans_of(records)
        traces: dict[str, list[Span]] = defaultdict(list)
        for span in spans:
            traces[span.trace_id].append(span)
        return dict(traces), unreadable + bad, states

    def load(self, after_ms: int | None, watermark: dict[str, Any]) -> Loaded | None:
        found = self._traces(watermark)
        if found is None:
            return None
        traces, unreadable, states = found
        return Loaded([interaction(t, s, self.feedback, self.feedback_scale) for t, s in traces.items()], unreadable,
                      states)

    def feedback_marks(self, since_ms: int, mark_ms: int | None) -> dict[str, list[FeedbackMark]]:
        if self.files_unchanged:
            return {}  # the last run saw these very files: what they hold was applied then
        found = self._traces({})
        assert found is not None  # an empty watermark always reads
        marks: dict[str, list[FeedbackMark]] = {}
        for trace_id, spans in found[0].items():
            starts = [s.start_ns for s in spans if s.start_ns]
            if starts and min(starts) // 1_000_000 < since_ms:
                continue  # outside the lookback window
            if found_marks := feedback_marks_of(spans, self.feedback, self.feedback_scale):
                marks[trace_id] = found_marks
        return marks
