"""Logs promptloop did not design: a team's own JSON lines collected through `log_mapping` and `log_defaults`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import git
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from promptloop.collect.stage import collect
from promptloop.core.errors import InputError
from promptloop.ops.initialize import init_workspace
from promptloop.workspace.workspace import Workspace, open_workspace

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
MAPPING = {
    "id": "$.request_id",
    "timestamp": "$.ts",
    "input": "$.request.messages[-1].content",
    "output": "$.response.choices[0].message",
    "latency_ms": "$.duration_ms",
    "prompt_tokens": "$.usage.in",
    "completion_tokens": "$.usage.out",
    "feedback": "$.rating",
    "user_id": "$.user.id",
    "inputs.customer_tier": "$.account.tier",
}
DEFAULTS = {"app": "support-bot", "prompt_version": "1", "model": "offline/support-bot"}


def line(n: int, **changes: Any) -> dict[str, Any]:
    """One line of the team's own log format (nothing in it is named as the log record names it)."""
    base = {
        "request_id": f"req-{n}",
        "ts": (NOW - timedelta(hours=n)).timestamp(),  # epoch seconds
        "request": {"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": f"How do I export notebook {n}?"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": "Use File > Export."}}]},
        "duration_ms": 812,
        "usage": {"in": 120, "out": 30},
        "rating": None,
        "user": {"id": f"u-{n}", "email": "ann@example.com"},
        "account": {"tier": "gold"},
        "env": "prod",
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not ...}


LINES = [
    line(1),
    line(2, rating="down"),
    line(3, rating=True, ts=(NOW - timedelta(hours=3)).timestamp() * 1000),  # epoch milliseconds
    line(4, request_id=...),  # no id: one derived from the line
    line(4, request_id=...),  # the same line again: a duplicate, not a second interaction
    line(5, ts="2026-11-20 09:00:00"),  # no zone: quarantined like any row
    line(6, rating="meh"),  # not a feedback word: quarantined, not guessed
]


def with_mapping(root: Path, mapping: dict[str, str], defaults: dict[str, Any], zone: str | None = None) -> Workspace:
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["apps"]["support-bot"].update(log_mapping=mapping, log_defaults=defaults, log_timezone=zone)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return open_workspace(root)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    init_workspace(tmp_path / "ws")
    logs = tmp_path / "ws" / "incoming" / "support-bot"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "app.jsonl").write_text("".join(json.dumps(item) + "\n" for item in LINES), encoding="utf-8")
    return tmp_path / "ws"


def test_without_a_mapping_a_teams_own_lines_are_all_quarantined(root: Path) -> None:
    result = collect(open_workspace(root), "support-bot", now=NOW)
    assert (result.rows_in, result.rows_valid) == (len(LINES), 0)
    assert result.failures["extra_fields"] == len(LINES) and result.failures["id_missing"] == len(LINES)


def test_mapped_lines_are_collected_as_log_records_and_nothing_is_dropped(root: Path) -> None:
    workspace = with_mapping(root, MAPPING, DEFAULTS)
    result = collect(workspace, "support-bot", now=NOW)
    assert (result.rows_in, result.rows_valid, result.rows_duplicate, result.rows_quarantined) == (7, 4, 1, 2)
    assert result.failures == {"timestamp_not_iso_with_zone": 1, "feedback_type": 1, "duplicate_id": 1}

    stored = pd.read_parquet(workspace.path("data/support-bot/logs")).set_index("id")
    first = stored.loc["req-1"]
    assert first["input"] == "How do I export notebook 1?" and first["output"] == "Use File > Export."
    assert (first["app"], first["prompt_version"], first["model"]) == ("support-bot", "1", "offline/support-bot")
    assert (first["latency_ms"], first["prompt_tokens"], first["completion_tokens"]) == (812, 120, 30)
    assert first["timestamp"] == pd.Timestamp(NOW - timedelta(hours=1))
    assert stored.loc["req-3", "timestamp"] == pd.Timestamp(NOW - timedelta(hours=3))  # from milliseconds
    assert (stored.loc["req-2", "feedback"], stored.loc["req-3", "feedback"]) == (-1, 1)
    assert pd.isna(first["feedback"])
    assert json.loads(first["inputs"]) == {"customer_tier": "gold"}
    # Keys no field used are kept in metadata; `user` was used (its id is hashed, its email not stored).
    assert json.loads(first["metadata"]) == {"env": "prod"}
    assert first["user_hash"] and "u-1" not in set(stored["user_hash"])
    derived = [i for i in stored.index if not i.startswith("req-")]
    assert len(derived) == 1 and derived[0].startswith("line-")

    again = collect(workspace, "support-bot", now=NOW)
    assert again.rows_in == 0  # the file's watermark holds as for any log file


