"""CSV reading as spreadsheets write it: a UTF-8 byte-order mark, and `,`, `;` or a tab between fields.

Excel's "CSV UTF-8" starts the file with a byte-order mark (read as part of the first column's name, it
would rename that column), and in locales whose decimal mark is a comma it separates fields with `;`
(read with `,`, a whole row would become one field). The header line tells which separator the file uses.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from pathlib import Path

from promptloop.core.errors import InputError

DELIMITERS = ",;\t"


def header_delimiter(header: str) -> str:
    """The field separator of a CSV header line (`,` when it has a single column)."""
    try:
        return csv.Sniffer().sniff(header, delimiters=DELIMITERS).delimiter
    except csv.Error:  # one column: no separator to find
        return ","


def read_csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row by column name) of each data row; columns without a name and empty cells left out.

    Errors name the file and line: a file that is not UTF-8, a row with more fields than the header.
    """
    if not path.is_file():
        raise InputError(path, "file not found")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        try:
            header = handle.readline()
            reader = csv.DictReader(itertools.chain([header], handle), delimiter=header_delimiter(header))
            for row in reader:
                if None in row:
                    raise InputError(path, f"{len(reader.fieldnames or [])} columns in the header, more in this row",
                                     field=f"line {reader.line_num}")
                yield reader.line_num, {name.strip(): value for name, value in row.items()
                                        if name and name.strip() and value not in (None, "")}
        except UnicodeDecodeError as exc:
            raise InputError(path, f"not UTF-8: {exc.reason} (save it as \"CSV UTF-8\")") from None
        except csv.Error as exc:
            raise InputError(path, f"not a readable CSV: {exc}") from None
