"""Production logs from an app traced with MLflow: one trace is one log record.

The app is instrumented with MLflow tracing (`mlflow.litellm.autolog()`, `@mlflow.trace`) and its
users' thumbs up/down are MLflow Feedback assessments (`mlflow.log_feedback`). Traces are read with
MLflow's own search API through a client bound to an explicit tracking URI (the process-wide
tracking URI is never read nor changed), oldest first, page by page.

Watermark: `{"timestamp_ms": <request time of the newest trace read>, "trace_ids": [<ids read at
exactly that millisecond>]}`, so traces sharing that millisecond are neither lost nor read twice.
A trace still IN_PROGRESS holds the watermark back (it and everything after it wait for the next
run) unless it started more than `in_progress_grace_s` ago (then it is read as it is). Trace bodies
(spans) are fetched only when a metadata-only search found something new: a run with nothing new
reads none.

Fields: `trace_mapping` (log field -> JSON path into the request, or the response for `output`)
says where the user's message, user id, ... are; without it a multi-argument request's input is its
argument named question/input/query/message/prompt (or the last user message of `messages`) and
its user id the argument named user_id. A trace without an `app` tag belongs to the source's app
(`--app`); without a `prompt_version` tag its version is the one released (the registry alias
`production`) at the trace's start, else `unknown`.

Late feedback: `feedback_changes` re-reads the metadata of the traces started in the lookback
window and returns the feedback of those whose user Feedback changed since the last run.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptloop.collect.sources import EXTRA, ORIGIN, RAW_COLUMNS, Source, SourceBatch, frame_from_columns
from promptloop.core.errors import InputError
from promptloop.core.jsonl import RawJson
from promptloop.core.jsonpath import find, parse_path
from promptloop.domain.logs import iso

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Assessment, Span, Trace, TraceInfo

SCHEME = "mlflow:"
DEFAULT_STORE = "mlflow.db"
SQLITE_PREFIX = "sqlite:///"

# MLflow's keys (mlflow.tracing.constant), spelled out so importing this module stays cheap.
TRACE_USER = "mlflow.trace.user"  # TraceMetadataKey.TRACE_USER
TRACE_SESSION = "mlflow.trace.session"  # TraceMetadataKey.TRACE_SESSION
SOURCE_SCORER = "mlflow.trace.sourceScorer"  # TraceTagKey.SOURCE_SCORER_NAME
SPAN_MODEL = "mlflow.llm.model"  # SpanAttributeKey.MODEL
SPAN_TOKEN_USAGE = "mlflow.chat.tokenUsage"  # SpanAttributeKey.CHAT_USAGE
LLM_SPAN_TYPES = frozenset({"LLM", "CHAT_MODEL"})
HUMAN = "HUMAN"

UNKNOWN_VERSION = "unknown"
Feedback = tuple[int | None, str | None]  # (score, comment) of a trace's user feedback
# Argument names taken as the user's message / user id of a multi-argument request without a mapping.
INPUT_ARGUMENTS = ("question", "input", "query", "message", "prompt")
USER_ARGUMENTS = ("user_id",)

POSITIVE = frozenset({"thumbs_up", "up", "positive"})
NEGATIVE = frozenset({"thumbs_down", "down", "negative"})


@dataclass
class MlflowTraceSource(Source):
    """The traces of one MLflow experiment, each mapped to a raw log-record row."""

    tracking_uri: str
    experiment: str
    app: str | None = None  # the app of traces without an `app` tag
    feedback_name: str | None = None  # None: any HUMAN Feedback; else only Feedback of this name
    page_size: int = 100
    in_progress_grace_s: float = 3600.0
    trace_mapping: dict[str, str] = field(default_factory=dict)  # log field -> JSON path
    feedback_scale: tuple[float, float] | None = None  # of numeric feedback (the app's; None: by its sign)
    releases: list[tuple[int, str]] = field(default_factory=list)  # (ms, prompt version) the alias moved to

    @classmethod
    def from_uri(cls, uri: str, root: Path) -> MlflowTraceSource:
        """`mlflow:<experiment>` (store `<root>/mlflow.db`) or `mlflow:<experiment>@<tracking_uri>`."""
        if not uri.startswith(SCHEME):
            raise InputError(uri, "not an MLflow source (mlflow:<experiment>[@<tracking_uri>])")
        experiment, at, tracking_uri = uri[len(SCHEME) :].partition("@")
        if not experiment.strip():
            raise InputError(uri, "no experiment name (mlflow:<experiment>[@<tracking_uri>])")
        if at and not tracking_uri.strip():
            raise InputError(uri, "no tracking URI after '@' (mlflow:<experiment>@<tracking_uri>)")
        if not at:
            tracking_uri = SQLITE_PREFIX + str((Path(root) / DEFAULT_STORE).resolve())
        return cls(tracking_uri=resolve_tracking_uri(tracking_uri, Path(root)), experiment=experiment)

    @property
    def key(self) -> str:
        # The key is stored in the watermark file and logged: never with a password in it.
        return f"mlflow:{self.experiment}@{re.sub(r'//[^/@]*@', '//', self.tracking_uri)}"

    def read(self, watermark: dict[str, Any] | None) -> SourceBatch:
        """The traces started after the watermark (ties at its millisecond by id), oldest first."""
        client = self._client()
        experiment_id = self._experiment_id(client)
        after_ms, read_at_mark = parse_watermark(watermark)
        columns: dict[str, list[Any]] = {c: [] for c in RAW_COLUMNS}
        mark_ms, mark_ids = after_ms, set(read_at_mark)
        # Metadata first: bodies are fetched only when there is something new to read.
        if next(self._new_traces(client, experiment_id, after_ms, read_at_mark, spans=False), None) is None:
            return SourceBatch(frame_from_columns(columns), [], dict(watermark or {}))
        for trace in self._new_traces(client, experiment_id, after_ms, read_at_mark, spans=True):
            info = trace.info
            if not is_scorer_trace(info):
                append_row(columns, self.row(trace))
            if mark_ms is None or info.request_time > mark_ms:
                mark_ms, mark_ids = info.request_time, {info.trace_id}
            else:
                mark_ids.add(info.trace_id)
        new_watermark = {} if mark_ms is None else {"timestamp_ms": mark_ms, "trace_ids": sorted(mark_ids)}
        return SourceBatch(frame_from_columns(columns), [], new_watermark)

    def row(self, trace: Trace) -> RawJson:
        """The trace's row, with this source's mapping, app and release history."""
        row = trace_row(trace, self.experiment, self.app, self.feedback_name, self.trace_mapping, self.feedback_scale)
        if row["prompt_version"] is None:
            row["prompt_version"] = released_version(self.releases, trace.info.request_time)
        return row

    def _new_traces(self, client: MlflowClient, experiment_id: str, after_ms: int | None, read_at_mark: set[str],
                    *, spans: bool) -> Iterator[Trace]:
        """The traces after the watermark that are ready to read, oldest first."""
        seen: set[str] = set()
        now_ms = int(time.time() * 1000)
        for trace in self._traces(client, experiment_id, after_ms, spans=spans):
            info = trace.info
            if info.trace_id in seen or (info.request_time == after_ms and info.trace_id in read_at_mark):
                continue  # read by the last run (or twice by an offset page shifting under us)
            if is_unfinished(info) and now_ms - info.request_time < self.in_progress_grace_s * 1000:
                return  # still running: it and everything after it wait for the next run
            seen.add(info.trace_id)
            yield trace

    def feedback_changes(self, since_ms: int, mark_ms: int | None) -> tuple[dict[str, Feedback], int | None]:
        """(trace id -> (score, comment) of its user feedback now, new mark) for the traces started from
        `since_ms` on whose user Feedback was created or updated at or after `mark_ms` (None: any).

        Metadata only (no spans). The mark is the newest feedback update time seen; `>=` re-reads the
        mark's millisecond, so feedback written in it after this run is not lost (the caller stores
        only values that differ).
        """
        client = self._client()
        experiment_id = self._experiment_id(client)
        changes: dict[str, Feedback] = {}
        newest = mark_ms
        for trace in self._traces(client, experiment_id, since_ms, spans=False):
            info = trace.info
            stamps = [feedback_time(a) for a in info.assessments if is_user_feedback(a, self.feedback_name)]
            if not stamps or (mark_ms is not None and max(stamps) < mark_ms):
                continue
            newest = max(stamps) if newest is None else max(newest, *stamps)
            feedback = latest_feedback(info.assessments, self.feedback_name)
            changes[info.trace_id] = (None, None) if feedback is None else (
                feedback_score(feedback.value, self.feedback_scale), feedback.rationale)
        return changes, newest

    def _client(self) -> MlflowClient:
        """A client bound to this source's tracking URI; a missing sqlite store is an input error."""
        path = sqlite_path(self.tracking_uri)
        if path is not None and not path.is_file():
            # MlflowClient would create an empty store there; a typo should not leave a file behind.
            raise InputError(self.key, f"MLflow tracking store {path} not found")
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def _experiment_id(self, client: MlflowClient) -> str:
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            raise InputError(self.key, f"MLflow experiment {self.experiment!r} not found")
        return experiment.experiment_id

    def _traces(self, client: MlflowClient, experiment_id: str, after_ms: int | None, *,
                spans: bool) -> Iterator[Trace]:
        """Traces from `after_ms` on (inclusive), oldest first, one page of `page_size` at a time."""
        token: str | None = None
        while True:
            page = client.search_traces(
                locations=[experiment_id],
                filter_string=None if after_ms is None else f"trace.timestamp_ms >= {int(after_ms)}",
                order_by=["timestamp_ms ASC", "request_id ASC"],
                max_results=self.page_size,
                page_token=token,
                include_spans=spans,
            )
            yield from page
            token = page.token
            if not token:
                return


