"""Where production logs come from. A source reads what arrived since its watermark.

Adding a source (a Langfuse export, say) is one new `Source` subclass: `key` names it for its
watermark, `read` returns a `SourceBatch` of raw rows in the log-record columns.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import hashlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from promptloop.collect.fingerprint import PrefixWindows, ReadMark, start_of
from promptloop.domain.logs import LOG_FIELDS

ORIGIN = "_origin"  # "<file>:<line>" (or another source's locator) of each raw row
EXTRA = "_extra"  # JSON of keys outside the contract, None when there are none
RAW_COLUMNS = (*LOG_FIELDS, ORIGIN, EXTRA)
log = logging.getLogger(__name__)
# A JSON Lines file in a folder, current or rotated (`.1`, `.2`, ... or logrotate's `-YYYYMMDD`)
ROTATED_JSONL = re.compile(r"\.jsonl?(?:[.-]\d+)?$")
Shape = Callable[[dict[str, Any]], dict[str, Any] | None]  # None: the line is not an interaction
MAX_DEPTH = 254  # orjson reads 1024 nested levels but writes only 254, and rows are written back as JSON


@dataclass(frozen=True)
class Unreadable:
    """A piece of input that is not even a row (a bad JSON line): quarantined as it is."""

    origin: str
    reason: str
    raw: str


@dataclass
class SourceBatch:
    """Raw rows (object columns, values as the source gave them) plus what could not be read."""

    frame: pd.DataFrame
    unreadable: list[Unreadable] = field(default_factory=list)
    watermark: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0  # lines of the app's own format that are not interactions (`log_filter`): not rows

    @property
    def rows_in(self) -> int:
        return len(self.frame) + len(self.unreadable)


class Source(ABC):
    """A place logs arrive at."""

    @property
    @abstractmethod
    def key(self) -> str:
        """Stable name of this source, under which its watermark is kept."""

    @abstractmethod
    def read(self, watermark: dict[str, Any] | None) -> SourceBatch:
        """Everything that arrived after `watermark` (None: everything), and the new watermark."""

    def batches(self, watermark: dict[str, Any] | None, max_rows: int) -> Iterator[SourceBatch]:
        """What `read` returns, in batches of about `max_rows`; each carries the watermark after it.

        Sources that can stream override this to bound memory; the default reads all at once.
        """
        yield self.read(watermark)


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in RAW_COLUMNS})


def frame_from_columns(columns: dict[str, list[Any]]) -> pd.DataFrame:
    """Object-typed columns in contract order; values are kept exactly as read."""
    return pd.DataFrame({c: pd.Series(columns[c], dtype=object) for c in RAW_COLUMNS})


@dataclass
class FileSource(Source):
    """JSON Lines or Parquet files: one file, a folder, or a glob.

    Watermark, per file. Parquet: the sha256 of the file and the rows read. JSON Lines: the byte
    offset reached, the lines before it, the inode and hashes of the bytes before it (see
    `collect.fingerprint`), so a file that grows is read from where the last run stopped, and one
    truncated, rotated or rewritten since is read again from its start; a file rotated by rename
    (`app.jsonl.1`, same inode) goes on from its old entry, a copy under another name is read whole
    (its rows already stored are duplicates by id). In a folder, rotated
    JSON Lines files (`app.jsonl.1`, logrotate's `app.jsonl-20261202`) are read too, so the rows
    written between the last collect and a rotation are not left behind.
    """

    pattern: str
    root: Path = Path(".")
    max_line_bytes: int = 1_000_000  # a longer JSON Lines line is quarantined unread
    shape: Shape | None = None  # a line in the app's own format -> a log record (collect.mapping)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()

    @property
    def key(self) -> str:
        return f"files:{self.pattern}"

    def state_name(self, path: Path) -> str:
        """A file's name in the watermark: relative to the workspace when inside it, so it can move."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def files(self) -> list[Path]:
        """The matching files, sorted; a folder means every .jsonl/.json/.parquet inside it, and rotated
        JSON Lines files (`.jsonl.1`, `.jsonl-20261202`)."""
        path = Path(self.pattern) if Path(self.pattern).is_absolute() else self.root / self.pattern
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.suffix == ".parquet" or ROTATED_JSONL.search(p.name)]
        else:
            found = [Path(p) for p in glob.glob(str(path), recursive=True)]
        return sorted(p for p in found if p.is_file())

    def read(self, watermark: dict[str, Any] | None) -> SourceBatch:
        batches = list(self.batches(watermark, max_rows=1 << 62))
        frame = pd.concat([b.frame for b in batches], ignore_index=True) if batches else empty_frame()
        return SourceBatch(
            frame,
            [u for b in batches for u in b.unreadable],
            batches[-1].watermark if batches else dict(watermark or {}),
        )

    def batches(self, watermark: dict[str, Any] | None, max_rows: int) -> Iterator[SourceBatch]:
        seen: dict[str, Any] = dict((watermark or {}).get("files", {}))
        # The JSON Lines entries as this run found them: a rotated file may continue any of them.
        marks = {name: ReadMark.from_state(state, f"watermarks.{self.key}.files.{name}")
                 for name, state in seen.items() if isinstance(state, dict) and "offset" in state}
        yielded = dict(seen)  # the file states as of the last batch handed out
        pending = _Pending(self.shape)
        for path in self.files():
            name = self.state_name(path)
            state = seen.get(name)
            if path.suffix == ".parquet":
                digest = file_sha256(path)
                known = state or {}
                same = known.get("sha256") == digest
                if same and known.get("unreadable"):
                    continue  # quarantined as a file before; a changed file is read again
                done = known.get("rows", 0) if same else 0
                try:
                    for reached in read_parquet_rows(path, done, pending, max_rows, name):
                        seen[name] = {"sha256": digest, "rows": reached}
                        yielded = dict(seen)
                        yield pending.flush({"files": yielded})
                    seen[name] = {"sha256": digest, "rows": pq.ParquetFile(path).metadata.num_rows}
                except UnreadableFile as exc:  # quarantined whole; the other files are still collected
                    pending.unreadable.append(Unreadable(name, f"unreadable_parquet: {exc}", ""))
                    seen[name] = {"sha256": digest, "rows": done, "unreadable": True}
                continue
            inode = path.stat().st_ino
            start = start_of(path, marks.get(name), marks.items())
            if start.reason in ("truncated", "rewritten", "replaced"):
                log.warning("%s: %s since the last collect, read again from its start", name, start.reason)
            lines = start.lines if start.lines is not None else _lines_before(path, start.offset)
            for reached in read_jsonl_rows(path, start.offset, pending, max_rows, name, self.max_line_bytes,
                                           windows=start.windows, line_number=lines):
                seen[name] = start.windows.mark(reached, pending.lines_after, inode).to_state()
                yielded = dict(seen)
                yield pending.flush({"files": yielded})
            seen[name] = start.windows.mark(pending.offset_after, pending.lines_after, inode).to_state()
        # a last batch for the rows left, or for a watermark that moved without rows (an empty file)
        if pending.rows or pending.skipped or seen != yielded:
            yield pending.flush({"files": dict(seen)})


