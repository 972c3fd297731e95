"""Validation of raw log rows with Great Expectations, row by row.

The suite lives in the workspace (`expectations/log_record.json`, versioned with git). A few derived
columns (the timestamp parsed, numbers coerced, cost / expected cost) let plain column expectations
express the contract; the raw columns keep their source values so type checks see what arrived.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from promptloop.core.errors import InputError
from promptloop.core.jsonl import RawJson
from promptloop.llm.prices import cost_from_tokens

SUITE_FILE = Path("expectations") / "log_record.json"
CLOCK_SKEW = timedelta(minutes=5)  # a row a few minutes "ahead" is clock skew, not the future


@dataclass
class ValidationOutcome:
    """Which rows failed which expectations (by the suite's short names)."""

    failures: dict[Any, list[str]]


def load_suite(path: Path) -> RawJson:
    """The suite JSON; every expectation needs a type, kwargs and meta.name."""
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "expectation suite not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON: {exc.msg}", field=f"line {exc.lineno}") from None
    for index, expectation in enumerate(suite.get("expectations", [])):
        if not isinstance(expectation, dict) or not expectation.get("meta", {}).get("name"):
            raise InputError(
                path,
                "every expectation needs meta.name (used as the quarantine reason)",
                field=f"expectations[{index}]",
            )
    return suite


INT64 = range(-(2**63), 2**63)  # token counts are stored as int64


def numeric(values: pd.Series, integers: bool = False) -> pd.Series:
    """Numbers as float; anything else becomes NaN: strings, booleans (an int subclass, which
    Great Expectations' type-list check lets through), floats where integers are due, and
    integers that int64 cannot hold (they would wrap around when stored)."""
    if integers:
        mask = np.fromiter((type(v) is int and v in INT64 for v in values.to_numpy()), dtype=bool, count=len(values))
    else:
        mask = np.fromiter((type(v) in (int, float) for v in values.to_numpy()), dtype=bool, count=len(values))
    return pd.to_numeric(values.where(mask), errors="coerce").astype("float64")


def derived_columns(frame: pd.DataFrame, prices: Mapping[str, tuple[float, float]]) -> pd.DataFrame:
    """The raw frame plus the derived columns the suite's expectations read."""
    out = frame.copy()
    text = frame["timestamp"].where(frame["timestamp"].map(type) == str)  # noqa: E721 (elementwise, not a type test)
    out["timestamp_text"] = text
    out["timestamp_utc"] = within_datetime_range(pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce"))
    out["latency_value"] = numeric(frame["latency_ms"])
    out["prompt_tokens_value"] = numeric(frame["prompt_tokens"], integers=True)
    out["completion_tokens_value"] = numeric(frame["completion_tokens"], integers=True)
    out["cost_value"] = numeric(frame["cost_usd"])
    out["feedback_value"] = numeric(frame["feedback"], integers=True)
    out["cost_ratio"] = cost_ratio(out, prices)
    return out


def within_datetime_range(stamps: pd.Series) -> pd.Series:
    """NaT for instants a Python datetime cannot hold: "0001-01-01T00:00+01:00" is year 0 in UTC,
    which pandas parses but no reader of the stored Parquet (pyarrow's to_pylist, datetime) can."""
    low, high = pd.Timestamp(datetime.min, tz="UTC"), pd.Timestamp(datetime.max, tz="UTC")
    return stamps.where(stamps.between(low, high))


def cost_ratio(frame: pd.DataFrame, prices: Mapping[str, tuple[float, float]]) -> pd.Series:
    """Logged cost / cost from tokens and the price map; NaN where either is unknown or zero."""
    models = frame["model"].where(frame["model"].map(type) == str)  # noqa: E721 (elementwise)
    expected = cost_from_tokens(models, frame["prompt_tokens_value"], frame["completion_tokens_value"], prices)
    ratio = frame["cost_value"] / expected.where(expected > 0)
    return ratio.where(frame["cost_value"] > 0)


def columns_used(expectation: RawJson, available: set[str]) -> tuple[str, ...]:
    """The columns an expectation reads: its column(s) and the frame columns its row condition names."""
    kwargs = expectation["kwargs"]
    names = [kwargs["column"]] if "column" in kwargs else list(kwargs.get("column_list", []))
    condition = kwargs.get("row_condition") or ""
    text = condition if isinstance(condition, str) else json.dumps(condition)
    names += [
        c for c in dict.fromkeys(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)) if c in available and c not in names
    ]
    return tuple(names)


