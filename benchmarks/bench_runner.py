"""Benchmark: evaluation throughput of the LLM call path against a 100 ms loopback endpoint.

N cases (default 1,000) x 3 calls each (one app call, then two judge calls: a 1-5 grade and a
pairwise comparison) at concurrency 32, against `endpoint.py` answering every request after
exactly 100 ms. The ideal bound is calls x latency / concurrency (9.4 s for 3,000 calls at 32).

Variants (each in fresh worker processes, so litellm's global settings never leak between them):

* plain           `litellm.acompletion` + `asyncio.Semaphore`, litellm defaults, model priced
* plain-unpriced  the same with no price for the model (the peers' reference figure)
* runner          `promptloop.llm.runner.Runner.complete` (fresh SQLite cache, zero hits), 1 process
* runner-2proc    the same split over 2 worker processes (concurrency 16 each, one shared cache
                  file in WAL mode), to measure what the second core buys

Reported per variant: median wall of the repeats, x bound, and process CPU (all threads, summed
over worker processes) per call. Worker start-up (importing litellm) and a short warm-up are not
timed: every timed repeat starts on a barrier, once the machine has been idle for a second (a
2-core machine shared with a test run gives meaningless numbers); the CPU that neither the workers
nor the endpoint used during a repeat is reported as "other load" so a disturbed run shows.

    .venv/bin/python benchmarks/bench_runner.py [--cases 1000] [--concurrency 32] [--repeats 3]
        [--variants plain,runner,runner-2proc] [--switch-interval-ms 1] [--profile runner.prof] [--save]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from endpoint import start_endpoint

MODEL = "openai/bench-model"
LATENCY_S = 0.1
PRICE = {"input_per_mtok": 0.15, "output_per_mtok": 0.60}
VARIANTS: dict[str, tuple[str, int]] = {  # name -> (call path, worker processes)
    "plain": ("plain", 1),
    "plain-unpriced": ("plain-unpriced", 1),
    "runner": ("runner", 1),
    "runner-2proc": ("runner", 2),
}


@dataclass(frozen=True)
class Timed:
    """One worker's share of one repeat: monotonic start/end, CPU seconds and calls made."""

    started: float
    ended: float
    cpu_s: float
    calls: int


# ---- the three messages of one case -------------------------------------------------------------


def app_messages(case: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are the support bot of a notes app. Answer in one sentence."},
            {"role": "user", "content": f"Case {case}: how do I export notebook {case} to PDF?"}]


def grade_messages(case: int, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You grade support answers from 1 to 5. Reply with JSON: score, passed, reason."},
        {
            "role": "user",
            "content": f"<question>Case {case}: how do I export notebook {case} to PDF?</question>\n"
            f"<answer>{answer}</answer>",
        },
    ]


def pairwise_messages(case: int, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Compare two support answers. Reply with JSON: winner (A, B or tie), reason."},
        {
            "role": "user",
            "content": f"<question>Case {case}</question>\n<answer_a>{answer}</answer_a>\n"
            "<answer_b>Use File > Export to PDF.</answer_b>",
        },
    ]


# ---- call paths ---------------------------------------------------------------------------------


def plain_litellm(priced: bool) -> Any:
    """litellm with its defaults (offline price map), the model priced or not."""
    from promptloop.core.config import LLMSettings
    from promptloop.core.runtime import prepare_environment
    from promptloop.llm.client import price_entries

    prepare_environment()
    import litellm

    if priced:
        litellm.register_model(price_entries(LLMSettings(models={MODEL: PRICE})))
    return litellm


def product_litellm() -> Any:
    """litellm configured the way the product configures it (price from params)."""
    from promptloop.core.config import LLMSettings
    from promptloop.llm.client import litellm_module_configured

    return litellm_module_configured(LLMSettings(models={MODEL: PRICE}))


