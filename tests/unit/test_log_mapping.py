"""`collect.mapping`: a line in a team's own format read as a log record."""

from __future__ import annotations

from datetime import UTC, datetime

from promptloop.collect.mapping import LogMapping


def test_a_mapping_lists_only_what_differs_and_defaults_fill_only_what_is_missing() -> None:
    mapping = LogMapping.of("bot", {"input": "$.q", "inputs.tier": "$.meta.tier"},
                            {"prompt_version": 3, "model": "gpt-4o-mini", "output": "never used"})
    assert mapping is not None
    record = mapping.record({"id": "a1", "q": "hi", "output": "hello", "meta": {"tier": "gold"},
                             "metadata": {"channel": "web"}, "region": "eu", "timestamp": "2026-11-20T10:00:00Z"})
    assert record == {"id": "a1", "input": "hi", "output": "hello", "prompt_version": "3", "model": "gpt-4o-mini",
                      "inputs": {"tier": "gold"}, "timestamp": "2026-11-20T10:00:00Z",
                      "metadata": {"region": "eu", "channel": "web"}}  # the line's own metadata kept, `meta` used


def test_timestamps_from_epoch_numbers_and_zoned_datetimes_and_nothing_else_is_guessed() -> None:
    mapping = LogMapping.of("bot", {"timestamp": "$.t"}, {})
    assert mapping is not None
    stamp = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    assert mapping.record({"t": stamp.timestamp()})["timestamp"] == "2026-11-20T10:00:00.000+00:00"
    assert mapping.record({"t": stamp.timestamp() * 1000})["timestamp"] == "2026-11-20T10:00:00.000+00:00"
    assert mapping.record({"t": stamp})["timestamp"] == "2026-11-20T10:00:00.000+00:00"
    assert mapping.record({"t": datetime(2026, 11, 20)})["timestamp"] == datetime(2026, 11, 20)  # no zone: as is
    assert mapping.record({"t": "yesterday"})["timestamp"] == "yesterday"  # validation quarantines it
    assert mapping.record({"t": 1e300})["timestamp"] == 1e300


def test_no_mapping_and_no_defaults_is_no_mapping() -> None:
    assert LogMapping.of("bot", {}, {}) is None
