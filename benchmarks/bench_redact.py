"""Benchmark: `Redactor.redact_series` alone over the input and output columns of N log rows.

Rows are the simulated app's traffic (as in bench_collect: ~2,000 interactions replicated to N).
`--unique` appends a distinct letters-only word to every text, so no text repeats (real traffic
repeats less than the replicated demo) and every candidate text runs the recognizers. In-process,
median of the repetitions; a benchmark, not a test: timings on shared machines are noisy. Run it
with PYTHONPATH pointing at another checkout's src to time that checkout's redactor.

    .venv/bin/python benchmarks/bench_redact.py [--rows 100000] [--repeats 3] [--unique] [--seed-logs FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import seed_lines  # noqa: E402

from promptloop.quality.redact import Redactor  # noqa: E402


def letters(i: int) -> str:
    """`i` in base 26 as lower-case letters: a distinct word that no PII cue matches."""
    out = ""
    while True:
        i, r = divmod(i, 26)
        out += chr(97 + r)
        if not i:
            return out


def columns(lines: list[str], rows: int, unique: bool) -> dict[str, pd.Series]:
    """The input and output texts of `rows` rows, replicated from the seed lines."""
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    out: dict[str, list[object]] = {"input": [], "output": []}
    for i in range(rows):
        record = records[i % len(records)]
        for name in out:
            value = record.get(name)
            out[name].append(f"{value} zq{letters(i)}" if unique and isinstance(value, str) else value)
    return {name: pd.Series(values, dtype=object) for name, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unique", action="store_true")
    parser.add_argument("--seed-logs", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-redact-") as work:
        data = columns(seed_lines(Path(work), args.seed_logs), args.rows, args.unique)
    redactor = Redactor()
    redactor.redact_text("warm up 010-1234-5678 a@example.com")
    runs, found = [], Counter[str]()
    for _ in range(args.repeats):
        found = Counter()
        started = time.perf_counter()
        for series in data.values():
            found += redactor.redact_series(series)[1]
        runs.append(time.perf_counter() - started)
    print(f"| {args.rows:,} rows x 2 columns{' (unique texts)' if args.unique else ''} "
          f"| {statistics.median(runs):.2f} s ({', '.join(f'{r:.2f}' for r in runs)}) | {sum(found.values()):,} |")


if __name__ == "__main__":
    main()