def make_caller(path: str, base_url: str, concurrency: int, cache_file: Path) -> tuple[Any, Any]:
    """(async call(purpose, messages) -> text, close()) for one call path."""
    if path == "runner":
        from promptloop.llm.runner import ResponseCache, Runner

        cache = ResponseCache(cache_file)
        runner = Runner(product_litellm(), cache, max_concurrency=concurrency, timeout_s=30)

        async def call_runner(purpose: str, messages: list[dict[str, str]]) -> str:
            completion = await runner.complete(purpose, MODEL, messages, temperature=0, api_base=base_url)
            return completion.text

        def close_runner() -> None:
            cache.close()
            hits = sum(u.cache_hits for u in runner.usage.values())
            if hits or not runner.spent_usd > 0:
                raise RuntimeError(f"{hits} cache hits (the cache was not fresh) or no cost: ${runner.spent_usd}")

        return call_runner, close_runner

    litellm = plain_litellm(priced=path == "plain")
    gate = asyncio.Semaphore(concurrency)

    async def call_plain(purpose: str, messages: list[dict[str, str]]) -> str:
        async with gate:
            response = await litellm.acompletion(model=MODEL, messages=messages, temperature=0, api_base=base_url,
                                                 timeout=30, num_retries=0)
        return response.choices[0].message.content or ""

    return call_plain, lambda: None


async def run_cases(call: Any, cases: range) -> int:
    """Every case: the app call, then both judge calls concurrently; returns the calls made."""

    async def one(case: int) -> None:
        answer = await call("app", app_messages(case))
        grade, verdict = await asyncio.gather(call("judge", grade_messages(case, answer)),
                                              call("judge", pairwise_messages(case, answer)))
        # The engine parses every verdict; a malformed one would be a benchmark bug.
        if json.loads(grade)["score"] not in range(1, 6) or json.loads(verdict)["winner"] not in ("A", "B", "tie"):
            raise ValueError(f"unexpected judge output for case {case}: {grade!r} {verdict!r}")

    await asyncio.gather(*(one(case) for case in cases))
    return 3 * len(cases)


# ---- worker processes ---------------------------------------------------------------------------


def worker(path: str, base_url: str, cases: list[range], concurrency: int, caches: list[str],
           barrier: Any, results: Any, profile: str | None, switch_interval_s: float | None = None) -> None:
    """One process: warm up, then for each repeat wait on the barrier and run its share of cases."""
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    if switch_interval_s:
        # litellm runs part of every call in a thread: how long a thread waits for the GIL matters.
        sys.setswitchinterval(switch_interval_s)

    async def repeats() -> None:
        warm, close = make_caller(path, base_url, concurrency, Path(caches[0]).with_name(f"warmup-{os.getpid()}.db"))
        await run_cases(warm, range(10_000_000 + os.getpid() * 100, 10_000_000 + os.getpid() * 100 + 20))
        close()
        for share, cache_file in zip(cases, caches, strict=True):
            call, close = make_caller(path, base_url, concurrency, Path(cache_file))
            await asyncio.to_thread(barrier.wait, 900)  # a parent gone for good must not hang us
            started, cpu = time.monotonic(), time.process_time()
            calls = await run_cases(call, share)
            ended, cpu_s = time.monotonic(), time.process_time() - cpu
            close()
            results.put(Timed(started, ended, cpu_s, calls))

    if profile:
        import cProfile

        cProfile.runctx("asyncio.run(repeats())", globals(), {"asyncio": asyncio, "repeats": repeats}, profile)
    else:
        asyncio.run(repeats())


def system_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat), to spot other load."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def endpoint_cpu_s(base_url: str) -> float:
    """CPU seconds the endpoint process has used so far."""
    with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/stats", timeout=10) as response:
        return float(json.loads(response.read())["cpu_s"])


