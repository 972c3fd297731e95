"""analyze: health metrics of a log window, per group and per UTC day, and alert rules over them.

The input is the collected log dataset (`collect.LOG_SCHEMA` columns) plus three bool columns the
caller adds from detectors: `refusal`, `uncertain`, `toxic`, `biased`, `injection` and `followed_injection`
(analyze/stage.py flag_rows); a frame without `uncertain`, `biased` or `followed_injection` (flagged before they
existed) gets None for their rates. Everything is vectorised, and every
returned value is a plain Python int, float or None, so the result is JSON-serialisable as is
(`json.dumps(..., allow_nan=False)` works). A rate whose denominator is zero is None, never NaN.

Definitions (a public contract):
- interactions: rows.
- latency_p50_ms / p95 / p99: `np.percentile` (linear interpolation) over every row's latency_ms,
  error rows included; a missing or non-finite latency is skipped.
- error_rate: rows whose `error` is non-null and not "" / rows.
- prompt_tokens, completion_tokens: sums. total_cost_usd: sum of known costs; cost_unknown_rows:
  rows whose cost_usd is NaN (or otherwise non-finite), left out of the sum.
- feedback_rate: rows rated -1 or 1 / rows. thumbs_down_rate: rows rated -1 / rows rated -1 or 1.
- refusal_rate, uncertainty_rate, toxicity_rate, bias_rate: over rows with an output (output not null).
  A hedge ("I'm not sure, but ...") is uncertain, not a refusal.
- injection_attempt_rate: rows whose question attempts an injection / rows.
- injection_followed_rate: rows whose answer carried the injection out (quality/injection.py) / rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from promptloop.core.config import AlertRule
from promptloop.domain.results import AlertResult, DailyMetrics, Metrics

REQUIRED_COLUMNS = ("latency_ms", "error", "prompt_tokens", "completion_tokens", "cost_usd", "feedback", "output",
                    "refusal", "toxic", "injection")
PERCENTILES = (50, 95, 99)
MISSING_KEY = "<missing>"
# Per-row counts and amounts that are summed per group (latency is handled separately).
_SUMMED = ("interactions", "errors", "prompt_tokens", "completion_tokens", "cost", "cost_unknown", "rated",
           "thumbs_down", "with_output", "refusals", "toxic", "injections", "uncertain", "biased", "followed",
           "flagged_later")
# Flags added after the first three: a frame without them reports their rates as None, not 0.
_LATER_FLAGS = ("uncertain", "biased", "followed_injection")



def select_window(frame: pd.DataFrame, end: pd.Timestamp, days: int) -> pd.DataFrame:
    """Rows with `end - days <= timestamp < end`; a naive `end` (or naive timestamps) is read as UTC."""
    if days < 0:
        raise ValueError(f"days must be >= 0, got {days}")
    end = _utc(end)
    ts = pd.to_datetime(frame["timestamp"], utc=True)
    return frame.loc[((ts >= end - pd.Timedelta(days=days)) & (ts < end)).to_numpy()]


def compute_metrics(frame: pd.DataFrame) -> Metrics:
    """Every metric of METRIC_NAMES (plus cost_unknown_rows) over all rows of `frame`."""
    if len(frame) == 0:
        return _finish(dict.fromkeys(_SUMMED, 0), (None,) * len(PERCENTILES))
    return _grouped(frame, np.zeros(len(frame), dtype=np.intp), 1)[0]


def metrics_by(frame: pd.DataFrame, column: str) -> dict[str, Metrics]:
    """Metrics per value of `column` (e.g. prompt_version, model), keyed by str(value), sorted by key.

    Rows whose value is missing are grouped under MISSING_KEY rather than dropped.
    """
    if column not in frame.columns:
        raise KeyError(f"metrics_by: no column {column!r}")
    if len(frame) == 0:
        return {}
    raw_codes, uniques = pd.factorize(frame[column], use_na_sentinel=False)
    keys = [MISSING_KEY if _is_missing(value) else str(value) for value in uniques]
    key_codes, key_uniques = pd.factorize(np.asarray(keys, dtype=object))  # merges values with equal str()
    groups = _grouped(frame, key_codes[raw_codes], len(key_uniques))
    return dict(sorted(zip((str(k) for k in key_uniques), groups, strict=True)))


def daily_metrics(frame: pd.DataFrame) -> list[DailyMetrics]:
    """One `{"day": "YYYY-MM-DD", **metrics}` per UTC day present, oldest first; rows without a timestamp
    are skipped."""
    if len(frame) == 0:
        return []
    ts = pd.to_datetime(frame["timestamp"], utc=True)
    present = ts.notna().to_numpy()
    days = ts.dt.tz_localize(None).to_numpy()[present].astype("datetime64[D]").view(np.int64)
    codes, uniques = pd.factorize(days, sort=True)
    groups = _grouped(frame.loc[present] if not present.all() else frame, codes, len(uniques))
    return [{"day": str(day), **metrics} for day, metrics in zip(uniques.astype("datetime64[D]"), groups, strict=True)]


def _grouped(frame: pd.DataFrame, codes: np.ndarray, n_groups: int) -> list[Metrics]:
    """Metrics of each group 0..n_groups-1 of `frame`, `codes` giving each row's group (every group non-empty)."""
    parts = _per_row(frame)
    sums = parts.groupby(codes, sort=True).sum()
    percentiles = _group_percentiles(_floats(frame["latency_ms"]), codes, n_groups)
    return [_finish(row, pcts) for row, pcts in zip(sums.to_dict("records"), percentiles, strict=True)]