def resolve_tracking_uri(uri: str, root: Path) -> str:
    """A relative sqlite path is relative to the workspace root, as in params.yaml."""
    if uri.startswith(SQLITE_PREFIX) and not uri[len(SQLITE_PREFIX) :].startswith("/"):
        return SQLITE_PREFIX + str((root / uri[len(SQLITE_PREFIX) :]).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for other stores and in-memory sqlite)."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    path = uri[len(SQLITE_PREFIX) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def parse_watermark(watermark: dict[str, Any] | None) -> tuple[int | None, set[str]]:
    """(request time in ms of the last trace read, ids read at that ms); (None, {}) means all."""
    if not watermark or watermark.get("timestamp_ms") is None:
        return None, set()
    return int(watermark["timestamp_ms"]), {str(i) for i in watermark.get("trace_ids") or []}


def is_unfinished(info: TraceInfo) -> bool:
    """True while the trace's root span has not ended (MLflow logs child spans as they end)."""
    return state_name(info) == "IN_PROGRESS"


def is_scorer_trace(info: TraceInfo) -> bool:
    """Traces an MLflow scorer (LLM judge) produced: evaluation, not production traffic."""
    return SOURCE_SCORER in info.tags


def state_name(info: TraceInfo) -> str:
    return str(getattr(info.state, "value", info.state))


