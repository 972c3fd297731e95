"""Langfuse exports and OTLP JSON mapped to log records, read straight from the sources (no workspace)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from promptloop.collect.exports import TraceExportSource
from promptloop.collect.langfuse import LangfuseExportSource
from promptloop.collect.otel import OtelFileSource
from promptloop.collect.stage import source_from_uri
from promptloop.core.config import CollectSettings, LangfuseSettings
from promptloop.core.errors import InputError
from promptloop.domain.logs import LOG_FIELDS, LogRecord
from tests.trace_formats import (
    NOW,
    interactions,
    iso_z,
    langfuse_observations,
    langfuse_score,
    langfuse_trace,
    nanos,
    otel_feedback_span,
    otel_spans,
    otlp_attributes,
    otlp_line,
)

NOW_MS = int(NOW.timestamp() * 1000)


def read_all(source: TraceExportSource, watermark: dict[str, Any] | None = None) -> tuple[dict[str, dict], Any]:
    source.app, source.now_ms = "support-bot", NOW_MS
    batch = source.read(watermark)
    rows = {r["id"]: r for r in batch.frame.to_dict("records")}
    return rows, batch


def test_a_langfuse_trace_with_its_observations_and_scores_embedded(tmp_path: Path) -> None:
    """GET /api/public/traces/{id} (TraceWithFullDetails) saved as one .json file: a multi-turn chat."""
    item = interactions(13)[12]  # multi-turn, rated
    trace = {**langfuse_trace(item), "observations": langfuse_observations(item), "scores": [langfuse_score(item)]}
    (tmp_path / "trace.json").write_text(json.dumps(trace), encoding="utf-8")
    rows, batch = read_all(LangfuseExportSource.from_uri("langfuse-export:trace.json", tmp_path))
    row = rows[item.trace_id]
    assert row["timestamp"] == item.start.isoformat(timespec="milliseconds")
    assert (row["model"], row["prompt_version"], row["app"]) == ("offline/support-bot", "1", "support-bot")
    assert (row["input"], row["output"]) == (item.question, item.answer)
    assert row["inputs"] == {"history": item.history} and len(item.history) == 2
    assert (row["prompt_tokens"], row["completion_tokens"]) == (item.prompt_tokens, item.completion_tokens)
    assert row["latency_ms"] == item.latency_ms and row["cost_usd"] == pytest.approx(item.cost)
    assert (row["feedback"], row["user_id"]) == (item.feedback, item.user_id)
    assert row["metadata"] == {"source": "langfuse", "session_id": item.session_id, "trace_name": "support_bot"}
    LogRecord.model_validate({k: row[k] for k in LOG_FIELDS})
    assert batch.watermark["timestamp_ms"] == int(item.start.timestamp() * 1000)


def test_a_trace_download_wrapping_trace_observations_and_scores(tmp_path: Path) -> None:
    item = interactions(1)[0]
    wrapped = {"trace": langfuse_trace(item), "observations": langfuse_observations(item),
               "scores": [langfuse_score(item)]}
    (tmp_path / f"trace-{item.trace_id}.json").write_text(json.dumps(wrapped, indent=2), encoding="utf-8")
    rows, batch = read_all(LangfuseExportSource.from_uri("langfuse-export:.", tmp_path))
    assert list(rows) == [item.trace_id] and batch.unreadable == []
    assert (rows[item.trace_id]["feedback"], rows[item.trace_id]["output"]) == (item.feedback, item.answer)


def test_observations_alone_as_an_api_page_make_the_trace(tmp_path: Path) -> None:
    """A saved page of GET /api/public/v2/observations (input/output as text): the root observation is
    the trace; the failed one's status message is the error and there is no output."""
    ok, failed = interactions(8)[6], interactions(8)[7]
    page = {"data": langfuse_observations(ok) + langfuse_observations(failed), "meta": {"cursor": None}}
    (tmp_path / "observations.json").write_text(json.dumps(page), encoding="utf-8")
    rows, _ = read_all(LangfuseExportSource.from_uri("langfuse-export:observations.json", tmp_path))
    assert rows[ok.trace_id]["output"] == ok.answer and rows[ok.trace_id]["error"] is None
    assert rows[failed.trace_id]["output"] is None
    assert rows[failed.trace_id]["error"] == "RateLimitError: too many requests"
    assert rows[ok.trace_id]["user_id"] == ok.user_id  # from the root observation, no trace record
    assert rows[ok.trace_id]["prompt_version"] == "1"