def _per_row(frame: pd.DataFrame) -> pd.DataFrame:
    """The summed quantities of each row: 0/1 indicators, tokens and known cost."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise KeyError(f"metrics need columns {', '.join(missing)} (refusal/toxic/injection come from the detectors)")
    error = frame["error"]
    cost = _floats(frame["cost_usd"])
    cost_known = np.isfinite(cost)
    feedback = _floats(frame["feedback"])
    with_output = frame["output"].notna().to_numpy()
    return pd.DataFrame({
        "interactions": np.ones(len(frame), dtype=np.int64),
        "errors": (error.notna().to_numpy() & (error != "").to_numpy(dtype=bool, na_value=False)).astype(np.int64),
        "prompt_tokens": _ints(frame["prompt_tokens"]),
        "completion_tokens": _ints(frame["completion_tokens"]),
        "cost": np.where(cost_known, cost, 0.0),
        "cost_unknown": (~cost_known).astype(np.int64),
        "rated": ((feedback == 1) | (feedback == -1)).astype(np.int64),
        "thumbs_down": (feedback == -1).astype(np.int64),
        "with_output": with_output.astype(np.int64),
        "refusals": (_bools(frame["refusal"]) & with_output).astype(np.int64),
        "toxic": (_bools(frame["toxic"]) & with_output).astype(np.int64),
        "injections": _bools(frame["injection"]).astype(np.int64),
        "uncertain": (_optional_bools(frame, "uncertain") & with_output).astype(np.int64),
        "biased": (_optional_bools(frame, "biased") & with_output).astype(np.int64),
        "followed": (_optional_bools(frame, "followed_injection") & with_output).astype(np.int64),
        "flagged_later": np.full(len(frame), int(all(c in frame.columns for c in _LATER_FLAGS)), dtype=np.int64),
    })


def _group_percentiles(latency: np.ndarray, codes: np.ndarray, n_groups: int) -> list[tuple[float | None, ...]]:
    """p50/p95/p99 of each group's finite latencies (np.percentile, linear); a loop over groups, not rows."""
    if n_groups == 1:
        return [_percentiles(latency)]
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=n_groups))[:-1]
    return [_percentiles(chunk) for chunk in np.split(latency[order], bounds)]


def _percentiles(values: np.ndarray) -> tuple[float | None, ...]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (None,) * len(PERCENTILES)
    return tuple(float(v) for v in np.percentile(values, PERCENTILES))


def _finish(sums: Mapping[str, Any], percentiles: tuple[float | None, ...]) -> Metrics:
    """The public metrics from one group's sums; plain Python numbers, None for an empty denominator."""
    n, rated, with_output = int(sums["interactions"]), int(sums["rated"]), int(sums["with_output"])
    later = int(sums["flagged_later"]) == n  # every row of the group carries the later flags
    p50, p95, p99 = percentiles
    return {
        "interactions": n,
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "latency_p99_ms": p99,
        "error_rate": _ratio(sums["errors"], n),
        "prompt_tokens": int(sums["prompt_tokens"]),
        "completion_tokens": int(sums["completion_tokens"]),
        "total_cost_usd": float(sums["cost"]),
        "cost_unknown_rows": int(sums["cost_unknown"]),
        "feedback_rate": _ratio(rated, n),
        "thumbs_down_rate": _ratio(sums["thumbs_down"], rated),
        "refusal_rate": _ratio(sums["refusals"], with_output),
        "toxicity_rate": _ratio(sums["toxic"], with_output),
        "injection_attempt_rate": _ratio(sums["injections"], n),
        "uncertainty_rate": _ratio(sums["uncertain"], with_output) if later else None,
        "bias_rate": _ratio(sums["biased"], with_output) if later else None,
        "injection_followed_rate": _ratio(sums["followed"], n) if later else None,
    }