def append_row(columns: dict[str, list[Any]], row: dict[str, Any]) -> None:
    for name in RAW_COLUMNS:
        columns[name].append(row.get(name))


def trace_row(trace: Trace, experiment: str, default_app: str | None, feedback_name: str | None,
              mapping: dict[str, str] | None = None, scale: tuple[float, float] | None = None) -> RawJson:
    """One trace as a raw row in the log-record columns (plus `_origin`, `_extra`)."""
    info = trace.info
    mapped = mapped_fields(trace, mapping or {})
    failed = state_name(info) == "ERROR"
    prompt_tokens, completion_tokens = token_counts(trace)
    feedback = latest_feedback(info.assessments, feedback_name)
    row = {
        "id": info.trace_id,
        "timestamp": request_timestamp(info.request_time),
        "app": tag_or_metadata(info, "app") or default_app,
        "prompt_version": tag_or_metadata(info, "prompt_version"),
        "model": model_name(trace),
        "input": text_of(mapped["input"]) if "input" in mapped else request_text(trace),
        "output": None if failed else (text_of(mapped["output"]) if "output" in mapped else response_text(trace)),
        "latency_ms": info.execution_duration,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": None,
        "error": error_message(trace) if failed else None,
        "feedback": None if feedback is None else feedback_score(feedback.value, scale),
        "feedback_comment": None if feedback is None else feedback.rationale,
        "user_id": user_id(info) or text_of(mapped.get("user_id")) or argument_user_id(trace),
        "metadata": row_metadata(info, experiment, text_of(mapped.get("session_id"))),
        "inputs": mapped_inputs(mapped),
        ORIGIN: f"mlflow:{info.trace_id}",
        EXTRA: None,
    }
    return row


