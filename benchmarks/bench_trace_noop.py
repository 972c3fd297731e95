"""Benchmark: a `collect` of an MLflow trace source with nothing new, after N traces were collected.

N untagged traces of a three-argument function (each with an LLM span carrying model and token
usage) are written to a fresh workspace's MLflow store and collected once; then `collect` runs
again `--repeats` times with nothing new and the seconds of each are printed. A benchmark, not a
test: timings on shared machines are noisy.

    .venv/bin/python benchmarks/bench_trace_noop.py [--traces 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # each trace is in the store when it ends
    import mlflow

    from promptloop.collect.stage import collect
    from promptloop.ops.initialize import init_workspace
    from promptloop.workspace.workspace import open_workspace

    work = Path(tempfile.mkdtemp(prefix="bench-trace-noop-"))
    try:
        init_workspace(work / "ws")
        workspace = open_workspace(work / "ws")
        mlflow.set_tracking_uri(workspace.tracking_uri)
        mlflow.set_experiment("support-prod")

        @mlflow.trace(name="ask")
        def ask(question: str, user_id: str, server_url: str) -> str:
            with mlflow.start_span("llm", span_type="LLM") as span:
                span.set_attributes({"mlflow.llm.model": "offline/support-bot",
                                     "mlflow.chat.tokenUsage": {"input_tokens": 10, "output_tokens": 5,
                                                                "total_tokens": 15}})
            return "answer"

        for number in range(args.traces):
            ask(f"question {number}?", f"user-{number}", "https://10.0.0.1")
        first = collect(workspace, "support-bot", source_uri="mlflow:support-prod")
        print(f"first collect: {first.rows_valid} stored, {first.rows_quarantined} quarantined")
        for _ in range(args.repeats):
            started = time.perf_counter()
            again = collect(workspace, "support-bot", source_uri="mlflow:support-prod")
            print(f"no-op collect: rows_in={again.rows_in} commit={again.git_commit} "
                  f"{time.perf_counter() - started:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
