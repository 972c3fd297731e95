"""Shared by the benchmarks: the simulated traffic scaled to N rows, and timing a CLI run."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
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
    """Wall seconds, peak RSS (MB) and the JSON result of one CLI run in a fresh process."""
    started = time.perf_counter()
    done = promptloop(*args)
    wall = time.perf_counter() - started
    # RUSAGE_CHILDREN's max RSS is the largest child so far; the benchmarks run their biggest
    # child last-or-repeatedly, so this is the run's own peak (or an earlier, equal one).
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, peak_mb, json.loads(done.stdout)
