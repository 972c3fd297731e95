"""Langfuse traces as production logs: an export (`langfuse-export:<file or folder>`) or the server's
public API (`langfuse:`). One trace is one log record; its user-feedback scores are its feedback.

Records, as Langfuse's public API returns them (camelCase JSON; one object per line, a JSON array,
or an API page `{"data": [...], "meta": ...}`): traces (`GET /api/public/traces[/{id}]`, with their
observations and scores embedded or not), observations (`GET /api/public/observations` and
`/api/public/v2/observations`) and scores (`GET /api/public/scores`, `/api/public/v3/scores`).
A folder may hold them in separate files (traces.jsonl, observations.jsonl, scores.jsonl).

Mapping: id = trace id; timestamp = the trace's `timestamp` (else its root observation's start);
model = the last GENERATION's `model`; prompt/completion tokens = the sum of the generations'
`usageDetails.input/output` (or `usage.input/output`, `promptTokens/completionTokens`); cost = the sum
of their `costDetails.total` (or `calculatedTotalCost`, `totalCost`); latency = the last end minus
the start (else the trace's `latency`, in seconds); error = the `statusMessage` of the first
observation at level ERROR (the output is then null); input/output = the trace's (else the root
observation's, else the last generation's), the user's last message and the assistant's answer of
a chat; `inputs.history` = the turns before the last user message of the last generation's chat;
user id, session id = the trace's `userId`, `sessionId`; app, prompt version = `metadata.app`,
the generation's `promptVersion` (else `metadata.prompt_version`, else the version released then).

Feedback: scores named in `collect.feedback_names`: BOOLEAN true/false (or 1/0) -> 1/-1, NUMERIC ->
its sign (or its place on the app's `feedback_scale`), CATEGORICAL thumbs_up/up/positive (and
opposites); the newest one (by `updatedAt`, else `timestamp`) wins, its `comment` is the feedback
comment. Late scores update stored rows.

The `langfuse:` source reads through the official `langfuse` client's generated REST API
(`langfuse.api.LangfuseAPI`: `observations.get_many` = `GET /api/public/v2/observations`,
`scores.get_many` = `GET /api/public/v3/scores`), never starting its tracing machinery.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from promptloop.collect.exports import (
    ExportRecord,
    FeedbackMark,
    Interaction,
    Loaded,
    TraceExportSource,
    answer_text,
    check_export_path,
    empty_row,
    history_of,
    iso_ms,
    parsed_time_ms,
    read_exports,
    score_of,
    user_text,
)
from promptloop.collect.sources import Unreadable
from promptloop.core.errors import InputError
from promptloop.core.jsonl import RawJson

EXPORT_SCHEME = "langfuse-export:"
API_SCHEME = "langfuse:"
DEFAULT_FEEDBACK_NAMES = ("user_feedback", "user-feedback", "feedback")
# The field groups of GET /api/public/v2/observations a log record needs.
OBSERVATION_FIELDS = "core,basic,time,io,metadata,model,usage,prompt,metrics,trace_context"
log = logging.getLogger(__name__)


@dataclass
class TraceParts:
    """What an export or the API holds of one trace."""

    trace: RawJson | None = None
    observations: list[RawJson] = field(default_factory=list)
    scores: list[RawJson] = field(default_factory=list)
    origin: str = ""


def kind_of(record: RawJson) -> str | None:
    """'score', 'observation' or 'trace' by the fields Langfuse's API gives each; None for neither."""
    if "dataType" in record or ("value" in record and "name" in record and "startTime" not in record
                                and ("traceId" in record or "subject" in record)):
        return "score"
    if "startTime" in record and ("traceId" in record or "type" in record):
        return "observation"
    if "id" in record and "timestamp" in record:
        return "trace"
    return None


