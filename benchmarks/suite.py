"""Every benchmark in benchmarks/, each repeated (3 times by default), in one markdown table: `make bench`.

Runs bench_detectors, bench_demo, bench_collect, bench_analyze and bench_evaluate (with its
mlflow.genai.evaluate side) one after another, each as its own process writing its <name>.json and
.md next to --out, then reads those JSON results into one table: median wall with the range of the
repetitions, throughput, the ratio that matters, peak memory. The demo's simulated traffic is the
input that collect and analyze replicate to --rows. --quick runs tiny sizes once each, to
check the plumbing (tests/e2e/test_bench_suite.py): its numbers mean nothing. A benchmark, not a test.

    .venv/bin/python benchmarks/suite.py [--quick] [--out benchmarks/results/suite.md] [--repeats 3]
        [--rows 1000000] [--cases 1000] [--mlflow-cases 200] [--interactions 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

HERE = Path(__file__).parent
PACKAGES = ("promptloop", "litellm", "mlflow", "pandas", "pyarrow", "great-expectations", "prefect", "dvc")
# The aims for 1,000,000 rows (README, Benchmarks), as rows/s so that any size can be compared with them.
AIM_ROWS_PER_S = {"collect": 1_000_000 / 60, "analyze": 1_000_000 / 30}
HOW = ("Every repetition runs in a fresh process. Peak memory is the largest max RSS (`ru_maxrss`) over the "
       "repetitions of the process doing the work: read with `os.wait4` for the `promptloop` CLI runs (the largest "
       "single process of the run's tree, worker processes included but not summed), and with "
       "`getrusage(RUSAGE_SELF)` inside the process for detectors (the benchmark process itself) and "
       "`mlflow.genai.evaluate` (a process spawned per repetition). The evaluate wall is the calls phase; its bound "
       "is calls x 100 ms / concurrency. Each benchmark's own table is next to this file.")


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does, and how many times."""

    rows: int
    cases: int
    mlflow_cases: int
    interactions: int
    repeats: int


FULL = Sizes(rows=1_000_000, cases=1000, mlflow_cases=200, interactions=2000, repeats=3)
QUICK = Sizes(rows=2000, cases=20, mlflow_cases=10, interactions=200, repeats=1)


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    benchmark: str
    size: str
    runs_s: list[float]
    throughput: str
    ratio: str
    peak_mb: float
    notes: str


@dataclass(frozen=True)
class Benchmark:
    """A script benchmarks/bench_<name>.py: its options at given sizes, and its rows from <name>.json."""

    name: str
    options: Callable[[Sizes, Path], list[str]]  # (sizes, scratch folder shared by the run) -> options
    rows: Callable[[dict[str, Any]], list[Row]]


# ---- rows from each benchmark's JSON ------------------------------------------------------------


def detector_rows(result: dict[str, Any]) -> list[Row]:
    """One row for the built-in patterns together: each repetition's total over them."""
    speed = result["speed"]
    runs = [sum(s["runs"][repeat] for s in speed) for repeat in range(len(speed[0]["runs"]))]
    python_re = sum(s["re"] for s in speed)
    f1 = ", ".join(f"{q['detector']} {q['lang']} {q['f1']:.2f}" for q in result["quality"]["heldout"])
    return [Row(f"detectors: `flags()` of the {len(speed)} built-in patterns (Arrow strings)",
                f"{result['rows']:,} texts", runs, f"{result['rows'] / statistics.median(runs):,.0f} texts/s",
                f"{python_re / statistics.median(runs):,.0f}x faster than Python `re`", result["peak_mb"],
                f"Python `re` via `str.contains` ~{python_re:,.1f} s, scaled from {result['baseline_rows']:,} texts; "
                f"F1 on the held-out set (docs/detectors.md): {f1}")]


def rows_per_s(name: str, rows: int, result: dict[str, Any]) -> tuple[str, str]:
    """(throughput, ratio to the aim) of a benchmark over `rows` rows."""
    rate = rows / result["median_s"]
    return f"{rate:,.0f} rows/s", f"{rate / AIM_ROWS_PER_S[name]:.2f}x the aim ({AIM_ROWS_PER_S[name]:,.0f} rows/s)"