def request_timestamp(request_time_ms: int) -> str:
    """The trace's start (ms since the epoch) as ISO-8601 UTC."""
    return iso(datetime.fromtimestamp(request_time_ms / 1000, tz=UTC))


def tag_or_metadata(info: TraceInfo, key: str) -> str | None:
    """A trace tag, else the trace metadata entry of the same name (None when neither is set)."""
    value = info.tags.get(key) or info.trace_metadata.get(key)
    return value or None


def user_id(info: TraceInfo) -> str | None:
    """MLflow's end-user metadata (`update_current_trace(user=...)`), else a `user_id` tag."""
    return info.trace_metadata.get(TRACE_USER) or tag_or_metadata(info, "user_id")


def row_metadata(info: TraceInfo, experiment: str, mapped_session: str | None = None) -> RawJson:
    """Where the row came from, plus the trace's session id when it has one."""
    metadata: dict[str, Any] = {"source": "mlflow", "experiment": experiment}
    if session := info.trace_metadata.get(TRACE_SESSION) or mapped_session:
        metadata["session_id"] = session
    return metadata


def root_span(trace: Trace) -> Span | None:
    return next((s for s in trace.data.spans if s.parent_id is None), None)


def llm_spans(trace: Trace) -> list[Span]:
    """The LLM / chat-model spans of the trace, in the order they started."""
    spans = [s for s in trace.data.spans if s.span_type in LLM_SPAN_TYPES]
    return sorted(spans, key=lambda s: s.start_time_ns or 0)


def model_name(trace: Trace) -> str | None:
    """The model of the last LLM span, else the trace's `model` tag.

    MLflow normalises it into `mlflow.llm.model`; litellm autolog also keeps the request's
    `model` attribute (without the provider prefix) and the response's `model`.
    """
    for span in reversed(llm_spans(trace)):
        outputs, inputs = span.outputs, span.inputs
        for candidate in (
            span.get_attribute(SPAN_MODEL),
            outputs.get("model") if isinstance(outputs, dict) else None,
            span.get_attribute("model"),
            inputs.get("model") if isinstance(inputs, dict) else None,
        ):
            if isinstance(candidate, str) and candidate:
                return candidate
    return tag_or_metadata(trace.info, "model")


def request_value(trace: Trace) -> Any:
    """The trace's request: the root span's inputs, else the (possibly truncated) request preview."""
    root = root_span(trace)
    if root is not None and root.inputs is not None:
        return root.inputs
    return parse_json(trace.info.request_preview)


