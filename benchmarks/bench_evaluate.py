"""Benchmark: `promptloop evaluate` on 1,000 cases x 3 calls (1 app + 2 judge) at concurrency 32,
against a loopback OpenAI-compatible endpoint that answers every request after exactly 100 ms, side
by side with `mlflow.genai.evaluate` on the same endpoint in the same run. A benchmark, not a test.

Each promptloop repetition is the real CLI in a fresh process on a fresh copy of a workspace whose
app and judge are `openai/bench-model` at the endpoint, with an empty response cache (so every call
is made). The ideal bound is calls x latency / concurrency (9.4 s); the ratio uses the evaluation's
own `calls_s` phase (from the first call to the last answer), and the table also gives the whole
CLI run (imports, planning, statistics, MLflow logging). CPU per call is the CPU time of the
process(es) making the calls during the calls phase (every thread; worker processes summed) over
the calls made. mlflow.genai.evaluate runs on 200 cases with
its default 10 workers (at 32 it exhausted its SQLAlchemy pool; see ANCHORS.md); its bound is
calls x latency / workers.

    .venv/bin/python benchmarks/bench_evaluate.py [--cases 1000] [--repeats 3] [--mlflow-cases 200]
"""

from __future__ import annotations

import argparse
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
from common import BIN, machine, promptloop, write_result  # noqa: E402
from endpoint import endpoint  # noqa: E402
from mlflow_side import run_mlflow_evaluate  # noqa: E402

MODEL = "openai/bench-model"
LATENCY_S = 0.1
CONCURRENCY = 32


def bench_workspace(root: Path, cases: int, processes: int) -> None:
    """A workspace whose app and judge are the endpoint's model; `cases` golden cases, no KB."""
    promptloop("init", "--dir", str(root))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["llm"].update(max_concurrency=CONCURRENCY, processes=processes, max_retries=2, cache=".promptloop/bench-cache.sqlite")
    params["llm"]["prices"][MODEL] = {"input_per_mtok": 0.15, "output_per_mtok": 0.60}
    app = params["apps"]["support-bot"]
    app.update(golden_set="datasets/support-bot/bench.jsonl", knowledge_base=None, scorers=["rubric", "proxy"],
               citation_pattern=None)
    params["evaluate"].update(judge_model=MODEL, judge_samples=2, budget_usd=100.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    prompt = yaml.safe_load((root / "prompts/support-bot/prompt.yaml").read_text())
    prompt.update(model=MODEL, parameters={"temperature": 0})
    (root / "prompts/support-bot/prompt.yaml").write_text(yaml.safe_dump(prompt, sort_keys=False, allow_unicode=True))
    with (root / "datasets/support-bot/bench.jsonl").open("w", encoding="utf-8") as out:
        for i in range(cases):
            out.write(json.dumps({"id": f"b{i:05d}", "description": "bench", "input": f"How do I export notebook {i} to PDF?",
                                  "reference": "Use File > Export to PDF.", "slice": "bench"}) + "\n")


def timed_evaluate(root: Path) -> dict[str, float]:
    """One CLI evaluation: wall, the calls phase, CPU per call (children included)."""
    started = time.perf_counter()
    child = subprocess.Popen([str(BIN / "promptloop"), "evaluate", "--app", "support-bot", "--baseline-only",
                              "--workspace", str(root), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate()
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"evaluate failed:\n{err.decode()[-3000:]}")
    summary = json.loads(out)
    usage = summary["usage"]
    if usage["cache_hits"] or usage["failures"]:
        raise SystemExit(f"not a clean run: {usage}")
    return {"wall_s": wall, "calls": usage["calls"], **summary["timings"],
            "cpu_ms_per_call": summary["timings"]["calls_cpu_s"] / usage["calls"] * 1000}


def promptloop_runs(template: Path, work: Path, repeats: int, processes: int) -> list[dict[str, float]]:
    runs = []
    for repeat in range(repeats):
        root = work / f"p{processes}-{repeat}"
        shutil.copytree(template, root, symlinks=True)
        run = timed_evaluate(root)
        runs.append(run)
        print(f"promptloop, {processes} process(es), run {repeat + 1}: calls phase {run['calls_s']:.2f} s, "
              f"CLI {run['wall_s']:.1f} s, {run['cpu_ms_per_call']:.2f} ms CPU/call", file=sys.stderr)
    return runs


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mlflow-cases", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    rows = []
    try:
        with endpoint(LATENCY_S) as base_url:
            # litellm's OpenAI provider reads these: the app and the judge both go to the endpoint.
            os.environ.update(OPENAI_API_BASE=base_url, OPENAI_BASE_URL=base_url, OPENAI_API_KEY="sk-bench-not-a-real-key")
            bound = args.cases * 3 * LATENCY_S / CONCURRENCY
            for processes in (1, 2):
                template = work / f"template-{processes}"
                bench_workspace(template, args.cases, processes)
                runs = promptloop_runs(template, work, args.repeats, processes)
                calls = median(runs, "calls_s")
                rows.append({"harness": f"`promptloop evaluate`, {processes} process{'es' if processes > 1 else ''}",
                             "concurrency": CONCURRENCY, "cases": args.cases, "calls": int(runs[0]["calls"]),
                             "calls_s": round(calls, 2), "runs_s": [round(r["calls_s"], 2) for r in runs],
                             "ratio": round(calls / bound, 2), "cli_s": round(median(runs, "wall_s"), 1),
                             "cpu_ms_per_call": round(median(runs, "cpu_ms_per_call"), 2)})
            walls = []
            for repeat in range(args.repeats):
                wall, scored = run_mlflow_evaluate(base_url, args.mlflow_cases, workers=10)
                walls.append(wall)
                print(f"mlflow.genai.evaluate run {repeat + 1}: {wall:.1f} s, {scored} cases scored", file=sys.stderr)
            mlflow_bound = args.mlflow_cases * 3 * LATENCY_S / 10
            rows.append({"harness": "`mlflow.genai.evaluate` (3.17, default 10 workers)", "concurrency": 10,
                         "cases": args.mlflow_cases, "calls": args.mlflow_cases * 3,
                         "calls_s": round(statistics.median(walls), 2), "runs_s": [round(w, 2) for w in walls],
                         "ratio": round(statistics.median(walls) / mlflow_bound, 2), "cli_s": None, "cpu_ms_per_call": None})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = (f"| harness | concurrency | cases x 3 calls | evaluation wall, median of {args.repeats} (runs) | x bound | "
             "whole CLI run | CPU per call |\n|---|---|---|---|---|---|---|\n")
    for r in rows:
        cli = f"{r['cli_s']} s" if r["cli_s"] is not None else "n/a"
        cpu = f"{r['cpu_ms_per_call']} ms" if r["cpu_ms_per_call"] is not None else "n/a"
        table += (f"| {r['harness']} | {r['concurrency']} | {r['cases']:,} | {r['calls_s']} s "
                  f"({', '.join(map(str, r['runs_s']))}) | {r['ratio']}x | {cli} | {cpu} |\n")
    write_result("evaluate", {**machine(), "latency_s": LATENCY_S, "rows": rows}, table)


if __name__ == "__main__":
    main()
