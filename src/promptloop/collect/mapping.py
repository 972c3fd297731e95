"""A team's own log lines read as log records: `apps.<app>.log_mapping` and `apps.<app>.log_defaults`.

An app that already logs JSON need not rewrite its logging for promptloop. The mapping names, for each
log-record field its lines hold under another name, a JSON path into the line (`$.ts`,
`$.request.messages[-1].content`, `inputs.<name>` for a prompt variable); the defaults give the fields
its lines lack (`prompt_version`, `model`, ...). A field keeps the line's own key of that name when
it is neither mapped nor defaulted, so a mapping only lists what differs.

Values are read the way the MLflow trace mapping reads them: a message's content (or a list of content
parts) as text, feedback words (up/down, thumbs_up, ...) and booleans as 1/-1, numbers by their sign
(or on the app's `feedback_scale`: stars [1, 5] are 1-2 down, 3 neutral, 4-5 up); an epoch number
(seconds, or milliseconds) as a timestamp. Besides, a number written as text is read as a number where
the field holds one (a latency, a token count). Keys of the line that no field used go into `metadata`,
so nothing is dropped, and a line without an id gets one from its content (the same line collected twice
is a duplicate, not a second interaction).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from promptloop.collect.traces import Feedback, feedback_score, text_of
from promptloop.core.config import AppSettings, FeedbackEvents
from promptloop.core.errors import InputError
from promptloop.core.jsonpath import Step, find, parse_path
from promptloop.domain.logs import LOG_FIELDS, iso

# Read as text: a numeric request id or user id is still an id.
TEXT_FIELDS = frozenset({"id", "app", "prompt_version", "model", "input", "output", "error", "feedback_comment",
                         "user_id"})
# Not a log-record field: where a line that logs when the call ended instead of how long it took has the end
# (`latency_ms` is then the time from `timestamp` to it).
END = "end_timestamp"
NUMBER_FIELDS = frozenset({"latency_ms", "prompt_tokens", "completion_tokens", "cost_usd"})
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
    scale: tuple[float, float] | None = None  # of numeric ratings (`feedback_scale`; None: by their sign)
    # rated interaction id -> (score, comment) of the feedback lines read so far (the last one wins)
    received: dict[str, Feedback] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # feedback lines without a rated id or a readable rating

    @classmethod
    def of(cls, app: str, settings: AppSettings) -> LogMapping | None:
        """The app's mapping (None when it has none of its `log_*` settings), its field names checked against
        the log record."""
        paths, defaults, only, zone = settings.log_mapping, settings.log_defaults, settings.log_filter, \
            settings.log_timezone
        if not paths and not defaults and zone is None and not only and settings.log_feedback is None:
            return None
        # A constant id would make every line after the first a duplicate: defaults may not set one.
        check_fields(app, "log_mapping", paths, (*LOG_FIELDS, END), " or inputs.<name>")
        check_fields(app, "log_defaults", defaults, tuple(f for f in LOG_FIELDS if f != "id"), "")
        scale = settings.feedback_scale
        return cls({name: parse_path(path) for name, path in paths.items()}, dict(defaults),
                   None if zone is None else ZoneInfo(zone), {parse_path(path): v for path, v in only.items()},
                   None if settings.log_feedback is None else FeedbackLines.of(settings.log_feedback, scale), scale)

    def record(self, line: dict[str, Any]) -> dict[str, Any] | None:
        """The log record `line` maps to (still to be validated like any other row); None for a line that is
        not an interaction (`log_filter`: an app's log holds other events too; a feedback line is kept in
        `received`, for the stored interaction it rates)."""
        if self.feedback is not None and self.feedback.read(line, self.received, self.unreadable):
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
        record = {name: field_value(name, value, self.zone, self.scale) for name, value in record.items()}
        end = record.pop(END, None)
        if end is not None and "latency_ms" not in record:
            record.update(latency_ms=span_ms(record.get("timestamp"), end))
        for name, value in self.defaults.items():
            if name not in record:
                record[name] = field_value(name, value, self.zone, self.scale)
        if inputs:
            record["inputs"] = inputs
        rest = {key: value for key, value in line.items() if key not in LOG_FIELDS and key not in self.used_keys}
        if rest:
            own = record.get("metadata")
            record["metadata"] = {**rest, **own} if isinstance(own, dict) else rest
        record.setdefault("id", "line-" + hashlib.sha256(orjson.dumps(line, option=orjson.OPT_SORT_KEYS,
                                                                      default=str)).hexdigest()[:20])
        return record


    @cached_property
    def used_keys(self) -> frozenset[str]:
        """The top-level keys a mapped path starts from (once, not per line): not copied into `metadata`."""
        return frozenset(steps[0] for steps in self.paths.values() if steps and isinstance(steps[0], str))


def check_fields(app: str, section: str, names: Mapping[str, Any], allowed: tuple[str, ...], inputs: str) -> None:
    """Each of `names` is one of `allowed` (or `inputs.<name>`, when `inputs` says so); else an error naming it."""
    for name in names:
        if name not in allowed and not (inputs and name.startswith(INPUTS) and len(name) > len(INPUTS)):
            raise InputError(Path("params.yaml"), f"not a log-record field (one of {', '.join(allowed)}{inputs})",
                             field=f"apps.{app}.{section}.{name}")


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
    scale: tuple[float, float] | None = None  # of numeric ratings (None: by their sign)

    @classmethod
    def of(cls, settings: FeedbackEvents, scale: tuple[float, float] | None = None) -> FeedbackLines:
        return cls({parse_path(path): value for path, value in settings.when.items()}, parse_path(settings.id),
                   parse_path(settings.feedback), None if settings.comment is None else parse_path(settings.comment),
                   scale)

    def read(self, line: dict[str, Any], into: dict[str, Feedback], unreadable: list[str]) -> bool:
        """Whether `line` is a feedback line; one naming an interaction and a readable rating goes `into`, any
        other's rated id (or "") to `unreadable`."""
        if not holds(line, self.when):
            return False
        rated, score = text_of(find(line, self.id)), feedback_score(find(line, self.feedback), self.scale)
        if rated and score is not None:
            into[rated] = (score, text_of(find(line, self.comment)) if self.comment else None)
        else:
            unreadable.append(rated or "")
        return True


