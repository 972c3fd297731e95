"""Hostile production logs (issue 8): whatever arrives, `collect` does not crash, loses no row,
keeps only rows that pass validation, and stores nothing unredacted.

Hypothesis writes a fresh JSON Lines file of hostile lines per example into ONE workspace (a
workspace init takes seconds); ids recur within the file. Each example runs collect twice: on the
file, then on the same file delivered again under another name (ids seen in an earlier run), and
neither run may read an older file again.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from promptloop.collect.stage import LOG_SCHEMA, collect
from promptloop.collect.validate import CLOCK_SKEW
from promptloop.core.errors import InputError
from promptloop.core.jsonl import read_jsonl
from promptloop.domain.logs import LOG_FIELDS, LogRecord
from promptloop.domain.results import CollectResult
from promptloop.ops.initialize import init_workspace
from promptloop.quality.redact import build_redactor
from promptloop.workspace.workspace import LOGS, QUARANTINE, Workspace, open_workspace

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
APP = "support-bot"
EMAIL = "planted.hostile@example.org"  # used nowhere else: finding it in stored data is a leak
# Free-text fields, where user content (and so PII) lives; ids, app, model and version are the app's.
FREE_TEXT = ("input", "output", "error", "feedback_comment", "user_id")
EXAMPLES = itertools.count()


def good_row(row_id: str, **changes: Any) -> dict[str, Any]:
    """A row that passes every expectation; hostile rows are this one, mutated."""
    row = {"id": row_id, "timestamp": "2026-11-20T10:00:00+00:00", "app": APP, "prompt_version": "1",
           "model": "offline/support-bot", "input": "where is my order?", "output": "It ships today.",
           "latency_ms": 420.5, "prompt_tokens": 100, "completion_tokens": 20, "cost_usd": None, "error": None,
           "feedback": None, "feedback_comment": None, "user_id": "user-1", "metadata": {"channel": "web"}}
    return {**row, **changes}


def deep(levels: int) -> str:
    """A marker `line` replaces by `levels` nested JSON arrays (json.dumps itself stops near 1000)."""
    return f"<<deep:{levels}>>"


_DEEP = re.compile(r'"<<deep:(\d+)>>"')


def line(row: dict[str, Any], ensure_ascii: bool = True) -> bytes:
    """One JSON Lines line (no newline); a lone surrogate is a \\ud800 escape, or with
    ensure_ascii=False raw bytes that are not UTF-8."""
    text = _DEEP.sub(
        lambda match: "[" * int(match[1]) + "]" * int(match[1]), json.dumps(row, ensure_ascii=ensure_ascii)
    )
    return text.encode("utf-8", "surrogatepass")


# --- strategies -------------------------------------------------------------------------------------
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=20))
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
CONTROLS = st.text(
    st.characters(max_codepoint=0x1F) | st.sampled_from("\x7f\x85\u2028\u2029\ufeff\u200b"), min_size=1, max_size=12
)
SEPARATORS = st.sampled_from([" ", "\x00", "\n", "\t", "\x1f", "<", '"', "\\", "\u2028", "가"])
LONE_SURROGATE = st.builds(lambda a, s, b: a + s + b, st.text(max_size=4),
                           st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.text(max_size=4))


def long_texts(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """Texts of min_size-max_size chars: a short random piece repeated (Hypothesis draws no megabytes)."""
    return st.builds(lambda piece, size: (piece * (size // len(piece) + 1))[:size],
                     st.text(st.characters(max_codepoint=0x7F) | st.sampled_from("é가\u2028"), min_size=1, max_size=8),
                     st.integers(min_size, max_size))


def planted(before: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """The planted email amid junk, controls or long text: it must never reach the stored data."""
    return st.builds(lambda head, s1, s2, tail: f"{head}{s1}{EMAIL}{s2}{tail}",
                     before, SEPARATORS, SEPARATORS, st.text(max_size=20) | CONTROLS)


LONG = long_texts(10_000, 100_000)  # megabyte strings have their own test: they cost seconds each
HUGE = long_texts(1_000_000, 5_000_000)
EDGE_NUMBERS = st.sampled_from(
    [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 2**53 + 1, 1e308, -0.0, 0.5, -1]
)
OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda minutes: timezone(timedelta(minutes=minutes)))
TIMESTAMPS = (
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=OFFSETS).map(
        datetime.isoformat
    )
    | st.sampled_from(
        [
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2026-02-30T10:00:00Z",
            "2026-11-20T10:00:00+99:99",
            "2026-11-20T10:00:00",
            "2026-11-20 10:00+05",
            "2026-11-20T10:00:00.123456789Z",
            "+275760-09-13T00:00:00Z",
            "yesterday",
            "",
        ]
    )
    | st.text(max_size=30)
)
PLANTED = planted(st.text(max_size=20) | CONTROLS | LONG)
HOSTILE = st.one_of(JUNK, CONTROLS, LONE_SURROGATE, LONG, EDGE_NUMBERS, TIMESTAMPS, st.integers(250, 1100).map(deep),
                    st.sampled_from([None, True, False, "", [], {}]))
METADATA = st.dictionaries(st.text(max_size=8) | PLANTED, HOSTILE | PLANTED, max_size=3)
# "id-" is replaced by a per-example prefix; few ids, so they recur within a file
IDS = st.integers(0, 4).map("id-{}".format) | st.integers(5, 10**6).map("id-{}".format)


@st.composite
def hostile_rows(draw: st.DrawFn) -> dict[str, Any]:
    """A valid row with 0-3 fields set to hostile values, removed, or joined by unknown keys."""
    row = good_row(draw(IDS))
    for _ in range(draw(st.integers(0, 3))):
        action, name = (
            draw(st.sampled_from(["set", "set", "set", "delete", "extra"])),
            draw(st.sampled_from(LOG_FIELDS)),
        )
        if action == "delete":
            row.pop(name, None)
        elif action == "extra":
            row[draw(st.text(max_size=10) | PLANTED | st.sampled_from(["_origin", "_extra", "__proto__", ""]))] = draw(
                HOSTILE | PLANTED
            )
        elif name == "metadata":
            row[name] = draw(METADATA | HOSTILE)
        else:
            row[name] = draw(HOSTILE | PLANTED if name in FREE_TEXT else HOSTILE)
    return row


@st.composite
def hostile_lines(draw: st.DrawFn) -> bytes:
    """A line of a log file: a hostile row, one with raw bytes spliced in, bytes, or not JSON at all."""
    kind = draw(st.sampled_from(["row"] * 5 + ["spliced", "bytes", "fixed"]))
    if kind == "fixed":
        return draw(
            st.sampled_from(
                [
                    b"",
                    b"   ",
                    b"\t\r",
                    b"\x0c",
                    b"{not json",
                    b"[1, 2]",
                    b"null",
                    b'"text"',
                    b"42",
                    b"{",
                    b'{"id": "x"',
                    b"\x00\x00",
                    b"\xff\xfe\xfd",
                    b"\xef\xbb\xbf{}",
                    b'{"id": "\\ud800"}',
                    b'{"id": "id-0", "id": 5}',
                    b"{}",
                ]
            )
        )
    if kind == "bytes":  # invalid UTF-8 with an email in it
        junk = draw(st.binary(max_size=30)).replace(b"\n", b"")
        return junk + b" " + EMAIL.encode() + b" \xff\xfe" + junk
    raw = line(draw(hostile_rows()), ensure_ascii=draw(st.booleans()))
    if kind == "spliced":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=6)).replace(b"\n", b"") + raw[at:]
    return raw


# --- the workspace and what a run wrote --------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("hostile") / "ws"
    init_workspace(root)
    workspace = open_workspace(root)
    # Megabyte strings (up to ~30 MB a line once JSON escapes control characters) are what this module
    # feeds collect; lines over the limit have a test of their own.
    collect_settings = workspace.params.collect.model_copy(update={"max_line_bytes": 64_000_000})
    return Workspace(root, workspace.params.model_copy(update={"collect": collect_settings}))


def run_parts(
    workspace: Workspace, kind: str, run: str | None = None, columns: list[str] | None = None
) -> pa.Table | None:
    """The rows of `kind` (logs or quarantine) one run wrote, or every stored row when run is None."""
    directory = workspace.path(workspace.app_settings(APP).data_dir) / kind
    parts = sorted(directory.glob(f"part-{run}-*.parquet" if run else "*.parquet"))
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in parts]) if parts else None


def stored_ids(workspace: Workspace) -> list[str]:
    table = run_parts(workspace, LOGS, columns=["id"])
    return table.column("id").to_pylist() if table is not None else []


def expected_rows(path: Path, workspace: Workspace) -> dict[str, bytes]:
    """origin -> line for every row of the file: each complete, non-blank line (a last line
    without a newline is still being written and waits for the next run)."""
    label = str(path.relative_to(workspace.root))
    complete = path.read_bytes().split(b"\n")[:-1]
    return {f"{label}:{number}": raw for number, raw in enumerate(complete, start=1) if raw.strip()}


def assert_no_planted_pii(table: pa.Table | None) -> None:
    for name in table.column_names if table is not None else []:
        column = table.column(name)
        if pa.types.is_string(column.type):
            assert not pc.any(pc.match_substring(column, EMAIL)).as_py(), f"{EMAIL} stored in column {name}"


def assert_kept_rows_are_valid(kept: pa.Table, lines: dict[str, bytes], before: set[str], workspace: Workspace) -> None:
    """Stored rows have the stored schema, read back as Python values, satisfy the log contract
    (pydantic, strict), are exactly what arrived (redacted) and have ids not stored before."""
    assert kept.schema.equals(LOG_SCHEMA, check_metadata=False)
    redact = build_redactor(workspace.params.collect.extra_pii_patterns).redact_text
    for stored in kept.to_pylist():  # raises on values Python cannot hold (a timestamp in year 0)
        raw = orjson.loads(lines[stored["source"]])
        record = {name: stored[name] for name in LOG_FIELDS if name in stored}
        record.update(
            user_id=stored["user_hash"], metadata=json.loads(stored["metadata"]) if stored["metadata"] else None
        )
        LogRecord.model_validate(record, strict=True)
        assert datetime(1, 1, 1, tzinfo=UTC) <= stored["timestamp"] <= NOW + CLOCK_SKEW
        assert (stored["id"], stored["prompt_tokens"], stored["completion_tokens"]) == (
            raw["id"], raw["prompt_tokens"], raw["completion_tokens"])
        for name in ("input", "output", "error", "feedback_comment"):
            assert stored[name] == redact(raw.get(name))[0], name
        assert stored["id"] not in before


def assert_quarantine_is_explained(quarantined: pa.Table, lines: dict[str, bytes], before: set[str]) -> None:
    """Every quarantined row has a kind and a reason; a duplicate's id was stored or came earlier."""
    order = list(lines)
    for row in quarantined.select(["origin", "kind", "reasons"]).to_pylist():
        assert row["kind"] in ("invalid", "duplicate", "unreadable") and row["reasons"], row
        if row["kind"] == "duplicate":
            row_id = id_of(lines[row["origin"]])
            earlier = order[: order.index(row["origin"])]
            assert isinstance(row_id, str) and (row_id in before or any(id_of(lines[o]) == row_id for o in earlier)), (
                row
            )


