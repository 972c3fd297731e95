"""Model prices: params.yaml's `llm.models` first (name or glob), then litellm's (bundled, offline) price map."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from promptloop.core.config import LLMSettings

PriceLookup = Callable[[list[str]], dict[str, tuple[float, float]]]


def model_prices(models: list[str], litellm: Any) -> dict[str, tuple[float, float]]:
    """(input, output) USD per token of each model litellm's price map knows."""
    prices: dict[str, tuple[float, float]] = {}
    for model in models:
        try:
            info = litellm.get_model_info(model)
        except Exception:  # litellm raises a bare Exception for models it has no price for
            continue
        if info.get("input_cost_per_token") is not None and info.get("output_cost_per_token") is not None:
            prices[model] = (float(info["input_cost_per_token"]), float(info["output_cost_per_token"]))
    return prices


def price_lookup(settings: LLMSettings, params_file: str = "params.yaml") -> PriceLookup:
    """A cached lookup: model names -> (input, output) USD per token, for the models with a price."""
    cache: dict[str, tuple[float, float]] = {}

    def lookup(models: list[str]) -> dict[str, tuple[float, float]]:
        for model in models:
            price = settings.model_settings(model).price_per_token
            if model not in cache and price is not None:
                cache[model] = price
        unknown = [m for m in models if m not in cache]
        if unknown:  # litellm takes seconds to import: only when its price map is needed
            from promptloop.llm.client import litellm_module_configured

            litellm = litellm_module_configured(settings, params_file)
            cache.update(model_prices(unknown, litellm))
            cache.update({m: (np.nan, np.nan) for m in unknown if m not in cache})
        return {m: cache[m] for m in models if not np.isnan(cache[m][0])}

    return lookup


def cost_from_tokens(models: pd.Series, prompt_tokens: pd.Series, completion_tokens: pd.Series,
                     prices: Mapping[str, tuple[float, float]]) -> pd.Series:
    """Cost of each row from its tokens and its model's price; NaN where the model has no price."""
    price_in = models.map({m: p[0] for m, p in prices.items()}).astype(float)
    price_out = models.map({m: p[1] for m, p in prices.items()}).astype(float)
    return prompt_tokens.astype(float) * price_in + completion_tokens.astype(float) * price_out


def fill_missing_costs(frame: pd.DataFrame, lookup: PriceLookup) -> pd.DataFrame:
    """Rows without a cost get one from the price map (where their model has a price)."""
    missing = frame["cost_usd"].isna()
    if not missing.any():
        return frame
    models = sorted(frame.loc[missing, "model"].dropna().astype(str).unique())
    computed = cost_from_tokens(frame["model"], frame["prompt_tokens"], frame["completion_tokens"], lookup(models))
    return frame.assign(cost_usd=frame["cost_usd"].fillna(computed))
