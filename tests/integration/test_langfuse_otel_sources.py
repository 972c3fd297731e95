"""Langfuse (export and API) and OTLP JSON sources collected into real workspaces (git, DVC, MLflow).

The same 200 interactions, written as JSON Lines, a Langfuse export, OTLP JSON and served by a
loopback stand-in of Langfuse's public API, collect to the same rows with the same feedback; a
second collect adds nothing; late scores arrive; missing fields are quarantined with reasons.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from promptloop.collect.stage import collect
from promptloop.core.errors import InputError
from promptloop.ops.initialize import init_workspace
from promptloop.workspace.workspace import open_workspace
from tests.trace_formats import (
    APP,
    NOW,
    Interaction,
    interactions,
    langfuse_observations,
    langfuse_score,
    otel_feedback_span,
    otel_spans,
    otlp_line,
    write_jsonl,
    write_langfuse_export,
    write_otlp,
)

PUBLIC_KEY, SECRET_KEY = "pk-lf-loopback-0001", "sk-lf-loopback-secret-0001"
COMPARED = ["timestamp", "app", "prompt_version", "model", "input", "output", "latency_ms", "prompt_tokens",
            "completion_tokens", "error", "feedback", "feedback_comment", "user_hash", "inputs"]


class LangfuseStandIn:
    """The two endpoints the `langfuse:` source calls, on loopback: GET /api/public/v2/observations and
    GET /api/public/v3/scores (cursor pages, basic auth, the time filters the source sends)."""

    def __init__(self) -> None:
        self.observations: list[dict[str, Any]] = []
        self.scores: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                stand_in.requests.append(self.path)
                expected = "Basic " + base64.b64encode(f"{PUBLIC_KEY}:{SECRET_KEY}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self._reply(401, {"message": "unauthorized"})
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/api/public/v2/observations":
                    since = query.get("fromStartTime")
                    rows = [o for o in stand_in.observations if since is None or _at(o["startTime"]) >= _at(since)]
                    rows.sort(key=lambda o: (o["startTime"], o["id"]))
                elif url.path == "/api/public/v3/scores":
                    since = query.get("fromTimestamp")
                    names = set(query["name"].split(",")) if "name" in query else None
                    rows = [s for s in stand_in.scores if (since is None or _at(s["timestamp"]) >= _at(since))
                            and (names is None or s["name"] in names)]
                    rows.sort(key=lambda s: (s["timestamp"], s["id"]))
                else:
                    return self._reply(404, {"message": "not found"})
                start = int(query.get("cursor") or 0)
                limit = int(query.get("limit") or 50)
                page = rows[start:start + limit]
                meta: dict[str, Any] = {"limit": limit} if "scores" in url.path else {}
                if start + limit < len(rows):
                    meta["cursor"] = str(start + limit)
                self._reply(200, {"data": page, "meta": meta})

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@contextmanager
def langfuse_stand_in(items: list[Interaction]) -> Iterator[LangfuseStandIn]:
    stand_in = LangfuseStandIn()
    stand_in.observations = [o for i in items for o in langfuse_observations(i)]
    stand_in.scores = [langfuse_score(i) for i in items if i.feedback is not None]
    stand_in.thread.start()
    try:
        yield stand_in
    finally:
        stand_in.server.shutdown()
        stand_in.server.server_close()


def fresh_workspace(path: Path) -> Any:
    init_workspace(path)
    return open_workspace(path)


def stored(workspace: Any) -> pd.DataFrame:
    logs = workspace.path(workspace.app_settings(APP).data_dir) / "logs"
    return pd.concat([pq.read_table(p).to_pandas() for p in sorted(logs.glob("*.parquet"))],
                     ignore_index=True).set_index("id").sort_index()


def quarantined(workspace: Any) -> pd.DataFrame:
    folder = workspace.path(workspace.app_settings(APP).data_dir) / "quarantine"
    parts = sorted(folder.glob("*.parquet"))
    return pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True) if parts else pd.DataFrame()


def feedback_counts(frame: pd.DataFrame) -> Counter[Any]:
    return Counter(None if pd.isna(v) else int(v) for v in frame["feedback"])


@pytest.fixture
def same_pii_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """One user-id hashing key for every workspace, so their user hashes can be compared."""
    monkeypatch.setenv("PROMPTLOOP_PII_KEY", "the-same-key-for-every-workspace")


def test_the_same_interactions_collect_to_the_same_rows_in_every_form(
    tmp_path: Path, same_pii_key: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The done-when of issue 19: 200 interactions as JSON Lines, a Langfuse export, OTLP JSON and the
    Langfuse API collect to the same 200 rows with the same feedback; a second collect adds nothing;
    late scores arrive (once each) in every trace form."""
    items = interactions(200)
    expected_feedback = Counter(i.feedback for i in items)
    assert expected_feedback[1] > 0 and expected_feedback[-1] > 0 and sum(1 for i in items if i.error) > 10
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET_KEY)
    frames: dict[str, pd.DataFrame] = {}
    late = [items[1], items[4], items[0]]  # two new thumbs and a changed mind
    with langfuse_stand_in(items) as server:
        forms = {
            "jsonl": lambda root: str(write_jsonl(items, root / "incoming" / "app.jsonl").relative_to(root)),
            "langfuse-export": lambda root: "langfuse-export:" + str(
                write_langfuse_export(items, root / "incoming" / "langfuse").relative_to(root)),
            "otel": lambda root: "otel:" + str(write_otlp(items, root / "incoming" / "otel.jsonl").relative_to(root)),
            "langfuse": lambda root: f"langfuse:{server.url}",
        }
        for form, write in forms.items():
            workspace = fresh_workspace(tmp_path / form)
            uri = write(workspace.root)
            # A langfuse:<host> the workspace does not configure needs allow_outside (the keys go there).
            reach = form == "langfuse"
            first = collect(workspace, APP, source_uri=uri, now=NOW, allow_outside=reach)
            counts = (first.rows_in, first.rows_valid, first.rows_quarantined, first.rows_duplicate)
            assert counts == (200, 200, 0, 0), (form, first.failures)
            frames[form] = stored(workspace)
            assert feedback_counts(frames[form]) == expected_feedback, form

            second = collect(workspace, APP, source_uri=uri, now=NOW, allow_outside=reach)
            assert (second.rows_in, second.rows_valid, second.feedback_updated, second.git_commit) == (0, 0, 0, None)
            if form == "jsonl":
                continue
            # Late feedback, written after the first collect.
            when = NOW - timedelta(minutes=5)
            values = {items[1].number: 1, items[4].number: -1, items[0].number: -1}
            if form == "langfuse-export":
                with (workspace.root / "incoming" / "langfuse" / "scores.jsonl").open("a", encoding="utf-8") as out:
                    out.writelines(json.dumps(langfuse_score(i, values[i.number], when=when, suffix="-late")) + "\n"
                                   for i in late)
            elif form == "otel":
                with (workspace.root / "incoming" / "otel.jsonl").open("a", encoding="utf-8") as out:
                    out.write(otlp_line([otel_feedback_span(i, values[i.number], when=when, suffix="-late")
                                         for i in late]))
            else:
                server.scores += [langfuse_score(i, values[i.number], when=when, suffix=f"-late-{form}") for i in late]
            third = collect(workspace, APP, source_uri=uri, now=NOW, allow_outside=reach)
            assert (third.rows_in, third.feedback_updated) == (0, 3), form
            after = stored(workspace)
            assert len(after) == 200 and [int(after.at[i.trace_id, "feedback"]) for i in late] == [1, -1, -1], form
            fourth = collect(workspace, APP, source_uri=uri, now=NOW, allow_outside=reach)
            assert (fourth.rows_in, fourth.feedback_updated, fourth.git_commit) == (0, 0, None), form
        assert any("/api/public/v2/observations" in r for r in server.requests)
        assert any("/api/public/v3/scores" in r for r in server.requests)

    reference = frames["jsonl"]
    for form, frame in frames.items():
        assert list(frame.index) == list(reference.index), form
        for column in COMPARED:
            assert frame[column].astype(str).tolist() == reference[column].astype(str).tolist(), (form, column)
        assert frame["cost_usd"].round(12).tolist() == reference["cost_usd"].round(12).tolist(), form


