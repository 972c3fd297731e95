"""The LLM call runner every evaluation goes through: bounded concurrency, retries with backoff
and jitter (honouring Retry-After), repair turns for answers that cannot be read, client-side rate
limits per model, a per-call timeout, a persistent response cache and a budget.

The cache is keyed by model + messages + parameters (the seed among them), so re-evaluating an
unchanged prompt makes zero calls, and a run killed half way pays again for nothing it finished.
Identical requests in flight at once share one call. A budget (USD and calls) that runs out raises BudgetExceeded:
the caller's decision is then "incomplete", never a promotion.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from promptloop.core.config import LLMSettings
from promptloop.core.text import estimate_tokens
from promptloop.llm.client import (
    ApiKeys,
    Completion,
    acomplete,
    call_cost,
    call_options,
    output_mode,
    response_format,
    timing_header_ms,
)
from promptloop.llm.limits import RateLimiter, limiter_for

if TYPE_CHECKING:
    import httpx
    import litellm as litellm_module

T = TypeVar("T")


class BudgetExceeded(RuntimeError):
    """The run spent its budget; what is left undone makes the result incomplete."""


class CallFailed(RuntimeError):
    """A call still failed after its retries."""


class InvalidResponse(CallFailed):
    """The provider answered, but never with what was asked for (e.g. a malformed judge verdict)."""


def cache_key(model: str, messages: list[dict[str, str]], parameters: dict[str, Any]) -> str:
    """sha256 of the canonical request: same model, messages and parameters, same answer."""
    request = {"model": model, "messages": messages, "parameters": parameters}
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def switch_to_wal(db: sqlite3.Connection, attempts: int = 100) -> None:
    """Put the database in WAL mode, waiting out other first-time openers of the same file.

    Two connections (processes) switching a new file to WAL at once get an immediate "database is
    locked": SQLite does not run its busy handler for that lock, so the wait is ours.
    """
    for attempt in range(attempts):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.01)


class ResponseCache:
    """Completions on disk (SQLite), shared by every evaluation of a workspace."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        switch_to_wal(self._db)
        # A put is one autocommitted INSERT on the event loop: with the default synchronous=FULL each
        # one waits for an fsync (~0.7 ms of stalled loop per call). NORMAL is safe with WAL (never
        # corrupts); a power cut may lose the last answers, which a re-run simply asks again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, completion TEXT NOT NULL)")

    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._db.execute("SELECT completion FROM responses WHERE key = ?", (key,)).fetchone()
        return Completion(**json.loads(row[0])) if row else None

    def put(self, key: str, completion: Completion) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, json.dumps(completion.__dict__)))

    def close(self) -> None:
        self._db.close()


@dataclass
class Usage:
    """Calls, cache hits, tokens and cost of one purpose (e.g. the app's calls, the judge's)."""

    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    invalid: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    repairs: int = 0  # follow-up turns asking again for an answer that could not be read
    retry_causes: Counter[str] = field(default_factory=Counter)  # the provider error each retry answered

    def add(self, other: Usage) -> Usage:
        """Add `other`'s counts to these (batches and purposes are summed this way); returns self."""
        for name in Usage.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter; a Retry-After header wins when it asks for longer."""

    max_retries: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_repairs: int = 2  # follow-up turns for an answer that is not what was asked

    def delay(self, attempt: int, error: BaseException, rng: random.Random) -> float:
        backoff = rng.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))
        return max(backoff, min(self.max_delay_s, retry_after_s(error) or 0.0))


def retry_after_s(error: BaseException) -> float | None:
    """Seconds the provider asked to wait (Retry-After header), if any."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# Headers an app's HTTP endpoint may report its own processing time in, in ms (the first found wins).
APP_TIMING_HEADERS = ("x-processing-ms", "openai-processing-ms")


def reported_ms(headers: Any) -> float | None:
    """The processing time an HTTP reply reports for itself (`x-processing-ms`), in ms; None without one."""
    return timing_header_ms(headers, APP_TIMING_HEADERS)


def is_retryable(litellm: litellm_module, error: BaseException) -> bool:
    """Rate limits, timeouts, connection errors and 5xx are worth another try; bad requests are not."""
    retryable = (litellm.RateLimitError, litellm.Timeout, litellm.APIConnectionError, litellm.InternalServerError,
                 litellm.ServiceUnavailableError, litellm.BadGatewayError)
    return isinstance(error, retryable) or 500 <= int(getattr(error, "status_code", 0) or 0) < 600