def score_trace_id(score: RawJson) -> str | None:
    """The trace a score is about: `traceId` (v1), else its v3 `subject`."""
    if isinstance(score.get("traceId"), str):
        return str(score["traceId"])
    subject = score.get("subject")
    if isinstance(subject, dict):
        if isinstance(subject.get("traceId"), str):
            return subject["traceId"]
        if subject.get("kind") == "trace" and isinstance(subject.get("id"), str):
            return subject["id"]
    return None


def grouped(records: list[ExportRecord]) -> tuple[dict[str, TraceParts], list[Unreadable]]:
    """The records of each trace; records that are none of the three, or name no trace, are unreadable.

    A score on a session or an experiment (no trace) is not an interaction and is left out.
    """
    parts: dict[str, TraceParts] = defaultdict(TraceParts)
    unreadable: list[Unreadable] = []

    def add(record: RawJson, origin: str) -> None:
        if isinstance(record.get("trace"), dict) and "id" not in record:
            # {"trace": {...}, "observations": [...], "scores": [...]}: one trace's download as a wrapper
            add({**record["trace"], "observations": record.get("observations") or [],
                 "scores": record.get("scores") or []}, origin)
            return
        kind = kind_of(record)
        raw = orjson.dumps(record, default=str).decode()
        if kind == "trace":
            trace_id = str(record["id"])
            trace = {k: v for k, v in record.items() if k not in ("observations", "scores")}
            parts[trace_id].trace = trace
            parts[trace_id].origin = origin
            for name in ("observations", "scores"):  # GET /traces/{id} embeds them; the list gives ids only
                for child in record.get(name) or []:
                    if isinstance(child, dict):
                        add({"traceId": trace_id, **child}, origin)
        elif kind == "observation":
            if not isinstance(record.get("traceId"), str) or not record["traceId"]:
                unreadable.append(Unreadable(origin, "no_trace_id: an observation without traceId", raw))
                return
            group = parts[record["traceId"]]
            group.observations.append(record)
            group.origin = group.origin or origin
        elif kind == "score":
            score_trace = score_trace_id(record)
            if score_trace is None:
                log.debug("%s: a score on no trace (session or experiment), left out", origin)
                return
            parts[score_trace].scores.append(record)
        else:
            unreadable.append(Unreadable(origin, "not_a_langfuse_record: neither trace, observation nor score", raw))

    for record in records:
        add(record.value, record.origin)
    return dict(parts), unreadable


def feedback_marks_of(scores: list[RawJson], names: tuple[str, ...],
                      scale: tuple[float, float] | None = None) -> list[FeedbackMark]:
    """The user-feedback scores (named in `names`) as feedback marks (NUMERIC ones on `scale`)."""
    marks = []
    for score in scores:
        if score.get("name") not in names:
            continue
        value = score.get("value")
        if score.get("dataType") == "CATEGORICAL" or value is None:
            value = score.get("stringValue", value)
        when = parsed_time_ms(score.get("updatedAt")) or parsed_time_ms(score.get("timestamp")) or 0
        marks.append(FeedbackMark(when, score_of(value, score.get("dataType"), scale), score.get("comment") or None))
    return marks


def _number(*values: Any) -> float | None:
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _count(*values: Any) -> int | None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _sum(values: list[Any]) -> Any:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def token_usage(generation: RawJson) -> tuple[int | None, int | None]:
    """(input, output) tokens of a generation: `usageDetails`, else `usage`, else the flat fields."""
    details: RawJson = generation["usageDetails"] if isinstance(generation.get("usageDetails"), dict) else {}
    usage: RawJson = generation["usage"] if isinstance(generation.get("usage"), dict) else {}
    prompt = _count(details.get("input"), usage.get("input"), usage.get("promptTokens"), generation.get("promptTokens"),
                    generation.get("inputUsage"))
    completion = _count(details.get("output"), usage.get("output"), usage.get("completionTokens"),
                        generation.get("completionTokens"), generation.get("outputUsage"))
    return prompt, completion