def wait_until_quiet(max_busy_cores: float = 0.15, window_s: float = 1.0, timeout_s: float = 300.0) -> bool:
    """Wait (up to timeout_s) for a window in which the machine is idle; False if it never was."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = system_busy_s()
        time.sleep(window_s)
        if (system_busy_s() - before) / window_s < max_busy_cores:
            return True
    return False


def measure(variant: str, base_url: str, n_cases: int, concurrency: int, repeats: int, work: Path,
            profile: str | None = None, switch_interval_s: float | None = None) -> list[tuple[float, float, float]]:
    """(wall s, CPU s per call, other load in cores) of each repeat of one variant.

    The parent joins the workers' barrier, so it brackets each repeat with readings of the
    machine's busy time and the endpoint's CPU: what is left over is load from other processes.
    """
    from promptloop.llm.runner import ResponseCache

    path, processes = VARIANTS[variant]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes + 1), context.Queue()
    caches = [str(work / variant / f"repeat{r}" / "cache.db") for r in range(repeats)]
    for cache_file in caches:
        ResponseCache(Path(cache_file)).close()  # the file exists before its workers open it, as in the engine
    workers = []
    for index in range(processes):
        # Each repeat uses new case numbers and a new cache file, shared by the variant's workers.
        shares = [range(r * n_cases + index, (r + 1) * n_cases, processes) for r in range(repeats)]
        workers.append(context.Process(target=worker, args=(path, base_url, shares, concurrency // processes, caches,
                                                            barrier, results, profile and f"{profile}.{index}",
                                                            switch_interval_s)))
    for process in workers:
        process.start()
    runs = []
    for r in range(repeats):
        quiet = wait_until_quiet()
        barrier.wait(timeout=600)
        busy, endpoint_cpu = system_busy_s(), endpoint_cpu_s(base_url)
        shares = [results.get(timeout=600) for _ in range(processes)]
        busy, endpoint_cpu = system_busy_s() - busy, endpoint_cpu_s(base_url) - endpoint_cpu
        wall = max(t.ended for t in shares) - min(t.started for t in shares)
        cpu = sum(t.cpu_s for t in shares)
        other = max(0.0, busy - cpu - endpoint_cpu) / wall
        runs.append((wall, cpu / sum(t.calls for t in shares), other))
        print(f"{variant} run {r + 1}: {wall:.2f} s, {runs[-1][1] * 1000:.2f} ms CPU/call, endpoint "
              f"{endpoint_cpu / (3 * n_cases) * 1000:.2f} ms CPU/call, other load {other:.2f} cores"
              f"{'' if quiet else ' (machine never went quiet before this run)'}", file=sys.stderr)
    for process in workers:
        process.join(60)
        if process.exitcode != 0:
            raise SystemExit(f"{variant} worker failed (exit code {process.exitcode})")
    return runs


def print_profile(prefix: str, processes: int, top: int = 35) -> None:
    """The hottest functions of a profiled variant (all its workers together)."""
    import pstats

    stats = pstats.Stats(*(f"{prefix}.{i}" for i in range(processes)))
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="plain,runner,runner-2proc")
    parser.add_argument("--profile", help="cProfile the (first) variant into this file prefix and print the top")
    parser.add_argument("--switch-interval-ms", type=float, default=None,
                        help="sys.setswitchinterval in the workers (default: Python's 5 ms)")
    parser.add_argument("--save", action="store_true", help="also write benchmarks/results/runner.{json,md}")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {sorted(VARIANTS)}")
    bound = 3 * args.cases * LATENCY_S / args.concurrency
    base_url, stop = start_endpoint(LATENCY_S)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-runner-") as work:
            for variant in variants:
                profile = args.profile if args.profile and variant == variants[0] else None
                switch_s = args.switch_interval_ms / 1000 if args.switch_interval_ms else None
                runs = measure(variant, base_url, args.cases, args.concurrency, args.repeats, Path(work), profile,
                               switch_s)
                wall = statistics.median(r[0] for r in runs)
                rows.append({"variant": variant, "processes": VARIANTS[variant][1], "median_s": round(wall, 2),
                             "runs_s": [round(r[0], 2) for r in runs], "x_bound": round(wall / bound, 2),
                             "cpu_ms_per_call": round(statistics.median(r[1] for r in runs) * 1000, 2),
                             "other_load_cores": round(max(r[2] for r in runs), 2)})
                if profile:
                    print_profile(profile, VARIANTS[variant][1])
    finally:
        stop()
    switch = f"; GIL switch interval {args.switch_interval_ms} ms" if args.switch_interval_ms else ""
    table = (f"{3 * args.cases:,} calls ({args.cases:,} cases x 3) at concurrency {args.concurrency}, "
             f"{LATENCY_S * 1000:.0f} ms endpoint; bound {bound:.2f} s{switch}\n\n"
             f"| variant | processes | median wall (of {args.repeats}) | x bound | CPU per call | other load (max) |\n"
             "|---|---|---|---|---|---|\n")
    table += "".join(f"| {r['variant']} | {r['processes']} | {r['median_s']} s ({', '.join(map(str, r['runs_s']))}) "
                     f"| {r['x_bound']}x | {r['cpu_ms_per_call']} ms | {r['other_load_cores']} cores |\n" for r in rows)
    if args.save:
        from common import RESULTS, machine, write_result

        write_result(RESULTS, "runner", {**machine(), "bound_s": round(bound, 2), "variants": rows}, table)
    else:
        print(table)


if __name__ == "__main__":
    main()
