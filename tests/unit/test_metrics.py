"""metrics: every metric against numbers worked out by hand, windows, groups, days and alert rules."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from promptloop.analyze.metrics import (
    MISSING_KEY,
    compute_metrics,
    daily_metrics,
    evaluate_alerts,
    metrics_by,
    select_window,
)
from promptloop.core.config import DEFAULT_ALERT_RULES, METRIC_NAMES, AlertRule
from promptloop.domain.results import AlertResult

T0 = pd.Timestamp("2025-03-01 12:00", tz="UTC")
RATES = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "error_rate", "feedback_rate", "thumbs_down_rate",
         "refusal_rate", "toxicity_rate", "injection_attempt_rate", "uncertainty_rate", "bias_rate",
         "injection_followed_rate")
FLAG_COLUMNS = ("refusal", "uncertain", "toxic", "biased", "injection", "followed_injection")


def make_frame(n: int, **columns: Any) -> pd.DataFrame:
    """`n` log rows with collect's dtypes plus the detector columns; `columns` override the defaults."""
    data: dict[str, Any] = {
        "id": [f"r{i}" for i in range(n)],
        "timestamp": [T0 + pd.Timedelta(minutes=i) for i in range(n)],
        "app": ["support-bot"] * n,
        "prompt_version": ["v1"] * n,
        "model": ["gpt-x"] * n,
        "input": ["how do I reset my password?"] * n,
        "output": ["Open settings."] * n,
        "latency_ms": [100.0] * n,
        "prompt_tokens": [10] * n,
        "completion_tokens": [5] * n,
        "cost_usd": [0.01] * n,
        "error": [None] * n,
        "feedback": [None] * n,
        "refusal": [False] * n,
        "toxic": [False] * n,
        "injection": [False] * n,
        "uncertain": [False] * n,
        "biased": [False] * n,
        "followed_injection": [False] * n,
    }
    data.update(columns)
    frame = pd.DataFrame(data)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    for name in ("latency_ms", "cost_usd"):
        frame[name] = frame[name].astype("float64")
    for name in ("prompt_tokens", "completion_tokens"):
        frame[name] = frame[name].astype("int64")
    frame["feedback"] = pd.array(frame["feedback"].tolist(), dtype="Int8")
    for name in FLAG_COLUMNS:
        frame[name] = frame[name].astype(bool)
    return frame


def four_rows() -> pd.DataFrame:
    return make_frame(
        4,
        latency_ms=[1000.0, 100.0, 300.0, 200.0],  # unsorted on purpose
        error=[None, "timeout", "", None],  # "" is not an error
        output=["a", None, "b", "c"],
        prompt_tokens=[10, 20, 30, 40],
        completion_tokens=[1, 2, 3, 4],
        cost_usd=[0.1, np.nan, 0.2, 0.3],
        feedback=[1, -1, 0, None],
        refusal=[True, True, False, False],  # row 1 has no output: not counted
        toxic=[False, False, True, False],
        injection=[True, False, False, True],
        uncertain=[False, True, True, False],  # row 1 has no output: not counted
        biased=[False, False, False, True],
        followed_injection=[True, False, False, False],
    )


def assert_plain_json(value: Any) -> None:
    """Only plain ints/floats/None/str (no numpy scalars, no NaN) anywhere in `value`."""
    json.dumps(value, allow_nan=False)

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)
        else:
            assert v is None or type(v) in (int, float, str), (v, type(v))

    walk(value)


# ---------------------------------------------------------------- compute_metrics


def test_every_metric_on_four_rows():
    m = compute_metrics(four_rows())
    assert set(METRIC_NAMES) <= set(m)
    assert m["interactions"] == 4
    # sorted latencies 100, 200, 300, 1000; linear interpolation at index h = (n - 1) * q = 3q
    assert m["latency_p50_ms"] == pytest.approx(200 + 0.5 * (300 - 200))  # h = 1.5  -> 250
    assert m["latency_p95_ms"] == pytest.approx(300 + 0.85 * (1000 - 300))  # h = 2.85 -> 895
    assert m["latency_p99_ms"] == pytest.approx(300 + 0.97 * (1000 - 300))  # h = 2.97 -> 979
    assert m["error_rate"] == pytest.approx(1 / 4)
    assert m["prompt_tokens"] == 100 and m["completion_tokens"] == 10
    assert m["total_cost_usd"] == pytest.approx(0.6)
    assert m["cost_unknown_rows"] == 1
    assert m["feedback_rate"] == pytest.approx(2 / 4)  # +1 and -1 are rated; 0 and <NA> are not
    assert m["thumbs_down_rate"] == pytest.approx(1 / 2)
    assert m["refusal_rate"] == pytest.approx(1 / 3)  # 3 rows with output, 1 refusal among them
    assert m["toxicity_rate"] == pytest.approx(1 / 3)
    assert m["injection_attempt_rate"] == pytest.approx(2 / 4)
    assert m["uncertainty_rate"] == pytest.approx(1 / 3)  # a hedge is counted apart from refusals
    assert m["bias_rate"] == pytest.approx(1 / 3)
    assert m["injection_followed_rate"] == pytest.approx(1 / 4)  # of 2 attempts, 1 followed
    assert_plain_json(m)


