"""What the trace sources other than MLflow share: Langfuse exports and API, OTLP JSON files.

Each one turns its records into `Interaction`s (one trace = one log record, plus the user feedback
marks found on it); this module reads them past a watermark and reports late feedback the way the
MLflow source does, so `trace_collect.collect_late_feedback` serves them all.

Watermark: `{"timestamp_ms": <start of the newest trace read>, "trace_ids": [<ids read at that
millisecond>]}` (as for MLflow traces), plus, for files, `{"files": {<name>: {"sha256", "lines"}}}`:
when no file changed and no trace was held back, nothing is parsed; the unreadable lines of a file
are reported once (only lines past those already seen). A trace that is not finished (a Langfuse
observation without an end time, an OTLP trace whose root span is not written yet) holds the
watermark back, it and everything after it waiting for the next run, unless it started more than
`in_progress_grace_s` before the run.

Exports are re-read whole when they changed (a trace's pieces may be anywhere in them): a trace that
starts before the watermark but arrives later (an export written late) is not read; the
`timestamp_ms` order is the one promise.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
from abc import abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from promptloop.collect.sources import EXTRA, ORIGIN, RAW_COLUMNS, Source, SourceBatch, Unreadable, frame_from_columns
from promptloop.collect.traces import (
    Feedback,
    chat_messages,
    chosen_message,
    content_text,
    feedback_score,
    last_message_text,
    released_version,
)
from promptloop.core.errors import InputError
from promptloop.core.jsonl import RawJson
from promptloop.domain.logs import iso

EXPORT_SUFFIXES = (".json", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class FeedbackMark:
    """One piece of user feedback on a trace: when it was written, its score and comment."""

    time_ms: int
    score: int | None
    comment: str | None


@dataclass
class Interaction:
    """One trace as a raw log-record row, when it started, whether it ended, its feedback."""

    id: str
    start_ms: int
    finished: bool
    row: RawJson
    feedback: list[FeedbackMark] = field(default_factory=list)

    def latest_feedback(self) -> FeedbackMark | None:
        return max(self.feedback, key=lambda f: f.time_ms) if self.feedback else None


@dataclass
class Loaded:
    """What a source found: its interactions, what could not be read, the state of its files."""

    interactions: list[Interaction] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)


@dataclass
class TraceExportSource(Source):
    """Traces from somewhere other than MLflow, read after a (start time, ids) watermark."""

    app: str | None = None  # the app of traces that do not name one
    releases: list[tuple[int, str]] = field(default_factory=list)  # (ms, prompt version) the alias moved to
    in_progress_grace_s: float = 3600.0
    now_ms: int | None = None  # the collect run's time (unfinished traces older than the grace are read)
    # Feedback written this long before the last mark is looked at again: a server that shows scores late
    # (Langfuse's API, by up to about 10 minutes) would otherwise hide one behind a newer one.
    feedback_overlap_ms: int = 0
    feedback_scale: tuple[float, float] | None = None  # of numeric feedback (the app's; None: by its sign)
    # Set by `read` when no export file changed since the last run: their feedback cannot have changed either.
    files_unchanged: bool = field(default=False, init=False)

    @abstractmethod
    def load(self, after_ms: int | None, watermark: dict[str, Any]) -> Loaded | None:
        """The interactions that may lie after `after_ms`; None when nothing changed since `watermark`."""

    @abstractmethod
    def feedback_marks(self, since_ms: int, mark_ms: int | None) -> dict[str, list[FeedbackMark]]:
        """Trace id -> its user feedback, for traces started from `since_ms` on with feedback written at or
        after `mark_ms` (None: any)."""

    def read(self, watermark: dict[str, Any] | None) -> SourceBatch:
        previous = dict(watermark or {})
        after_ms, read_at_mark = mark_of(previous)
        columns: dict[str, list[Any]] = {c: [] for c in RAW_COLUMNS}
        loaded = self.load(after_ms, previous)
        self.files_unchanged = loaded is None
        if loaded is None:
            return SourceBatch(frame_from_columns(columns), [], previous)
        now_ms = self.now_ms if self.now_ms is not None else int(datetime.now(UTC).timestamp() * 1000)
        mark_ms, mark_ids, held = after_ms, set(read_at_mark), False
        for item in sorted(loaded.interactions, key=lambda i: (i.start_ms, i.id)):
            if after_ms is not None and (item.start_ms < after_ms or
                                         (item.start_ms == after_ms and item.id in read_at_mark)):
                continue  # read by an earlier run
            if not item.finished and now_ms - item.start_ms < self.in_progress_grace_s * 1000:
                held = True
                break  # still running: it and everything after it wait for the next run
            row = dict(item.row)
            row["app"] = row.get("app") or self.app
            if row.get("prompt_version") is None:
                row["prompt_version"] = released_version(self.releases, item.start_ms)
            for name in RAW_COLUMNS:
                columns[name].append(row.get(name))
            if mark_ms is None or item.start_ms > mark_ms:
                mark_ms, mark_ids = item.start_ms, {item.id}
            else:
                mark_ids.add(item.id)
        new = {k: v for k, v in previous.items() if k not in ("timestamp_ms", "trace_ids", "held")}
        if mark_ms is not None:
            new.update(timestamp_ms=mark_ms, trace_ids=sorted(mark_ids))
        if loaded.files:
            new["files"] = loaded.files
        if held:
            new["held"] = True
        return SourceBatch(frame_from_columns(columns), loaded.unreadable, new)

    def feedback_changes(self, since_ms: int, mark_ms: int | None) -> tuple[dict[str, Feedback], int | None]:
        """(trace id -> (score, comment) of its latest user feedback, new mark), as `MlflowTraceSource`'s."""
        changes: dict[str, Feedback] = {}
        newest = mark_ms
        threshold = None if mark_ms is None else mark_ms - self.feedback_overlap_ms
        for trace_id, marks in self.feedback_marks(since_ms, threshold).items():
            stamps = [m.time_ms for m in marks]
            if not stamps or (threshold is not None and max(stamps) < threshold):
                continue
            newest = max(stamps) if newest is None else max(newest, *stamps)
            latest = max(marks, key=lambda m: m.time_ms)
            changes[trace_id] = (latest.score, latest.comment)
        return changes, newest


