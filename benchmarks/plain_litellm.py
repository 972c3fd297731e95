"""The peer of the whole `promptloop evaluate` run: a plain script making the same calls with litellm.

What a team writes without promptloop: import litellm, then for every case the app call and two judge
calls (`bench_runner.run_cases`: the same three messages), `litellm.acompletion` under an
`asyncio.Semaphore` of the same concurrency, against the same endpoint. It caches nothing, computes
no statistics and logs nothing. It prints one JSON line: its calls phase and the calls made; the
whole run is timed from outside, around the process, as the CLI's is.

    OPENAI_API_BASE=http://127.0.0.1:<port>/v1 .venv/bin/python benchmarks/plain_litellm.py --cases 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_runner import MODEL, PRICE, run_cases

# litellm's offline price map: without it, import tries the internet three times (promptloop sets it too).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    import litellm

    # The model priced as the product prices it, so both pay litellm's cost calculation alike.
    litellm.register_model({MODEL: {"input_cost_per_token": PRICE["input_per_mtok"] / 1e6,
                                    "output_cost_per_token": PRICE["output_per_mtok"] / 1e6,
                                    "litellm_provider": "openai", "mode": "chat"}})
    gate = asyncio.Semaphore(args.concurrency)

    async def call(purpose: str, messages: list[dict[str, str]]) -> str:
        async with gate:
            response = await litellm.acompletion(model=MODEL, messages=messages, temperature=0, timeout=30)
        return response.choices[0].message.content or ""

    started = time.perf_counter()
    calls = asyncio.run(run_cases(call, range(args.cases)))
    calls_s = time.perf_counter() - started
    print(json.dumps({"calls": calls, "calls_s": round(calls_s, 3)}))


if __name__ == "__main__":
    main()