def test_a_frame_flagged_before_the_later_detectors_reports_their_rates_as_none():
    old = four_rows().drop(columns=["uncertain", "biased", "followed_injection"])
    m = compute_metrics(old)
    assert m["uncertainty_rate"] is None and m["bias_rate"] is None and m["injection_followed_rate"] is None
    assert m["refusal_rate"] == pytest.approx(1 / 3) and m["injection_attempt_rate"] == pytest.approx(2 / 4)
    by_version = metrics_by(old, "prompt_version")
    assert by_version["v1"]["bias_rate"] is None


@pytest.mark.parametrize("frame", [make_frame(0), pd.DataFrame()], ids=["schema", "no-columns"])
def test_empty_window(frame):
    m = compute_metrics(frame)
    assert m["interactions"] == 0
    assert all(m[name] is None for name in RATES)
    assert (m["prompt_tokens"], m["completion_tokens"], m["total_cost_usd"], m["cost_unknown_rows"]) == (0, 0, 0.0, 0)
    assert_plain_json(m)
    assert metrics_by(make_frame(0), "prompt_version") == {} and daily_metrics(frame) == []


def test_all_error_window_has_no_output_rates():
    m = compute_metrics(make_frame(3, output=[None] * 3, error=["boom"] * 3, latency_ms=[5.0, 1.0, 3.0],
                                   refusal=[True] * 3, toxic=[True] * 3))
    assert m["error_rate"] == 1.0
    assert m["refusal_rate"] is None and m["toxicity_rate"] is None
    assert m["latency_p50_ms"] == 3.0  # error rows still count for latency
    assert_plain_json(m)


def test_no_feedback():
    m = compute_metrics(make_frame(3))
    assert m["feedback_rate"] == 0.0 and m["thumbs_down_rate"] is None


def test_only_neutral_feedback_is_not_rated():
    m = compute_metrics(make_frame(2, feedback=[0, 0]))
    assert m["feedback_rate"] == 0.0 and m["thumbs_down_rate"] is None


def test_nan_costs_are_skipped_and_counted():
    m = compute_metrics(make_frame(3, cost_usd=[np.nan, 0.25, np.nan]))
    assert m["total_cost_usd"] == pytest.approx(0.25) and m["cost_unknown_rows"] == 2
    m = compute_metrics(make_frame(2, cost_usd=[np.nan, np.nan]))
    assert m["total_cost_usd"] == 0.0 and m["cost_unknown_rows"] == 2
    assert_plain_json(m)


def test_single_row_percentiles_are_the_value():
    m = compute_metrics(make_frame(1, latency_ms=[42.0]))
    assert m["latency_p50_ms"] == m["latency_p95_ms"] == m["latency_p99_ms"] == 42.0


def test_loose_dtypes_are_accepted():
    """object/float/nullable-boolean columns (e.g. a frame built by hand) give the same answers."""
    frame = four_rows()
    loose = frame.assign(
        error=frame["error"].astype(object).where(frame["error"].notna(), None),
        feedback=frame["feedback"].astype("float64"),
        refusal=pd.array([True, True, False, None], dtype="boolean"),
    )
    assert compute_metrics(loose) == compute_metrics(frame)
    na_strings = frame.assign(error=frame["error"].astype("string"), output=frame["output"].astype("string"))
    assert compute_metrics(na_strings) == compute_metrics(frame)  # pd.NA-backed strings