def response_value(trace: Trace) -> Any:
    """The trace's response: the root span's outputs, else the response preview."""
    root = root_span(trace)
    if root is not None and root.outputs is not None:
        return root.outputs
    return parse_json(trace.info.response_preview)


def parse_json(text: str | None) -> Any:
    """JSON text as a value; text that is not JSON (a truncated preview) stays text."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def request_text(trace: Trace) -> str | None:
    """The last user message of a chat request; a single-text-argument request is that text;
    any other request is its JSON preview."""
    value = request_value(trace)
    if isinstance(value, str):
        return value
    messages = chat_messages(value)
    if messages is not None:
        return last_message_text(messages, "user")
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), str):
        return next(iter(value.values()))
    if isinstance(value, dict):
        # Several arguments: the one that is the user's message, never the JSON of all of them
        # (it would store user ids and other arguments as the question).
        for name in INPUT_ARGUMENTS:
            if isinstance(value.get(name), str):
                return str(value[name])
        if (messages := chat_messages(value.get("messages"))) is not None:
            return last_message_text(messages, "user")
    if value is None:
        return None
    return trace.info.request_preview or json.dumps(value, default=str)


def response_text(trace: Trace) -> str | None:
    """The assistant message of the response (a chat completion, a message list or plain text)."""
    value = response_value(trace)
    if value is None or isinstance(value, str):
        return value
    message = chosen_message(value)
    if message is not None:
        return content_text(message.get("content"))
    messages = chat_messages(value)
    if messages is not None:
        return last_message_text(messages, "assistant")
    if isinstance(value, dict) and value.get("role") == "assistant":
        return content_text(value.get("content"))
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), str):
        return next(iter(value.values()))
    return trace.info.response_preview or json.dumps(value, default=str)


def chosen_message(value: Any) -> RawJson | None:
    """The message of a chat completion's first choice (`{"choices": [{"message": ...}]}`), else None."""
    if isinstance(value, dict) and isinstance(value.get("choices"), list) and value["choices"]:
        choice = value["choices"][0]
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            return message
    return None


def chat_messages(value: Any) -> list[RawJson] | None:
    """The message list of a chat request/response (`[...]` or `{"messages": [...]}`), else None."""
    if isinstance(value, dict):
        value = value.get("messages")
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return value
    return None


def last_message_text(messages: list[RawJson], role: str) -> str | None:
    """The text of the last message with `role` (None when there is none)."""
    for message in reversed(messages):
        if message.get("role") == role:
            return content_text(message.get("content"))
    return None


def content_text(content: Any) -> str | None:
    """Message content as text: a string, or the text parts of a multi-part content list."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [str(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "\n".join(parts) if parts else json.dumps(content, default=str)
    return str(content)


def token_counts(trace: Trace) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens: MLflow's trace-level aggregate, else the sum over LLM spans;
    None when nothing reported usage."""
    usage = trace.info.token_usage
    if usage:
        return usage.get("input_tokens"), usage.get("output_tokens")
    prompt = completion = None
    for span in llm_spans(trace):
        span_usage = span.get_attribute(SPAN_TOKEN_USAGE)
        if isinstance(span_usage, dict):
            if isinstance(span_usage.get("input_tokens"), int):
                prompt = (prompt or 0) + span_usage["input_tokens"]
            if isinstance(span_usage.get("output_tokens"), int):
                completion = (completion or 0) + span_usage["output_tokens"]
    return prompt, completion


def error_message(trace: Trace) -> str:
    """The exception of a failed trace: the root span's, else the first failed span's."""
    root = root_span(trace)
    failed = [s for s in sorted(trace.data.spans, key=lambda s: s.start_time_ns or 0) if span_failed(s)]
    for span in ([root] if root is not None else []) + failed:
        if message := span_error(span):
            return message
    return "trace ended in state ERROR"


def span_failed(span: Span) -> bool:
    return str(getattr(span.status.status_code, "value", span.status.status_code)) == "ERROR"