def generation_cost(generation: RawJson) -> float | None:
    details: RawJson = generation["costDetails"] if isinstance(generation.get("costDetails"), dict) else {}
    return _number(details.get("total"), generation.get("calculatedTotalCost"), generation.get("totalCost"))


def _metadata(record: RawJson | None) -> RawJson:
    value = (record or {}).get("metadata")
    if isinstance(value, str):  # the v2 observations API returns metadata values as text
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def interaction(trace_id: str, parts: TraceParts, names: tuple[str, ...],
                scale: tuple[float, float] | None = None) -> Interaction | None:
    """One trace as a log-record row; None for a trace known only by its scores."""
    if parts.trace is None and not parts.observations:
        return None
    trace = parts.trace or {}
    observations = sorted(parts.observations, key=lambda o: (parsed_time_ms(o.get("startTime")) or 0, str(o.get("id"))))
    root = next((o for o in observations if not o.get("parentObservationId")), None)
    generations = [o for o in observations if o.get("type") == "GENERATION"]
    last = generations[-1] if generations else None
    starts = [s for s in (parsed_time_ms(o.get("startTime")) for o in observations) if s is not None]
    ends = [parsed_time_ms(o.get("endTime")) for o in observations]
    start = parsed_time_ms(trace.get("timestamp")) or (parsed_time_ms(root.get("startTime")) if root else None) or (
        min(starts) if starts else None)
    finished = all(e is not None for e in ends)
    known_ends = [e for e in ends if e is not None]
    if start is not None and known_ends and finished:
        latency: float | None = float(max(known_ends) - start)
    else:
        seconds = _number(trace.get("latency"), (root or {}).get("latency"))
        latency = None if seconds is None else seconds * 1000
    usage = [token_usage(g) for g in generations]
    failed = next((o for o in observations if o.get("level") == "ERROR"), None)
    metadata = {**_metadata(root), **_metadata(trace)}
    request = next((v for v in (trace.get("input"), (root or {}).get("input"), (last or {}).get("input"))
                    if v is not None), None)
    response = next((v for v in (trace.get("output"), (root or {}).get("output"), (last or {}).get("output"))
                     if v is not None), None)
    marks = feedback_marks_of(parts.scores, names, scale)
    latest = max(marks, key=lambda m: m.time_ms) if marks else None
    version = (last or {}).get("promptVersion")
    history = history_of((last or {}).get("input"))
    session = trace.get("sessionId") or (root or {}).get("sessionId")
    row = empty_row(trace_id, f"langfuse:{parts.origin or trace_id}")
    row.update({
        "timestamp": None if start is None else iso_ms(start),
        "app": metadata.get("app"),
        "prompt_version": str(version) if version is not None else metadata.get("prompt_version"),
        "model": (last or {}).get("model") or (last or {}).get("providedModelName") or metadata.get("model"),
        "input": user_text(request),
        "output": None if failed else answer_text(response),
        "latency_ms": latency,
        "prompt_tokens": _sum([u[0] for u in usage]),
        "completion_tokens": _sum([u[1] for u in usage]),
        "cost_usd": _sum([generation_cost(g) for g in generations]) if generations else _number(trace.get("totalCost")),
        "error": None if failed is None else (failed.get("statusMessage") or
                                              f"{failed.get('name') or 'observation'} ended at level ERROR"),
        "feedback": None if latest is None else latest.score,
        "feedback_comment": None if latest is None else latest.comment,
        "user_id": trace.get("userId") or (root or {}).get("userId"),
        "metadata": {"source": "langfuse", **({"session_id": session} if session else {}),
                     **({"trace_name": trace.get("name")} if trace.get("name") else {})},
        "inputs": {"history": history} if history else None,
    })
    return Interaction(trace_id, start or 0, finished, row, marks)