def id_of(raw: bytes) -> Any:
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return record.get("id") if isinstance(record, dict) else None


def collect_and_check(workspace: Workspace, path: Path) -> tuple[CollectResult, pa.Table | None, pa.Table | None]:
    """Collect (only `path` has new lines) and check the guarantees on what the run wrote."""
    before = set(stored_ids(workspace))
    result = collect(workspace, APP, now=NOW)

    rows = expected_rows(path, workspace)
    assert result.rows_in == len(rows)  # no file read twice: the older ones have nothing new
    assert result.rows_in == result.rows_valid + result.rows_quarantined + result.rows_duplicate
    kept, quarantined = run_parts(workspace, LOGS, result.run), run_parts(workspace, QUARANTINE, result.run)
    kept_origins = kept.column("source").to_pylist() if kept is not None else []
    quarantined_origins = quarantined.column("origin").to_pylist() if quarantined is not None else []
    assert len(kept_origins) == result.rows_valid
    assert len(quarantined_origins) == result.rows_quarantined + result.rows_duplicate
    assert sorted(kept_origins + quarantined_origins) == sorted(rows)  # each row stored exactly once: none lost
    if kept is not None:
        assert_kept_rows_are_valid(kept, rows, before, workspace)
    if quarantined is not None:
        assert_quarantine_is_explained(quarantined, rows, before)
        assert quarantined.filter(pc.equal(quarantined.column("kind"), "duplicate")).num_rows == result.rows_duplicate
    assert_no_planted_pii(kept)
    assert_no_planted_pii(quarantined)
    ids = stored_ids(workspace)
    assert len(ids) == len(set(ids)), "an id is stored twice"
    return result, kept, quarantined