class _Pending:
    """Columns being filled for the next batch."""

    def __init__(self, shape: Shape | None = None) -> None:
        self.shape = shape
        self.skipped = 0
        self.columns: dict[str, list[Any]] = {c: [] for c in RAW_COLUMNS}
        self.unreadable: list[Unreadable] = []
        self.offset_after = 0  # where the last JSON Lines file was read up to
        self.lines_after = 0  # and the lines before that point

    @property
    def rows(self) -> int:
        return len(self.columns[ORIGIN]) + len(self.unreadable)

    def append(self, record: dict[str, Any], origin: str) -> None:
        """One parsed row, in the app's own format when the source has a shape (which may say it is no row)."""
        shaped = record if self.shape is None else self.shape(record)
        if shaped is None:
            self.skipped += 1
            return
        _append_record(shaped, origin, self.columns)

    def flush(self, watermark: dict[str, Any]) -> SourceBatch:
        batch = SourceBatch(frame_from_columns(self.columns), self.unreadable, watermark, self.skipped)
        self.columns = {c: [] for c in RAW_COLUMNS}
        self.unreadable = []
        self.skipped = 0
        return batch


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _append_record(record: dict[str, Any], origin: str, columns: dict[str, list[Any]]) -> None:
    for name in LOG_FIELDS:
        columns[name].append(record.get(name))
    unknown = record.keys() - _FIELD_SET
    columns[EXTRA].append(
        orjson.dumps({k: record[k] for k in sorted(unknown)}, default=str).decode() if unknown else None
    )
    columns[ORIGIN].append(origin)


_FIELD_SET = frozenset(LOG_FIELDS)


