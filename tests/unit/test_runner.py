"""The evaluation's LLM runner: cache, retries with backoff and Retry-After, timeouts, budget."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from promptloop.core.config import LLMSettings, ModelSettings
from promptloop.llm.client import litellm_module_configured, response_cost
from promptloop.llm.runner import BudgetExceeded, CallFailed, ResponseCache, RetryPolicy, Runner, cache_key

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
        done = await asyncio.gather(
            *(
                runner.complete("app", "offline/support-bot", messages(q), temperature=0.7, seed=1, **parameters)
                for q in QUESTIONS
            )
        )
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
    flaky = Runner(
        litellm,
        ResponseCache(tmp_path / "flaky.db"),
        retry=RetryPolicy(max_retries=30, base_delay_s=0.01),
        sleep=sleeps,
    )
    # half of all calls fail (429, timeouts, 500s); the key differs from the clean run, so nothing is cached.
    # The faults follow each request's attempt number, so every run of this test meets the same ones.
    assert ask_all(flaky, simulation={"error_rate": 0.5, "attempt_seed": 7}) == clean
    usage = flaky.usage["app"]
    assert usage.retries > 0 and usage.calls == len(QUESTIONS) + usage.retries and len(sleeps.delays) == usage.retries


def test_retry_after_is_honoured_and_retries_are_bounded(litellm, tmp_path: Path) -> None:
    sleeps = Sleeps()
    runner = Runner(
        litellm, ResponseCache(tmp_path / "c.db"), retry=RetryPolicy(max_retries=2, base_delay_s=0.01), sleep=sleeps
    )
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
    runner = Runner(
        litellm, ResponseCache(tmp_path / "c.db"), timeout_s=0.05, retry=RetryPolicy(max_retries=1), sleep=sleeps
    )
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


def token_cost(price: ModelSettings, prompt_tokens: int, completion_tokens: int) -> float:
    assert price.input_per_mtok is not None and price.output_per_mtok is not None
    return (prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1e6


def test_a_priced_model_costs_its_tokens_at_its_configured_price(
    litellm, repo_workspace, tmp_path: Path, monkeypatch
) -> None:
    # litellm prices every response it returns; pricing it a second time was ~10% of a call's CPU
    monkeypatch.setattr(litellm, "completion_cost", lambda *a, **k: pytest.fail("the response was priced twice"))
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"))
    completion = asyncio.run(runner.complete("app", "offline/support-bot", messages("q"), seed=1))
    expected = token_cost(repo_workspace.params.llm.model_settings("offline/support-bot"), completion.prompt_tokens,
                          completion.completion_tokens)
    assert completion.cost_usd == pytest.approx(expected) and runner.usage["app"].cost_usd == pytest.approx(expected)


def test_without_a_price_from_litellm_the_registered_price_or_none_is_the_cost(litellm, repo_workspace) -> None:
    unstamped = SimpleNamespace(
        _hidden_params={"response_cost": None}, usage=SimpleNamespace(prompt_tokens=1000, completion_tokens=200)
    )
    price = repo_workspace.params.llm.model_settings("offline/judge")
    assert response_cost(litellm, unstamped, "offline/judge") == pytest.approx(token_cost(price, 1000, 200))
    assert response_cost(litellm, unstamped, "offline/no-price-anywhere") is None
    stamped = SimpleNamespace(_hidden_params={"response_cost": 0.25}, usage=unstamped.usage)
    assert response_cost(litellm, stamped, "offline/no-price-anywhere") == 0.25


async def serve_chat_completions() -> tuple[Any, str]:
    """A loopback OpenAI-compatible endpoint with fixed usage: (its runner, its base URL)."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "Use File > Export."},
                    }
                ],
                "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = web.AppRunner(app)
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    return server, f"http://127.0.0.1:{server.addresses[0][1]}/v1"


