"""Where a JSON Lines file was read up to, and whether the file found there now is the one that was read.

A watermark entry (`ReadMark`) keeps, per file: the byte `offset` reached, the number of `lines`
before it, the file's `inode`, and the sha256 of two windows of the bytes read: `head`, the first
64 KiB (or all of them when fewer), and `tail`, the 64 KiB before the offset. The next run reads on
from the offset only when the file still holds those bytes there; otherwise the file was truncated,
rotated or rewritten, and it is read again from its start (rows already stored are then duplicates
by id). A file renamed by a rotation (`app.log` -> `app.log.1`, same inode) continues its old
entry, so the rows written between the last run and the rotation are read, once. A copy under
another name (logrotate's copytruncate mode, a file delivered again) is read whole: what it shares
with files already read comes back as duplicates by id, counted, never as new rows.

Trade-off: hashing the whole prefix would make a 1 GB file cost 1 GB of reading each run (hashlib
states cannot be saved), so only the two windows are checked, at most 128 KiB per file. A file up
to 128 KiB is checked whole. A larger file rewritten so that both windows and the size still match
but bytes between them differ (the same rows, one replaced by a different row of exactly the same
length in the middle) is not detected; any insertion, removal or change of length shifts the bytes
before the offset and is. The inode says where a file went (rotation by rename keeps it) but is not
trusted alone, since a deleted file's inode is reused: the windows decide.

Entries written before these fields existed hold only `offset`: they are "unverified", trusted when
the file is at least that long (as they always were), and get their windows once a run stores
something (collect writes the watermarks only then).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from promptloop.core.errors import InputError

WINDOW = 64 * 1024
STATE_FILE = "collect-state.json"  # where the entries live (collect.stage writes it), for error messages


def sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ReadMark:
    """One file's watermark entry: how far it was read and fingerprints of what was read."""

    offset: int
    lines: int | None = None  # None in old entries: counted once from the file
    inode: int | None = None
    head: str | None = None
    tail: str | None = None

    @property
    def verified(self) -> bool:
        """True when the entry carries the hashes that let a run check the file (old entries do not)."""
        return self.head is not None and self.tail is not None

    @classmethod
    def from_state(cls, state: Mapping[str, Any], field: str) -> ReadMark:
        """The entry as stored in the watermark; `field` names it in errors."""
        offset = state.get("offset")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise InputError(STATE_FILE, f"not a byte offset (got {offset!r})", f"{field}.offset")
        values: dict[str, Any] = {}
        for name, kind in (("lines", int), ("inode", int), ("head", str), ("tail", str)):
            value = state.get(name)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise InputError(STATE_FILE, f"expected {kind.__name__}, got {value!r}", f"{field}.{name}")
            values[name] = value
        return cls(offset, **values)

    def to_state(self) -> dict[str, Any]:
        return {"offset": self.offset, "lines": self.lines, "inode": self.inode, "head": self.head, "tail": self.tail}


class PrefixWindows:
    """The first and the last WINDOW bytes read so far, kept up to date as lines are read."""

    def __init__(self, head: bytes = b"", tail: bytes = b"") -> None:
        self.head = bytearray(head)
        self.tail = bytearray(tail)

    def feed(self, data: bytes) -> None:
        """Bytes just read past (the watermark will move over them)."""
        if len(self.head) < WINDOW:
            self.head += data[: WINDOW - len(self.head)]
        self.tail += data[-WINDOW:]
        if len(self.tail) > 2 * WINDOW:  # trimmed now and then, not on every line
            del self.tail[:-WINDOW]

    def copy(self) -> PrefixWindows:
        return PrefixWindows(bytes(self.head), bytes(self.tail))

    def mark(self, offset: int, lines: int, inode: int) -> ReadMark:
        return ReadMark(offset, lines, inode, sha256(self.head), sha256(self.tail[-WINDOW:]))


@dataclass
class Start:
    """Where to read a file from, what is known of the bytes before that point, and why."""

    offset: int
    lines: int | None
    windows: PrefixWindows
    reason: str  # "new", "continued", "unverified", "continues <name>", "truncated", "rewritten", "replaced"


def read_window(handle: BinaryIO, start: int, end: int) -> bytes:
    handle.seek(start)
    return handle.read(end - start)


def prefix_windows(handle: BinaryIO, offset: int) -> PrefixWindows:
    """The windows of the file's first `offset` bytes, read from the file as it is now."""
    head = read_window(handle, 0, min(WINDOW, offset))
    return PrefixWindows(head, read_window(handle, max(0, offset - WINDOW), offset))


def holds(handle: BinaryIO, size: int, first: bytes, mark: ReadMark) -> PrefixWindows | None:
    """The windows of `mark`'s prefix when this file (`first`: its first WINDOW bytes) holds it, else None."""
    if not mark.verified or size < mark.offset or sha256(first[: min(WINDOW, mark.offset)]) != mark.head:
        return None
    tail = read_window(handle, max(0, mark.offset - WINDOW), mark.offset)
    if sha256(tail) != mark.tail:
        return None
    return PrefixWindows(first[: min(WINDOW, mark.offset)], tail)


def start_of(path: Path, own: ReadMark | None, known: Iterable[tuple[str, ReadMark]]) -> Start:
    """Where to read `path` from, given its own entry (None for a file never seen) and every known entry.

    In order: an old entry of its own without hashes, when the file is at least that long; its own
    entry, when the file still holds the bytes it describes; the entry of another name with its inode
    whose bytes it holds (a file rotated by rename); else the start of the file.
    """
    stat = path.stat()
    with path.open("rb") as handle:
        first = handle.read(WINDOW)
        if own is not None and not own.verified and stat.st_size >= own.offset:
            return Start(own.offset, own.lines, prefix_windows(handle, own.offset), "unverified")
        if own is not None and own.inode == stat.st_ino and (windows := holds(handle, stat.st_size, first, own)):
            return Start(own.offset, own.lines, windows, "continued")
        # The entry of the file it was before a rename (rotation keeps the inode), or its own entry
        # when it was replaced by a copy of what was read (a sync by rename). A copy under another
        # name is a re-delivery: read whole, its rows already stored are duplicates.
        others = sorted((item for item in known if item[1].inode == stat.st_ino or item[1] is own),
                        key=lambda item: (item[1] is not own, item[0]))
        for name, mark in others:
            if mark.offset and (windows := holds(handle, stat.st_size, first, mark)):
                reason = "continued" if mark is own else f"continues {name}"
                return Start(mark.offset, mark.lines, windows, reason)
    if own is None or own.offset == 0:
        return Start(0, 0, PrefixWindows(), "new")
    if own.inode is not None and own.inode != stat.st_ino:
        return Start(0, 0, PrefixWindows(), "replaced")  # another file under that name: rotated, or a new copy
    return Start(0, 0, PrefixWindows(), "truncated" if stat.st_size < own.offset else "rewritten")
