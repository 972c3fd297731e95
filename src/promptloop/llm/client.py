"""Every LLM call goes through litellm; this module owns how.

Providers, base URLs, keys and prices come from `params.yaml` (`llm.models`), so switching the app,
the judge or the optimizer to OpenAI, Anthropic, Azure, Ollama or vLLM is a model-name change plus
one entry there.
"""

from __future__ import annotations

import gc
import importlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from promptloop.core.config import MODELS_FIELD, LLMSettings, key_source
from promptloop.core.errors import InputError
from promptloop.core.runtime import prepare_environment
from promptloop.core.secrets import REDACTED, holds_secret, redact_secrets, remember_secret
from promptloop.core.text import without_reasoning

if TYPE_CHECKING:
    import litellm as litellm_module


@dataclass(frozen=True)
class Completion:
    """The text of one LLM answer with its usage, cost, wall time and the provider's own timing.

    `latency_ms` is wall-clock time measured here, around the await (informational: it grows with the
    calls in flight and the machine's load). `provider_ms` is the time the provider says it took
    (`openai-processing-ms`), or None when it says nothing: that is the figure the gate may use.
    """

    model: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    latency_ms: float
    provider_ms: float | None = None


def litellm_module_configured(settings: LLMSettings, source: str = "params.yaml") -> litellm_module:
    """Import litellm offline-first, register custom providers and model prices from config."""
    prepare_environment()
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    # litellm reads custom_provider_map on every call; registering twice would shadow nothing.
    registered = {item["provider"]: item["custom_handler"] for item in litellm.custom_provider_map}
    for prefix, target in settings.providers.items():
        if prefix not in registered:
            registered[prefix] = load_object(target, source)
            litellm.custom_provider_map.append({"provider": prefix, "custom_handler": registered[prefix]})
        quiet_cancelled_calls(registered[prefix])  # each time: whoever ran since may have reset the filters
    entries = price_entries(settings)
    if entries:
        litellm.register_model(entries)
    freeze_long_lived_objects()
    return litellm


def quiet_cancelled_calls(handler: object) -> None:
    """No "coroutine ... was never awaited" warning for a custom provider's call cancelled mid-way.

    litellm makes the coroutine of a custom provider's `acompletion` in a worker thread and awaits it on the
    event loop; when the calls in flight are cancelled in between (an evaluation stopping on an app's error or a
    spent budget) that coroutine is never awaited. That is no bug of the provider's, and the warning would open
    the output of every such stop.
    """
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            message=f"coroutine '{type(handler).__name__}.acompletion' was never awaited")


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
    """The prices `llm.models` gives exact model names, as litellm `register_model` entries (USD per token).

    A glob's price cannot be registered; the runner prices those calls itself (`call_cost`).
    """
    entries: dict[str, dict[str, float | str]] = {}
    for model, entry in settings.models.items():
        price = entry.price_per_token
        if price is not None and not any(ch in model for ch in "*?["):
            entries[model] = {"input_cost_per_token": price[0], "output_cost_per_token": price[1],
                              "cache_creation_input_token_cost": 0.0, "cache_read_input_token_cost": 0.0,
                              "litellm_provider": model.split("/", 1)[0], "mode": "chat"}
    return entries


def call_options(settings: LLMSettings, model: str) -> dict[str, object]:
    """Where and how to call `model` as its `llm.models` entry says: base URL, API version, extra parameters.

    Sent with each call, never part of the cache key: the same model answers the same wherever it runs.
    """
    entry = settings.model_settings(model)
    options: dict[str, object] = dict(entry.extra)
    if entry.api_base:
        options["api_base"] = entry.api_base
    if entry.api_version:
        options["api_version"] = entry.api_version
    return options


def structured_output(litellm: litellm_module, settings: LLMSettings, model: str,
                      schema: dict[str, object]) -> dict[str, dict[str, object]]:
    """The `response_format` that asks `model` for JSON following `schema`, as far as the model supports it."""
    return response_format(output_mode(litellm, settings, model), schema)


