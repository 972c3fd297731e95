"""Shared by the benchmarks: the simulated traffic scaled to N rows, and timing a CLI run."""

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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"
# One demo run's traffic serves the demo, collect and analyze benchmarks of a suite run: two demo runs saved.
SEED_HELP = "the demo's simulated traffic: read from this file, or kept there if it is missing"


def promptloop(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with --json; a failure stops the benchmark with its message."""
    done = subprocess.run([str(BIN / "promptloop"), *args, "--json"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"promptloop {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done


def demo_traffic(demo_dir: Path) -> Path:
    """The simulated traffic (valid and malformed lines) that `promptloop demo --dir demo_dir` wrote."""
    return next((demo_dir / "incoming" / "support-bot").glob("*.jsonl"))


def seed_lines(work: Path, keep: Path | None = None) -> list[str]:
    """The demo's simulated traffic (2,000 interactions); with `keep`, made once there and reused after."""
    if keep is not None and keep.is_file():
        return keep.read_text(encoding="utf-8").splitlines()
    promptloop("demo", "--dir", str(work / "seed"), "--interactions", "2000")
    if keep is not None:
        shutil.copyfile(demo_traffic(work / "seed"), keep)
    return demo_traffic(work / "seed").read_text(encoding="utf-8").splitlines()


def make_input(path: Path, rows: int, work: Path, seed: Path | None = None) -> None:
    """Replicate the demo's simulated traffic (valid and malformed lines) to `rows` lines with fresh ids."""
    lines = seed_lines(work, seed)
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            line = lines[i % len(lines)]
            out.write(line.replace('"id": "support-bot-', f'"id": "b{i // len(lines)}-', 1) + "\n")


def timed(*args: str) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (MB) and the JSON result of one CLI run in a fresh process.

    The peak is wait4's ru_maxrss: the largest single process among this child and the descendants
    it waited for (worker processes, git, dvc), not their sum.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen([str(BIN / "promptloop"), *args, "--json"], stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this child's tree only, not the largest child so far
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"promptloop {' '.join(args)} failed:\n{err.read().decode()[-2000:]}")
        return wall, usage.ru_maxrss / 1024, json.loads(out.read())


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """The benchmark's docstring as help, and the options every benchmark takes: --repeats, --results."""
    made = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    made.add_argument("--repeats", type=int, default=3)
    made.add_argument("--results", type=Path, default=RESULTS, help="folder for <name>.json and <name>.md")
    return made


def arguments(doc: str) -> argparse.Namespace:
    """--rows, --repeats, --results and --seed-logs (for the benchmarks over the simulated traffic)."""
    made = benchmark_parser(doc)
    made.add_argument("--rows", type=int, default=1_000_000)
    made.add_argument("--seed-logs", type=Path, help=SEED_HELP)
    return made.parse_args()


def repeat_runs(repeats: int, arguments_of: Callable[[int], list[str]]) -> list[tuple[float, float, dict]]:
    """`timed(*arguments_of(repeat))` for each repeat, each run's time and memory reported on stderr."""
    runs = []
    for repeat in range(repeats):
        runs.append(timed(*arguments_of(repeat)))
        print(f"run {repeat + 1}: {runs[-1][0]:.1f} s, peak {runs[-1][1]:.0f} MB", file=sys.stderr)
    return runs


def repeated(template: Path, work: Path, repeats: int, *command: str) -> list[tuple[float, float, dict]]:
    """Run `promptloop <command> --workspace <copy>` on a fresh copy of `template`, `repeats` times."""

    def on_fresh_copy(repeat: int) -> list[str]:
        workspace = work / f"ws{repeat}"
        shutil.copytree(template, workspace, symlinks=True)
        return [*command, "--workspace", str(workspace)]

    return repeat_runs(repeats, on_fresh_copy)


def machine() -> dict[str, str]:
    """Date and a one-line machine description for a result's header."""
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"}


def timing(runs: list[tuple[float, float, dict]]) -> dict[str, object]:
    """Median wall time, each run's time and the peak memory of the runs."""
    return {"median_s": round(statistics.median(r[0] for r in runs), 1), "runs_s": [round(r[0], 1) for r in runs],
            "peak_mb": round(max(r[1] for r in runs))}


def own_peak_mb() -> float:
    """This process's peak RSS so far (MB), for a benchmark whose work runs in its own process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def write_json(results: Path, name: str, row: dict[str, object]) -> None:
    """<results>/<name>.json: what suite.py reads."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n")


def write_result(results: Path, name: str, row: dict[str, object], table: str) -> None:
    """<results>/<name>.json and .md, and the table on stdout."""
    write_json(results, name, row)
    (results / f"{name}.md").write_text(f"{name} benchmark, {row['date']}, {row['machine']}\n\n{table}")
    print(table)
