"""JSON Lines watermarks: a file truncated, rotated or rewritten between two reads loses no row."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from promptloop.collect.fingerprint import WINDOW, ReadMark, start_of
from promptloop.collect.sources import FileSource, SourceBatch
from promptloop.core.errors import InputError


def lines(prefix: str, start: int, stop: int, pad: int = 0) -> str:
    """JSON lines with ids `<prefix><n>`; `pad` makes each line longer."""
    return "".join(json.dumps({"id": f"{prefix}{n}", "input": "x" * pad}) + "\n" for n in range(start, stop))


def append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def rewrite_in_place(path: Path, text: str) -> None:
    """Truncate and write again, keeping the inode (what `> file` or copytruncate does)."""
    inode = path.stat().st_ino
    with path.open("r+", encoding="utf-8") as handle:
        handle.truncate(0)
        handle.write(text)
    assert path.stat().st_ino == inode


def ids(batch: SourceBatch) -> list[str]:
    return list(batch.frame["id"])


@pytest.fixture
def source(tmp_path: Path) -> FileSource:
    return FileSource("logs", tmp_path)


def reason(path: Path, watermark: dict[str, Any]) -> str:
    """Why the file would be read from where it is (see `Start.reason`)."""
    marks = {name: ReadMark.from_state(state, name) for name, state in watermark["files"].items()}
    return start_of(path, marks.get(f"logs/{path.name}"), marks.items()).reason


def first_read(source: FileSource, text: str) -> tuple[Path, dict[str, Any]]:
    path = source.root / "logs" / "app.jsonl"
    append(path, text)
    batch = source.read(None)
    assert len(batch.frame) == text.count("\n")
    return path, batch.watermark


def test_an_unchanged_file_reads_nothing_and_keeps_its_watermark(source: FileSource) -> None:
    _, watermark = first_read(source, lines("a", 0, 5))
    again = source.read(watermark)
    assert again.rows_in == 0 and again.watermark == watermark
    assert reason(source.root / "logs" / "app.jsonl", watermark) == "continued"


def test_a_growing_file_is_read_from_where_it_stopped(source: FileSource) -> None:
    path, watermark = first_read(source, lines("a", 0, 5))
    append(path, lines("a", 5, 8))
    batch = source.read(watermark)
    assert ids(batch) == ["a5", "a6", "a7"]
    assert list(batch.frame["_origin"]) == ["logs/app.jsonl:6", "logs/app.jsonl:7", "logs/app.jsonl:8"]


@pytest.mark.parametrize("new_rows", [3, 12], ids=["shorter", "longer"])
def test_a_file_truncated_in_place_and_regrown_is_read_from_its_start(source: FileSource, new_rows: int) -> None:
    path, watermark = first_read(source, lines("a", 0, 8))
    rewrite_in_place(path, lines("b", 0, new_rows))
    assert reason(path, watermark) == ("truncated" if new_rows < 8 else "rewritten")
    batch = source.read(watermark)
    # The old code read on from the old offset: the longer file lost its first rows, mid-line.
    assert ids(batch) == [f"b{n}" for n in range(new_rows)] and not batch.unreadable
    assert batch.frame["_origin"].iloc[0] == "logs/app.jsonl:1"
    assert source.read(batch.watermark).rows_in == 0


def test_a_file_rotated_by_rename_gives_its_last_rows_and_the_new_file_all_of_its(source: FileSource) -> None:
    """Same inode under a new name: the rotated file goes on from its old entry."""
    path, watermark = first_read(source, lines("a", 0, 5))
    append(path, lines("a", 5, 7))  # written after the collect, before the rotation
    path.rename(path.with_name("app.jsonl.1"))
    append(path, lines("b", 0, 3))
    assert (reason(path, watermark), reason(path.with_name("app.jsonl.1"), watermark)) == (
        "replaced", "continues logs/app.jsonl")
    batch = source.read(watermark)
    assert sorted(ids(batch)) == ["a5", "a6", "b0", "b1", "b2"]  # each row once, none skipped
    origins = dict(zip(batch.frame["id"], batch.frame["_origin"], strict=True))
    assert origins["a5"] == "logs/app.jsonl.1:6" and origins["b0"] == "logs/app.jsonl:1"
    # logrotate shifts again: .1 -> .2, current -> .1, a new current file
    path.with_name("app.jsonl.1").rename(path.with_name("app.jsonl.2"))
    path.rename(path.with_name("app.jsonl.1"))
    append(path, lines("c", 0, 2))
    assert ids(source.read(batch.watermark)) == ["c0", "c1"]


def test_a_copy_delivered_under_another_name_is_read_whole(source: FileSource) -> None:
    path, watermark = first_read(source, lines("a", 0, 3))
    shutil.copyfile(path, path.with_name("again.jsonl"))
    assert ids(source.read(watermark)) == ["a0", "a1", "a2"]  # collect counts them as duplicates


@pytest.mark.parametrize("new_rows", [2, 9], ids=["shorter", "longer"])
def test_copytruncate_reads_the_copy_whole_and_the_truncated_file_anew(source: FileSource, new_rows: int) -> None:
    """The copy is a new file: its first rows come again (collect counts them as duplicates by id)."""
    path, watermark = first_read(source, lines("a", 0, 5))
    append(path, lines("a", 5, 7))
    shutil.copyfile(path, path.with_name("app.jsonl-20261202"))  # logrotate's copytruncate, with dateext
    rewrite_in_place(path, lines("b", 0, new_rows))
    batch = source.read(watermark)
    assert sorted(ids(batch)) == [*[f"a{n}" for n in range(7)], *[f"b{n}" for n in range(new_rows)]]
    assert source.read(batch.watermark).rows_in == 0


def test_a_file_rewritten_with_other_content_of_the_same_size_is_read_again(source: FileSource) -> None:
    path, watermark = first_read(source, lines("a", 0, 5))
    size = path.stat().st_size
    rewrite_in_place(path, lines("b", 0, 5))
    assert path.stat().st_size == size and reason(path, watermark) == "rewritten"
    assert ids(source.read(watermark)) == [f"b{n}" for n in range(5)]


def test_a_file_replaced_by_another_file_is_read_again(source: FileSource) -> None:
    path, watermark = first_read(source, lines("a", 0, 5))
    replacement = path.with_name("tmp")
    replacement.write_text(lines("a", 0, 4) + lines("b", 0, 3))  # longer, and a different inode
    os.replace(replacement, path)
    assert reason(path, watermark) == "replaced"
    assert len(source.read(watermark).frame) == 7  # a0..a3 again (duplicates by id for collect), b0..b2


def test_a_file_replaced_by_a_longer_copy_of_itself_continues_its_entry(source: FileSource) -> None:
    """A file synced by rename (rsync) has a new inode but holds the bytes read: nothing is read twice."""
    path, watermark = first_read(source, lines("a", 0, 5))
    replacement = path.with_name("tmp")
    replacement.write_text(path.read_text() + lines("a", 5, 6))
    os.replace(replacement, path)
    assert ids(source.read(watermark)) == ["a5"]


def test_windows_kept_while_reading_are_the_bytes_in_the_file(source: FileSource) -> None:
    """Big lines, batches, an overlong line and several runs: the hashes are those of the file's prefix."""
    source.max_line_bytes = 5_000
    path = source.root / "logs" / "app.jsonl"
    append(path, lines("a", 0, 40, pad=3_000) + json.dumps({"id": "big", "input": "y" * 200_000}) + "\n")
    watermark: dict[str, Any] = {}
    for batch in source.batches(None, max_rows=7):
        watermark = batch.watermark
    append(path, lines("a", 40, 90, pad=3_000))
    batch = source.read(watermark)
    assert ids(batch) == [f"a{n}" for n in range(40, 90)]
    mark = ReadMark.from_state(batch.watermark["files"]["logs/app.jsonl"], "f")
    data = path.read_bytes()
    assert mark.offset == len(data) > 3 * WINDOW and mark.lines == 91
    assert mark.head == hashlib.sha256(data[:WINDOW]).hexdigest()
    assert mark.tail == hashlib.sha256(data[-WINDOW:]).hexdigest()
    # One byte changed inside either window (a padding "x"), the size kept, is found.
    for where in (100, len(data) - 100):
        assert data[where:where + 1] == b"x"
        path.write_bytes(data[:where] + b"Z" + data[where + 1:])
        again = source.read(batch.watermark)
        assert (len(again.frame), len(again.unreadable)) == (90, 1)


def test_an_old_watermark_without_hashes_is_trusted_when_the_file_is_long_enough(source: FileSource) -> None:
    path, _ = first_read(source, lines("a", 0, 5))
    offset = len(lines("a", 0, 3))
    batch = source.read({"files": {"logs/app.jsonl": {"offset": offset}}})  # as the previous version wrote it
    assert ids(batch) == ["a3", "a4"] and batch.frame["_origin"].iloc[0] == "logs/app.jsonl:4"
    assert ReadMark.from_state(batch.watermark["files"]["logs/app.jsonl"], "f").verified
    shorter = {"files": {"logs/app.jsonl": {"offset": path.stat().st_size + 1}}}
    assert len(source.read(shorter).frame) == 5  # shorter than the offset: read from its start


def test_a_damaged_watermark_entry_names_the_field(source: FileSource) -> None:
    first_read(source, lines("a", 0, 1))
    with pytest.raises(InputError, match=r"collect-state.json: watermarks.files:logs.files.logs/app.jsonl.head"):
        source.read({"files": {"logs/app.jsonl": {"offset": 3, "head": 7}}})
