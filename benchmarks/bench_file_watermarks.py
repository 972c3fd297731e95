"""Benchmark: the JSON Lines file source alone (no validation, no workspace) on one big file.

Times a first read of N lines, a run with nothing new (the watermark check), and a run after the
file grew by 1%. Median of the repetitions. A benchmark, not a test: timings on shared machines
are noisy.

    .venv/bin/python benchmarks/bench_file_watermarks.py [--lines 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from promptloop.collect.sources import FileSource


def write_lines(path: Path, start: int, stop: int) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for n in range(start, stop):
            handle.write(json.dumps({"id": f"r{n}", "input": f"question {n} " + "x" * 150, "output": "answer"}) + "\n")


def drain(source: FileSource, watermark: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    """Rows read and the last watermark, reading in collect's default batches."""
    rows, last = 0, dict(watermark or {})
    for batch in source.batches(watermark, max_rows=200_000):
        rows += batch.rows_in
        last = batch.watermark
    return rows, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-watermarks-"))
    timings: dict[str, list[float]] = {"first read": [], "nothing new": [], "grown by 1%": []}
    try:
        for _ in range(args.repeats):
            path = work / "logs" / "app.jsonl"
            shutil.rmtree(work / "logs", ignore_errors=True)
            path.parent.mkdir(parents=True)
            write_lines(path, 0, args.lines)
            source = FileSource("logs", work)
            started = time.perf_counter()
            rows, watermark = drain(source, None)
            timings["first read"].append(time.perf_counter() - started)
            assert rows == args.lines
            started = time.perf_counter()
            rows, watermark = drain(source, watermark)
            timings["nothing new"].append(time.perf_counter() - started)
            assert rows == 0
            write_lines(path, args.lines, args.lines + args.lines // 100)
            started = time.perf_counter()
            rows, _ = drain(source, watermark)
            timings["grown by 1%"].append(time.perf_counter() - started)
            assert rows == args.lines // 100
        size = path.stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.lines:,} lines, {size / 1e6:,.0f} MB, median of {args.repeats}")
    print("| run | median s |\n|---|---|")
    for name, values in timings.items():
        print(f"| {name} | {statistics.median(values):.3f} |")


if __name__ == "__main__":
    main()
