"""Every LLM call goes through litellm; this module owns how.

Providers and prices come from `params.yaml` (`llm:`), so switching the app, the judge or the
optimizer to OpenAI, Anthropic, Ollama or vLLM is a model-name change.
"""

from __future__ import annotations

import gc
import importlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from promptloop.core.config import API_KEYS_FIELD, LLMSettings, key_source
from promptloop.core.errors import InputError
from promptloop.core.runtime import prepare_environment

if TYPE_CHECKING:
    import litellm as litellm_module


@dataclass(frozen=True)
class Completion:
    """The text of one LLM answer with its usage, cost and wall time."""

    model: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    latency_ms: float


def litellm_module_configured(settings: LLMSettings, source: str = "params.yaml") -> litellm_module:
    """Import litellm offline-first, register custom providers and model prices from config."""
    prepare_environment()
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    # litellm reads custom_provider_map on every call; registering twice would shadow nothing.
    registered = {item["provider"] for item in litellm.custom_provider_map}
    for prefix, target in settings.providers.items():
        if prefix not in registered:
            litellm.custom_provider_map.append({"provider": prefix, "custom_handler": load_object(target, source)})
    if settings.prices:
        litellm.register_model(price_entries(settings))
    freeze_long_lived_objects()
    return litellm


def freeze_long_lived_objects() -> None:
    """Leave the objects that exist now (litellm's ~400k from its import) out of every later GC pass.

    A full collection walks every tracked object: with litellm loaded one takes ~200 ms, on the
    event loop, stalling every call in flight (2-3 times per 3,000 calls). Frozen objects are still
    freed by reference counting; only cycles among them are never collected. After the first call
    the collect below is cheap: it no longer walks what was frozen.
    """
    gc.collect()
    gc.freeze()


def price_entries(settings: LLMSettings) -> dict[str, dict[str, float | str]]:
    """The configured prices as litellm `register_model` entries (USD per token)."""
    return {
        model: {
            "input_cost_per_token": price.input_per_mtok / 1e6,
            "output_cost_per_token": price.output_per_mtok / 1e6,
            "cache_creation_input_token_cost": 0.0,
            "cache_read_input_token_cost": 0.0,
            "litellm_provider": model.split("/", 1)[0],
            "mode": "chat",
        }
        for model, price in settings.prices.items()
    }


def load_object(target: str, source: str = "params.yaml") -> Any:
    """Import `package.module:attribute`; a bad path is an input error naming the key."""
    module_name, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(source, f"cannot load {target!r}: {exc}", field="llm.providers") from None


async def acomplete(
    litellm: litellm_module,
    model: str,
    messages: list[dict[str, str]],
    timeout_s: float,
    api_key: str | None = None,
    **parameters: Any,
) -> Completion:
    """One chat completion; errors are litellm's own exception types. No `api_key`: litellm's own env vars."""
    started = time.perf_counter()
    response = await litellm.acompletion(
        model=model, messages=messages, timeout=timeout_s, api_key=api_key, **parameters
    )
    latency_ms = (time.perf_counter() - started) * 1000
    usage = response.usage
    return Completion(
        model=model,
        text=response.choices[0].message.content or "",
        prompt_tokens=int(usage.prompt_tokens),
        completion_tokens=int(usage.completion_tokens),
        cost_usd=response_cost(litellm, response, model),
        latency_ms=latency_ms,
    )


def response_cost(litellm: litellm_module, response: Any, model: str) -> float | None:
    """Cost of one response; None when the model has no known price.

    litellm prices every response it returns (`_hidden_params["response_cost"]`, from its price map
    and the prices we registered): reading that figure instead of calling `completion_cost` again
    saves a second full price-map resolution per call (~10% of a call's CPU). Without a stamped
    figure the cost is the tokens times the model's registered per-token price.
    """
    stamped = hidden_param(response, "response_cost")
    if isinstance(stamped, (int, float)) and not isinstance(stamped, bool) and math.isfinite(stamped):
        return float(stamped)
    price = token_prices(litellm, model)
    if price is None:
        return None
    usage = response.usage
    return int(usage.prompt_tokens) * price[0] + int(usage.completion_tokens) * price[1]


def hidden_param(response: Any, name: str) -> Any:
    """One of litellm's `_hidden_params` of a response (a dict or an object, by litellm version)."""
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, dict):
        return hidden.get(name)
    return getattr(hidden, name, None)


def token_prices(litellm: litellm_module, model: str) -> tuple[float, float] | None:
    """(input, output) USD per token registered for exactly `model`, if both are known."""
    entry = litellm.model_cost.get(model) or {}
    price_in, price_out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
    return (float(price_in), float(price_out)) if price_in is not None and price_out is not None else None


# --- API keys: from the environment or a Prefect Secret block, never from params.yaml ------------

REDACTED_KEY = "<api-key>"


@dataclass
class ApiKeys:
    """The API key of each model as `llm.api_keys` says, looked up on a model's first call and kept.

    One lookup per source per runner keeps the hot path a dict lookup (a Prefect Secret is an API
    call). Models with no entry get None: litellm then reads its own variables (OPENAI_API_KEY ...).
    """

    settings: LLMSettings = field(default_factory=LLMSettings)
    params_file: str = "params.yaml"
    _by_model: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)
    _by_source: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def for_model(self, model: str) -> str | None:
        """The key to send with calls to `model`; an InputError when its source has none."""
        try:
            return self._by_model[model]
        except KeyError:
            pass
        entry = self.settings.api_key_entry(model)
        key = None if entry is None else self._resolve(*entry)
        self._by_model[model] = key
        return key

    def _resolve(self, pattern: str, source: str) -> str:
        if source not in self._by_source:
            self._by_source[source] = resolve_api_key(source, self.params_file, f"{API_KEYS_FIELD}.{pattern}")
        return self._by_source[source]

    def redact(self, text: str) -> str:
        """`text` with every key resolved so far replaced by a placeholder (for error messages)."""
        for key in self._by_source.values():
            text = text.replace(key, REDACTED_KEY)
        return text

    def leaked_in(self, text: str) -> bool:
        """True when `text` holds one of the keys resolved so far."""
        return any(key in text for key in self._by_source.values())


def resolve_api_key(source: str, params_file: str, field_name: str) -> str:
    """The key behind 'env:VARIABLE' or 'prefect-secret:BLOCK'; a missing one is an InputError naming it."""
    parsed = key_source(source)
    if parsed is None:  # config validation refuses these; kept for settings built in code
        raise InputError(params_file, "not a key source ('env:VARIABLE' or 'prefect-secret:BLOCK')", field_name)
    kind, name = parsed
    if kind == "env":
        value = os.environ.get(name)
        if not value:
            raise InputError(
                params_file, f"environment variable {name} is not set (it should hold the API key)", field_name
            )
        return value
    return prefect_secret(name, params_file, field_name)


def prefect_secret(block: str, params_file: str, field_name: str) -> str:
    """The string held by the Prefect Secret block `block` (Prefect is imported only when one is configured)."""
    from prefect.blocks.system import Secret

    try:
        # _sync: the runner resolves keys inside its event loop, where Prefect would hand back a coroutine.
        value = Secret.load(block, _sync=True).get()
    except ValueError:  # Prefect's "Unable to find block document named ..."
        raise InputError(params_file, f"no Prefect Secret block named {block!r} (create it in the Prefect UI or "
                                      f"with Secret(value=...).save({block!r}))", field_name) from None
    if not isinstance(value, str) or not value:
        raise InputError(
            params_file, f"Prefect Secret block {block!r} does not hold the API key as a string", field_name
        )
    return value
