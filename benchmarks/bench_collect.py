"""Benchmark: `promptloop collect` over N rows (default 1,000,000): rows/s and peak memory.

Rows are the simulated app's traffic (2% malformed, ~8% with PII), replicated with fresh ids to N.
Each repetition runs the real CLI in a fresh process on a fresh copy of the workspace; the table
reports the median of the repetitions. A benchmark, not a test: timings on shared machines are noisy.

    .venv/bin/python benchmarks/bench_collect.py [--rows 1000000] [--repeats 3] [--results DIR] [--seed-logs FILE]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, machine, make_input, promptloop, repeated, timing, write_result  # noqa: E402


def main() -> None:
    args = arguments(__doc__)
    work = Path(tempfile.mkdtemp(prefix="bench-collect-"))
    try:
        source = work / "logs.jsonl"
        make_input(source, args.rows, work, args.seed_logs)
        promptloop("init", "--dir", str(work / "template"))
        runs = repeated(
            work / "template", work, args.repeats, "collect", "--app", "support-bot", "--source", str(source),
            "--allow-outside",
        )
        summary = runs[-1][2]
        row = {
            **machine(),
            **timing(runs),
            "rows_in": summary["rows_in"],
            "rows_valid": summary["rows_valid"],
            "rows_quarantined": summary["rows_quarantined"],
            "pii_redactions": sum(summary["pii_redactions"].values()),
        }
        row["rows_per_s"] = round(row["rows_in"] / row["median_s"])
        write_result(
            args.results,
            "collect",
            row,
            f"| rows in | valid | quarantined | PII redactions | median wall (of {args.repeats}) | rows/s "
            "| peak memory |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {row['rows_in']:,} | {row['rows_valid']:,} | {row['rows_quarantined']:,} | {row['pii_redactions']:,} "
            f"| {row['median_s']} s ({', '.join(map(str, row['runs_s']))}) | {row['rows_per_s']:,} "
            f"| {row['peak_mb']:,} MB |\n",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
