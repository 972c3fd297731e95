"""JSON Lines reading with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from promptloop.core.errors import InputError

# A JSON object as it arrives (a log line, a trace's request, an expectation suite), before anything
# validated it: whoever reads it checks its shape. Results that stages hand on are models, never this.
RawJson = dict[str, Any]


def read_jsonl(path: Path) -> Iterator[tuple[int, RawJson]]:
    """(line number, object) for each non-blank line; a bad line is an InputError."""
    if not path.is_file():
        raise InputError(path, "file not found")
    with path.open("rb") as handle:  # bytes, so a line that is not UTF-8 is an error naming its line
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                # A byte-order mark (Windows editors write one) is no part of the first object.
                line = raw.decode("utf-8").removeprefix("\ufeff") if number == 1 else raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    path, f"not UTF-8: {exc.reason} (byte {exc.start + 1})", field=f"line {number}"
                ) from None
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(
                    path, f"invalid JSON: {exc.msg} (column {exc.colno})", field=f"line {number}"
                ) from None
            if not isinstance(row, dict):
                raise InputError(path, f"expected a JSON object, got {type(row).__name__}", field=f"line {number}")
            yield number, row


def write_jsonl(path: Path, rows: list[RawJson]) -> None:
    """Write rows as UTF-8 JSON Lines (non-ASCII kept readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
