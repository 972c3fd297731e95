"""Files as spreadsheets and Windows editors save them: a byte-order mark, `;` or tabs between fields, CRLF."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptloop.core.csvfile import read_csv_rows
from promptloop.core.errors import InputError
from promptloop.core.jsonl import read_jsonl
from promptloop.ops.golden_import import csv_rows
from promptloop.ops.label import read_label_file

BOM = "\ufeff"


def write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "cases.csv"
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("separator", [",", ";", "\t"])
def test_a_spreadsheet_export_reads_as_its_columns(tmp_path: Path, separator: str) -> None:
    path = write(tmp_path, BOM + separator.join(["question", "expected_response", "severity"]) + "\r\n"
                 + separator.join(['"What time is breakfast?"', '"7 to 10, daily"', "high"]) + "\r\n"
                 + separator.join(["Is there parking?", "Yes", ""]) + "\r\n")
    rows = list(read_csv_rows(path))
    assert rows == [(2, {"question": "What time is breakfast?", "expected_response": "7 to 10, daily",
                         "severity": "high"}),
                    (3, {"question": "Is there parking?", "expected_response": "Yes"})]


def test_golden_import_takes_the_bom_and_semicolons_of_excel(tmp_path: Path) -> None:
    path = write(tmp_path, BOM + "question;expected_facts;lang\r\nWhere is the gym?;Floor 2|Open 24h;en\r\n")
    [(line, case)] = list(csv_rows(path))
    assert line == 2
    assert case == {"inputs": {"question": "Where is the gym?"},
                    "expectations": {"expected_facts": ["Floor 2", "Open 24h"]}, "lang": "en"}


def test_a_single_column_file_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "question\nWhere is the gym?\n")
    assert list(read_csv_rows(path)) == [(2, {"question": "Where is the gym?"})]


def test_a_file_that_is_not_utf8_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "question\nOù est le café ?\n", encoding="cp1252")
    with pytest.raises(InputError, match=r"cases\.csv: not UTF-8.*CSV UTF-8"):
        list(read_csv_rows(path))


def test_a_row_longer_than_the_header_is_refused_not_cut(tmp_path: Path) -> None:
    path = write(tmp_path, "question,expected_response\nWhere is the gym?,Floor 2,Open 24h\n")
    with pytest.raises(InputError, match=r"cases\.csv: line 2: 2 columns in the header"):
        list(read_csv_rows(path))


def test_a_label_file_from_excel_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, BOM + "case_id;rating;answer\r\nc-1;👎;Breakfast is at 6.\r\n")
    labels = read_label_file(path)
    assert list(labels) == ["c-1"] and labels["c-1"].rating == "down" and labels["c-1"].answer == "Breakfast is at 6."


def test_a_json_lines_file_with_a_byte_order_mark_reads_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "golden.jsonl"
    path.write_text(BOM + '{"id": "a"}\n{"id": "b"}\n', encoding="utf-8")
    assert [row["id"] for _, row in read_jsonl(path)] == ["a", "b"]