def output_mode(litellm: litellm_module, settings: LLMSettings, model: str) -> str:
    """How `model` is asked for JSON: `schema`, `json` or `none`.

    `auto` (the default of an `llm.models` entry): a JSON schema where litellm says the model takes
    one, JSON mode where it takes `response_format` at all, nothing otherwise (the verdict parser
    copes with prose and fences either way).
    """
    mode = settings.model_settings(model).response_format
    if mode == "auto" and model.split("/", 1)[0] in settings.providers:
        # A custom provider: litellm knows nothing of it, and what it says changes once it has been called
        # (the same request must always be the same cache key).
        mode = "none"
    if mode == "auto":
        mode = "schema" if _supports(litellm.supports_response_schema, model) else (
            "json" if "response_format" in _supported_params(litellm, model) else "none")
    return mode


def response_format(mode: str, schema: dict[str, object]) -> dict[str, dict[str, object]]:
    """The call parameters of output `mode` for `schema`."""
    if mode == "schema":
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": schema.get("title", "verdict"), "schema": schema}}}
    if mode == "json":
        return {"response_format": {"type": "json_object"}}
    return {}


def _supports(check: Any, model: str) -> bool:
    try:
        return bool(check(model=model))
    except Exception:  # litellm raises for models it does not know: then it cannot say it supports anything
        return False


def _supported_params(litellm: litellm_module, model: str) -> list[str]:
    try:
        return list(litellm.get_supported_openai_params(model=model) or [])
    except Exception:  # an unknown provider: no parameter is known to be supported
        return []


def call_cost(settings: LLMSettings, model: str, completion: Completion) -> float | None:
    """The call's cost: from the model's `llm.models` price when it has one, else what litellm priced."""
    price = settings.model_settings(model).price_per_token
    if price is None:
        return completion.cost_usd
    return completion.prompt_tokens * price[0] + completion.completion_tokens * price[1]


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
        text=without_reasoning(response.choices[0].message.content or ""),
        prompt_tokens=int(usage.prompt_tokens),
        completion_tokens=int(usage.completion_tokens),
        cost_usd=response_cost(litellm, response, model),
        latency_ms=latency_ms,
        provider_ms=provider_ms(response),
    )


# The response headers a provider reports its own processing time in (litellm prefixes raw provider
# headers with `llm_provider-`): OpenAI's, which OpenAI-compatible servers and the simulated models send too.
PROVIDER_TIMING_HEADERS = ("llm_provider-openai-processing-ms", "openai-processing-ms")


def provider_ms(response: Any) -> float | None:
    """The processing time the provider reported for a response, in ms; None when it reported none."""
    headers = hidden_param(response, "additional_headers")
    return timing_header_ms(headers, PROVIDER_TIMING_HEADERS) if isinstance(headers, dict) else None


def timing_header_ms(headers: Any, names: tuple[str, ...]) -> float | None:
    """The first of the header `names` holding a finite, non-negative number of ms (any mapping with
    `.get`: a dict or httpx's headers); None when none does."""
    for name in names:
        try:
            value = float(headers.get(name))
        except (TypeError, ValueError):  # missing (None) or not a number
            continue
        if math.isfinite(value) and value >= 0:
            return value
    return None


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

REDACTED_KEY = REDACTED


@dataclass
class ApiKeys:
    """The API key of each model as its `llm.models` entry says, looked up on a model's first call and kept.

    One lookup per source per runner keeps the hot path a dict lookup (a Prefect Secret is an API
    call). Models with no key source get None: litellm then reads its own variables (OPENAI_API_KEY ...).
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
        found = self.settings.model_entry(model)
        source = found[1].api_key if found else None
        key = None if found is None or source is None else self._resolve(found[0], source)
        self._by_model[model] = key
        return key

    def _resolve(self, pattern: str, source: str) -> str:
        if source not in self._by_source:
            key = resolve_api_key(source, self.params_file, f"{MODELS_FIELD}.{pattern}.api_key")
            remember_secret(key)
            self._by_source[source] = key
        return self._by_source[source]

    def redact(self, text: str) -> str:
        """`text` with every known key replaced by a placeholder (for error messages)."""
        return redact_secrets(text)

    def leaked_in(self, text: str) -> bool:
        """True when `text` holds a known key."""
        return holds_secret(text)


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