def field_value(name: str, value: Any, zone: ZoneInfo | None = None, scale: tuple[float, float] | None = None) -> Any:
    """A mapped value as its field holds it: text, a -1/0/1 feedback (a number read on `scale`), an ISO timestamp
    from an epoch number (or from one written without a zone, in `zone`), a number from a number written as text;
    anything else as it is (validation says what is wrong)."""
    if name in TEXT_FIELDS:
        return text_of(value)
    if name == "feedback":
        score = feedback_score(value, scale)
        return value if score is None else score
    if name in ("timestamp", END):
        return timestamp_value(value, zone)
    if name in NUMBER_FIELDS and isinstance(value, str):
        return number_of(value)
    return value


def span_ms(start: Any, end: Any) -> float | None:
    """Milliseconds from `start` to `end` (ISO texts with a zone); None when either is not one or the end comes
    first (the row is then quarantined for its missing latency, not given a guessed one)."""
    try:
        begun, ended = datetime.fromisoformat(str(start)), datetime.fromisoformat(str(end))
    except ValueError:
        return None
    if begun.tzinfo is None or ended.tzinfo is None or ended < begun:
        return None
    return (ended - begun).total_seconds() * 1000


def number_of(text: str) -> int | float | str:
    """A number written as text ("812", "0.0042": loggers that write every value as a string) as that number;
    any other text as it is (validation quarantines it)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def timestamp_value(value: Any, zone: ZoneInfo | None) -> Any:
    """ISO-8601 text from an epoch number (seconds, or milliseconds), a zoned datetime (a Parquet column), or
    one written without a zone when `zone` says where; anything else as it is."""
    if isinstance(value, str) and zone is not None:
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            return value
        return value if stamp.tzinfo is not None else iso(stamp.replace(tzinfo=zone))  # a zoned text stays as is
    if isinstance(value, datetime):
        if value.tzinfo is None and zone is not None:
            value = value.replace(tzinfo=zone)
        return iso(value) if value.tzinfo is not None else value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) >= EPOCH_MS_FROM else value
        try:
            return iso(datetime.fromtimestamp(seconds, UTC))
        except (OverflowError, OSError, ValueError):
            return value
    return value
