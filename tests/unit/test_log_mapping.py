"""`collect.mapping`: a line in a team's own format read as a log record."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from promptloop.collect.mapping import LogMapping
from promptloop.core.config import AppSettings, load_params, parse_params
from promptloop.core.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def mapping_of(paths: dict[str, str], defaults: dict[str, Any], zone: str | None = None,
               **settings: Any) -> LogMapping | None:
    """The mapping of an app with these `log_*` settings."""
    app = AppSettings(prompt=Path("p.yaml"), golden_set=Path("g.jsonl"), log_dir=Path("in"), data_dir=Path("data"),
                      log_mapping=paths, log_defaults=defaults,
                      log_timezone=zone, **settings)
    return LogMapping.of("bot", app)


def test_a_mapping_lists_only_what_differs_and_defaults_fill_only_what_is_missing() -> None:
    mapping = mapping_of({"input": "$.q", "inputs.tier": "$.meta.tier"},
                         {"prompt_version": 3, "model": "gpt-4o-mini", "output": "never used"})
    assert mapping is not None
    record = mapping.record({"id": "a1", "q": "hi", "output": "hello", "meta": {"tier": "gold"},
                             "metadata": {"channel": "web"}, "region": "eu", "timestamp": "2026-11-20T10:00:00Z"})
    assert record == {"id": "a1", "input": "hi", "output": "hello", "prompt_version": "3", "model": "gpt-4o-mini",
                      "inputs": {"tier": "gold"}, "timestamp": "2026-11-20T10:00:00Z",
                      "metadata": {"region": "eu", "channel": "web"}}  # the line's own metadata kept, `meta` used


def test_timestamps_from_epoch_numbers_and_zoned_datetimes_and_nothing_else_is_guessed() -> None:
    mapping = mapping_of({"timestamp": "$.t"}, {})
    assert mapping is not None
    stamp = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    assert mapping.record({"t": stamp.timestamp()})["timestamp"] == "2026-11-20T10:00:00.000+00:00"
    assert mapping.record({"t": stamp.timestamp() * 1000})["timestamp"] == "2026-11-20T10:00:00.000+00:00"
    assert mapping.record({"t": stamp})["timestamp"] == "2026-11-20T10:00:00.000+00:00"
    assert mapping.record({"t": datetime(2026, 11, 20)})["timestamp"] == datetime(2026, 11, 20)  # no zone: as is
    assert mapping.record({"t": "yesterday"})["timestamp"] == "yesterday"  # validation quarantines it
    assert mapping.record({"t": 1e300})["timestamp"] == 1e300


def test_no_mapping_and_no_defaults_is_no_mapping() -> None:
    assert mapping_of({}, {}) is None


def test_a_log_timezone_places_timestamps_written_without_one() -> None:
    seoul = mapping_of({}, {}, "Asia/Seoul")
    assert seoul is not None
    assert seoul.record({"timestamp": "2026-11-20 09:00:00"})["timestamp"] == "2026-11-20T09:00:00.000+09:00"
    assert seoul.record({"timestamp": datetime(2026, 11, 20, 9)})["timestamp"] == "2026-11-20T09:00:00.000+09:00"
    zoned = "2026-11-20T09:00:00+00:00"
    assert seoul.record({"timestamp": zoned})["timestamp"] == zoned  # its own zone is kept
    assert seoul.record({"timestamp": "09:00 yesterday"})["timestamp"] == "09:00 yesterday"


def test_log_settings_load_and_an_unknown_zone_names_its_field() -> None:
    raw = load_params(REPO / "params.yaml").model_dump(mode="json")
    raw["apps"]["support-bot"].update(log_mapping={"input": "$.q"}, log_defaults={"model": "m"}, log_timezone="UTC")
    app = parse_params(raw).apps["support-bot"]
    assert (app.log_mapping, app.log_defaults, app.log_timezone) == ({"input": "$.q"}, {"model": "m"}, "UTC")
    raw["apps"]["support-bot"]["log_timezone"] = "Mars/Olympus"
    with pytest.raises(InputError, match=r"params.yaml: apps.support-bot.log_timezone: .*not a time zone name"):
        parse_params(raw, "params.yaml")
    raw["apps"]["support-bot"].update(log_timezone=None, log_mapping={"input": "q"})
    with pytest.raises(InputError, match=r"params.yaml: apps.support-bot.log_mapping.input: .*starts with '\$'"):
        parse_params(raw, "params.yaml")


def test_feedback_lines_need_a_rated_id_and_name_what_is_missing() -> None:
    raw = load_params(REPO / "params.yaml").model_dump(mode="json")
    raw["apps"]["support-bot"]["log_feedback"] = {"when": {"$.event": "feedback"}, "feedback": "$.vote"}
    with pytest.raises(InputError, match=r"params.yaml: apps.support-bot.log_feedback.id: "):
        parse_params(raw, "params.yaml")
    raw["apps"]["support-bot"]["log_feedback"] = {"when": {}, "id": "$.for", "feedback": "$.vote"}
    with pytest.raises(InputError, match=r"params.yaml: apps.support-bot.log_feedback.when: "):
        parse_params(raw, "params.yaml")


def test_numbers_where_text_is_due_are_read_as_text() -> None:
    mapping = mapping_of({"id": "$.request", "user_id": "$.user"}, {"prompt_version": 7})
    assert mapping is not None
    record = mapping.record({"request": 981234, "user": 42})
    assert (record["id"], record["user_id"], record["prompt_version"]) == ("981234", "42", "7")


@pytest.mark.parametrize(("scale", "ratings"), [
    (None, [(-1, -1), (0, 0), (1, 1), (4, 1), (True, 1), ("down", -1)]),  # unset: a number by its sign
    ((1, 5), [(1, -1), (2, -1), (3, 0), (4, 1), (5, 1), (4.5, 1), (7, 7), (0, 0)]),  # stars; 7 and 0: off it, as is
    ((0, 1), [(0, -1), (1, 1), (0.5, 0), (False, -1), ("up", 1)]),  # 0 = thumbs down, 1 = thumbs up
])
def test_numeric_ratings_are_read_on_the_apps_scale(scale: tuple[int, int] | None,
                                                    ratings: list[tuple[Any, Any]]) -> None:
    mapping = mapping_of({"feedback": "$.rating"}, {}, feedback_scale=scale,
                         log_feedback={"when": {"$.event": "rating"}, "id": "$.for", "feedback": "$.stars"})
    assert mapping is not None
    for given, read in ratings:
        assert mapping.record({"rating": given})["feedback"] == read  # off the scale: validation quarantines it
        mapping.received.clear()
        mapping.unreadable.clear()
        assert mapping.record({"event": "rating", "for": "a1", "stars": given}) is None
        readable = (1, 5) != scale or given in range(1, 6) or given == 4.5
        assert mapping.received == ({"a1": (read, None)} if readable else {})  # unreadable: not applied
        assert mapping.unreadable == ([] if readable else ["a1"])


@pytest.mark.parametrize("scale", [[5, 1], [3, 3], [1, float("inf")]])
def test_a_scale_that_is_not_low_to_high_names_its_field(scale: list[float]) -> None:
    raw = load_params(REPO / "params.yaml").model_dump(mode="json")
    raw["apps"]["support-bot"]["feedback_scale"] = scale
    with pytest.raises(InputError, match=r"params.yaml: apps.support-bot.feedback_scale: .*low below high"):
        parse_params(raw, "params.yaml")


def test_numbers_written_as_text_and_content_parts_are_read_as_their_fields_hold_them() -> None:
    mapping = mapping_of({"output": "$.response.output[0].content", "latency_ms": "$.ms",
                          "prompt_tokens": "$.usage.in"}, {})
    assert mapping is not None
    parts = [{"type": "output_text", "text": "Open Settings."}, {"type": "output_text", "text": "Then Export."}]
    record = mapping.record({"response": {"output": [{"content": parts}]}, "ms": "812.5", "usage": {"in": "120"}})
    assert (record["output"], record["latency_ms"], record["prompt_tokens"]) == ("Open Settings.\nThen Export.",
                                                                                812.5, 120)
    odd = mapping.record({"response": {"output": [{"content": [{"type": "image"}]}]}, "ms": "fast",
                          "usage": {"in": "NaN"}})
    assert (odd["output"], odd["latency_ms"], odd["prompt_tokens"]) == ('[{"type": "image"}]', "fast", "NaN")


def test_a_latency_from_when_the_call_started_and_ended() -> None:
    mapping = mapping_of({"timestamp": "$.startTime", "end_timestamp": "$.endTime"}, {"latency_ms": 0})
    assert mapping is not None
    record = mapping.record({"startTime": "2026-11-20T10:00:00.250Z", "endTime": "2026-11-20T10:00:01.062Z"})
    assert (record["timestamp"], record["latency_ms"]) == ("2026-11-20T10:00:00.250Z", 812.0)
    assert "end_timestamp" not in record and "metadata" not in record  # used, not stored
    assert mapping.record({"startTime": 1_763_632_800, "endTime": 1_763_632_800_500})["latency_ms"] == 500.0
    # An end before the start, or one that cannot be read: no latency (quarantined), not the default's 0.
    backwards = {"startTime": "2026-11-20T10:00:01Z", "endTime": "2026-11-20T10:00:00Z"}
    assert mapping.record(backwards)["latency_ms"] is None
    assert mapping.record({"startTime": "2026-11-20T10:00:01Z", "endTime": "soon"})["latency_ms"] is None
    # A latency the line logs itself wins; without an end, the default applies.
    assert mapping.record({"startTime": "2026-11-20T10:00:01Z", "endTime": "2026-11-20T10:00:02Z",
                           "latency_ms": 40})["latency_ms"] == 40
    assert mapping.record({"startTime": "2026-11-20T10:00:01Z"})["latency_ms"] == 0
