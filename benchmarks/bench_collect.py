"""Benchmark: `promptloop collect` over N rows (default 1,000,000): rows/s and peak memory.

Rows are the simulated app's traffic (2% malformed, ~8% with PII), replicated with fresh ids to N.
Each repetition runs the real CLI in a fresh process on a fresh copy of the workspace; the table
reports the median of the repetitions. A benchmark, not a test: timings on shared machines are noisy.

    .venv/bin/python benchmarks/bench_collect.py [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, make_input, promptloop, timed  # noqa: E402

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-collect-"))
    try:
        source = work / "logs.jsonl"
        make_input(source, args.rows, work)
        template = work / "template"
        promptloop("init", "--dir", str(template))
        runs = []
        for repeat in range(args.repeats):
            workspace = work / f"ws{repeat}"
            shutil.copytree(template, workspace, symlinks=True)
            runs.append(timed("collect", "--app", "support-bot", "--workspace", str(workspace), "--source", str(source)))
            print(f"run {repeat + 1}: {runs[-1][0]:.1f} s, peak {runs[-1][1]:.0f} MB", file=sys.stderr)
        summary = runs[-1][2]
        wall = statistics.median(r[0] for r in runs)
        row = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
            "rows_in": summary["rows_in"], "rows_valid": summary["rows_valid"],
            "rows_quarantined": summary["rows_quarantined"], "pii_redactions": sum(summary["pii_redactions"].values()),
            "median_s": round(wall, 1), "runs_s": [round(r[0], 1) for r in runs],
            "rows_per_s": round(summary["rows_in"] / wall), "peak_mb": round(max(r[1] for r in runs)),
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "collect.json").write_text(json.dumps(row, indent=2) + "\n")
        table = ("| rows in | valid | quarantined | PII redactions | median wall (of "
                 f"{args.repeats}) | rows/s | peak memory |\n|---|---|---|---|---|---|---|\n"
                 f"| {row['rows_in']:,} | {row['rows_valid']:,} | {row['rows_quarantined']:,} | {row['pii_redactions']:,} "
                 f"| {row['median_s']} s ({', '.join(map(str, row['runs_s']))}) | {row['rows_per_s']:,} | {row['peak_mb']:,} MB |\n")
        (RESULTS / "collect.md").write_text(f"collect benchmark, {row['date']}, {row['machine']}\n\n{table}")
        print(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
