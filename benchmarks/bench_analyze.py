"""Benchmark: `promptloop analyze` over N collected rows (default 1,000,000): wall time and peak memory.

The rows are the simulated app's traffic (as in bench_collect), collected once into a workspace;
each repetition analyzes all of them (one window over the whole dataset) in a fresh process on a
fresh copy of that workspace. Median of the repetitions. A benchmark, not a test.

    .venv/bin/python benchmarks/bench_analyze.py [--rows 1000000] [--repeats 3]
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
    work = Path(tempfile.mkdtemp(prefix="bench-analyze-"))
    try:
        source = work / "logs.jsonl"
        make_input(source, args.rows, work)
        collected = work / "collected"
        promptloop("init", "--dir", str(collected))
        promptloop("collect", "--app", "support-bot", "--workspace", str(collected), "--source", str(source))
        runs = []
        for repeat in range(args.repeats):
            workspace = work / f"ws{repeat}"
            shutil.copytree(collected, workspace, symlinks=True)
            runs.append(timed("analyze", "--app", "support-bot", "--workspace", str(workspace), "--window", "3650d"))
            print(f"run {repeat + 1}: {runs[-1][0]:.1f} s, peak {runs[-1][1]:.0f} MB", file=sys.stderr)
        summary = runs[-1][2]
        wall = statistics.median(r[0] for r in runs)
        row = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
            "rows": summary["metrics"]["interactions"], "failures": summary["failures"], "clusters": len(summary["clusters"]),
            "judged": (summary["online_judge"] or {}).get("judged", 0),
            "median_s": round(wall, 1), "runs_s": [round(r[0], 1) for r in runs], "peak_mb": round(max(r[1] for r in runs)),
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "analyze.json").write_text(json.dumps(row, indent=2) + "\n")
        table = (f"| rows analyzed | failures mined | clusters | judged online | median wall (of {args.repeats}) | peak memory |\n"
                 "|---|---|---|---|---|---|\n"
                 f"| {row['rows']:,} | {row['failures']:,} | {row['clusters']} | {row['judged']} "
                 f"| {row['median_s']} s ({', '.join(map(str, row['runs_s']))}) | {row['peak_mb']:,} MB |\n")
        (RESULTS / "analyze.md").write_text(f"analyze benchmark, {row['date']}, {row['machine']}\n\n{table}")
        print(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