def mark_of(watermark: dict[str, Any]) -> tuple[int | None, set[str]]:
    """(start in ms of the newest trace read, ids read at that ms); (None, {}) means all."""
    if watermark.get("timestamp_ms") is None:
        return None, set()
    return int(watermark["timestamp_ms"]), {str(i) for i in watermark.get("trace_ids") or []}


# --- export files ---------------------------------------------------------------------------------


@dataclass
class ExportRecord:
    """One JSON object of an export file, and where it was."""

    origin: str
    value: RawJson


def export_files(pattern: str, root: Path) -> list[Path]:
    """The files a `<scheme>:<file, folder or glob>` names: a folder means its .json/.jsonl/.ndjson files."""
    path = Path(pattern) if Path(pattern).is_absolute() else root / pattern
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.suffix in EXPORT_SUFFIXES]
    else:
        found = [Path(p) for p in glob.glob(str(path), recursive=True)]
    return sorted(p for p in found if p.is_file())


def check_export_path(uri: str, pattern: str, root: Path, what: str) -> None:
    """An InputError when `pattern` names nothing (globs may match nothing yet)."""
    if not pattern.strip():
        raise InputError(uri, f"no file or folder after the scheme ({what})")
    if not any(ch in pattern for ch in "*?[") and not (root / pattern).exists() and not Path(pattern).exists():
        raise InputError(uri, f"not found ({what})")


def file_state(path: Path) -> dict[str, Any]:
    """What the watermark keeps of a file: its sha256 and its line count."""
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "lines": data.count(b"\n")}


def files_unchanged(states: dict[str, Any], watermark: dict[str, Any]) -> bool:
    """True when every file is as the last run left it and no trace was held back then."""
    return bool(states) and states == watermark.get("files") and not watermark.get("held")


def read_export(path: Path, name: str, seen_lines: int) -> tuple[list[ExportRecord], list[Unreadable]]:
    """The JSON objects of a file: one per line (JSON Lines) or the whole file (.json: an object, an array
    of objects, or an API page `{"data": [...]}`); unreadable lines past `seen_lines` are reported."""
    records: list[ExportRecord] = []
    unreadable: list[Unreadable] = []
    raw = path.read_bytes()
    if path.suffix == ".json" and not _looks_like_lines(raw):
        try:
            records += [ExportRecord(f"{name}:{i}", v) for i, v in enumerate(unpacked(orjson.loads(raw)))]
        except (orjson.JSONDecodeError, TypeError) as exc:
            if seen_lines == 0:
                kind = "invalid_json" if isinstance(exc, orjson.JSONDecodeError) else "not_an_object"
                unreadable.append(Unreadable(name, f"{kind}: {exc}", raw[:2000].decode("utf-8", "replace")))
        return records, unreadable
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            records += [ExportRecord(f"{name}:{number}", v) for v in unpacked(orjson.loads(line))]
        except (orjson.JSONDecodeError, TypeError) as exc:
            if number > seen_lines:
                kind = "invalid_json" if isinstance(exc, orjson.JSONDecodeError) else "not_an_object"
                unreadable.append(Unreadable(f"{name}:{number}", f"{kind}: {exc}", line.decode("utf-8", "replace")))
    return records, unreadable


def _looks_like_lines(raw: bytes) -> bool:
    """A .json file holding one object per line (some exporters name JSON Lines so)."""
    lines = [line for line in raw.split(b"\n") if line.strip()]
    return len(lines) > 1 and all(line.lstrip().startswith(b"{") and line.rstrip().endswith(b"}") for line in lines)