def test_parquet_rows_in_the_teams_format_are_mapped_too(root: Path) -> None:
    # A warehouse export: nested structs, and the time as a timestamp column with its zone.
    rows = [{**line(n), "ts": NOW - timedelta(hours=n), "rating": "down" if n == 2 else None} for n in (1, 2)]
    (root / "incoming" / "support-bot" / "app.jsonl").unlink()
    pq.write_table(pa.Table.from_pylist(rows), root / "incoming" / "support-bot" / "export.parquet")
    workspace = with_mapping(root, MAPPING, DEFAULTS)
    result = collect(workspace, "support-bot", now=NOW)
    assert (result.rows_in, result.rows_valid) == (2, 2), result.failures
    stored = pd.read_parquet(workspace.path("data/support-bot/logs")).set_index("id")
    assert stored.loc["req-2", "timestamp"] == pd.Timestamp(NOW - timedelta(hours=2))
    assert (stored.loc["req-2", "feedback"], stored.loc["req-1", "output"]) == (-1, "Use File > Export.")


def test_a_log_timezone_collects_the_lines_written_without_a_zone(root: Path) -> None:
    workspace = with_mapping(root, MAPPING, DEFAULTS, zone="Asia/Seoul")
    result = collect(workspace, "support-bot", now=NOW)
    assert (result.rows_valid, result.failures) == (5, {"feedback_type": 1, "duplicate_id": 1})
    stored = pd.read_parquet(workspace.path("data/support-bot/logs")).set_index("id")
    assert stored.loc["req-5", "timestamp"] == pd.Timestamp("2026-11-20T00:00:00Z")  # 09:00 in Seoul


def test_a_log_filter_skips_the_other_events_of_an_app_log_and_counts_them(root: Path) -> None:
    # The app's one JSON log: its LLM calls among requests and start-up events (lines with no interaction).
    events = [{**line(n), "event": "llm_call"} for n in (1, 2)] + [
        {"event": "http_request", "ts": NOW.timestamp(), "path": "/health", "status": 200},
        {"event": "startup", "ts": NOW.timestamp(), "version": "2.3.1"},
    ]
    mixed = root / "incoming" / "support-bot" / "app.jsonl"
    mixed.write_text("".join(json.dumps(item) + "\n" for item in events), encoding="utf-8")
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["apps"]["support-bot"]["log_filter"] = {"$.event": "llm_call"}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    workspace = with_mapping(root, MAPPING, DEFAULTS)
    result = collect(workspace, "support-bot", now=NOW)
    assert (result.rows_in, result.rows_valid, result.rows_quarantined, result.lines_skipped) == (2, 2, 0, 2)
    stored = pd.read_parquet(workspace.path("data/support-bot/logs")).set_index("id")
    assert sorted(stored.index) == ["req-1", "req-2"] and json.loads(stored.loc["req-1", "metadata"]) == {
        "env": "prod", "event": "llm_call"}
    with mixed.open("a", encoding="utf-8") as handle:  # only other events arrive: read once, not again
        handle.write(json.dumps({"event": "shutdown", "ts": NOW.timestamp()}) + "\n")
    again = collect(workspace, "support-bot", now=NOW)
    assert (again.rows_in, again.lines_skipped) == (0, 1)
    assert collect(workspace, "support-bot", now=NOW).lines_skipped == 0