def collect_rows(result: dict[str, Any]) -> list[Row]:
    return [Row("collect: `promptloop collect`", f"{result['rows_in']:,} rows", result["runs_s"],
                *rows_per_s("collect", result["rows_in"], result), result["peak_mb"],
                f"{result['rows_quarantined']:,} quarantined, {result['pii_redactions']:,} PII redactions")]


def analyze_rows(result: dict[str, Any]) -> list[Row]:
    return [Row("analyze: `promptloop analyze`", f"{result['rows']:,} rows", result["runs_s"],
                *rows_per_s("analyze", result["rows"], result), result["peak_mb"],
                f"{result['failures']:,} failures mined into {result['clusters']} clusters, "
                f"{result['judged']} answers judged online")]


def evaluate_rows(result: dict[str, Any]) -> list[Row]:
    """A row per harness; the peer's ratio is also set against promptloop's best."""
    best = min(r["ratio"] for r in result["rows"] if not r["peer"])
    rows = []
    for r in result["rows"]:
        ratio = f"{r['ratio']}x the {r['bound_s']} s bound"
        if "promptloop_ratios" in r:  # the plain litellm script, whole process timed like the CLI
            ratios = sorted(r["promptloop_ratios"].items())  # JSON keys: the process counts as strings
            ratio += "; promptloop " + ", ".join(f"({p} process{'es' if int(p) > 1 else ''}) {x['calls']}x"
                                                 for p, x in ratios) + " its calls phase"
            notes = (f"whole run {r['cli_s']} s; the whole `promptloop evaluate` run took "
                     + ", ".join(f"{x['whole']}x that with {p} process{'es' if int(p) > 1 else ''}"
                                 for p, x in ratios) + ", in the same run (runs alternating)")
        elif r["peer"]:
            ratio += f"; {r['ratio'] / best:.1f}x promptloop's best ({best}x)"
            notes = "timed around the `evaluate` call only"
        else:
            notes = f"whole CLI run {r['cli_s']} s, {r['cpu_ms_per_call']} ms CPU per call"
        rows.append(Row(f"evaluate: {r['harness']}", f"{r['cases']:,} cases x 3 calls, concurrency {r['concurrency']}",
                        r["runs_s"], f"{r['calls'] / r['calls_s']:,.0f} calls/s", ratio, r["peak_mb"], notes))
    return rows


def demo_rows(result: dict[str, Any]) -> list[Row]:
    return [Row("demo: one full cycle, `promptloop demo`", f"{result['interactions']:,} interactions",
                result["runs_s"], "n/a", "n/a", result["peak_mb"],
                f"{result['llm_calls']:,} calls to the offline models; {result['calls_per_decision']:,} evaluation "
                f"calls per decision ({result['evaluation_calls']:,} for {result['decisions']} candidates); "
                f"decision: {result['decision']}")]


def seed_option(work: Path) -> list[str]:
    # The first demo run keeps its traffic there; collect and analyze replicate it instead of running a demo each.
    return ["--seed-logs", str(work / "seed.jsonl")]


BENCHMARKS = (
    Benchmark("detectors", lambda s, _: ["--rows", str(s.rows), "--baseline-rows", str(min(s.rows, 20_000))],
              detector_rows),
    Benchmark("demo", lambda s, work: ["--interactions", str(s.interactions), *seed_option(work)], demo_rows),
    Benchmark("collect", lambda s, work: ["--rows", str(s.rows), *seed_option(work)], collect_rows),
    Benchmark("analyze", lambda s, work: ["--rows", str(s.rows), *seed_option(work)], analyze_rows),
    Benchmark("evaluate", lambda s, _: ["--cases", str(s.cases), "--mlflow-cases", str(s.mlflow_cases)], evaluate_rows),
)


# ---- running ------------------------------------------------------------------------------------


def command(benchmark: Benchmark, sizes: Sizes, results: Path, work: Path) -> list[str]:
    return [sys.executable, str(HERE / f"bench_{benchmark.name}.py"), *benchmark.options(sizes, work),
            "--repeats", str(sizes.repeats), "--results", str(results)]


def terminal_lines(stream: IO[bytes]) -> Iterator[str]:
    """Lines as a terminal leaves them: of a line redrawn with \\r (a progress bar), only its last state."""
    for raw in stream:
        shown = [part for part in raw.decode(errors="replace").rstrip("\n").split("\r") if part.strip()]
        if shown:
            yield shown[-1]