class LogValidator:
    """The suite, validating batch after batch with Great Expectations."""

    def __init__(self, suite: RawJson, source: Path) -> None:
        self.suite = suite
        self.source = source

    @property
    def version(self) -> Any:
        return self.suite.get("meta", {}).get("version")

    def validate(self, frame: pd.DataFrame, now: datetime, prior_ids: pd.Series | None = None) -> ValidationOutcome:
        """Row index -> failed expectations. Expectations on `id` also see `prior_ids` (stored rows),
        so a uniqueness expectation there catches ids that were collected before."""
        failures: dict[Any, list[str]] = {}
        # A fresh ephemeral context per batch: a context keeps every batch's data it has seen.
        for columns, definition in self._definitions(frame).items():
            data = frame[list(columns)]
            if columns == ("id",) and prior_ids is not None and len(prior_ids):
                earlier = pd.DataFrame(
                    {"id": prior_ids.to_numpy(dtype=object)}, index=pd.RangeIndex(-len(prior_ids), 0)
                )
                data = pd.concat([earlier, data])
            result = definition.run(
                batch_parameters={"dataframe": data},
                expectation_parameters={"latest_timestamp": pd.Timestamp(now + CLOCK_SKEW)},
                result_format={
                    "result_format": "COMPLETE",
                    "include_unexpected_rows": False,
                    "partial_unexpected_count": 0,
                },
            )
            collect_failures(result.results, failures)
        failures = {index: names for index, names in failures.items() if not (isinstance(index, int) and index < 0)}
        return ValidationOutcome(failures)

    def _definitions(self, frame: pd.DataFrame) -> dict[tuple[str, ...], Any]:
        """One validation definition per group of expectations reading the same columns.

        Great Expectations copies the whole batch per expectation, so each group runs on a frame
        of just the columns it reads: the same results with far less copying on wide frames.
        """
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch = (
            context.data_sources.add_pandas("logs")
            .add_dataframe_asset("rows")
            .add_batch_definition_whole_dataframe("all")
        )
        grouped: dict[tuple[str, ...], list[RawJson]] = {}
        for expectation in self.suite["expectations"]:
            grouped.setdefault(columns_used(expectation, set(frame.columns)), []).append(expectation)
        missing = sorted({c for cols in grouped for c in cols} - set(frame.columns))
        if missing:
            raise InputError(self.source, f"expectations name columns that do not exist: {missing}")
        definitions: dict[tuple[str, ...], Any] = {}
        for number, (columns, expectations) in enumerate(grouped.items()):
            suite = context.suites.add(
                gx.ExpectationSuite(name=f"{self.suite.get('name', 'suite')}-{number}", expectations=expectations)
            )
            if len(suite.expectations) != len(expectations):
                raise InputError(
                    self.source, f"an expectation on {list(columns)} is not a valid Great Expectations configuration"
                )
            definitions[columns] = context.validation_definitions.add(
                gx.ValidationDefinition(name=f"group-{number}", data=batch, suite=suite)
            )
        return definitions


def collect_failures(results: list[Any], failures: dict[Any, list[str]]) -> None:
    """Add row index -> names of the expectations it failed; an expectation that raised is an error."""
    for item in results:
        name = item.expectation_config.meta["name"]
        if item.exception_info and item.exception_info.get("raised_exception"):
            raise RuntimeError(f"expectation {name} could not run: {item.exception_info.get('exception_message')}")
        for index in item.result.get("unexpected_index_list") or []:
            failures.setdefault(index, []).append(name)