def feedback(rated: str, rating: Any, comment: str | None = None) -> dict[str, Any]:
    """A feedback line of the team's log: an event of its own naming the interaction it rates."""
    return {"event": "feedback", "ts": NOW.timestamp(), "for": rated, "vote": rating, "text": comment}


def jsonl(items: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


def with_feedback_lines(root: Path) -> Workspace:
    """The app's log holds calls, feedback events and other events; only calls are interactions."""
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["apps"]["support-bot"].update(log_filter={"$.event": "llm_call"}, log_feedback={
        "when": {"$.event": "feedback"}, "id": "$.for", "feedback": "$.vote", "comment": "$.text"})
    params_file.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return with_mapping(root, {k: v for k, v in MAPPING.items() if k != "feedback"}, DEFAULTS)


def test_feedback_logged_as_lines_of_its_own_rates_the_stored_interactions(root: Path) -> None:
    log = root / "incoming" / "support-bot" / "app.jsonl"
    first = [{**line(n), "event": "llm_call"} for n in (1, 2, 3)]
    log.write_text(jsonl([*first, feedback("req-1", "down", "wrong, write to ann@example.com"),
                          feedback("req-2", "up"), feedback("req-404", "down"), feedback("req-3", "meh"),
                          {"event": "startup", "ts": NOW.timestamp()}]), encoding="utf-8")
    workspace = with_feedback_lines(root)
    result = collect(workspace, "support-bot", now=NOW)
    # The rated rows of this very run get their feedback; the unknown id rates nothing yet: it waits; a rating
    # that cannot be read is counted, not applied.
    assert (result.rows_valid, result.lines_skipped, result.feedback_updated) == (3, 5, 2)
    assert (result.feedback_waiting, result.feedback_expired, result.feedback_unreadable) == (1, 0, 1)
    stored = pd.read_parquet(workspace.path("data/support-bot/logs")).set_index("id")
    assert (stored.loc["req-1", "feedback"], stored.loc["req-2", "feedback"]) == (-1, 1)
    assert pd.isna(stored.loc["req-3", "feedback"])
    assert stored.loc["req-1", "feedback_comment"] == "wrong, write to <EMAIL>"
    # A later run: a rating of a row stored before, and a changed mind on another.
    with log.open("a", encoding="utf-8") as handle:
        handle.write(jsonl([feedback("req-3", False), feedback("req-2", "thumbs_down")]))
    later = collect(workspace, "support-bot", now=NOW)
    assert (later.rows_in, later.lines_skipped, later.feedback_updated) == (0, 2, 2)
    stored = pd.read_parquet(workspace.path("data/support-bot/logs")).set_index("id")
    assert (stored.loc["req-2", "feedback"], stored.loc["req-3", "feedback"]) == (-1, -1)
    assert len(stored) == 3  # rewritten in place, not added


def test_a_rating_read_before_its_interaction_waits_for_it_redacted(root: Path) -> None:
    incoming = root / "incoming" / "support-bot"
    (incoming / "app.jsonl").write_text(jsonl([
        {**line(1), "event": "llm_call"}, feedback("req-5", "down", "ann@example.com says no"),
        feedback("chat:bob@example.com", "up")]), encoding="utf-8")
    workspace = with_feedback_lines(root)
    first = collect(workspace, "support-bot", now=NOW)
    assert (first.rows_valid, first.feedback_updated, first.feedback_waiting) == (1, 0, 2)
    state_file = workspace.path("data/support-bot/collect-state.json")
    assert json.loads(state_file.read_text(encoding="utf-8"))["waiting_feedback"] == {
        "req-5": {"feedback": -1, "comment": "<EMAIL> says no", "since": NOW.isoformat()},
        "chat:<EMAIL>": {"feedback": 1, "comment": None, "since": NOW.isoformat()}}
    # The rated interactions come a day later, in the app's next log file (an id holding an address is
    # stored redacted, and found in that form).
    (incoming / "app.1.jsonl").write_text(jsonl([
        {**line(5), "event": "llm_call"}, {**line(6, request_id="chat:bob@example.com"), "event": "llm_call"}]),
        encoding="utf-8")
    later = collect(workspace, "support-bot", now=NOW + timedelta(days=1))
    assert (later.rows_valid, later.feedback_updated, later.feedback_waiting) == (2, 2, 0)
    stored = pd.read_parquet(workspace.path("data/support-bot/logs")).set_index("id")
    assert (stored.loc["req-5", "feedback"], stored.loc["req-5", "feedback_comment"]) == (-1, "<EMAIL> says no")
    assert stored.loc["chat:<EMAIL>", "feedback"] == 1
    assert "waiting_feedback" not in json.loads(state_file.read_text(encoding="utf-8"))


def test_a_rating_whose_interaction_never_comes_is_dropped_after_the_lookback(root: Path) -> None:
    incoming = root / "incoming" / "support-bot"
    (incoming / "app.jsonl").write_text(jsonl([{**line(1), "event": "llm_call"}, feedback("req-9", "down")]),
                                        encoding="utf-8")
    workspace = with_feedback_lines(root)  # collect.feedback_lookback_days: 7 (the default)
    assert collect(workspace, "support-bot", now=NOW).feedback_waiting == 1
    assert collect(workspace, "support-bot", now=NOW + timedelta(days=6)).feedback_waiting == 1
    # Nothing new to read, but the state changes: the drop is committed, and not counted again.
    dropped = collect(workspace, "support-bot", now=NOW + timedelta(days=8))
    assert (dropped.feedback_waiting, dropped.feedback_expired, dropped.feedback_updated) == (0, 1, 0)
    assert dropped.git_commit is not None
    assert git.Repo(root).head.commit.hexsha == dropped.git_commit
    assert "waiting_feedback" not in json.loads(
        workspace.path("data/support-bot/collect-state.json").read_text(encoding="utf-8"))
    assert collect(workspace, "support-bot", now=NOW + timedelta(days=9)).feedback_expired == 0


def test_star_ratings_are_read_on_the_apps_scale_and_one_off_it_is_quarantined(root: Path) -> None:
    stars = [line(1, rating=1), line(2, rating=3), line(3, rating=5), line(4, rating=9, request_id="req-4")]
    (root / "incoming" / "support-bot" / "app.jsonl").write_text(jsonl(stars), encoding="utf-8")
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["apps"]["support-bot"]["feedback_scale"] = [1, 5]
    params_file.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    result = collect(with_mapping(root, MAPPING, DEFAULTS), "support-bot", now=NOW)
    assert (result.rows_valid, result.rows_quarantined, result.failures) == (3, 1, {"feedback_not_in_set": 1})
    stored = pd.read_parquet(root / "data" / "support-bot" / "logs").set_index("id")
    assert [stored.loc[f"req-{n}", "feedback"] for n in (1, 2, 3)] == [-1, 0, 1]  # by its sign, 1 star was 👍


def test_a_field_the_log_record_does_not_have_is_named_in_the_error(root: Path) -> None:
    workspace = with_mapping(root, {**MAPPING, "question": "$.request.messages[-1].content"}, DEFAULTS)
    with pytest.raises(InputError, match=r"params\.yaml: apps\.support-bot\.log_mapping\.question: not a "
                                         r"log-record field \(one of id, timestamp, .* or inputs\.<name>\)"):
        collect(workspace, "support-bot", now=NOW)
    workspace = with_mapping(root, MAPPING, {**DEFAULTS, "id": "same-for-all"})
    with pytest.raises(InputError, match=r"apps\.support-bot\.log_defaults\.id: not a log-record field"):
        collect(workspace, "support-bot", now=NOW)
