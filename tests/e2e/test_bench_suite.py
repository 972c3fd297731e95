"""The benchmark suite's plumbing: `benchmarks/suite.py --quick` writes one table with a row per benchmark.

Not a timed test: the numbers are only checked to be there, never compared with anything.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS = (  # the start of each row's first cell
    "detectors",
    "demo",
    "collect",
    "analyze",
    "evaluate: `promptloop evaluate`, 1 process",
    "evaluate: plain `litellm.acompletion` script",
    "evaluate: `promptloop evaluate`, 2 processes",
    "evaluate: `mlflow.genai.evaluate`",
)
SECONDS = re.compile(r"^\d+(\.\d+)? s\b")
MEGABYTES = re.compile(r"^[1-9][\d,]* MB$")


def table(markdown: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and the body rows of the one markdown table in `markdown`."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header, _separator, *body = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)
    return header, body


@pytest.mark.slow  # ~1.5-2.5 min: a demo cycle, CLI runs and mlflow.genai.evaluate, each in a fresh process
def test_quick_suite_writes_one_table_with_a_row_per_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "suite.md"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "suite.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    text = out.read_text(encoding="utf-8")
    assert re.search(r"^Machine: \d+ CPUs .*GiB RAM.*CPython", text, re.MULTILINE)
    assert "Command: `python benchmarks/suite.py --quick --out" in text
    header, body = table(text)
    assert header[2].startswith("median wall") and header[5] == "peak memory"
    for start in ROWS:
        matching = [row for row in body if row[0].startswith(start)]
        assert len(matching) == 1, f"{start!r}: {[row[0] for row in body]}"
        row = matching[0]
        assert SECONDS.match(row[2]), row
        assert MEGABYTES.match(row[5]), row
    assert len(body) == len(ROWS)
    # Each benchmark's own results land next to --out, not in benchmarks/results.
    for name in ("detectors", "demo", "collect", "analyze", "evaluate"):
        assert (tmp_path / f"{name}.json").is_file() and (tmp_path / f"{name}.md").is_file()