def interactions_of(parts: dict[str, TraceParts], names: tuple[str, ...],
                    scale: tuple[float, float] | None = None) -> list[Interaction]:
    found = (interaction(trace_id, group, names, scale) for trace_id, group in parts.items())
    return [i for i in found if i is not None]


@dataclass
class LangfuseExportSource(TraceExportSource):
    """Langfuse's exported traces, observations and scores: a file, a folder or a glob."""

    pattern: str = ""
    root: Path = Path(".")
    feedback_names: tuple[str, ...] = DEFAULT_FEEDBACK_NAMES

    @classmethod
    def from_uri(cls, uri: str, root: Path) -> LangfuseExportSource:
        pattern = uri[len(EXPORT_SCHEME):]
        check_export_path(uri, pattern, root, "langfuse-export:<file, folder or glob of .json/.jsonl>")
        return cls(pattern=pattern, root=Path(root).resolve())

    @property
    def key(self) -> str:
        return f"{EXPORT_SCHEME}{self.pattern}"

    def _parts(self, watermark: dict[str, Any]) -> tuple[dict[str, TraceParts], list[Unreadable],
                                                         dict[str, Any]] | None:
        found = read_exports(self.pattern, self.root, watermark)
        if found is None:
            return None
        records, unreadable, states = found
        parts, bad = grouped(records)
        return parts, unreadable + bad, states

    def load(self, after_ms: int | None, watermark: dict[str, Any]) -> Loaded | None:
        found = self._parts(watermark)
        if found is None:
            return None
        parts, unreadable, states = found
        return Loaded(interactions_of(parts, self.feedback_names, self.feedback_scale), unreadable, states)

    def feedback_marks(self, since_ms: int, mark_ms: int | None) -> dict[str, list[FeedbackMark]]:
        if self.files_unchanged:
            return {}  # the last run saw these very files: what they hold was applied then
        found = self._parts({})
        assert found is not None  # an empty watermark always reads
        marks: dict[str, list[FeedbackMark]] = {}
        for trace_id, group in found[0].items():
            item = interaction(trace_id, group, self.feedback_names, self.feedback_scale)
            if item is not None and item.start_ms < since_ms:
                continue  # outside the lookback window (a trace known by its scores only is kept)
            if found_marks := feedback_marks_of(group.scores, self.feedback_names, self.feedback_scale):
                marks[trace_id] = found_marks
        return marks


