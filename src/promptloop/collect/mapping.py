"""A team's own log lines read as log records: `apps.<app>.log_mapping` and `apps.<app>.log_defaults`.

An app that already logs JSON need not rewrite its logging for promptloop. The mapping names, for each
log-record field its lines hold under another name, a JSON path into the line (`$.ts`,
`$.request.messages[-1].content`, `inputs.<name>` for a prompt variable); the defaults give the fields
its lines lack (`prompt_version`, `model`, ...). A field keeps the line's own key of that name when
it is neither mapped nor defaulted, so a mapping only lists what differs.

Values are read the way the MLflow trace mapping reads them: a message's content as text, feedback
words (up/down, thumbs_up, ...) and booleans as 1/-1, numbers by their sign; an epoch number (seconds,
or milliseconds) as a timestamp. Keys of the line that no field used go into `metadata`, so nothing is
dropped, and a line without an id gets one from its content (the same line collected twice is a
duplicate, not a second interaction).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from promptloop.collect.traces import Feedback, feedback_score, text_of
from promptloop.core.config import FeedbackEvents
from promptloop.core.errors import InputError
from promptloop.core.jsonpath import Step, find, parse_path
from promptloop.domain.logs import LOG_FIELDS, iso

# Read as text: a numeric request id or user id is still an id.
TEXT_FIELDS = frozenset({"id", "app", "prompt_version", "model", "input", "output", "error", "feedback_comment",
                         "user_id"})
INPUTS = "inputs."
EPOCH_MS_FROM = 10**11  # an epoch number this large counts milliseconds (10**11 s is the year 5138)


@dataclass(frozen=True)
class LogMapping:
    """Where each log-record field is in a line (parsed JSON paths) and the constants for fields it lacks."""

    paths: Mapping[str, tuple[Step, ...]]
    defaults: Mapping[str, Any]
    zone: ZoneInfo | None = None  # of timestamps written without one
    only: Mapping[tuple[Step, ...], Any] = field(default_factory=dict)  # path -> the value an interaction has
    feedback: FeedbackLines | None = None  # 👍/👎 logged as lines of their own
    # rated interaction id -> (score, comment) of the feedback lines read so far (the last one wins)
    received: dict[str, Feedback] = field(default_factory=dict)

    @classmethod
    def of(cls, app: str, paths: Mapping[str, str], defaults: Mapping[str, Any], zone: str | None = None,
           only: Mapping[str, Any] | None = None, feedback: FeedbackEvents | None = None) -> LogMapping | None:
        """The app's mapping (None when it has none of its settings), its field names checked against the log
        record."""
        if not paths and not defaults and zone is None and not only and feedback is None:
            return None
        for section, names in (("log_mapping", paths), ("log_defaults", defaults)):
            for name in names:
                mapped_input = section == "log_mapping" and name.startswith(INPUTS) and len(name) > len(INPUTS)
                # A constant id would make every line after the first a duplicate.
                if (name not in LOG_FIELDS and not mapped_input) or (section == "log_defaults" and name == "id"):
                    known = ", ".join(f for f in LOG_FIELDS if section == "log_mapping" or f != "id")
                    extra = " or inputs.<name>" if section == "log_mapping" else ""
                    raise InputError(Path("params.yaml"), f"not a log-record field (one of {known}{extra})",
                                     field=f"apps.{app}.{section}.{name}")
        return cls({name: parse_path(path) for name, path in paths.items()}, dict(defaults),
                   None if zone is None else ZoneInfo(zone), {parse_path(path): v for path, v in (only or {}).items()},
                   None if feedback is None else FeedbackLines.of(feedback))

    def record(self, line: dict[str, Any]) -> dict[str, Any] | None:
        """The log record `line` maps to (still to be validated like any other row); None for a line that is
        not an interaction (`log_filter`: an app's log holds other events too; a feedback line is kept in
        `received`, for the stored interaction it rates)."""
        if self.feedback is not None and self.feedback.read(line, self.received):
            return None
        if not holds(line, self.only):
            return None
        record = {name: line[name] for name in LOG_FIELDS if name in line}
        inputs = dict(record["inputs"]) if isinstance(record.get("inputs"), dict) else {}
        for name, steps in self.paths.items():
            value = find(line, steps)
            if value is None:
                continue
            if name.startswith(INPUTS):
                inputs[name[len(INPUTS):]] = value
            else:
                record[name] = value
        for name, value in self.defaults.items():
            record.setdefault(name, value)
        record = {name: field_value(name, value, self.zone) for name, value in record.items()}
        if inputs:
            record["inputs"] = inputs
        used = {steps[0] for steps in self.paths.values() if steps and isinstance(steps[0], str)}
        rest = {key: value for key, value in line.items() if key not in LOG_FIELDS and key not in used}
        if rest:
            own = record.get("metadata")
            record["metadata"] = {**rest, **own} if isinstance(own, dict) else rest
        record.setdefault("id", "line-" + hashlib.sha256(orjson.dumps(line, option=orjson.OPT_SORT_KEYS,
                                                                      default=str)).hexdigest()[:20])
        return record


def holds(line: dict[str, Any], values: Mapping[tuple[Step, ...], Any]) -> bool:
    """Whether each path of `values` finds its value in `line`."""
    return all(find(line, steps) == value for steps, value in values.items())


@dataclass(frozen=True)
class FeedbackLines:
    """Where a feedback line's rated id, rating and comment are (`apps.<app>.log_feedback`, paths parsed)."""

    when: Mapping[tuple[Step, ...], Any]
    id: tuple[Step, ...]
    feedback: tuple[Step, ...]
    comment: tuple[Step, ...] | None

    @classmethod
    def of(cls, settings: FeedbackEvents) -> FeedbackLines:
        return cls({parse_path(path): value for path, value in settings.when.items()}, parse_path(settings.id),
                   parse_path(settings.feedback), None if settings.comment is None else parse_path(settings.comment))

    def read(self, line: dict[str, Any], into: dict[str, Feedback]) -> bool:
        """Whether `line` is a feedback line; one naming an interaction and a readable rating goes `into`."""
        if not holds(line, self.when):
            return False
        rated, score = text_of(find(line, self.id)), feedback_score(find(line, self.feedback))
        if rated and score is not None:
            into[rated] = (score, text_of(find(line, self.comment)) if self.comment else None)
        return True


def field_value(name: str, value: Any, zone: ZoneInfo | None = None) -> Any:
    """A mapped value as its field holds it: text, a -1/0/1 feedback, an ISO timestamp from an epoch number
    (or from one written without a zone, in `zone`); anything else as it is (validation says what is wrong)."""
    if name in TEXT_FIELDS:
        return text_of(value)
    if name == "feedback":
        score = feedback_score(value)
        return value if score is None else score
    if name == "timestamp" and isinstance(value, str) and zone is not None:
        value = zoned(value, zone)
    if name == "timestamp" and isinstance(value, datetime):
        if value.tzinfo is None and zone is not None:
            value = value.replace(tzinfo=zone)
        return iso(value) if value.tzinfo is not None else value  # a Parquet timestamp column
    if name == "timestamp" and isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) >= EPOCH_MS_FROM else value
        try:
            return iso(datetime.fromtimestamp(seconds, UTC))
        except (OverflowError, OSError, ValueError):
            return value
    return value


def zoned(text: str, zone: ZoneInfo) -> str:
    """An ISO-8601 timestamp written without a zone, in `zone`; any other text as it is."""
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return text
    return text if stamp.tzinfo is not None else iso(stamp.replace(tzinfo=zone))