@pytest.mark.parametrize("pandas_metadata", [True, False])
def test_frame_read_back_from_collect_parquet(tmp_path, pandas_metadata):
    """Rows stored with LOG_SCHEMA read back the same; without pandas metadata feedback comes back float64."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from promptloop.collect.stage import LOG_SCHEMA

    frame = four_rows()
    stored = frame.drop(columns=list(FLAG_COLUMNS)).assign(
        cost_source="litellm", feedback_comment=None, user_hash="u", metadata="{}", source="s", collect_run="run",
        inputs=None)
    table = pa.Table.from_pandas(stored[LOG_SCHEMA.names], schema=LOG_SCHEMA, preserve_index=False)
    pq.write_table(table if pandas_metadata else table.replace_schema_metadata(None), tmp_path / "p.parquet")
    read = pq.read_table(tmp_path / "p.parquet").to_pandas()
    assert read["feedback"].dtype == ("Int8" if pandas_metadata else "float64")
    read[list(FLAG_COLUMNS)] = frame[list(FLAG_COLUMNS)].to_numpy()
    assert compute_metrics(read) == compute_metrics(frame)
    assert daily_metrics(read) == daily_metrics(frame)


def test_missing_detector_column_is_named():
    with pytest.raises(KeyError, match="toxic"):
        compute_metrics(make_frame(2).drop(columns="toxic"))


# ---------------------------------------------------------------- groups and days


def test_metrics_by_two_prompt_versions():
    frame = make_frame(
        5,
        prompt_version=["v1", "v2", "v1", "v2", "v2"],
        latency_ms=[100.0, 10.0, 200.0, 30.0, 20.0],
        error=[None, "x", None, None, None],
        output=["a", None, "b", "c", "d"],
        feedback=[-1, 1, 1, None, -1],
        refusal=[False, False, True, True, False],
        cost_usd=[1.0, 2.0, np.nan, 4.0, 8.0],
    )
    by = metrics_by(frame, "prompt_version")
    assert list(by) == ["v1", "v2"]
    v1, v2 = by["v1"], by["v2"]
    assert v1["interactions"] == 2 and v2["interactions"] == 3
    # v1 latencies 100, 200: h = q -> 100 + q * 100
    assert (v1["latency_p50_ms"], v1["latency_p95_ms"], v1["latency_p99_ms"]) == pytest.approx((150, 195, 199))
    # v2 latencies 10, 20, 30: h = 2q -> p50 = 20, p95 = 20 + 0.9 * 10, p99 = 20 + 0.98 * 10
    assert (v2["latency_p50_ms"], v2["latency_p95_ms"], v2["latency_p99_ms"]) == pytest.approx((20, 29, 29.8))
    assert v1["error_rate"] == 0.0 and v2["error_rate"] == pytest.approx(1 / 3)
    assert v1["thumbs_down_rate"] == pytest.approx(1 / 2) and v2["thumbs_down_rate"] == pytest.approx(1 / 2)
    assert v1["feedback_rate"] == 1.0 and v2["feedback_rate"] == pytest.approx(2 / 3)
    assert v1["refusal_rate"] == pytest.approx(1 / 2) and v2["refusal_rate"] == pytest.approx(1 / 2)
    assert (v1["total_cost_usd"], v1["cost_unknown_rows"]) == (pytest.approx(1.0), 1)
    assert (v2["total_cost_usd"], v2["cost_unknown_rows"]) == (pytest.approx(14.0), 0)
    for version, metrics in by.items():  # a group's metrics are the metrics of its rows
        assert metrics == pytest.approx(compute_metrics(frame[frame["prompt_version"] == version]))
    assert_plain_json(by)


def test_metrics_by_keys_are_strings_and_missing_values_are_kept():
    by = metrics_by(make_frame(3, prompt_tokens=[7, 12, 7]), "prompt_tokens")
    assert {k: v["interactions"] for k, v in by.items()} == {"12": 1, "7": 2}
    by = metrics_by(make_frame(3, prompt_version=["v1", None, "v1"]), "prompt_version")
    assert {k: v["interactions"] for k, v in by.items()} == {MISSING_KEY: 1, "v1": 2}
    with pytest.raises(KeyError, match="nope"):
        metrics_by(make_frame(1), "nope")


def test_daily_metrics_three_utc_days_with_midnight_edge():
    stamps = [
        pd.Timestamp("2025-03-04 01:00", tz="UTC"),
        pd.Timestamp("2025-03-01 23:30", tz="UTC"),  # 08:30 on 03-02 in Seoul, still 03-01 in UTC
        pd.Timestamp("2025-03-02 00:30", tz="UTC"),
        pd.Timestamp("2025-03-02 01:30", tz="Europe/Berlin"),  # = 00:30 UTC on 03-02
        pd.Timestamp("2025-03-01 00:00", tz="UTC"),
    ]
    frame = make_frame(5, timestamp=stamps, latency_ms=[1.0, 2.0, 3.0, 5.0, 4.0], error=["x", None, None, None, None])
    days = daily_metrics(frame)
    assert [d["day"] for d in days] == ["2025-03-01", "2025-03-02", "2025-03-04"]  # 03-03 has no rows
    assert [d["interactions"] for d in days] == [2, 2, 1]
    assert days[0]["latency_p50_ms"] == pytest.approx(3.0)  # (2 + 4) / 2
    assert days[1]["latency_p50_ms"] == pytest.approx(4.0)  # (3 + 5) / 2
    assert days[2]["error_rate"] == 1.0 and days[0]["error_rate"] == 0.0
    assert_plain_json(days)
    # the same instants held in another time zone give the same UTC days
    seoul = frame.assign(timestamp=frame["timestamp"].dt.tz_convert("Asia/Seoul"))
    assert daily_metrics(seoul) == days


# ---------------------------------------------------------------- select_window


def test_select_window_boundaries():
    end = pd.Timestamp("2025-03-10", tz="UTC")
    stamps = [end - pd.Timedelta(days=7, microseconds=1), end - pd.Timedelta(days=7),
              end - pd.Timedelta(microseconds=1), end, end - pd.Timedelta(days=3)]
    frame = make_frame(5, timestamp=stamps, id=["before", "start", "last", "end", "middle"])
    assert select_window(frame, end, 7)["id"].tolist() == ["start", "last", "middle"]
    assert select_window(frame, end.tz_localize(None), 7)["id"].tolist() == ["start", "last", "middle"]  # naive = UTC
    assert select_window(frame, end.tz_convert("America/New_York"), 7)["id"].tolist() == ["start", "last", "middle"]
    assert select_window(frame, end, 0).empty
    assert compute_metrics(select_window(frame, end - pd.Timedelta(days=30), 1))["interactions"] == 0
    with pytest.raises(ValueError):
        select_window(frame, end, -1)


# ---------------------------------------------------------------- alerts


def rule(**kwargs: Any) -> AlertRule:
    return AlertRule(**kwargs)


def test_alert_max_is_strict():
    alerts = evaluate_alerts({"interactions": 100, "error_rate": 0.1}, None, [rule(metric="error_rate", max=0.05)])
    assert [(a.metric, a.value, a.threshold, a.rule, a.previous) for a in alerts] == [
        ("error_rate", 0.1, 0.05, "max", None)
    ]
    assert "error_rate" in alerts[0].message and "\n" not in alerts[0].message
    assert evaluate_alerts({"interactions": 100, "error_rate": 0.05}, None, [rule(metric="error_rate", max=0.05)]) == []


def test_alert_min():
    rules = [rule(metric="feedback_rate", min=0.1)]
    (alert,) = evaluate_alerts(
        {"interactions": 100, "feedback_rate": 0.05}, {"interactions": 100, "feedback_rate": 0.2}, rules
    )
    assert (alert.rule, alert.threshold, alert.previous) == ("min", 0.1, 0.2)
    assert evaluate_alerts({"interactions": 100, "feedback_rate": 0.2}, None, rules) == []


@pytest.mark.parametrize(("previous", "value", "fires"), [
    (None, 0.9, False),  # no previous window
    ({"interactions": 100}, 0.9, False),  # previous window lacks the metric
    ({"interactions": 100, "thumbs_down_rate": None}, 0.9, False),
    ({"interactions": 100, "thumbs_down_rate": 0.0}, 0.9, False),  # relative change undefined
    ({"interactions": 100, "thumbs_down_rate": 0.1}, 0.15, False),  # +50% is not > 50%
    ({"interactions": 100, "thumbs_down_rate": 0.1}, 0.2, True),  # +100%
    ({"interactions": 10, "thumbs_down_rate": 0.1}, 0.2, False),  # previous window too small
])
def test_alert_max_increase(previous, value, fires):
    rules = [rule(metric="thumbs_down_rate", max_increase=0.5, min_interactions=50)]
    alerts = evaluate_alerts({"interactions": 100, "thumbs_down_rate": value}, previous, rules)
    assert bool(alerts) is fires
    if fires:
        (alert,) = alerts
        assert (alert.rule, alert.value, alert.threshold, alert.previous) == ("max_increase", 0.2, 0.5, 0.1)
        assert "+100%" in alert.message


def test_alert_min_interactions():
    rules = [rule(metric="error_rate", max=0.05, min_interactions=50)]
    assert evaluate_alerts({"interactions": 49, "error_rate": 1.0}, None, rules) == []
    assert len(evaluate_alerts({"interactions": 50, "error_rate": 1.0}, None, rules)) == 1


def test_none_value_never_breaches():
    current = compute_metrics(make_frame(100))  # no feedback: thumbs_down_rate is None
    assert current["thumbs_down_rate"] is None
    rules = [rule(metric="thumbs_down_rate", max=0.0, min=1.0, max_increase=0.0)]
    assert evaluate_alerts(current, {"interactions": 100, "thumbs_down_rate": 0.5}, rules) == []
    assert evaluate_alerts({"interactions": 100}, None, [rule(metric="error_rate", max=0.0)]) == []


def test_one_rule_can_breach_several_ways():
    rules = [rule(metric="total_cost_usd", max=10, max_increase=1.0)]
    alerts = evaluate_alerts(
        {"interactions": 100, "total_cost_usd": 30.0}, {"interactions": 100, "total_cost_usd": 5.0}, rules
    )
    assert [a.rule for a in alerts] == ["max", "max_increase"]
    assert_plain_json([a.model_dump() for a in alerts])


def test_alert_rule_validation():
    with pytest.raises(ValidationError, match="latency_p42_ms"):
        AlertRule(metric="latency_p42_ms", max=1)
    with pytest.raises(ValidationError, match="maximum"):
        AlertRule.model_validate({"metric": "error_rate", "maximum": 1})  # extra keys are errors
    with pytest.raises(ValidationError, match="none of max, min, max_increase"):
        AlertRule(metric="error_rate")


def test_default_rules_validate_and_spare_tiny_windows():
    rules = [AlertRule.model_validate(r) for r in DEFAULT_ALERT_RULES]
    assert all(r.min_interactions == 50 for r in rules)
    assert {(r.metric, r.max, r.max_increase) for r in rules} >= {
        ("latency_p95_ms", 3000, None), ("error_rate", 0.05, None), ("thumbs_down_rate", 0.25, None),
        ("refusal_rate", 0.2, None), ("injection_attempt_rate", 0.05, None), ("toxicity_rate", 0.01, None),
        ("thumbs_down_rate", None, 0.5), ("total_cost_usd", None, 1.0), ("bias_rate", 0.01, None),
        ("injection_followed_rate", 0.005, None)}
    bad = compute_metrics(make_frame(4, error=["x"] * 4, output=[None] * 4, latency_ms=[9000.0] * 4))
    assert evaluate_alerts(bad, None, rules) == []  # 4 interactions < 50
    bad_big = compute_metrics(make_frame(60, error=["x"] * 60, output=[None] * 60, latency_ms=[9000.0] * 60))
    assert {a.metric for a in evaluate_alerts(bad_big, None, rules)} == {"error_rate", "latency_p95_ms"}
    assert all(isinstance(a, AlertResult) for a in evaluate_alerts(bad_big, None, rules))


# ---------------------------------------------------------------- scale


@pytest.mark.slow
def test_one_million_rows_runs():
    n = 1_000_000
    rng = np.random.default_rng(7)
    failed = rng.random(n) < 0.03
    feedback = pd.array(rng.choice(np.array([-1, 0, 1], dtype="int8"), n), dtype="Int8")
    feedback[rng.random(n) < 0.8] = pd.NA
    cost = rng.random(n) / 100
    cost[rng.random(n) < 0.05] = np.nan
    frame = pd.DataFrame({
        "timestamp": pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 30 * 86_400, n), unit="s"),
        "prompt_version": pd.Series(rng.choice(["v1", "v2", "v3"], n), dtype="str"),
        "model": pd.Series(rng.choice(["model-a", "model-b"], n), dtype="str"),
        "output": pd.Series(np.where(failed, None, "ok"), dtype="str"),
        "latency_ms": rng.lognormal(6.5, 0.6, n),
        "prompt_tokens": rng.integers(50, 2000, n),
        "completion_tokens": rng.integers(5, 500, n),
        "cost_usd": cost,
        "error": pd.Series(np.where(failed, "timeout", None), dtype="str"),
        "feedback": feedback,
        "refusal": rng.random(n) < 0.1,
        "toxic": rng.random(n) < 0.001,
        "injection": rng.random(n) < 0.02,
    })
    overall = compute_metrics(frame)
    by_version = metrics_by(frame, "prompt_version")
    days = daily_metrics(frame)
    assert overall["interactions"] == n
    assert sum(m["interactions"] for m in by_version.values()) == n
    assert len(days) == 30 and sum(d["interactions"] for d in days) == n
    assert_plain_json([overall, by_version, days])
