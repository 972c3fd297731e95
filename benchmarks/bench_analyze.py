"""Benchmark: `promptloop analyze` over N collected rows (default 1,000,000): wall time and peak memory.

The rows are the simulated app's traffic (as in bench_collect), collected once into a workspace;
each repetition analyzes all of them (one window over the whole dataset) in a fresh process on a
fresh copy of that workspace. Median of the repetitions. A benchmark, not a test.

    .venv/bin/python benchmarks/bench_analyze.py [--rows 1000000] [--repeats 3] [--results DIR] [--seed-logs FILE]
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
    work = Path(tempfile.mkdtemp(prefix="bench-analyze-"))
    try:
        source = work / "logs.jsonl"
        make_input(source, args.rows, work, args.seed_logs)
        collected = work / "collected"
        promptloop("init", "--dir", str(collected))
        promptloop("collect", "--app", "support-bot", "--workspace", str(collected), "--source", str(source),
                   "--allow-outside")
        runs = repeated(collected, work, args.repeats, "analyze", "--app", "support-bot", "--window", "3650d")
        summary = runs[-1][2]
        row = {**machine(), **timing(runs), "rows": summary["metrics"]["interactions"], "failures": summary["failures"],
               "clusters": len(summary["clusters"]), "judged": (summary["online_judge"] or {}).get("judged", 0)}
        write_result(
            args.results,
            "analyze",
            row,
            f"| rows analyzed | failures mined | clusters | judged online | median wall (of {args.repeats}) "
            "| peak memory |\n"
            "|---|---|---|---|---|---|\n"
            f"| {row['rows']:,} | {row['failures']:,} | {row['clusters']} | {row['judged']} "
            f"| {row['median_s']} s ({', '.join(map(str, row['runs_s']))}) | {row['peak_mb']:,} MB |\n",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
