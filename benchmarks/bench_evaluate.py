"""Benchmark: `promptloop evaluate` on 1,000 cases x 3 calls (1 app + 2 judge) at concurrency 32,
against a loopback OpenAI-compatible endpoint that answers every request after exactly 100 ms, side
by side with `mlflow.genai.evaluate` on the same endpoint in the same run. A benchmark, not a test.

Each promptloop repetition is the real CLI in a fresh process on a fresh copy of a workspace whose
app and judge are `openai/bench-model` at the endpoint, with an empty response cache (so every call
is made). The ideal bound is calls x latency / concurrency (9.4 s); the ratio uses the evaluation's
own `calls_s` phase (from the first call to the last answer), and the table also gives the whole
CLI run (imports, planning, statistics, MLflow logging). CPU per call is the CPU time of the
process(es) making the calls during the calls phase (every thread; worker processes summed) over
the calls made. mlflow.genai.evaluate runs on 200 cases with its default 10 workers (at 32 it
exhausts its SQLAlchemy pool: `benchmarks/mlflow_side.py --cases 200 --workers 32` shows it); its
bound is calls x latency / workers. Each of its repetitions runs in a fresh process too, timed
around the `evaluate` call only. Peak memory is the largest process's max RSS over the repetitions.

The same evaluation with `evaluate.log_traces` on and off (one process, alternating) gives the cost of
logging a trace per (prompt, case): the ratio of the medians of the whole CLI run.

    .venv/bin/python benchmarks/bench_evaluate.py [--cases 1000] [--repeats 3] [--mlflow-cases 200] [--results DIR]
                                                  [--traces-only]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_parser, machine, promptloop, timed, write_result
from endpoint import endpoint
from mlflow_side import mlflow_in_fresh_process

MODEL = "openai/bench-model"
LATENCY_S = 0.1
CONCURRENCY = 32


def bench_workspace(root: Path, cases: int, processes: int, log_traces: bool = True) -> None:
    """A workspace whose app and judge are the endpoint's model; `cases` golden cases, no KB."""
    promptloop("init", "--dir", str(root))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["llm"].update(
        max_concurrency=CONCURRENCY, processes=processes, max_retries=2, cache=".promptloop/bench-cache.sqlite"
    )
    params["llm"]["models"] = {MODEL: {"input_per_mtok": 0.15, "output_per_mtok": 0.60}, **params["llm"]["models"]}
    app = params["apps"]["support-bot"]
    app.update(golden_set="datasets/support-bot/bench.jsonl", knowledge_base=None, scorers=["rubric", "proxy"],
               citation_pattern=None)
    params["evaluate"].update(judge_model=MODEL, judge_samples=2, budget_usd=100.0, log_traces=log_traces)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    prompt = yaml.safe_load((root / "prompts/support-bot/prompt.yaml").read_text())
    prompt.update(model=MODEL, parameters={"temperature": 0})
    (root / "prompts/support-bot/prompt.yaml").write_text(yaml.safe_dump(prompt, sort_keys=False, allow_unicode=True))
    with (root / "datasets/support-bot/bench.jsonl").open("w", encoding="utf-8") as out:
        for i in range(cases):
            out.write(
                json.dumps(
                    {
                        "id": f"b{i:05d}",
                        "description": "bench",
                        "input": f"How do I export notebook {i} to PDF?",
                        "reference": "Use File > Export to PDF.",
                        "slice": "bench",
                    }
                )
                + "\n"
            )


def timed_evaluate(root: Path) -> dict[str, float]:
    """One CLI evaluation: wall, peak memory, the calls phase, CPU per call (children included)."""
    wall, peak_mb, summary = timed("evaluate", "--app", "support-bot", "--baseline-only", "--workspace", str(root))
    usage = summary["usage"]
    if usage["cache_hits"] or usage["failures"]:
        raise SystemExit(f"not a clean run: {usage}")
    return {"wall_s": wall, "peak_mb": peak_mb, "calls": usage["calls"], **summary["timings"],
            "cpu_ms_per_call": summary["timings"]["calls_cpu_s"] / usage["calls"] * 1000}