@pytest.mark.parametrize(("score", "expected"), [
    ({"dataType": "BOOLEAN", "value": 0, "stringValue": "False"}, -1),  # v1 API: booleans as 1/0
    ({"dataType": "BOOLEAN", "value": True}, 1),  # v3 API: a real boolean
    ({"dataType": "NUMERIC", "value": 0.0}, 0),
    ({"dataType": "NUMERIC", "value": -3.5}, -1),
    ({"dataType": "CATEGORICAL", "value": None, "stringValue": "thumbs_down"}, -1),
    ({"dataType": "CATEGORICAL", "value": "positive"}, 1),
    ({"dataType": "CATEGORICAL", "value": "meh"}, None),
])
def test_langfuse_score_values(tmp_path: Path, score: dict[str, Any], expected: int | None) -> None:
    item = interactions(1)[0]
    base = {**langfuse_score(item), "comment": "said so"}
    base.pop("value")
    lines = [langfuse_trace(item), *langfuse_observations(item), {**base, **score}]
    (tmp_path / "export.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    rows, _ = read_all(LangfuseExportSource.from_uri("langfuse-export:export.jsonl", tmp_path))
    assert rows[item.trace_id]["feedback"] == expected
    assert rows[item.trace_id]["feedback_comment"] == "said so"


@pytest.mark.parametrize(("scale", "value", "expected"), [
    ((0, 1), 0.0, -1), ((0, 1), 1.0, 1), ((0, 1), 0.5, 0), ((0, 1), 3.0, None),  # 0 = thumbs down
    ((1, 5), 2.0, -1), ((1, 5), 3.0, 0), ((1, 5), 4.0, 1),  # stars
])
def test_numeric_feedback_is_read_on_the_apps_scale(tmp_path: Path, scale: tuple[int, int], value: float,
                                                    expected: int | None) -> None:
    item = interactions(1)[0]
    score = {**langfuse_score(item), "dataType": "NUMERIC", "value": value}
    lines = [langfuse_trace(item), *langfuse_observations(item), score]
    (tmp_path / "export.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    langfuse = LangfuseExportSource.from_uri("langfuse-export:export.jsonl", tmp_path)
    langfuse.feedback_scale = scale
    assert read_all(langfuse)[0][item.trace_id]["feedback"] == expected
    rated = next(i for i in interactions(4) if i.number % 2 == 0 and i.feedback is not None)  # an evaluation event
    spans = [*otel_spans(rated)[:2], otel_feedback_span(rated, 1)]
    for span in spans[2:]:
        for event in span["events"]:
            event["attributes"] = [a if a["key"] != "gen_ai.evaluation.score.value" else
                                   {"key": a["key"], "value": {"doubleValue": value}} for a in event["attributes"]]
    (tmp_path / "spans.jsonl").write_text(otlp_line(spans), encoding="utf-8")
    otel = OtelFileSource.from_uri("otel:spans.jsonl", tmp_path)
    otel.feedback_scale = scale
    assert read_all(otel)[0][rated.trace_id]["feedback"] == expected


def test_only_feedback_scores_count_and_the_newest_wins(tmp_path: Path) -> None:
    item = interactions(1)[0]
    later = item.feedback_time + timedelta(minutes=1)
    judge = {**langfuse_score(item, -1, suffix="-judge"), "name": "helpfulness", "source": "EVAL"}
    lines = [langfuse_trace(item), *langfuse_observations(item), langfuse_score(item, 1),
             langfuse_score(item, -1, when=later, suffix="-2"), judge]
    (tmp_path / "export.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    source = LangfuseExportSource.from_uri("langfuse-export:export.jsonl", tmp_path)
    rows, _ = read_all(source)
    assert rows[item.trace_id]["feedback"] == -1
    changes, mark = source.feedback_changes(NOW_MS - 7 * 86_400_000, None)
    assert changes == {item.trace_id: (-1, None)} and mark == int(later.timestamp() * 1000)
    assert source.feedback_changes(NOW_MS - 7 * 86_400_000, mark + 1) == ({}, mark + 1)
    # Outside the lookback window: not re-read.
    assert source.feedback_changes(NOW_MS, None)[0] == {}


def test_older_genai_conventions_events_and_indexed_attributes(tmp_path: Path) -> None:
    """Instrumentations of earlier GenAI conventions: messages as span events (gen_ai.user.message,
    gen_ai.choice) or as gen_ai.prompt.<i>.* attributes, usage as prompt_tokens/completion_tokens."""
    first, second = interactions(2)
    lines = []
    for item, style in ((first, "events"), (second, "indexed")):
        chat, root = otel_spans(item)[:2]
        attrs = {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
                 "gen_ai.usage.prompt_tokens": 11, "gen_ai.usage.completion_tokens": 7}
        if style == "events":
            chat["events"] = [
                {"timeUnixNano": chat["startTimeUnixNano"], "name": "gen_ai.system.message",
                 "attributes": otlp_attributes({"content": "You help."})},
                {"timeUnixNano": chat["startTimeUnixNano"], "name": "gen_ai.user.message",
                 "attributes": otlp_attributes({"content": item.question})},
                {"timeUnixNano": chat["endTimeUnixNano"], "name": "gen_ai.choice",
                 "attributes": otlp_attributes({"index": 0, "finish_reason": "stop",
                                                "message": json.dumps({"role": "assistant",
                                                                       "content": item.answer})})}]
        else:
            attrs.update({"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": item.question,
                          "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": item.answer})
        chat["attributes"] = otlp_attributes(attrs)
        lines.append(otlp_line([chat, root]))
    (tmp_path / "old.jsonl").write_text("".join(lines), encoding="utf-8")
    rows, _ = read_all(OtelFileSource.from_uri("otel:old.jsonl", tmp_path))
    for item in (first, second):
        row = rows[item.trace_id]
        assert (row["input"], row["output"], row["model"]) == (item.question, item.answer, "gpt-4o-mini")
        assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 7)


def test_an_otel_error_span_gives_the_exception_and_no_output(tmp_path: Path) -> None:
    item = interactions(8)[7]
    (tmp_path / "t.jsonl").write_text(otlp_line(otel_spans(item)), encoding="utf-8")
    rows, _ = read_all(OtelFileSource.from_uri("otel:t.jsonl", tmp_path))
    row = rows[item.trace_id]
    assert (row["output"], row["error"]) == (None, "RateLimitError: too many requests")
    assert row["latency_ms"] == item.latency_ms and row["timestamp"] == item.start.isoformat(timespec="milliseconds")
    assert row["metadata"] == {"source": "otel", "session_id": item.session_id, "service": "support-bot"}


def test_the_feedback_attribute_and_event_are_configurable(tmp_path: Path) -> None:
    item = interactions(1)[0]
    chat, root = otel_spans(item)[:2]
    root["attributes"] += otlp_attributes({"app.rating": -1})
    root["events"] = [{"timeUnixNano": nanos(item.feedback_time), "name": "rating",
                       "attributes": otlp_attributes({"gen_ai.evaluation.name": "stars",
                                                      "gen_ai.evaluation.score.label": "positive"})}]
    (tmp_path / "t.jsonl").write_text(otlp_line([chat, root]), encoding="utf-8")
    default, _ = read_all(OtelFileSource.from_uri("otel:t.jsonl", tmp_path))
    assert default[item.trace_id]["feedback"] is None
    by_attribute = source_from_uri("otel:t.jsonl", tmp_path, settings=CollectSettings(
        otel_feedback_attribute="app.rating"))
    assert isinstance(by_attribute, OtelFileSource)
    assert read_all(by_attribute)[0][item.trace_id]["feedback"] == -1
    by_event = source_from_uri("otel:t.jsonl", tmp_path, settings=CollectSettings(
        otel_feedback_event="rating", feedback_names=["stars"]))
    assert isinstance(by_event, OtelFileSource)
    assert read_all(by_event)[0][item.trace_id]["feedback"] == 1  # event time is after the span's end


def test_unreadable_lines_are_reported_once_and_unchanged_files_are_not_parsed(tmp_path: Path) -> None:
    items = interactions(3)
    path = tmp_path / "t.jsonl"
    path.write_text(otlp_line(otel_spans(items[0])) + "{broken\n", encoding="utf-8")
    source = OtelFileSource.from_uri("otel:t.jsonl", tmp_path)
    rows, batch = read_all(source)
    assert len(rows) == 1 and [u.reason.split(":")[0] for u in batch.unreadable] == ["invalid_json"]
    again, same = read_all(source, batch.watermark)
    assert (again, same.unreadable, same.watermark) == ({}, [], batch.watermark)
    with path.open("a", encoding="utf-8") as out:
        out.write(otlp_line(otel_spans(items[1])) + "[1, 2]\n")
    grown, more = read_all(source, same.watermark)
    assert list(grown) == [items[1].trace_id]
    # the old bad line is not reported again
    assert [(u.origin, u.reason.split(":")[0]) for u in more.unreadable] == [("t.jsonl:4", "not_an_object")]


def test_sources_from_uris_and_their_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "in").mkdir()
    assert isinstance(source_from_uri("langfuse-export:in", tmp_path), LangfuseExportSource)
    assert isinstance(source_from_uri("otel:in", tmp_path), OtelFileSource)
    with pytest.raises(InputError, match="not found"):
        source_from_uri("otel:missing.jsonl", tmp_path)
    with pytest.raises(InputError, match="outside the workspace"):
        source_from_uri("langfuse-export:/etc", tmp_path, allow_outside=False)
    monkeypatch.delenv("LANGFUSE_HOST", raising=False)
    monkeypatch.delenv("LANGFUSE_BASE_URL", raising=False)
    with pytest.raises(InputError, match="no Langfuse host"):
        source_from_uri("langfuse:", tmp_path)
    with pytest.raises(InputError, match="allow-outside"):  # the keys would go to a host params.yaml does not name
        source_from_uri("langfuse:https://elsewhere.example", tmp_path, allow_outside=False)
    monkeypatch.delenv("LANGFUSE_SECRET_KEY", raising=False)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-0123456789")
    with pytest.raises(InputError, match="LANGFUSE_SECRET_KEY"):
        source_from_uri("langfuse:http://127.0.0.1:1", tmp_path)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-0123456789")
    source = source_from_uri("langfuse:", tmp_path, settings=CollectSettings(
        langfuse=LangfuseSettings(host="https://langfuse.example.com")))
    assert source.key == "langfuse:https://langfuse.example.com"
    with pytest.raises(ValidationError) as refused:
        LangfuseSettings(secret_key="sk-lf-literal-key-here")
    assert "sk-lf-literal-key-here" not in str(refused.value)


def test_a_trace_start_watermark_reads_ties_once(tmp_path: Path) -> None:
    """Two traces in the same millisecond: the watermark keeps both ids, neither is read twice."""
    first, second = interactions(2)
    second.start = first.start
    lines = [langfuse_trace(first), *langfuse_observations(first)]
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    source = LangfuseExportSource.from_uri("langfuse-export:e.jsonl", tmp_path)
    _, batch = read_all(source)
    with path.open("a", encoding="utf-8") as out:
        out.writelines(json.dumps(r) + "\n" for r in [langfuse_trace(second), *langfuse_observations(second)])
    rows, after = read_all(source, batch.watermark)
    assert list(rows) == [second.trace_id]
    assert after.watermark["trace_ids"] == sorted([first.trace_id, second.trace_id])
    assert iso_z(first.start) == json.loads(path.read_text().splitlines()[0])["timestamp"]