def unpacked(value: Any) -> list[RawJson]:
    """The records in a JSON value: an object, an array of objects, or an API page's `data`."""
    if isinstance(value, dict) and isinstance(value.get("data"), list) and "meta" in value:
        value = value["data"]
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return list(value)
    raise TypeError(f"not a JSON object or array of objects: {type(value).__name__}")


def read_exports(pattern: str, root: Path, watermark: dict[str, Any]) -> tuple[list[ExportRecord],
                                                                               list[Unreadable], dict[str, Any]] | None:
    """Every record of the export files, the unreadable lines not reported before, the files' states;
    None when no file changed since `watermark`."""
    paths = export_files(pattern, root)
    states = {relative_name(p, root): file_state(p) for p in paths}
    if files_unchanged(states, watermark):
        return None
    known = watermark.get("files") or {}
    records: list[ExportRecord] = []
    unreadable: list[Unreadable] = []
    for path in paths:
        name = relative_name(path, root)
        before = known.get(name) or {}
        # Lines already seen are reported again only when the file was rewritten (it no longer starts the same).
        seen = int(before.get("lines", 0)) if _grew_from(path, before) else 0
        found, bad = read_export(path, name, seen)
        records += found
        unreadable += bad
    return records, unreadable, states


def _grew_from(path: Path, before: dict[str, Any]) -> bool:
    """True when the file's first `lines` lines are the ones a previous run read (an export appended to)."""
    lines = int(before.get("lines", 0))
    if not lines:
        return False
    data = path.read_bytes()
    end = -1
    for _ in range(lines):
        end = data.find(b"\n", end + 1)
        if end < 0:
            return False
    return hashlib.sha256(data[: end + 1]).hexdigest() == before.get("sha256")


def relative_name(path: Path, root: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(root.resolve())) if resolved.is_relative_to(root.resolve()) else str(resolved)


# --- shared mapping helpers -----------------------------------------------------------------------


def iso_ms(ms: int) -> str:
    return iso(datetime.fromtimestamp(ms / 1000, tz=UTC))


def parsed_time_ms(value: Any) -> int | None:
    """An ISO-8601 time (Langfuse) as ms since the epoch; None when absent or unparseable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def maybe_json(value: Any) -> Any:
    """A string that holds a JSON object or array, parsed (Langfuse's v2 API returns input/output as text)."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def messages_of(value: Any) -> list[RawJson] | None:
    """A chat message list (`[...]`, `{"messages": [...]}`), else None."""
    return chat_messages(maybe_json(value))


def user_text(value: Any) -> str | None:
    """The user's message in a request: a string, the last user message of a chat, a lone string argument."""
    value = maybe_json(value)
    if value is None or isinstance(value, str):
        return value
    messages = messages_of(value)
    if messages is not None:
        return last_message_text(messages, "user")
    if isinstance(value, dict):
        for name in ("question", "input", "query", "message", "prompt", "content"):
            if isinstance(value.get(name), str):
                return str(value[name])
    return json.dumps(value, default=str)


def answer_text(value: Any) -> str | None:
    """The assistant's answer in a response: a string, a message, the last assistant message, a choice."""
    value = maybe_json(value)
    if value is None or isinstance(value, str):
        return value
    message = chosen_message(value)
    if message is not None:
        return content_text(message.get("content"))
    messages = messages_of(value)
    if messages is not None:
        return last_message_text(messages, "assistant")
    if isinstance(value, dict) and "content" in value:
        return content_text(value["content"])
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), str):
        return next(iter(value.values()))
    return json.dumps(value, default=str)


def history_of(value: Any) -> list[dict[str, str]] | None:
    """The turns before the last user message of a chat request (system messages left out), else None."""
    messages = messages_of(value)
    if not messages:
        return None
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last_user is None:
        return None
    turns = [{"role": str(m["role"]), "content": content_text(m.get("content")) or ""}
             for m in messages[:last_user] if m.get("role") in ("user", "assistant")]
    return turns or None


def score_of(value: Any, data_type: str | None = None, scale: tuple[float, float] | None = None) -> int | None:
    """A feedback value as -1/0/1: BOOLEAN (true/1 up, false/0 down), a number's sign (or its place on the app's
    `scale`), thumbs words."""
    if (data_type or "").upper() == "BOOLEAN":
        if isinstance(value, str):
            return {"true": 1, "false": -1}.get(value.strip().lower())
        if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and math.isnan(value)):
            return 1 if value else -1
        return None
    return feedback_score(value, scale)


def empty_row(trace_id: str, origin: str) -> RawJson:
    """A raw row with every column None but its id and origin."""
    row: RawJson = dict.fromkeys(RAW_COLUMNS)
    row["id"] = trace_id
    row[ORIGIN] = origin
    row[EXTRA] = None
    return row