def run(argv: list[str], name: str, progress: Progress) -> None:
    """Run one benchmark script, its stderr (a line per repetition) shown above the progress bar."""
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=HERE.parent)
    assert child.stderr is not None
    tail: list[str] = []
    for line in terminal_lines(child.stderr):
        tail = [*tail[-40:], line]
        progress.console.print(f"[dim]{name}: {escape(line)}[/dim]", highlight=False)
    if child.wait() != 0:
        raise SystemExit(f"{name} failed (exit code {child.returncode}):\n" + "\n".join(tail))


def run_all(sizes: Sizes, results: Path) -> list[tuple[Benchmark, list[str]]]:
    """Run every benchmark in turn; returns each with the command that ran it."""
    ran = []
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as work, \
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     console=Console(stderr=True)) as progress:
        task = progress.add_task("benchmarks", total=len(BENCHMARKS))
        for benchmark in BENCHMARKS:
            progress.update(task, description=f"benchmarks: {benchmark.name}")
            argv = command(benchmark, sizes, results, Path(work))
            run(argv, benchmark.name, progress)
            ran.append((benchmark, argv))
            progress.advance(task)
    return ran


# ---- the table ----------------------------------------------------------------------------------


def seconds(value: float) -> str:
    """Three significant digits, no more than the benchmarks measured (and no exponent)."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def wall(runs_s: list[float]) -> str:
    """Median, and the range of the repetitions when there are several."""
    spread = f" ({seconds(min(runs_s))}-{seconds(max(runs_s))})" if len(runs_s) > 1 else ""
    return f"{seconds(statistics.median(runs_s))} s{spread}"


def table(rows: list[Row], repeats: int) -> str:
    lines = [f"| benchmark | size | median wall of {repeats} (min-max) | throughput | ratio | peak memory | notes |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.benchmark} | {r.size} | {wall(r.runs_s)} | {r.throughput} | {r.ratio} | {r.peak_mb:,.0f} MB "
              f"| {r.notes} |" for r in rows]
    return "\n".join(lines) + "\n"


def machine_facts() -> str:
    """CPUs (count and model), RAM, OS, Python and the versions of the packages that do the work."""
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    packages = ", ".join(f"{name} {version(name)}" for name in PACKAGES)
    return (f"{len(os.sched_getaffinity(0))} CPUs ({models[0] if models else platform.processor()}), "
            f"{ram_gib:.1f} GiB RAM, {platform.system()} {platform.release()} {platform.machine()}, "
            f"{platform.python_implementation()} {platform.python_version()}; {packages}")


def report(ran: list[tuple[Benchmark, list[str]]], results: Path, sizes: Sizes, quick: bool) -> str:
    """The whole markdown file: header, table, how peak memory was read, the commands."""
    rows = [row for benchmark, _ in ran
            for row in benchmark.rows(json.loads((results / f"{benchmark.name}.json").read_text()))]
    root = HERE.parent
    shown = [shlex.join(["python", *(os.path.relpath(a, root) if a.startswith(str(root)) else a for a in argv[1:])])
             for _, argv in ran]
    note = " Quick mode: tiny sizes, the numbers only check the plumbing." if quick else ""
    return "\n".join(
        [
            f"# promptloop benchmarks, {datetime.now(UTC):%Y-%m-%d}",
            "",
            f"Machine: {machine_facts()}.",
            "",
            f"Command: `{shlex.join(['python', os.path.relpath(Path(__file__).resolve(), root), *sys.argv[1:]])}`."
            f"{note}",
            "",
            table(rows, sizes.repeats),
            HOW,
            "",
            "Each benchmark ran as:",
            "",
            *(f"    {line}" for line in shown),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition: checks the plumbing")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "suite.md",
                        help="the table; each benchmark's own .json and .md go next to it")
    for field in dataclasses.fields(Sizes):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, help=f"default {getattr(FULL, field.name)}"
                            f" ({getattr(QUICK, field.name)} with --quick)")
    args = parser.parse_args()
    preset = QUICK if args.quick else FULL
    sizes = Sizes(**{f.name: getattr(args, f.name) or getattr(preset, f.name) for f in dataclasses.fields(Sizes)})
    results = args.out.resolve().parent
    ran = run_all(sizes, results)
    text = report(ran, results, sizes, args.quick)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