def test_missing_fields_are_quarantined_with_reasons_and_counts_conserved(tmp_path: Path) -> None:
    """Traces missing what a log record needs, records that are not traces and bad lines: each one
    quarantined with its reason, in both export forms; rows_in = valid + quarantined."""
    items = interactions(12)
    good, no_usage, no_model = items[:10], items[10], items[11]

    workspace = fresh_workspace(tmp_path / "langfuse")
    folder = write_langfuse_export(good, workspace.root / "incoming" / "langfuse")
    with (folder / "observations.jsonl").open("a", encoding="utf-8") as out:
        for obs in langfuse_observations(no_usage, usage=False) + langfuse_observations(no_model, model=False):
            out.write(json.dumps(obs) + "\n")
        out.write('{"id": "obs-orphan", "type": "SPAN", "startTime": "2026-11-19T10:00:00Z"}\n')  # no traceId
        out.write('{"id": "half-written\n')
    with (folder / "traces.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps({"something": "else"}) + "\n")
    result = collect(workspace, APP, source_uri="langfuse-export:incoming/langfuse", now=NOW)
    assert result.rows_in == result.rows_valid + result.rows_quarantined + result.rows_duplicate
    assert (result.rows_valid, result.rows_quarantined) == (10, 5), result.failures
    assert result.failures["prompt_tokens_missing"] == 1 and result.failures["completion_tokens_missing"] == 1
    assert result.failures["model_missing"] == 1
    assert result.failures["no_trace_id"] == 1 and result.failures["invalid_json"] == 1
    assert result.failures["not_a_langfuse_record"] == 1
    reasons = quarantined(workspace).set_index("origin")["reasons"]
    assert any("model_missing" in r for r in reasons)
    again = collect(workspace, APP, source_uri="langfuse-export:incoming/langfuse", now=NOW)
    assert (again.rows_in, again.rows_quarantined) == (0, 0)  # reported once

    workspace = fresh_workspace(tmp_path / "otel")
    path = write_otlp(good, workspace.root / "incoming" / "otel.jsonl")
    with path.open("a", encoding="utf-8") as out:
        out.write(otlp_line(otel_spans(no_model, model=False)))
        spans = otel_spans(no_usage)
        for span in spans:  # the model call reported no usage
            span["attributes"] = [a for a in span["attributes"] if not a["key"].startswith("gen_ai.usage")]
        out.write(otlp_line(spans))
        out.write(json.dumps({"resourceMetrics": []}) + "\n")  # metrics in a traces file
        out.write("not json at all\n")
    result = collect(workspace, APP, source_uri="otel:incoming/otel.jsonl", now=NOW)
    assert result.rows_in == result.rows_valid + result.rows_quarantined + result.rows_duplicate
    assert (result.rows_valid, result.rows_quarantined) == (10, 4), result.failures
    assert result.failures["model_missing"] == 1 and result.failures["prompt_tokens_missing"] == 1
    assert result.failures["not_otlp_traces"] == 1 and result.failures["invalid_json"] == 1


def test_incremental_reads_collect_each_trace_once(tmp_path: Path) -> None:
    """An export and an OTLP file that grow between collects: each run stores only the new traces; an
    OTLP trace whose root span is not written yet waits for it."""
    items = interactions(40)
    workspace = fresh_workspace(tmp_path / "ws")
    folder = write_langfuse_export(items[:25], workspace.root / "incoming" / "langfuse")
    otlp = write_otlp(items[:25], workspace.root / "incoming" / "otel.jsonl")
    first = collect(workspace, APP, source_uri="langfuse-export:incoming/langfuse", now=NOW)
    assert first.rows_valid == 25
    # The next export holds every trace again plus 15 new ones (a re-export), the OTLP file grows.
    write_langfuse_export(items, folder)
    second = collect(workspace, APP, source_uri="langfuse-export:incoming/langfuse", now=NOW)
    assert (second.rows_in, second.rows_valid, second.rows_duplicate) == (15, 15, 0)

    other = fresh_workspace(tmp_path / "otel")
    otlp = write_otlp(items[:25], other.root / "incoming" / "otel.jsonl")
    assert collect(other, APP, source_uri="otel:incoming/otel.jsonl", now=NOW).rows_valid == 25
    pending = otel_spans(items[25])
    with otlp.open("a", encoding="utf-8") as out:
        out.write(otlp_line([s for s in pending if s["parentSpanId"]]))  # the chat span; its root still running
    soon = items[25].start + timedelta(minutes=20)  # within the grace of an unfinished trace (an hour)
    held = collect(other, APP, source_uri="otel:incoming/otel.jsonl", now=soon)
    assert held.rows_in == 0
    with otlp.open("a", encoding="utf-8") as out:
        out.write(otlp_line([s for s in pending if not s["parentSpanId"]]))
        out.write("".join(otlp_line(otel_spans(i)) for i in items[26:]))
    third = collect(other, APP, source_uri="otel:incoming/otel.jsonl", now=soon)
    assert (third.rows_in, third.rows_valid) == (15, 15)
    # Past the grace, a trace whose root span never came is read as it is (and quarantined if incomplete).
    lost = otel_spans(interactions(41)[40])
    with otlp.open("a", encoding="utf-8") as out:
        out.write(otlp_line([s for s in lost if s["parentSpanId"] and s["name"] != "user_feedback"]))
    assert collect(other, APP, source_uri="otel:incoming/otel.jsonl", now=soon).rows_in == 0
    late = collect(other, APP, source_uri="otel:incoming/otel.jsonl", now=soon + timedelta(hours=2))
    assert (late.rows_in, late.rows_valid + late.rows_quarantined) == (1, 1)
    assert sorted(stored(other).index) == sorted(i.trace_id for i in items)


def test_a_first_langfuse_run_reads_only_its_window_then_reads_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = interactions(40)  # 37 s apart
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET_KEY)
    workspace = fresh_workspace(tmp_path / "ws")
    params = yaml.safe_load((workspace.root / "params.yaml").read_text(encoding="utf-8"))
    params["collect"]["langfuse"] = {"first_run_days": 0.25 / 24}  # a quarter of an hour
    (workspace.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    workspace = open_workspace(workspace.root)
    now = items[29].start + timedelta(minutes=2)  # items 30-39 are not logged yet
    window = [i for i in items[:30] if i.start >= now - timedelta(minutes=15)]
    assert 0 < len(window) < 30
    with langfuse_stand_in(items[:30]) as server:
        first = collect(workspace, APP, source_uri=f"langfuse:{server.url}", now=now, allow_outside=True)
    assert first.rows_valid == len(window)
    assert sorted(stored(workspace).index) == sorted(i.trace_id for i in window)
    assert all("fromStartTime=" in r for r in server.requests if "/observations" in r)
    later = items[39].start + timedelta(minutes=2)
    with langfuse_stand_in(items) as server:  # the next run reads on from its watermark, whatever the window
        second = collect(workspace, APP, source_uri=f"langfuse:{server.url}", now=later, allow_outside=True)
    assert second.rows_valid == 10
    assert sorted(stored(workspace).index) == sorted(i.trace_id for i in [*window, *items[30:]])


def test_langfuse_keys_never_reach_the_stored_data_or_the_watermark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = interactions(5)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET_KEY)
    workspace = fresh_workspace(tmp_path / "ws")
    with langfuse_stand_in(items) as server:
        with pytest.raises(InputError, match="allow-outside"):
            collect(workspace, APP, source_uri=f"langfuse:{server.url}", now=NOW)
        result = collect(workspace, APP, source_uri=f"langfuse:{server.url}", now=NOW, allow_outside=True)
    assert result.rows_valid == 5 and result.sources == [f"langfuse:{server.url}"]
    data_dir = workspace.path(workspace.app_settings(APP).data_dir)
    state = (data_dir / "collect-state.json").read_text(encoding="utf-8")
    assert SECRET_KEY not in state and PUBLIC_KEY not in state
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-a-wrong-secret-000")
    with langfuse_stand_in(items) as server, pytest.raises(Exception) as failure:
        collect(workspace, APP, source_uri=f"langfuse:{server.url}", now=NOW, allow_outside=True)
    assert "sk-lf-a-wrong-secret-000" not in str(failure.value)