def read_jsonl_rows(path: Path, offset: int, pending: _Pending, max_rows: int, label: str,
                    max_line_bytes: int = 1_000_000, *, windows: PrefixWindows | None = None,
                    line_number: int | None = None) -> Iterator[int]:
    """Fill `pending` with the rows after byte `offset`; yields the byte offset each time the batch is full.

    A line that is not a JSON object is unreadable (kept with its reason); so is a line longer than
    `max_line_bytes`, which is skipped in chunks, never held in memory whole. A half-written last line
    (no newline yet) waits for the next run: `pending.offset_after` stops before it. Every byte read
    past is fed to `windows` (the watermark's fingerprints); `line_number` is the count of lines before
    `offset` when known (else counted), and `pending.lines_after` the count before each yielded offset.
    """
    windows = windows if windows is not None else PrefixWindows()
    line_number = _lines_before(path, offset) if line_number is None else line_number
    consumed: list[bytes] = []  # lines read past, given to `windows` in blocks: a call per line costs ~5%
    with path.open("rb") as handle:
        handle.seek(offset)
        while True:
            full = False
            with _gc_paused():  # never across a yield: the consumer's garbage must be collected
                while raw := handle.readline(max_line_bytes + 1):
                    if not raw.endswith(b"\n") and len(raw) > max_line_bytes:
                        windows.feed(b"".join(consumed))
                        consumed.clear()
                        before = windows.copy()  # restored when the line turns out to be unfinished
                        windows.feed(raw)
                        length = skipped_line(handle, len(raw), windows.feed)
                        if length is None:
                            windows.head, windows.tail = before.head, before.tail
                            break  # a long line still being written: the next run sees it whole
                        offset += length
                        line_number += 1
                        pending.unreadable.append(Unreadable(f"{label}:{line_number}", f"line_too_long: {length:,} "
                                                             f"bytes, over collect.max_line_bytes ({max_line_bytes:,})",
                                                             raw[:200].decode("utf-8", "replace") + "..."))
                    elif not raw.endswith(b"\n"):
                        break
                    else:
                        offset += len(raw)
                        line_number += 1
                        consumed.append(raw)
                        if len(consumed) == 4096:
                            windows.feed(b"".join(consumed))
                            consumed.clear()
                        if raw.strip():
                            _parse_line(raw, f"{label}:{line_number}", pending)
                    if pending.rows >= max_rows:
                        full = True
                        break
            windows.feed(b"".join(consumed))
            consumed.clear()
            pending.lines_after = line_number
            if not full:
                break
            yield offset
    pending.offset_after = offset


def skipped_line(handle: BinaryIO, read: int, feed: Callable[[bytes], None] = lambda chunk: None) -> int | None:
    """Read past the rest of a line, 64 kB at a time (each chunk given to `feed`); its whole length, or
    None when the file ends first."""
    while chunk := handle.readline(1 << 16):
        read += len(chunk)
        feed(chunk)
        if chunk.endswith(b"\n"):
            return read
    return None


def _parse_line(raw: bytes, origin: str, pending: _Pending) -> None:
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        pending.unreadable.append(
            Unreadable(origin, f"invalid_json: {exc}", raw.decode("utf-8", "replace").rstrip("\n"))
        )
        return
    if not isinstance(record, dict):
        pending.unreadable.append(
            Unreadable(
                origin, f"not_an_object: got {type(record).__name__}", raw.decode("utf-8", "replace").rstrip("\n")
            )
        )
        return
    if _too_deep(raw, record):
        pending.unreadable.append(
            Unreadable(origin, f"too_deep: nested over {MAX_DEPTH} levels", raw.decode("utf-8", "replace").rstrip("\n"))
        )
        return
    pending.append(record, origin)


def _too_deep(raw: bytes, record: dict[str, Any]) -> bool:
    """True when `record` is nested deeper than orjson can write (the metadata and quarantine columns).

    Counting brackets is a cheap bound (a row that deep has that many); only then is it serialized.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    try:
        orjson.dumps(record)
    except orjson.JSONEncodeError:
        return True
    return False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Millions of small objects make the cyclic GC run over and over; none of them form cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _lines_before(path: Path, offset: int) -> int:
    """Line count before `offset`, so origins keep true line numbers across incremental reads."""
    if offset == 0:
        return 0
    with path.open("rb") as handle:
        return handle.read(offset).count(b"\n")


def read_parquet_rows(path: Path, done: int, pending: _Pending, max_rows: int, label: str) -> Iterator[int]:
    """Fill `pending` with the rows after the first `done`; yields the rows done each time the batch is full.

    A file that is not Parquet raises UnreadableFile.
    """
    try:
        parquet = pq.ParquetFile(path)
        index = 0
        for record_batch in parquet.iter_batches(batch_size=max(1, min(max_rows, 65_536))):
            for record in record_batch.to_pylist():
                index += 1
                if index <= done:
                    continue
                pending.append(record, f"{label}:row {index - 1}")
                if pending.rows >= max_rows:
                    yield index
    except (pa.ArrowInvalid, OSError) as exc:
        raise UnreadableFile(f"not a readable Parquet file: {exc}") from None


class UnreadableFile(Exception):
    """A whole file that cannot be read (not Parquet, truncated): quarantined as one piece."""