def timed_plain(cases: int) -> dict[str, float]:
    """One run of the plain-litellm peer in a fresh process: whole wall (timed like the CLI's, `common.timed`),
    peak memory and its calls phase."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        script = Path(__file__).parent / "plain_litellm.py"
        command = [sys.executable, str(script), "--cases", str(cases), "--concurrency", str(CONCURRENCY)]
        child = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"plain litellm run failed:\n{err.read().decode()[-2000:]}")
        return {"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024, **json.loads(out.read())}


def one_promptloop_run(template: Path, work: Path, processes: int, repeat: int) -> dict[str, float]:
    """One CLI run on a fresh copy of `template`, reported on stderr as it ends."""
    root = work / f"p{processes}-{repeat}"
    shutil.copytree(template, root, symlinks=True)
    run = timed_evaluate(root)
    print(f"promptloop, {processes} process(es), run {repeat + 1}: calls phase {run['calls_s']:.2f} s, "
          f"CLI {run['wall_s']:.1f} s, {run['cpu_ms_per_call']:.2f} ms CPU/call, peak {run['peak_mb']:.0f} MB",
          file=sys.stderr)
    return run


def alternating_runs(work: Path, cases: int, repeats: int) -> tuple[dict[int, list[dict[str, float]]],
                                                                     list[dict[str, float]]]:
    """`repeats` rounds of: the CLI with 1 process, the plain-litellm peer, the CLI with 2 processes (each
    in a fresh process), so load on the machine falls on all three alike. Returns ({processes: runs}, plain)."""
    templates = {processes: work / f"template-{processes}" for processes in (1, 2)}
    for processes, template in templates.items():
        bench_workspace(template, cases, processes)
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    plain: list[dict[str, float]] = []
    for repeat in range(repeats):
        runs[1].append(one_promptloop_run(templates[1], work, 1, repeat))
        plain.append(timed_plain(cases))
        print(f"plain litellm, run {repeat + 1}: calls phase {plain[-1]['calls_s']:.2f} s, "
              f"whole run {plain[-1]['wall_s']:.1f} s", file=sys.stderr)
        runs[2].append(one_promptloop_run(templates[2], work, 2, repeat))
    return runs, plain


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def plain_row(runs: list[dict[str, float]], versus: dict[int, list[dict[str, float]]], cases: int) -> dict[str, object]:
    """The plain-litellm peer's row, with the ratios of `promptloop evaluate` (`versus`: its runs per process
    count, same run) to it."""
    bound = cases * 3 * LATENCY_S / CONCURRENCY
    calls, whole = median(runs, "calls_s"), median(runs, "wall_s")
    return {"harness": "plain `litellm.acompletion` script (same calls)", "peer": True, "concurrency": CONCURRENCY,
            "cases": cases, "calls": int(runs[0]["calls"]), "bound_s": round(bound, 2), "calls_s": round(calls, 2),
            "runs_s": [round(r["calls_s"], 2) for r in runs], "ratio": round(calls / bound, 2),
            "cli_s": round(whole, 1), "cpu_ms_per_call": None, "peak_mb": round(max(r["peak_mb"] for r in runs)),
            "whole_runs_s": [round(r["wall_s"], 2) for r in runs],
            "promptloop_ratios": {processes: {"calls": round(median(theirs, "calls_s") / calls, 3),
                                              "whole": round(median(theirs, "wall_s") / whole, 3)}
                                  for processes, theirs in versus.items()}}


def promptloop_row(runs: list[dict[str, float]], cases: int, processes: int) -> dict[str, object]:
    """`promptloop evaluate` with `processes` processes: its row of the table."""
    bound = cases * 3 * LATENCY_S / CONCURRENCY
    calls = median(runs, "calls_s")
    return {
        "harness": f"`promptloop evaluate`, {processes} process{'es' if processes > 1 else ''}",
        "peer": False,
        "concurrency": CONCURRENCY,
        "cases": cases,
        "calls": int(runs[0]["calls"]),
        "bound_s": round(bound, 2),
        "calls_s": round(calls, 2),
        "runs_s": [round(r["calls_s"], 2) for r in runs],
        "ratio": round(calls / bound, 2),
        "cli_s": round(median(runs, "wall_s"), 1),
        "cpu_ms_per_call": round(median(runs, "cpu_ms_per_call"), 2),
        "peak_mb": round(max(r["peak_mb"] for r in runs)),
        "whole_runs_s": [round(r["wall_s"], 2) for r in runs],
    }


def traces_rows(work: Path, cases: int, repeats: int) -> list[dict[str, object]]:
    """The cost of `evaluate.log_traces`: the same evaluation with and without traces, one process, the two
    alternating repetition by repetition (so load on the machine falls on both alike)."""
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for log_traces in runs:
        bench_workspace(work / f"traces-{log_traces}", cases, 1, log_traces)
    for repeat in range(repeats):
        for log_traces, done in runs.items():
            root = work / f"traces-{log_traces}-{repeat}"
            shutil.copytree(work / f"traces-{log_traces}", root, symlinks=True)
            done.append(timed_evaluate(root))
            print(f"log_traces={log_traces}, run {repeat + 1}: CLI {done[-1]['wall_s']:.1f} s, "
                  f"MLflow logging {done[-1]['mlflow_s']:.2f} s", file=sys.stderr)
    rows = [{"log_traces": log_traces, "cases": cases, "cli_s": round(median(done, "wall_s"), 2),
             "cli_runs_s": [round(r["wall_s"], 2) for r in done], "mlflow_s": round(median(done, "mlflow_s"), 2)}
            for log_traces, done in runs.items()]
    rows[1]["cli_ratio"] = round(float(rows[1]["cli_s"]) / float(rows[0]["cli_s"]), 3)  # type: ignore[arg-type]
    return rows


def mlflow_row(base_url: str, cases: int, repeats: int, workers: int = 10) -> dict[str, object]:
    """`mlflow.genai.evaluate` at its default worker count, each repeat in a fresh process: its row of the table."""
    runs = []
    for repeat in range(repeats):
        runs.append(mlflow_in_fresh_process(base_url, cases, workers))
        print(f"mlflow.genai.evaluate run {repeat + 1}: {runs[-1][0]:.1f} s, {runs[-1][1]} cases scored, "
              f"peak {runs[-1][2]:.0f} MB", file=sys.stderr)
    wall = statistics.median(r[0] for r in runs)
    bound = cases * 3 * LATENCY_S / workers
    return {"harness": "`mlflow.genai.evaluate` (3.17, default 10 workers)", "peer": True, "concurrency": workers,
            "cases": cases, "calls": cases * 3, "bound_s": round(bound, 2), "calls_s": round(wall, 2),
            "runs_s": [round(r[0], 2) for r in runs], "ratio": round(wall / bound, 2), "cli_s": None,
            "cpu_ms_per_call": None, "peak_mb": round(max(r[2] for r in runs))}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--mlflow-cases", type=int, default=200)
    parser.add_argument("--traces-only", action="store_true", help="only the with/without traces comparison")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    try:
        with endpoint(LATENCY_S) as base_url:
            # litellm's OpenAI provider reads these: the app and the judge both go to the endpoint.
            os.environ.update(
                OPENAI_API_BASE=base_url, OPENAI_BASE_URL=base_url, OPENAI_API_KEY="sk-bench-not-a-real-key"
            )
            traces = traces_rows(work, args.cases, args.repeats)
            rows: list[dict[str, object]] = []
            if not args.traces_only:
                runs, plain = alternating_runs(work, args.cases, args.repeats)
                rows += [promptloop_row(runs[1], args.cases, 1), plain_row(plain, runs, args.cases),
                         promptloop_row(runs[2], args.cases, 2)]
                rows.append(mlflow_row(base_url, args.mlflow_cases, args.repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = "" if not rows else (
        f"| harness | concurrency | cases x 3 calls | evaluation wall, median of {args.repeats} (runs) | x bound | "
        "whole CLI run | CPU per call | peak memory |\n|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        cli = f"{r['cli_s']} s" if r["cli_s"] is not None else "n/a"
        cpu = f"{r['cpu_ms_per_call']} ms" if r["cpu_ms_per_call"] is not None else "n/a"
        table += (f"| {r['harness']} | {r['concurrency']} | {r['cases']:,} | {r['calls_s']} s "
                  f"({', '.join(map(str, r['runs_s']))}) | {r['ratio']}x | {cli} | {cpu} | {r['peak_mb']:,} MB |\n")
    for r in rows:
        ratios: dict[int, dict[str, float]] = r.get("promptloop_ratios", {})  # type: ignore[assignment]
        for processes, ratio in ratios.items():
            table += (f"\n`promptloop evaluate` ({processes} process{'es' if processes > 1 else ''}) against the plain "
                      f"litellm script, runs alternating: calls phase {ratio['calls']}x, whole run {ratio['whole']}x "
                      "(below 1: promptloop faster).\n")
    table += (f"\n| evaluate.log_traces | cases | whole CLI run, median of {args.repeats} (runs) | MLflow logging | "
              "CLI vs without traces |\n|---|---|---|---|---|\n")
    for t in traces:
        table += (f"| {str(t['log_traces']).lower()} | {t['cases']:,} | {t['cli_s']} s "
                  f"({', '.join(map(str, t['cli_runs_s']))}) | {t['mlflow_s']} s | {t.get('cli_ratio', 1.0)}x |\n")
    write_result(args.results, "evaluate" + ("-traces" if args.traces_only else ""),
                 {**machine(), "latency_s": LATENCY_S, "rows": rows, "traces": traces}, table)


if __name__ == "__main__":
    main()