@dataclass
class LangfuseApiSource(TraceExportSource):
    """A Langfuse server read through its public API with the official client."""

    host: str = ""
    public_key: str = ""
    secret_key: str = ""
    page_size: int = 100
    feedback_names: tuple[str, ...] = DEFAULT_FEEDBACK_NAMES
    timeout_s: float = 60.0
    feedback_overlap_ms: int = 15 * 60_000  # scores may show in the API up to ~10 minutes after they were written
    first_run_days: float | None = 30.0  # how far back a first run reads (None: the whole history)

    @property
    def key(self) -> str:
        # The key is stored in the watermark file and logged: never with a password in it.
        return f"{API_SCHEME}{re.sub(r'//[^/@]*@', '//', self.host.rstrip('/'))}"

    def _client(self) -> Any:
        if not (self.host and self.public_key and self.secret_key):
            raise InputError(self.key, "Langfuse host and keys are not configured (collect.langfuse in params.yaml)")
        from langfuse.api import LangfuseAPI  # imported only when a langfuse: source is read

        return LangfuseAPI(base_url=self.host.rstrip("/"), username=self.public_key, password=self.secret_key,
                           timeout=self.timeout_s)

    def observations(self, client: Any, after_ms: int | None) -> Iterator[RawJson]:
        """Every observation started at or after `after_ms`, page by page (cursor)."""
        cursor: str | None = None
        start = None if after_ms is None else datetime.fromtimestamp(after_ms / 1000, tz=UTC)
        while True:
            page = client.observations.get_many(fields=OBSERVATION_FIELDS, limit=self.page_size, cursor=cursor,
                                                from_start_time=start)
            for item in page.data:
                yield plain(item)
            cursor = page.meta.cursor
            if not cursor or not page.data:
                return

    def scores(self, client: Any, from_ms: int | None) -> Iterator[RawJson]:
        """The feedback scores written at or after `from_ms` (score time), page by page (cursor)."""
        cursor: str | None = None
        start = None if from_ms is None else datetime.fromtimestamp(from_ms / 1000, tz=UTC)
        while True:
            page = client.scores.get_many(limit=min(self.page_size, 100), cursor=cursor, fields="details,subject",
                                          name=",".join(self.feedback_names), from_timestamp=start)
            for item in page.data:
                yield plain(item)
            cursor = page.meta.cursor
            if not cursor or not page.data:
                return

    def first_run_start_ms(self) -> int | None:
        """Where a first run starts reading: `first_run_days` before the collect run (None: the beginning)."""
        if self.first_run_days is None:
            return None
        now_ms = self.now_ms if self.now_ms is not None else int(datetime.now(UTC).timestamp() * 1000)
        return now_ms - int(self.first_run_days * 86_400_000)

    def load(self, after_ms: int | None, watermark: dict[str, Any]) -> Loaded | None:
        client = self._client()
        start_ms = after_ms if after_ms is not None else self.first_run_start_ms()
        records = [ExportRecord(f"{self.key}/observations/{o.get('id')}", o)
                   for o in self.observations(client, start_ms)]
        # A trace's scores come after it started: those written from the watermark on are enough.
        records += [ExportRecord(f"{self.key}/scores/{s.get('id')}", s) for s in self.scores(client, start_ms)]
        parts, unreadable = grouped(records)
        if start_ms is not None:
            # Observations of a trace whose root started before the watermark (or the first run's window)
            # belong to a trace already read (or left out).
            parts = {t: p for t, p in parts.items() if any(not o.get("parentObservationId") for o in p.observations)}
        return Loaded(interactions_of(parts, self.feedback_names, self.feedback_scale), unreadable, {})

    def feedback_marks(self, since_ms: int, mark_ms: int | None) -> dict[str, list[FeedbackMark]]:
        client = self._client()
        by_trace: dict[str, list[RawJson]] = defaultdict(list)
        for score in self.scores(client, since_ms):
            if (trace_id := score_trace_id(score)) is not None:
                by_trace[trace_id].append(score)
        return {t: feedback_marks_of(s, self.feedback_names, self.feedback_scale) for t, s in by_trace.items()}


def plain(item: Any) -> RawJson:
    """A client model as the API's JSON (camelCase names, ISO times)."""
    value = item.dict() if hasattr(item, "dict") else item
    return orjson.loads(orjson.dumps(value, default=str))


def api_source(uri: str, settings: Any, resolve: Any) -> LangfuseApiSource:
    """`langfuse:` (host from collect.langfuse.host, else LANGFUSE_HOST / LANGFUSE_BASE_URL) or
    `langfuse:<host>`; keys resolved by `resolve(key_source, field)` (env: or prefect-secret:)."""
    host = uri[len(API_SCHEME):].strip() or (settings.host if settings is not None else None) or \
        os.environ.get("LANGFUSE_HOST") or os.environ.get("LANGFUSE_BASE_URL") or ""
    if not host:
        raise InputError(uri, "no Langfuse host: set collect.langfuse.host (or LANGFUSE_HOST), "
                              "or write langfuse:<host>")
    if not host.startswith(("http://", "https://")):
        raise InputError(uri, "the Langfuse host must be an http(s):// URL")
    public = resolve(settings.public_key, "collect.langfuse.public_key")
    secret = resolve(settings.secret_key, "collect.langfuse.secret_key")
    return LangfuseApiSource(host=host, public_key=public, secret_key=secret, page_size=settings.page_size,
                             first_run_days=settings.first_run_days)
