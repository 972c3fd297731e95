"""Shared by the benchmarks: the simulated traffic scaled to N rows, and timing a CLI run."""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def promptloop(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with --json; a failure stops the benchmark with its message."""
    done = subprocess.run([str(BIN / "promptloop"), *args, "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"promptloop {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done


def make_input(path: Path, rows: int, work: Path) -> None:
    """Replicate the demo's simulated traffic (valid and malformed lines) to `rows` lines with fresh ids."""
    promptloop("demo", "--dir", str(work / "seed"), "--interactions", "2000")
    lines = next((work / "seed" / "incoming" / "support-bot").glob("*.jsonl")).read_text(encoding="utf-8").splitlines()
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            line = lines[i % len(lines)]
            out.write(line.replace('"id": "support-bot-', f'"id": "b{i // len(lines)}-', 1) + "\n")


def timed(*args: str) -> tuple[float, float, dict]:
    """Wall seconds, this child's own peak RSS (MB) and the JSON result of one CLI run in a fresh process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen([str(BIN / "promptloop"), *args, "--json"], stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # reaps this child only: its own max RSS, not the largest so far
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"promptloop {' '.join(args)} failed:\n{err.read().decode()[-2000:]}")
        return wall, usage.ru_maxrss / 1024, json.loads(out.read())


def arguments(doc: str) -> argparse.Namespace:
    """--rows and --repeats, with the benchmark's docstring as help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def repeated(template: Path, work: Path, repeats: int, *command: str) -> list[tuple[float, float, dict]]:
    """Run `promptloop <command> --workspace <copy>` on a fresh copy of `template`, `repeats` times."""
    runs = []
    for repeat in range(repeats):
        workspace = work / f"ws{repeat}"
        shutil.copytree(template, workspace, symlinks=True)
        runs.append(timed(*command, "--workspace", str(workspace)))
        print(f"run {repeat + 1}: {runs[-1][0]:.1f} s, peak {runs[-1][1]:.0f} MB", file=sys.stderr)
    return runs


def machine() -> dict[str, str]:
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"}


def timing(runs: list[tuple[float, float, dict]]) -> dict[str, object]:
    """Median wall time, each run's time and the peak memory of the runs."""
    return {"median_s": round(statistics.median(r[0] for r in runs), 1), "runs_s": [round(r[0], 1) for r in runs],
            "peak_mb": round(max(r[1] for r in runs))}


def write_result(name: str, row: dict[str, object], table: str) -> None:
    """benchmarks/results/<name>.json and .md, and the table on stdout."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(f"{name} benchmark, {row['date']}, {row['machine']}\n\n{table}")
    print(table)
