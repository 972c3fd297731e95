"""The peer measurement: `mlflow.genai.evaluate` on the same cases against the same endpoint.

Each case is the same three calls as `bench_runner.py`: `predict_fn` makes the app call (litellm,
synchronous: MLflow runs it in its worker threads) and two custom scorers make one judge call each
(a 1-5 grade, a pairwise comparison). MLflow logs to a local SQLite tracking store in a temporary
directory, telemetry off. The worker count is MLflow's own `MLFLOW_GENAI_EVAL_MAX_WORKERS`.

Note: MLflow 3.17 also rate-limits `predict_fn` by default (`MLFLOW_GENAI_EVAL_PREDICT_RATE_LIMIT`
= "auto": adaptive, starting at 10 calls/s). `rate_limit=None` keeps that default (what a user
gets); "0" turns it off, to see what the harness itself costs.

    .venv/bin/python benchmarks/mlflow_side.py [--cases 50] [--workers 10] [--rate-limit 0]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_runner import LATENCY_S, MODEL, app_messages, grade_messages, pairwise_messages, product_litellm
from common import own_peak_mb

WORKERS_ENV = "MLFLOW_GENAI_EVAL_MAX_WORKERS"
RATE_LIMIT_ENV = "MLFLOW_GENAI_EVAL_PREDICT_RATE_LIMIT"


@contextmanager
def scoped_env(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, leave alone) environment variables for a block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update({key: value for key, value in values.items() if value is not None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_mlflow_evaluate(
    base_url: str, cases: int, workers: int = 10, rate_limit: str | None = None
) -> tuple[float, int]:
    """Wall seconds of `mlflow.genai.evaluate` over `cases` cases (3 endpoint calls each), and the cases it scored."""
    from promptloop.core.runtime import prepare_environment

    prepare_environment()  # telemetry off before mlflow is imported
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    import mlflow
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    litellm = product_litellm()

    def ask(messages: list[dict[str, str]]) -> str:
        response = litellm.completion(model=MODEL, messages=messages, temperature=0, api_base=base_url, timeout=30,
                                      num_retries=0)
        return response.choices[0].message.content or ""

    def predict_fn(case: int) -> str:
        return ask(app_messages(case))

    @scorer(name="grade")
    def grade(inputs: dict[str, Any], outputs: str) -> Feedback:
        verdict = json.loads(ask(grade_messages(inputs["case"], outputs)))
        return Feedback(value=verdict["score"], rationale=verdict["reason"])

    @scorer(name="pairwise")
    def pairwise(inputs: dict[str, Any], outputs: str) -> Feedback:
        verdict = json.loads(ask(pairwise_messages(inputs["case"], outputs)))
        return Feedback(value=verdict["winner"], rationale=verdict["reason"])

    data = [{"inputs": {"case": case}} for case in range(cases)]
    previous_uri = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as store, \
            scoped_env({WORKERS_ENV: str(workers), RATE_LIMIT_ENV: rate_limit}):
        mlflow.set_tracking_uri(f"sqlite:///{Path(store) / 'mlflow.db'}")
        try:
            mlflow.set_experiment("bench-mlflow-side")
            started = time.perf_counter()
            result = mlflow.genai.evaluate(data=data, predict_fn=predict_fn, scorers=[grade, pairwise])
            wall = time.perf_counter() - started
            scored = len(result.result_df) if result.result_df is not None else 0
        finally:
            mlflow.set_tracking_uri(previous_uri)
    return wall, scored


def measured_evaluate(base_url: str, cases: int, workers: int, rate_limit: str | None) -> tuple[float, int, float]:
    """`run_mlflow_evaluate`, plus this process's peak RSS (MB) once it is done."""
    wall, scored = run_mlflow_evaluate(base_url, cases, workers, rate_limit)
    return wall, scored, own_peak_mb()


def mlflow_in_fresh_process(base_url: str, cases: int, workers: int = 10,
                            rate_limit: str | None = None) -> tuple[float, int, float]:
    """Wall seconds, cases scored and peak RSS (MB) of `run_mlflow_evaluate` in a new process.

    A fresh process per repetition, as each promptloop repetition is: its peak memory is that run's
    alone, and MLflow's state (tracking URI, thread pools) never carries over.
    """
    # spawn, not fork: the parent holds threads (and may hold an event loop).
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measured_evaluate, base_url, cases, workers, rate_limit).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--rate-limit", default=None, help=f"{RATE_LIMIT_ENV}; default: MLflow's own (auto)")
    args = parser.parse_args()
    from endpoint import start_endpoint

    base_url, stop = start_endpoint(LATENCY_S)
    try:
        wall, scored = run_mlflow_evaluate(base_url, args.cases, args.workers, args.rate_limit)
    finally:
        stop()
    bound = 3 * args.cases * LATENCY_S / args.workers
    print(f"mlflow.genai.evaluate: {scored} cases ({3 * scored} calls), {args.workers} workers, "
          f"rate limit {args.rate_limit or 'auto (default)'}: {wall:.2f} s, {wall / bound:.2f}x the bound at "
          f"concurrency {args.workers} ({bound:.2f} s)")


if __name__ == "__main__":
    main()
