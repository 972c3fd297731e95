"""Benchmark: `promptloop demo`, a full offline cycle in a fresh folder: wall time and peak memory.

Each repetition is the real CLI (what `make demo` runs) in a fresh process on a new scratch folder:
init a workspace, simulate N interactions of the sample app (default 2,000, the demo's own), then
collect, analyze, improve (golden set, optimizer candidates, evaluation with the offline judge) and
deploy (a branch pushed to the local bare remote). Median of the repetitions. A benchmark, not a test.

    .venv/bin/python benchmarks/bench_demo.py [--interactions 2000] [--repeats 3] [--results DIR] [--seed-logs FILE]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import SEED_HELP, benchmark_parser, demo_traffic, machine, repeat_runs, timing, write_result  # noqa: E402


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--interactions", type=int, default=2000)
    parser.add_argument("--seed-logs", type=Path, help=SEED_HELP)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    try:
        runs = repeat_runs(args.repeats, lambda repeat: ["demo", "--dir", str(work / f"demo{repeat}"),
                                                         "--interactions", str(args.interactions)])
        if args.seed_logs is not None and not args.seed_logs.is_file():
            shutil.copyfile(demo_traffic(work / "demo0"), args.seed_logs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cycle = runs[-1][2]["cycle"]
    evaluation = cycle["improve"]["evaluation"]
    decisions = len(evaluation["candidates"])  # one promote/hold decision per candidate
    row = {**machine(), **timing(runs), "interactions": args.interactions, "rows_valid": cycle["collect"]["rows_valid"],
           "llm_calls": cycle["llm"]["calls"], "decision": cycle["decision"],
           "evaluation_calls": evaluation["usage"]["calls"], "decisions": decisions,
           "calls_per_decision": round(evaluation["usage"]["calls"] / max(decisions, 1), 1)}
    write_result(
        args.results,
        "demo",
        row,
        f"| interactions | rows collected | LLM calls | evaluation calls per decision | decision "
        f"| median wall (of {args.repeats}) | peak memory |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {row['interactions']:,} | {row['rows_valid']:,} | {row['llm_calls']:,} | {row['calls_per_decision']:,} "
        f"({row['evaluation_calls']:,} calls, {row['decisions']} candidates) | {row['decision']} "
        f"| {row['median_s']} s ({', '.join(map(str, row['runs_s']))}) | {row['peak_mb']:,} MB |\n",
    )


if __name__ == "__main__":
    main()
