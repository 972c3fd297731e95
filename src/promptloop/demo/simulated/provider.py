"""The litellm custom provider that serves the `offline/...` models."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import litellm
from litellm import CustomLLM
from litellm.types.utils import ModelResponse

from promptloop.core.text import estimate_tokens
from promptloop.demo.simulated import bot, judge, optimizer, triage
from promptloop.demo.simulated.settings import SimulationSettings, simulation_settings

Responder = Callable[[list[dict[str, str]], float, random.Random], str]

MODELS: dict[str, Responder] = {
    "support-bot": bot.answer,
    # Stand-ins for moving the app to another model (an open one on Ollama/vLLM, a research one):
    # the same behaviour at another price and license, so the model change alone is what differs.
    "open-bot": bot.answer,
    "research-bot": bot.answer,
    "triage-bot": triage.answer,  # the second sample app: ticket triage as JSON, two calls per ticket
    "judge": judge.verdict,
    "optimizer": lambda messages, temperature, rng: optimizer.revise(messages, rng),
}
_REQUEST = httpx.Request("POST", "http://offline.invalid/v1/chat/completions")
# How often this process was sent each (attempt_seed, request): the attempt number its faults are drawn from.
_ATTEMPTS: Counter[tuple[int, str]] = Counter()
_ATTEMPTS_LOCK = threading.Lock()


class OfflineProvider(CustomLLM):
    """Answers `offline/<name>` completions with the simulated model `<name>`."""


    def completion(self, model: str, messages: list, model_response: ModelResponse, optional_params: dict,
                   api_key: str | None = None, **_: Any) -> ModelResponse:
        settings = simulation_settings(optional_params)
        _authenticate(api_key, model, settings)
        took_s = _latency_s(settings, model, messages, optional_params)
        if took_s:
            time.sleep(took_s)
        return _timed(_respond(model, messages, model_response, optional_params, settings), took_s)

    async def acompletion(self, model: str, messages: list, model_response: ModelResponse, optional_params: dict,
                          api_key: str | None = None, **_: Any) -> ModelResponse:
        settings = simulation_settings(optional_params)
        _authenticate(api_key, model, settings)
        took_s = _latency_s(settings, model, messages, optional_params)
        if took_s:
            await asyncio.sleep(took_s)
        return _timed(_respond(model, messages, model_response, optional_params, settings), took_s)


def _authenticate(api_key: str | None, model: str, settings: SimulationSettings) -> None:
    """A 401 unless the call carries the key whose sha256 the settings hold (when they hold one)."""
    expected = settings.api_key_sha256
    if expected is None:
        return
    given = hashlib.sha256(api_key.encode()).hexdigest() if api_key else ""
    if not hmac.compare_digest(given, expected):
        # Like a real provider's 401, the message never repeats the key it was sent.
        raise litellm.AuthenticationError("simulated provider: missing or invalid API key", llm_provider="offline",
                                          model=f"offline/{model}")


def _latency_s(settings: SimulationSettings, model: str, messages: list, params: dict) -> float:
    """The simulated processing time of a request: `latency_ms` with its jitter drawn from the request
    itself, so the same request always takes (and reports) the same time, whatever the host is doing."""
    if not settings.latency_ms:
        return 0.0
    rng = random.Random(f"latency|{params.get('seed')}|{model}|{json.dumps(messages, sort_keys=True)}")
    jitter = settings.latency_jitter * (2 * rng.random() - 1)
    return settings.latency_ms * (1 + jitter) / 1000


def _timed(response: ModelResponse, took_s: float) -> ModelResponse:
    """The response with the time the simulated model took, reported the way OpenAI does (a response
    header litellm passes on): the gate reads this, never the host's clock."""
    headers = response._hidden_params.setdefault("additional_headers", {})
    headers["llm_provider-openai-processing-ms"] = f"{took_s * 1000:.3f}"
    return response


def _respond(
    model: str, messages: list, response: ModelResponse, params: dict, settings: SimulationSettings
) -> ModelResponse:
    responder = MODELS.get(model)
    if responder is None:
        raise litellm.NotFoundError(
            f"no simulated model {model!r}; known: {sorted(MODELS)}", model=model, llm_provider="offline"
        )
    temperature = float(params.get("temperature", 1.0))
    seed = params.get("seed")
    # Same seed + same request = same answer; no seed behaves like a real sampled model.
    key = f"{seed}|{model}|{json.dumps(messages, sort_keys=True)}"
    rng = random.Random(key) if seed is not None else random.Random()
    fault = _draw_fault(settings, _fault_rng(settings, key))
    if fault and fault != "malformed":
        _raise_fault(fault, model, settings)
    text = responder(messages, temperature, rng)
    if fault == "malformed" and model == "judge":
        text = "The answer looks fine to me, I would give it a 4."
    finish_reason = "stop"
    max_tokens = params.get("max_tokens")
    if max_tokens and estimate_tokens(text) > max_tokens:
        text, finish_reason = _truncate(text, int(max_tokens)), "length"
    response.choices[0].message.content = text
    response.choices[0].finish_reason = finish_reason
    response.model = f"offline/{model}"
    prompt_tokens = sum(estimate_tokens(m.get("content") or "") + 4 for m in messages)
    completion_tokens = estimate_tokens(text)
    response.usage = litellm.Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )
    return response


def _fault_rng(settings: SimulationSettings, key: str) -> random.Random:
    """Where a request's fault comes from: chance by default, so a retry can succeed; a fixed function of
    the request under `fault_seed`; of the request and its attempt number under `attempt_seed`."""
    if settings.fault_seed is not None:
        return random.Random(f"{settings.fault_seed}|{key}")
    if settings.attempt_seed is not None:
        with _ATTEMPTS_LOCK:
            _ATTEMPTS[(settings.attempt_seed, key)] += 1
            attempt = _ATTEMPTS[(settings.attempt_seed, key)]
        return random.Random(f"attempt|{settings.attempt_seed}|{attempt}|{key}")
    return random.Random()


def _draw_fault(settings: SimulationSettings, rng: random.Random) -> str | None:
    if settings.down:
        return "down"
    if settings.error_rate <= 0 or rng.random() >= settings.error_rate:
        return None
    weights = settings.faults.model_dump()
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _raise_fault(kind: str, model: str, settings: SimulationSettings) -> None:
    name = f"offline/{model}"
    if kind == "down":
        raise litellm.ServiceUnavailableError("simulated provider is down", llm_provider="offline", model=name)
    if kind == "rate_limit":
        headers = {"retry-after": f"{settings.retry_after_s:g}"}
        raise litellm.RateLimitError("simulated rate limit", llm_provider="offline", model=name,
                                     response=httpx.Response(429, headers=headers, request=_REQUEST))
    if kind == "timeout":
        raise litellm.Timeout("simulated timeout", model=name, llm_provider="offline")
    raise litellm.InternalServerError("simulated server error", llm_provider="offline", model=name)


def _truncate(text: str, max_tokens: int) -> str:
    """Cut `text` where its estimated token count reaches `max_tokens` (as `estimate_tokens` counts)."""
    ascii_chars = other = 0
    for end, ch in enumerate(text):
        if ord(ch) < 128:
            ascii_chars += 1
        else:
            other += 1
        if (ascii_chars + 3) // 4 + other > max_tokens:
            return text[:end]
    return text


handler = OfflineProvider()
