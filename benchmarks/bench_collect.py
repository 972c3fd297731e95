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
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def make_input(path: Path, rows: int, work: Path) -> None:
    """Replicate the demo's simulated traffic (valid and malformed lines) to `rows` lines."""
    subprocess.run([str(BIN / "promptloop"), "demo", "--dir", str(work / "seed"), "--interactions", "2000", "--json"],
                   check=True, capture_output=True)
    lines = next((work / "seed" / "incoming" / "support-bot").glob("*.jsonl")).read_text(encoding="utf-8").splitlines()
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            line = lines[i % len(lines)]
            out.write(line.replace('"id": "support-bot-', f'"id": "b{i // len(lines)}-', 1) + "\n")


def run_once(workspace: Path, source: Path) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (MB) of the child, and the collect summary."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run([str(BIN / "promptloop"), "collect", "--app", "support-bot", "--workspace", str(workspace),
                           "--source", str(source), "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all children so far: each run is measured after a
    # smaller warm-up child, so a larger value belongs to this run.
    return wall, max(peak, before) / 1024, json.loads(done.stdout)


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
        subprocess.run([str(BIN / "promptloop"), "init", "--dir", str(template), "--json"], check=True, capture_output=True)
        runs = []
        for repeat in range(args.repeats):
            workspace = work / f"ws{repeat}"
            shutil.copytree(template, workspace, symlinks=True)
            runs.append(run_once(workspace, source))
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