@dataclass
class LoopState:
    """What one event loop's calls share: the concurrency bound, the requests in flight (an identical one waits
    for their answer) and, inside `Runner.pooled`, the HTTP client an app's posts reuse (None until the first)."""

    gate: asyncio.Semaphore
    in_flight: dict[str, asyncio.Future[Completion]] = field(default_factory=dict)
    pooling: bool = False
    client: httpx.AsyncClient | None = None


@dataclass
class Runner:
    """Makes (or replays from the cache) every LLM call of a run, within its budget."""

    litellm: litellm_module
    cache: ResponseCache
    max_concurrency: int = 8
    timeout_s: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_usd: float = float("inf")
    max_calls: int | None = None
    seed: int = 0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    usage: dict[str, Usage] = field(default_factory=lambda: defaultdict(Usage))
    api_keys: ApiKeys = field(default_factory=ApiKeys)
    llm: LLMSettings = field(default_factory=LLMSettings)
    share: float = 1.0  # of the run's rate limits, for one of several worker processes
    keepalive_s: float = 5.0  # an app's connection idle this long is closed, not reused (httpx's default)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._loops: dict[int, LoopState] = {}  # by id(loop): a semaphore and a future belong to one loop
        self._limiters: dict[str, RateLimiter | None] = {}
        self._output_modes: dict[str, str] = {}

    def _limiter(self, model: str) -> RateLimiter | None:
        """The model's client-side rate limiter (`llm.models.<model>.rpm` / `tpm`), if it has limits."""
        if model not in self._limiters:
            entry = self.llm.model_settings(model)
            self._limiters[model] = limiter_for(entry.rpm, entry.tpm, self.share, self.sleep)
        return self._limiters[model]

    def _output_mode(self, model: str) -> str:
        """How `model` is asked for JSON, looked up in litellm once per model (not on every judge call)."""
        if model not in self._output_modes:
            self._output_modes[model] = output_mode(self.litellm, self.llm, model)
        return self._output_modes[model]

    def _here(self) -> LoopState:
        """What the running event loop's calls share."""
        loop = id(asyncio.get_running_loop())
        if loop not in self._loops:
            self._loops[loop] = LoopState(asyncio.Semaphore(self.max_concurrency))
        return self._loops[loop]

    def _gate(self) -> asyncio.Semaphore:
        """The concurrency bound of the running event loop (a semaphore belongs to one loop)."""
        return self._here().gate

    async def pooled(self, work: Awaitable[T]) -> T:
        """`work`, its posts to an app sharing one HTTP client: connections are kept alive and reused from
        case to case instead of a TCP connect (and TLS handshake) per post. The client belongs to the running
        loop and is closed when `work` ends, before that loop does (run every loop that may post this way)."""
        here = self._here()
        if here.pooling:  # nested in another: the outer one closes the client
            return await work
        here.pooling = True
        try:
            return await work
        finally:
            client, here.client, here.pooling = here.client, None, False
            if client is not None:
                await client.aclose()

    @asynccontextmanager
    async def _http_client(self) -> AsyncIterator[httpx.AsyncClient]:
        """The running loop's pooled client inside `pooled`; outside it, a client for this one post."""
        import httpx

        def new_client() -> httpx.AsyncClient:
            # As many connections as posts may be in flight at once (the gate): no post waits for the pool.
            limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency,
                                  keepalive_expiry=self.keepalive_s)
            return httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, limits=limits)

        here = self._here()
        if not here.pooling:
            async with new_client() as client:
                yield client
            return
        if here.client is None:
            here.client = new_client()
        yield here.client

    def retryable(self, error: BaseException) -> bool:
        return isinstance(error, asyncio.TimeoutError) or is_retryable(self.litellm, error)

    @property
    def spent_usd(self) -> float:
        return sum(u.cost_usd for u in self.usage.values())

    @property
    def calls(self) -> int:
        return sum(u.calls for u in self.usage.values())

    async def complete(self, purpose: str, model: str, messages: list[dict[str, str]],
                       validate: Callable[[str], Any] | None = None, schema: dict[str, Any] | None = None,
                       **parameters: Any) -> Completion:
        """One completion: from the cache, else from the provider with retries; counted under `purpose`.

        `schema` (a JSON schema) asks for structured output where the model supports it. `validate`
        raises ValueError on a text that is not what was asked for: the model is then told what was
        wrong and asked again (a repair turn), and a wrong answer is never cached; still invalid
        after `max_repairs` turns: InvalidResponse.
        """
        if schema is not None:
            parameters = {**parameters, **response_format(self._output_mode(model), schema)}
        key = cache_key(model, messages, parameters)
        return await self._once(purpose, key, lambda usage: self._paid_call(usage, key, model, messages, parameters,
                                                                             validate))

    async def post_json(self, purpose: str, url: str, payload: dict[str, Any],
                        validate: Callable[[str], Any] | None = None) -> Completion:
        """One POST of `payload` to an app's HTTP endpoint, with the cache, concurrency bound, budget, timeout
        and retries of a model call (429, 5xx, timeouts and connection errors are retried; other 4xx are not).

        The reply's body is the completion's text; `validate` raising ValueError on it is an InvalidResponse
        (an app is not asked again the way a model is: it would answer the same).
        """
        key = cache_key(f"http:{url}", [], {"payload": payload})
        return await self._once(purpose, key, lambda usage: self._paid_post(usage, key, url, payload, validate))

    async def _once(self, purpose: str, key: str, pay: Callable[[Usage], Awaitable[Completion]]) -> Completion:
        """The answer to request `key`: from the cache, from an identical request in flight, else paid for."""
        usage = self.usage[purpose]
        cached = self.cache.get(key)
        if cached is not None:
            usage.cache_hits += 1
            return cached
        # The same request already in flight (two prompts giving one answer, judged alike): share its
        # answer instead of paying for it twice. It counts as a cache hit: it was paid for once.
        flights = self._here().in_flight
        if key in flights:
            usage.cache_hits += 1
            return await asyncio.shield(flights[key])
        flight = flights[key] = asyncio.get_running_loop().create_future()
        try:
            completion = await pay(usage)
            flight.set_result(completion)
            return completion
        except Exception as error:
            flight.set_exception(error)
            flight.exception()  # retrieved: no "never retrieved" warning when no one else waited
            raise
        except BaseException:
            flight.cancel()  # cancelled or interrupted: whoever waits on it is cancelled too
            raise
        finally:
            del flights[key]

    async def _paid_post(self, usage: Usage, key: str, url: str, payload: dict[str, Any],
                         validate: Callable[[str], Any] | None) -> Completion:
        """The app's reply over HTTP (within the concurrency bound and the budget), counted and cached."""
        import httpx

        async with self._gate():
            self._check_budget()
            for attempt in range(self.retry.max_retries + 1):
                usage.calls += 1
                started = time.perf_counter()
                try:
                    async with self._http_client() as client:
                        response = await client.post(url, json=payload)
                    response.raise_for_status()
                    break
                except (httpx.TransportError, httpx.HTTPStatusError) as error:
                    status = error.response.status_code if isinstance(error, httpx.HTTPStatusError) else 0
                    retryable = status == 0 or status == 429 or status >= 500
                    if not retryable or attempt == self.retry.max_retries:
                        usage.failures += 1
                        message = f"{url}: {type(error).__name__} after {attempt + 1} attempt(s): {error}"
                        raise CallFailed(self.api_keys.redact(message)) from None
                    usage.retries += 1
                    usage.retry_causes[f"HTTP {status}" if status else type(error).__name__] += 1
                    await self.sleep(self.retry.delay(attempt, error, self._rng))
        text = response.text
        if validate is not None:
            try:
                validate(text)
            except ValueError as error:
                usage.invalid += 1
                usage.failures += 1
                raise InvalidResponse(f"{url}: a reply that could not be read: {error}") from None
        completion = Completion(model=url, text=text, prompt_tokens=0, completion_tokens=0, cost_usd=0.0,
                                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                                provider_ms=reported_ms(response.headers))
        self.cache.put(key, completion)
        return completion

    async def _paid_call(self, usage: Usage, key: str, model: str, messages: list[dict[str, str]],
                         parameters: dict[str, Any], validate: Callable[[str], Any] | None) -> Completion:
        """A call to the provider (within the concurrency bound and the budget), counted and cached."""
        async with self._gate():
            self._check_budget()
            completion = await self._with_retries(usage, model, messages, parameters, validate)
        usage.prompt_tokens += completion.prompt_tokens
        usage.completion_tokens += completion.completion_tokens
        usage.cost_usd += completion.cost_usd or 0.0
        self.cache.put(key, completion)
        return completion

    def _check_budget(self) -> None:
        if self.spent_usd >= self.max_usd:
            raise BudgetExceeded(f"budget of ${self.max_usd:g} spent (${self.spent_usd:.4f})")
        if self.max_calls is not None and self.calls >= self.max_calls:
            raise BudgetExceeded(f"budget of {self.max_calls} calls spent")

    async def _with_retries(self, usage: Usage, model: str, messages: list[dict[str, str]], parameters: dict[str, Any],
                            validate: Callable[[str], Any] | None) -> Completion:
        """The answer, repaired until `validate` accepts it (provider errors are retried below, apart)."""
        conversation = messages
        for repair in range(self.retry.max_repairs + 1):
            completion = await self._call(usage, model, conversation, parameters)
            try:
                if validate is not None:
                    validate(completion.text)
                return completion
            except ValueError as error:
                usage.invalid += 1
                usage.cost_usd += completion.cost_usd or 0.0  # a wrong answer is paid for all the same
                if repair == self.retry.max_repairs:
                    usage.failures += 1
                    message = (f"{model}: an answer that could not be read after {repair} repair turn(s): {error}")
                    raise InvalidResponse(self.api_keys.redact(message)) from self._cause(error)
                usage.repairs += 1
                conversation = repair_turn(messages, completion.text, error)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _call(self, usage: Usage, model: str, messages: list[dict[str, str]],
                    parameters: dict[str, Any]) -> Completion:
        """One answer from the provider; rate limits, timeouts, connection errors and 5xx are retried."""
        # Sent with the call, never part of the parameters: not in the cache key, nor logged with them.
        api_key = self.api_keys.for_model(model)
        options = call_options(self.llm, model)
        limiter = self._limiter(model)
        for attempt in range(self.retry.max_retries + 1):
            if limiter is not None:
                await limiter.acquire(sum(estimate_tokens(m.get("content") or "") for m in messages))
            usage.calls += 1
            try:
                # The timeout is enforced here too: not every provider honours the one it is passed.
                completion = await asyncio.wait_for(
                    acomplete(self.litellm, model, messages, self.timeout_s, api_key, num_retries=0,
                              **options, **parameters),
                    self.timeout_s)
                return replace(completion, cost_usd=call_cost(self.llm, model, completion))
            except Exception as error:  # noqa: BLE001 - classified below: only provider-side trouble is retried
                if not self.retryable(error) or attempt == self.retry.max_retries:
                    usage.failures += 1
                    message = f"{model}: {type(error).__name__} after {attempt + 1} attempt(s): {error}"
                    raise CallFailed(self.api_keys.redact(message)) from self._cause(error)
                usage.retries += 1
                usage.retry_causes[type(error).__name__] += 1
                await self.sleep(self.retry.delay(attempt, error, self._rng))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _cause(self, error: BaseException) -> BaseException | None:
        """`error` as the cause of a CallFailed, unless it holds an API key: a traceback would print it.

        Provider errors may echo the request they refused. The CallFailed message itself (kept in
        reasons, logs and MLflow) is redacted by the caller.
        """
        return None if self.api_keys.leaked_in(chain_text(error)) else error


def chain_text(error: BaseException) -> str:
    """The messages a traceback of `error` prints: it and every cause or context behind it."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(f"{current!s} {current!r}")
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


REPAIR_REQUEST = ("Your reply could not be used: {error}. Reply again with only the JSON object that was asked for: "
                  "no code fence, no text before or after it.")


def repair_turn(messages: list[dict[str, str]], reply: str, error: ValueError) -> list[dict[str, str]]:
    """The request again, followed by the unreadable reply and what was wrong with it.

    Asking the identical request again gets the identical answer from a model at temperature 0;
    telling it what was wrong gets a different one.
    """
    return [*messages, {"role": "assistant", "content": reply},
            {"role": "user", "content": REPAIR_REQUEST.format(error=str(error)[:300])}]