def test_an_openai_compatible_model_is_priced_from_params_and_an_unpriced_one_costs_none(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    price = ModelSettings(input_per_mtok=0.5, output_per_mtok=1.5)
    litellm = litellm_module_configured(LLMSettings(models={"openai/promptloop-test-priced": price}))
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"), retry=RetryPolicy(max_retries=0))

    async def run() -> tuple[Any, Any]:
        server, base_url = await serve_chat_completions()
        try:
            return (await runner.complete("app", "openai/promptloop-test-priced", messages("q"), api_base=base_url),
                    await runner.complete("app", "openai/promptloop-test-unpriced", messages("q"), api_base=base_url))
        finally:
            await server.cleanup()

    priced, unpriced = asyncio.run(run())
    assert (priced.prompt_tokens, priced.completion_tokens) == (1200, 300)
    assert priced.cost_usd == pytest.approx(token_cost(price, 1200, 300))
    assert unpriced.text == "Use File > Export." and unpriced.cost_usd is None
    assert runner.usage["app"].cost_usd == pytest.approx(token_cost(price, 1200, 300))


def test_processes_opening_a_new_cache_file_at_once_all_get_it(tmp_path: Path) -> None:
    # Switching a new file to WAL from two connections at once fails at once with "database is
    # locked" unless the opener waits: a run split over processes opens one cache file from each.
    errors: list[BaseException] = []

    def open_cache(path: Path, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            ResponseCache(path).close()
        except Exception as error:  # collected: an exception in a thread would not fail the test
            errors.append(error)

    for attempt in range(40):
        barrier = threading.Barrier(4)
        openers = [threading.Thread(target=open_cache, args=(tmp_path / f"{attempt}.db", barrier)) for _ in range(4)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
    assert errors == []


def test_the_cache_does_not_wait_for_a_disk_flush_on_every_answer(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.db")
    # WAL + synchronous=NORMAL (1): a put no longer blocks the event loop on an fsync
    assert cache._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cache._db.execute("PRAGMA synchronous").fetchone()[0] == 1


def test_configuring_litellm_leaves_its_import_time_objects_out_of_garbage_collection(repo_workspace) -> None:
    import gc

    # ~400k objects: a full collection walking them took ~200 ms, stalling every call in flight
    litellm_module_configured(repo_workspace.params.llm)
    assert gc.get_freeze_count() > 100_000


KEY_VAR = "PROMPTLOOP_RUNNER_TEST_KEY"
KEY = "promptloop-runner-FAKE-KEY-5f0c2a"


def keyed(key: str = KEY) -> dict[str, str]:
    """The simulation setting under which the provider answers only calls that carry `key`."""
    import hashlib

    return {"api_key_sha256": hashlib.sha256(key.encode()).hexdigest()}


def api_keys(source: str = f"env:{KEY_VAR}") -> Any:
    from promptloop.llm.client import ApiKeys

    return ApiKeys(LLMSettings(models={"offline/*": ModelSettings(api_key=source)}), "params.yaml")


def test_the_configured_key_goes_with_every_call_but_not_into_the_cache(litellm, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_VAR, KEY)
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"), api_keys=api_keys())
    texts = ask_all(runner, simulation=keyed())  # the provider refuses any call without the key
    assert runner.usage["app"].calls == len(QUESTIONS) and runner.usage["app"].failures == 0
    runner.cache.close()
    assert not any(KEY.encode() in p.read_bytes() for p in tmp_path.iterdir())
    # The same requests with no key configured at all are answered from the cache: the key is no part of it.
    replay = Runner(litellm, ResponseCache(tmp_path / "c.db"))
    assert ask_all(replay, simulation=keyed()) == texts and replay.usage["app"].cache_hits == len(QUESTIONS)


def test_a_key_is_looked_up_once_per_runner_and_a_missing_one_names_its_variable(
    litellm, tmp_path: Path, monkeypatch
) -> None:
    from promptloop.core.errors import InputError

    monkeypatch.setenv(KEY_VAR, KEY)
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"), api_keys=api_keys())
    asyncio.run(runner.complete("app", "offline/support-bot", messages("first"), simulation=keyed()))
    monkeypatch.delenv(KEY_VAR)
    asyncio.run(
        runner.complete("app", "offline/judge", messages("second"), simulation=keyed())
    )  # the same source, kept
    with pytest.raises(InputError) as caught:
        asyncio.run(Runner(litellm, ResponseCache(tmp_path / "d.db"), api_keys=api_keys()).complete(
            "app", "offline/support-bot", messages("third"), simulation=keyed()))
    assert caught.value.field == "llm.models.offline/*.api_key"
    assert f"environment variable {KEY_VAR} is not set" in str(caught.value)


def test_a_model_with_no_entry_keeps_litellms_own_variables() -> None:
    assert api_keys().for_model("openai/gpt-4o-mini") is None  # litellm then reads OPENAI_API_KEY


def test_a_wrong_key_fails_at_once(litellm, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_VAR, "promptloop-WRONG-key")
    sleeps = Sleeps()
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"), sleep=sleeps, api_keys=api_keys())
    with pytest.raises(CallFailed, match="AuthenticationError after 1 attempt") as caught:
        asyncio.run(runner.complete("app", "offline/support-bot", messages("q"), simulation=keyed()))
    assert sleeps.delays == [] and "promptloop-WRONG-key" not in str(caught.value)


def test_a_provider_error_echoing_the_key_is_redacted_and_not_chained(litellm, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_VAR, KEY)

    async def echoing(**request: Any) -> Any:  # some providers' errors repeat the request they refused
        raise litellm.BadRequestError(f"bad request: {request['api_key']} is not allowed here",
                                      model=request["model"], llm_provider="offline")

    monkeypatch.setattr(litellm, "acompletion", echoing)
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"), api_keys=api_keys())
    with pytest.raises(CallFailed) as caught:
        asyncio.run(runner.complete("app", "offline/support-bot", messages("q")))
    assert KEY not in str(caught.value) and "<api-key> is not allowed here" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_an_unreadable_answer_gets_a_repair_turn_not_the_identical_request(litellm, tmp_path: Path,
                                                                           monkeypatch) -> None:
    from promptloop.llm import runner as runner_module
    from promptloop.llm.client import Completion
    from promptloop.quality.judges import parse_rubric

    sent: list[list[dict[str, str]]] = []
    replies = iter(["Sure, I would give this a four out of five.", '```json\n{"score": "4", "passed": true}\n```'])

    async def provider(litellm: Any, model: str, messages: list[dict[str, str]], *args: Any, **kwargs: Any) -> Any:
        sent.append(messages)
        return Completion(model, next(replies), 10, 5, 0.001, 1.0)

    monkeypatch.setattr(runner_module, "acomplete", provider)
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"), retry=RetryPolicy(max_repairs=2))
    completion = asyncio.run(runner.complete("judge", "offline/judge", messages("q"), validate=parse_rubric))
    assert parse_rubric(completion.text).score == 4
    first, second = sent
    assert first == messages("q")
    assert second[:len(first)] == first and second[len(first)]["role"] == "assistant"
    assert "could not be used" in second[-1]["content"] and "no JSON object" in second[-1]["content"]
    used = runner.usage["judge"]
    assert (used.calls, used.invalid, used.repairs, used.retries, used.failures) == (2, 1, 1, 0, 0)
    # The repaired answer is what the original request's cache entry holds.
    replay = Runner(litellm, ResponseCache(tmp_path / "c.db"))
    assert asyncio.run(replay.complete("judge", "offline/judge", messages("q"), validate=parse_rubric)) == completion


def test_rate_limits_space_the_calls_of_a_model_evenly() -> None:
    from promptloop.llm.limits import RateLimiter

    now = [100.0]
    limiter = RateLimiter(rpm=60, tpm=6000, clock=lambda: now[0])
    waits = [limiter.reserve(tokens=10) for _ in range(5)]
    assert waits == [0.0, 1.0, 2.0, 3.0, 4.0]  # 60 a minute: one a second, the first at once
    now[0] += 10  # idle long enough: the next goes at once
    assert limiter.reserve(tokens=10) == 0.0
    heavy = RateLimiter(tpm=600, clock=lambda: now[0])
    assert [heavy.reserve(tokens=100), heavy.reserve(tokens=100)] == [0.0, 10.0]  # 100 tokens = 10 s of 600/min


def test_structured_output_is_asked_for_the_same_way_before_and_after_any_call(litellm, repo_workspace) -> None:
    """The request (and so its cache key) may not depend on what litellm learnt from earlier calls."""
    from promptloop.llm.client import structured_output
    from promptloop.quality.judges import RUBRIC_SCHEMA

    llm = repo_workspace.params.llm
    before = structured_output(litellm, llm, "offline/judge", RUBRIC_SCHEMA)
    asyncio.run(litellm.acompletion(model="offline/judge", messages=messages("q")))
    assert structured_output(litellm, llm, "offline/judge", RUBRIC_SCHEMA) == before == {}
    hosted = structured_output(litellm, llm, "openai/gpt-4o-mini", RUBRIC_SCHEMA)
    assert hosted["response_format"]["type"] == "json_schema"
    assert structured_output(litellm, llm, "ollama/qwen2.5:7b", RUBRIC_SCHEMA) == {
        "response_format": {"type": "json_object"}}


class KeepAliveServer(ThreadingHTTPServer):
    """A loopback app server that keeps connections open between requests (HTTP/1.1, as real app servers do)
    and counts the connections it accepted and the posts it answered."""

    daemon_threads = True
    request_queue_size = 128  # every connect a run may open at once is accepted (the default backlog is 5)

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), KeepAliveApp)
        self.lock = threading.Lock()
        self.connections = 0
        self.posts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class KeepAliveApp(BaseHTTPRequestHandler):
    """Answers `{"output": <the payload's case>}`; any path but /answer is a 404 (not retried)."""

    protocol_version = "HTTP/1.1"
    server: KeepAliveServer

    def setup(self) -> None:  # once per accepted connection, however many requests it carries
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.posts += 1
        found = self.path == "/answer"
        data = json.dumps({"output": str(body["case"])} if found else {"error": "no such path"}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def keep_alive_app() -> Iterator[KeepAliveServer]:
    server = KeepAliveServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def unclosed_sockets_to(server: KeepAliveServer, caught: list[warnings.WarningMessage]) -> list[str]:
    """The ResourceWarnings of sockets to `server` left open (a client never closed)."""
    port = str(server.server_address[1])
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning) and port in str(w.message)]


def test_posts_to_an_app_share_a_pool_of_connections_closed_before_their_loop_ends(litellm, tmp_path: Path) -> None:
    # An hour's keep-alive: no connection idles out and is replaced here, however slow the machine is.
    runner = Runner(litellm, ResponseCache(tmp_path / "c.db"), max_concurrency=4, keepalive_s=3600.0)

    async def post_all(url: str, cases: range) -> list[str]:
        done = await asyncio.gather(*(runner.post_json("app:baseline", url, {"case": i}) for i in cases))
        return [json.loads(c.text)["output"] for c in done]

    with keep_alive_app() as server, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answers = asyncio.run(runner.pooled(post_all(f"{server.url}/answer", range(60))))
        pooled_connections = server.connections
        # A second loop gets a client of its own (the first one's is closed with it).
        assert asyncio.run(runner.pooled(post_all(f"{server.url}/answer", range(60, 70)))) == [
            str(i) for i in range(60, 70)]
        # Work that fails still closes its client; a post outside `pooled` opens and closes its own.
        with pytest.raises(CallFailed, match="404"):
            asyncio.run(runner.pooled(post_all(f"{server.url}/missing", range(1))))
        alone = asyncio.run(post_all(f"{server.url}/answer", range(70, 71)))
        gc.collect()
    assert answers == [str(i) for i in range(60)] and alone == ["70"]
    assert server.posts == 60 + 10 + 1 + 1 and runner.usage["app:baseline"].calls == server.posts
    assert pooled_connections <= runner.max_concurrency  # 60 posts, at most 4 at once: at most 4 connections
    assert server.connections <= pooled_connections + 2 * runner.max_concurrency + 1
    assert unclosed_sockets_to(server, caught) == []