# Lines that once crashed collect or stored wrong data: always run, whatever Hypothesis draws.
REGRESSIONS = [
    line(good_row("id-m1", model=[1])),
    line(good_row("id-m2", model={"x": 1})),  # unhashable model names
    line(good_row("id-i1", id=[1])),
    line(good_row("id-i2", id=[1])),
    line(good_row("id-i3", id={"a": 1})),  # repeated unhashable ids
    line(good_row("id-i4", id={"a": 1})),
    line(good_row("id-d1", metadata={"a": deep(300)})),  # nested deeper than orjson writes: in kept metadata,
    line(good_row("id-d2", surprise=deep(300))),  # in an unknown key,
    line(good_row("id-d3", input=deep(260))),  # in a quarantined field
    line(good_row("id-t1", prompt_tokens=2**64 - 1)),
    line(good_row("id-t2", completion_tokens=2**63 - 1)),  # beyond int64,
    line(good_row("id-t3", prompt_tokens=2**53 + 1)),  # or rounded by a float on the way
    line(good_row("id-y1", timestamp="0001-01-01T00:00:00+01:00")),
    line(good_row("id-y2", timestamp="0000-01-01T00:00:00Z")),  # year 0
    line(good_row("id-n1", timestamp="2026-11-20T10:00:00.123456789Z")),  # nanoseconds, stored in microseconds
]


