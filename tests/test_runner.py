"""The evaluation's LLM runner: cache, retries with backoff and Retry-After, timeouts, budget."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from promptloop.runner import BudgetExceeded, CallFailed, ResponseCache, RetryPolicy, Runner, cache_key

QUESTIONS = [f"How do I export notebook {i} to PDF?" for i in range(6)]


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": 'Answer.\n<doc id="export-notes" score="9">Use File > Export to PDF.</doc>'},
            {"role": "user", "content": question}]


class Sleeps:
    """Records the waits a runner asks for instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def ask_all(runner: Runner, **parameters) -> list[str]:
    async def run() -> list[str]:
        done = await asyncio.gather(*(runner.complete("app", "offline/support-bot", messages(q), temperature=0.7, seed=1, **parameters)
                                      for q in QUESTIONS))
        return [c.text for c in done]
    return asyncio.run(run())


def test_a_second_run_of_the_same_requests_makes_no_call(litellm, tmp_path: Path) -> None:
    first = Runner(litellm, ResponseCache(tmp_path / "cache.db"))
    texts = ask_all(first)
    assert first.usage["app"].calls == len(QUESTIONS) and first.usage["app"].cost_usd > 0
    second = Runner(litellm, ResponseCache(tmp_path / "cache.db"))  # a new process would open the same file
    assert ask_all(second) == texts
    assert (second.usage["app"].calls, second.usage["app"].cache_hits, second.spent_usd) == (0, len(QUESTIONS), 0.0)


def test_cache_key_covers_model_messages_and_parameters() -> None:
    base = cache_key("m", messages("q"), {"seed": 1})
    assert base == cache_key("m", messages("q"), {"seed": 1})
    assert len({base, cache_key("n", messages("q"), {"seed": 1}), cache_key("m", messages("r"), {"seed": 1}),
                cache_key("m", messages("q"), {"seed": 2})}) == 4


def test_faults_are_retried_until_the_answers_match_a_fault_free_run(litellm, tmp_path: Path) -> None:
    clean = ask_all(Runner(litellm, ResponseCache(tmp_path / "clean.db")))
    sleeps = Sleeps()
    flaky = Runner(litellm, ResponseCache(tmp_path / "flaky.db"), retry=RetryPolicy(max_retries=30, base_delay_s=0.01), sleep=sleeps)
    # half of all calls fail (429, timeouts, 500s); the key differs from the clean run, so nothing is cached
    assert ask_all(flaky, simulation={"error_rate": 0.5}) == clean
    usage = flaky.usage["app"]
    assert usage.retries > 0 and usage.calls == len(QUESTIONS) + usage.retries and len(sleeps.delays) == usage.retries


def test_retry_after_is_honoured_and_retries_are_bounded(litellm, tmp_path: Path) -> None:
    sleeps = Sleeps()
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"), retry=RetryPolicy(max_retries=2, base_delay_s=0.01), sleep=sleeps)
    limited = {"error_rate": 1, "faults": {"rate_limit": 1, "timeout": 0, "server_error": 0}, "retry_after_s": 2}
    with pytest.raises(CallFailed, match="RateLimitError after 3 attempt"):
        asyncio.run(runner.complete("judge", "offline/judge", messages("q"), simulation=limited))
    assert sleeps.delays == [2.0, 2.0] and runner.usage["judge"].failures == 1


def test_a_bad_request_is_not_retried(litellm, tmp_path: Path) -> None:
    sleeps = Sleeps()
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"), sleep=sleeps)
    with pytest.raises(CallFailed, match="NotFoundError after 1 attempt"):
        asyncio.run(runner.complete("app", "offline/no-such-model", messages("q")))
    assert sleeps.delays == []


def test_a_hanging_call_times_out_and_is_retried(litellm, tmp_path: Path) -> None:
    sleeps = Sleeps()
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"), timeout_s=0.05, retry=RetryPolicy(max_retries=1), sleep=sleeps)
    with pytest.raises(CallFailed, match="TimeoutError after 2 attempt"):
        asyncio.run(runner.complete("app", "offline/support-bot", messages("q"), simulation={"latency_ms": 2000}))
    assert len(sleeps.delays) == 1


def test_the_budget_stops_the_run(litellm, tmp_path: Path) -> None:
    by_calls = Runner(litellm, ResponseCache(tmp_path / "a.db"), max_calls=3, max_concurrency=1)
    with pytest.raises(BudgetExceeded, match="3 calls"):
        ask_all(by_calls)
    assert by_calls.calls == 3
    by_dollars = Runner(litellm, ResponseCache(tmp_path / "b.db"), max_usd=1e-9, max_concurrency=1)
    with pytest.raises(BudgetExceeded, match=r"budget of \$1e-09 spent"):
        ask_all(by_dollars)
    assert by_dollars.calls == 1


def test_concurrency_is_bounded(litellm, tmp_path: Path) -> None:
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"), max_concurrency=2)
    started = time.perf_counter()
    ask_all(runner, simulation={"latency_ms": 100})
    # 6 calls of 100 ms, two at a time, take at least 3 rounds
    assert time.perf_counter() - started >= 0.3