def _ratio(numerator: Any, denominator: int) -> float | None:
    return None if denominator == 0 else int(numerator) / denominator


def _floats(values: pd.Series) -> np.ndarray:
    """float64 array; missing or non-numeric values become NaN."""
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _ints(values: pd.Series) -> np.ndarray:
    """int64 array; missing values count as 0."""
    if pd.api.types.is_integer_dtype(values.dtype) and not isinstance(values.dtype, pd.api.extensions.ExtensionDtype):
        return values.to_numpy(dtype=np.int64)
    return pd.to_numeric(values, errors="coerce").fillna(0).to_numpy(dtype=np.int64)


def _bools(values: pd.Series) -> np.ndarray:
    """bool array; missing values count as False."""
    return values.fillna(False).to_numpy(dtype=bool) if values.dtype != bool else values.to_numpy()


def _optional_bools(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A flag column that older frames lack, as bools (absent: all False, and the rate is None)."""
    return _bools(frame[column]) if column in frame.columns else np.zeros(len(frame), dtype=bool)


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _utc(when: Any) -> pd.Timestamp:
    when = pd.Timestamp(when)
    return when.tz_localize("UTC") if when.tz is None else when.tz_convert("UTC")


# ---------------------------------------------------------------- alerts


def evaluate_alerts(
    current: Mapping[str, Any], previous: Mapping[str, Any] | None, rules: list[AlertRule]
) -> list[AlertResult]:
    """The alerts `rules` raise on the `current` window's metrics, `previous` being the window before (or None)."""
    alerts: list[AlertResult] = []
    for rule in rules:
        if _too_small(current, rule):
            continue
        value = _number(current.get(rule.metric))
        if value is None:
            continue
        prior = _number(previous.get(rule.metric)) if previous else None
        if rule.max is not None and value > rule.max:
            alerts.append(alert(rule, value, rule.max, "max", prior,
                                f"{rule.metric} = {_fmt(value)} is above max {_fmt(rule.max)}"))
        if rule.min is not None and value < rule.min:
            alerts.append(alert(rule, value, rule.min, "min", prior,
                                f"{rule.metric} = {_fmt(value)} is below min {_fmt(rule.min)}"))
        if rule.max_increase is not None and _increase_breached(rule, value, prior, previous):
            change = (value - prior) / prior  # type: ignore[operator]  # prior > 0 checked
            alerts.append(alert(rule, value, rule.max_increase, "max_increase", prior,
                                f"{rule.metric} rose {change:+.0%} to {_fmt(value)} from {_fmt(prior)} "
                                f"(max increase {rule.max_increase:+.0%})"))
    return alerts


def alert(rule: AlertRule, value: float, threshold: float, kind: Literal["max", "min", "max_increase"],
          previous: float | None, message: str) -> AlertResult:
    """One breached rule, as reported."""
    return AlertResult(metric=rule.metric, value=value, threshold=threshold, rule=kind, previous=previous,
                       message=message)


def _increase_breached(rule: AlertRule, value: float, prior: float | None, previous: Mapping[str, Any] | None) -> bool:
    if prior is None or prior <= 0 or previous is None:
        return False
    if _too_small(previous, rule):
        return False
    return (value - prior) / prior > rule.max_increase  # type: ignore[operator]


def _too_small(window: Mapping[str, Any], rule: AlertRule) -> bool:
    """Fewer interactions than the rule needs (unknown counts as too few when it needs any)."""
    n = _number(window.get("interactions"))
    return rule.min_interactions > 0 and (n is None or n < rule.min_interactions)


def _number(value: Any) -> float | None:
    """A finite number as float; None, NaN and non-numbers as None."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "None" if value is None else f"{value:.4g}"