def write_log(workspace: Workspace, name: str, content: bytes) -> Path:
    incoming = workspace.path(workspace.app_settings(APP).log_dir)
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / name).write_bytes(content)
    return incoming / name


SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@settings(SETTINGS, max_examples=25)
@given(lines=st.lists(hostile_lines(), max_size=12), complete=st.booleans(), newline=st.sampled_from([b"\n", b"\r\n"]))
@example(lines=REGRESSIONS, complete=True, newline=b"\n")
def test_collect_survives_hostile_logs(
    hostile_workspace: Workspace, lines: list[bytes], complete: bool, newline: bytes
) -> None:
    """No crash; rows in = kept + quarantined, each row stored once; kept rows valid and redacted;
    a file delivered again stores nothing new, and no file is read twice."""
    number = next(EXAMPLES)
    # Ids are namespaced per example: replaying an example (as Hypothesis does) sees the same state.
    lines = [raw.replace(b'"id-', f'"e{number}-'.encode()) for raw in lines]
    content = newline.join(lines) + (newline if complete and lines else b"")
    first = write_log(hostile_workspace, f"hostile-{number:04d}.jsonl", content)
    result, kept, _ = collect_and_check(hostile_workspace, first)
    event(f"kept rows: {min(result.rows_valid, 3)}")
    event(f"duplicate rows: {min(result.rows_duplicate, 3)}")

    again = write_log(hostile_workspace, f"hostile-{number:04d}-again.jsonl", content)  # delivered a second time
    redelivered, _, quarantined = collect_and_check(hostile_workspace, again)
    assert redelivered.rows_valid == 0
    kinds = (
        dict(zip(quarantined.column("origin").to_pylist(), quarantined.column("kind").to_pylist(), strict=True))
        if quarantined is not None
        else {}
    )
    for origin in kept.column("source").to_pylist() if kept is not None else []:
        assert kinds[origin.replace(first.name, again.name)] == "duplicate"  # each kept row, delivered again


@settings(SETTINGS, max_examples=4)
@given(field=st.sampled_from([*FREE_TEXT, "metadata", "surprise"]), text=planted(HUGE),
       damage=st.sampled_from([None, "invalid", "unreadable"]))
@example(field="input", text=f"mail me\x00{EMAIL}\x00" + "\x01" * 2_000_000, damage=None)
def test_megabyte_strings_are_stored_once_and_redacted(
    hostile_workspace: Workspace, field: str, text: str, damage: str | None
) -> None:
    """A 1-5 MB string with controls and an email, in a kept, an invalid or an unreadable row."""
    number = next(EXAMPLES)
    row = good_row(f"e{number}-big", **{field: {"note": text} if field == "metadata" else text})
    if damage == "invalid":
        row["latency_ms"] = -1
    raw = line(row) if damage != "unreadable" else line(row)[:-1] + b"\xff"
    path = write_log(
        hostile_workspace, f"huge-{number:04d}.jsonl", raw + b"\n" + line(good_row(f"e{number}-small")) + b"\n"
    )
    result, _, _ = collect_and_check(hostile_workspace, path)
    assert result.rows_valid == (2 if damage is None and field != "surprise" else 1)  # an unknown key is invalid


def test_a_jsonl_file_that_is_not_utf8_is_an_input_error_naming_the_line(tmp_path: Path) -> None:
    """Golden sets and detector files go through read_jsonl: bad bytes name the file and line."""
    path = tmp_path / "golden.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"b": "\xff"}\n')
    with pytest.raises(InputError, match=r"golden.jsonl: line 3: not UTF-8: invalid start byte \(byte 8\)"):
        list(read_jsonl(path))