def span_error(span: Span) -> str | None:
    """`Type: message` of the span's exception event, else its status description."""
    for event in reversed(span.events):
        if event.name == "exception":
            kind = event.attributes.get("exception.type")
            message = event.attributes.get("exception.message")
            if kind or message:
                return f"{kind}: {message}" if kind and message else str(kind or message)
    return span.status.description or None


def latest_feedback(assessments: list[Assessment], name: str | None) -> Assessment | None:
    """The newest valid Feedback with a value: named `name`, or from a HUMAN when `name` is None."""
    matching = [
        a for a in assessments if is_user_feedback(a, name) and a.valid is not False and a.feedback.value is not None
    ]
    if not matching:
        return None
    return max(matching, key=lambda a: (a.last_update_time_ms or a.create_time_ms or 0, a.create_time_ms or 0))


def feedback_score(value: Any, scale: tuple[float, float] | None = None) -> int | None:
    """True/False -> 1/-1, a number -> its sign (or, on a `scale` [low, high], -1 below its middle, 1 above,
    0 at it, None outside it), thumbs_up/up/positive -> 1 (and their opposites -> -1); anything else -> None."""
    if isinstance(value, bool):
        return 1 if value else -1
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return None
        if scale is not None:
            low, high = scale
            if not low <= value <= high:
                return None
            value -= (low + high) / 2
        return (value > 0) - (value < 0)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in POSITIVE:
            return 1
        if word in NEGATIVE:
            return -1
    return None


def mapped_fields(trace: Trace, mapping: dict[str, str]) -> dict[str, Any]:
    """Log field -> the value its JSON path finds (in the response for `output`, else the request);
    fields whose path finds nothing are left out (the defaults apply)."""
    found: dict[str, Any] = {}
    request = response = None
    for name, path in mapping.items():
        if name == "output":
            response = response_value(trace) if response is None else response
            value = find(response, parse_path(path))
        else:
            request = request_value(trace) if request is None else request
            value = find(request, parse_path(path))
        if value is not None:
            found[name] = value
    return found


def text_of(value: Any) -> str | None:
    """A mapped value as text: strings as they are, a message's content (or a list of content parts, their
    text joined), anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and "content" in value:
        return content_text(value["content"])
    if isinstance(value, list):  # content parts ({"type": "output_text", "text": ...}); JSON when none has text
        return content_text(value)
    if isinstance(value, (int, float, bool)):
        return str(value)
    return json.dumps(value, default=str)


def mapped_inputs(mapped: dict[str, Any]) -> RawJson | None:
    """The `inputs.<name>` fields as the row's inputs (the case inputs of a failure mined from it)."""
    inputs = {name.removeprefix("inputs."): value for name, value in mapped.items() if name.startswith("inputs.")}
    return inputs or None


def argument_user_id(trace: Trace) -> str | None:
    """The request's `user_id` argument (a traced function's parameter), else None."""
    value = request_value(trace)
    if isinstance(value, dict):
        for name in USER_ARGUMENTS:
            if isinstance(value.get(name), (str, int)) and not isinstance(value.get(name), bool):
                return str(value[name])
    return None


def released_version(releases: list[tuple[int, str]], at_ms: int) -> str:
    """The prompt version released (alias `champion`) at `at_ms`: the last release at or before it."""
    index = bisect.bisect_right([ms for ms, _ in releases], at_ms)
    return releases[index - 1][1] if index else UNKNOWN_VERSION


def is_user_feedback(assessment: Assessment, name: str | None) -> bool:
    """A Feedback assessment that counts as the user's: named `name`, or from a HUMAN when `name` is None."""
    if getattr(assessment, "feedback", None) is None:
        return False
    return assessment.name == name if name is not None else str(assessment.source.source_type) == HUMAN


def feedback_time(assessment: Assessment) -> int:
    """When the assessment was last written (ms)."""
    return int(assessment.last_update_time_ms or assessment.create_time_ms or 0)
