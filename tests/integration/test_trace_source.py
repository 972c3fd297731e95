"""MlflowTraceSource against a real MLflow store: traces made by real MLflow tracing of a litellm app."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from promptloop.collect.sources import EXTRA, ORIGIN, RAW_COLUMNS
from promptloop.collect.stage import source_from_uri
from promptloop.collect.traces import MlflowTraceSource, feedback_score
from promptloop.core.errors import InputError
from promptloop.domain.logs import LOG_FIELDS, LogRecord

EXPERIMENT = "support-prod"
QUESTIONS = ("How do I reset my password?", "Can I get a refund for my annual plan?", "Where is my invoice?")


@dataclass
class Store:
    """The tracking store the tests read, and what the app really did while it was traced."""

    tracking_uri: str
    trace_ids: list[str] = field(default_factory=list)  # successful traces, in order
    answers: dict[str, str] = field(default_factory=dict)
    failed_id: str = ""


# Traces are written as their root span ends (the async writer's flush costs a second each time).
_MLFLOW_ENV = {"MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false"}


@contextmanager
def restore_mlflow_globals() -> Iterator[None]:
    """Restore the process-wide tracking URI, active experiment, env and litellm callbacks after."""
    import mlflow
    from mlflow.tracking import _tracking_service, fluent

    saved_uri = _tracking_service.utils._tracking_uri
    saved_experiment = fluent._active_experiment_id
    saved_env = {k: os.environ.get(k) for k in (*_MLFLOW_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    os.environ.update(_MLFLOW_ENV)
    try:
        yield
    finally:
        mlflow.flush_trace_async_logging()
        mlflow.litellm.autolog(disable=True)
        mlflow.set_tracking_uri(saved_uri)
        fluent._active_experiment_id = saved_experiment
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _support_bot(litellm: Any, model: str) -> Any:
    """The traced app: one question in, the model's answer out, tagged like production."""
    import mlflow

    @mlflow.trace(name="support_bot")
    def support_bot(question: str) -> str:
        mlflow.update_current_trace(
            tags={"app": "support-bot", "prompt_version": "1"},
            metadata={"mlflow.trace.user": "user-7"},
            session_id="session-42",
        )
        messages = [
            {"role": "system", "content": "You are the support assistant."},
            {"role": "user", "content": question},
        ]
        response = litellm.completion(model=model, messages=messages, temperature=0)
        return response.choices[0].message.content

    return support_bot


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, litellm: Any) -> Iterator[Store]:
    """Three answered questions and one failed model call, traced by MLflow, with user feedback."""
    import mlflow
    from mlflow.entities import AssessmentSource

    root = tmp_path_factory.mktemp("mlflow")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    with restore_mlflow_globals():
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(EXPERIMENT)
        mlflow.litellm.autolog()
        result = Store(tracking_uri)
        bot = _support_bot(litellm, "offline/support-bot")
        for question in QUESTIONS:
            answer = bot(question)
            trace_id = mlflow.get_last_active_trace_id()
            result.trace_ids.append(trace_id)
            result.answers[trace_id] = answer
        with pytest.raises(Exception, match="no simulated model"):
            _support_bot(litellm, "offline/retired-model")("Is the service down?")
        result.failed_id = mlflow.get_last_active_trace_id()
        mlflow.flush_trace_async_logging()

        first, second, _ = result.trace_ids
        user = AssessmentSource(source_type="HUMAN", source_id="user-7")
        mlflow.log_feedback(trace_id=first, name="user_feedback", value=False, rationale="wrong answer", source=user)
        mlflow.log_feedback(trace_id=second, name="user_feedback", value=True, source=user)
        judge = AssessmentSource(source_type="LLM_JUDGE", source_id="offline/judge")
        mlflow.log_feedback(trace_id=second, name="quality", value="negative", rationale="too vague", source=judge)
        yield result


@pytest.fixture(scope="module")
def rows(store: Store) -> dict[str, dict[str, Any]]:
    batch = MlflowTraceSource(store.tracking_uri, EXPERIMENT).read(None)
    assert list(batch.frame.columns) == list(RAW_COLUMNS)
    assert all(dtype == object for dtype in batch.frame.dtypes)  # noqa: E721 (numpy dtypes)
    return {row["id"]: row for row in batch.frame.to_dict("records")}


def test_reads_every_trace_oldest_first_as_a_log_row(store: Store, rows: dict[str, dict[str, Any]]) -> None:
    assert list(rows) == [*store.trace_ids, store.failed_id]
    stamps = [datetime.fromisoformat(row["timestamp"]) for row in rows.values()]
    assert stamps == sorted(stamps)
    for stamp in stamps:
        assert stamp.utcoffset() == timedelta(0)
        assert abs(datetime.now(stamp.tzinfo) - stamp) < timedelta(minutes=5)


def test_a_successful_trace_maps_field_by_field(store: Store, rows: dict[str, dict[str, Any]]) -> None:
    trace_id = store.trace_ids[0]
    row = rows[trace_id]
    assert row["id"] == trace_id
    assert row["timestamp"].endswith("+00:00")
    assert row["app"] == "support-bot"
    assert row["prompt_version"] == "1"
    assert row["model"] == "offline/support-bot"  # mlflow.llm.model of the litellm autolog span
    assert row["input"] == QUESTIONS[0]
    assert row["output"] == store.answers[trace_id] and row["output"]
    assert row["latency_ms"] >= 0
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert row["cost_usd"] is None
    assert row["error"] is None
    assert row["user_id"] == "user-7"
    assert row["metadata"] == {"source": "mlflow", "experiment": EXPERIMENT, "session_id": "session-42"}
    assert row[ORIGIN] == f"mlflow:{trace_id}"
    assert row[EXTRA] is None


def test_human_feedback_becomes_the_score_and_comment(store: Store, rows: dict[str, dict[str, Any]]) -> None:
    first, second, third = store.trace_ids
    assert (rows[first]["feedback"], rows[first]["feedback_comment"]) == (-1, "wrong answer")
    # The LLM judge's "quality" feedback on the second trace is not a user's.
    assert (rows[second]["feedback"], rows[second]["feedback_comment"]) == (1, None)
    assert (rows[third]["feedback"], rows[third]["feedback_comment"]) == (None, None)


def test_feedback_name_selects_that_assessment_whatever_its_source(store: Store) -> None:
    batch = MlflowTraceSource(store.tracking_uri, EXPERIMENT, feedback_name="quality").read(None)
    by_id = {row["id"]: row for row in batch.frame.to_dict("records")}
    first, second, _ = store.trace_ids
    assert (by_id[second]["feedback"], by_id[second]["feedback_comment"]) == (-1, "too vague")
    assert by_id[first]["feedback"] is None


def test_a_failed_trace_has_the_error_and_no_output(store: Store, rows: dict[str, dict[str, Any]]) -> None:
    row = rows[store.failed_id]
    assert row["output"] is None
    assert row["error"].startswith("NotFoundError:") and "no simulated model 'retired-model'" in row["error"]
    assert row["input"] == "Is the service down?"
    assert row["app"] == "support-bot" and row["user_id"] == "user-7"
    assert row["latency_ms"] >= 0


def test_successful_rows_are_valid_log_records(store: Store, rows: dict[str, dict[str, Any]]) -> None:
    for trace_id in store.trace_ids:
        record = LogRecord.model_validate({name: rows[trace_id][name] for name in LOG_FIELDS})
        assert record.model == "offline/support-bot" and record.cost_usd is None


def test_small_pages_read_the_same_rows(store: Store, rows: dict[str, dict[str, Any]]) -> None:
    batch = MlflowTraceSource(store.tracking_uri, EXPERIMENT, page_size=1).read(None)
    assert list(batch.frame["id"]) == list(rows)


def test_watermark_ties_are_neither_lost_nor_reread(store: Store, rows: dict[str, dict[str, Any]]) -> None:
    source = MlflowTraceSource(store.tracking_uri, EXPERIMENT)
    first = store.trace_ids[0]
    first_ms = int(datetime.fromisoformat(rows[first]["timestamp"]).timestamp() * 1000)
    assert list(source.read({"timestamp_ms": first_ms, "trace_ids": [first]}).frame["id"]) == list(rows)[1:]
    assert list(source.read({"timestamp_ms": first_ms, "trace_ids": []}).frame["id"]) == list(rows)


def test_incremental_reads_and_unfinished_traces(store: Store, litellm: Any) -> None:
    """Nothing new reads 0 rows; a running trace waits until it ends; then exactly it is read."""
    import mlflow

    with restore_mlflow_globals():
        mlflow.set_tracking_uri(store.tracking_uri)
        mlflow.set_experiment("live")
        source = MlflowTraceSource(store.tracking_uri, "live", app="fallback-app")
        assert source.read(None).watermark == {}
        mlflow.litellm.autolog()

        @mlflow.trace(name="chat")
        def chat(messages: list[dict[str, str]]) -> Any:
            return litellm.completion(model="offline/support-bot", messages=messages, temperature=0)

        chat([{"role": "user", "content": "hi"}])
        mlflow.flush_trace_async_logging()
        batch = source.read(None)
        assert len(batch.frame) == 1
        mark = batch.watermark
        assert mark == {"timestamp_ms": mark["timestamp_ms"], "trace_ids": list(batch.frame["id"])}
        assert len(source.read(mark).frame) == 0

        with mlflow.start_span("request"):
            with mlflow.start_span("retrieve"):
                pass
            mlflow.flush_trace_async_logging()  # the ended child span reaches the store: IN_PROGRESS
            waiting = source.read(mark)
            assert len(waiting.frame) == 0 and waiting.watermark == mark
            stale = MlflowTraceSource(store.tracking_uri, "live", in_progress_grace_s=0).read(mark)
            assert len(stale.frame) == 1
            mlflow.update_current_trace(
                request_preview="hello", tags={"model": "offline/tagged"}, metadata={"mlflow.trace.user": "u-9"}
            )
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "How do I change my email?"},
        ]
        chat(messages)
        mlflow.flush_trace_async_logging()
        batch = source.read(mark)
        assert len(batch.frame) == 2
        finished, chatted = batch.frame.to_dict("records")
        assert finished["app"] == "fallback-app" and finished["model"] == "offline/tagged"
        assert finished["user_id"] == "u-9" and finished["prompt_tokens"] is None
        assert finished["input"] == "hello"  # no span inputs: the request preview, as text
        assert chatted["input"] == "How do I change my email?"
        assert chatted["output"] and chatted["model"] == "offline/support-bot"
        assert len(source.read(batch.watermark).frame) == 0

        @mlflow.trace(name="chat")
        def again() -> str:
            return "ok"

        again()
        mlflow.flush_trace_async_logging()
        newest = source.read(batch.watermark)
        assert len(newest.frame) == 1 and newest.frame["output"].tolist() == ["ok"]


def test_from_uri_both_forms(tmp_path: Path) -> None:
    default = MlflowTraceSource.from_uri("mlflow:support-prod", tmp_path)
    assert default.experiment == "support-prod"
    assert default.tracking_uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert default.key == f"mlflow:support-prod@{default.tracking_uri}"
    explicit = MlflowTraceSource.from_uri("mlflow:prod@postgresql://bot:secret@db:5432/mlflow", tmp_path)
    assert (explicit.experiment, explicit.tracking_uri) == ("prod", "postgresql://bot:secret@db:5432/mlflow")
    relative = MlflowTraceSource.from_uri("mlflow:prod@sqlite:///stores/m.db", tmp_path)
    assert relative.tracking_uri == f"sqlite:///{(tmp_path / 'stores' / 'm.db').resolve()}"
    assert isinstance(source_from_uri("mlflow:support-prod", tmp_path), MlflowTraceSource)
    for bad in ("mlflow:", "mlflow:@sqlite:///x.db", "mlflow:prod@"):
        with pytest.raises(InputError):
            MlflowTraceSource.from_uri(bad, tmp_path)


def test_unknown_experiment_or_store_is_an_input_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="MLflow experiment 'nope' not found"):
        MlflowTraceSource.from_uri(f"mlflow:nope@{store.tracking_uri}", tmp_path).read(None)
    with pytest.raises(InputError, match="not found"):
        MlflowTraceSource.from_uri("mlflow:support-prod", tmp_path).read(None)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("value", "score"),
    [
        (True, 1), (False, -1), (5, 1), (0, 0), (-0.5, -1), (float("nan"), None),
        ("thumbs_up", 1), (" Up ", 1), ("positive", 1), ("thumbs_down", -1), ("down", -1),
        ("NEGATIVE", -1), ("meh", None), (None, None), ([1], None),
    ],
)
def test_feedback_score(value: Any, score: int | None) -> None:
    assert feedback_score(value) == score


@pytest.mark.parametrize(
    ("value", "scale", "score"),
    [(1, (1, 5), -1), (3, (1, 5), 0), (4.5, (1, 5), 1), (6, (1, 5), None), (0, (0, 1), -1), (1, (0, 1), 1),
     (True, (1, 5), 1), ("down", (1, 5), -1)],  # booleans and words are read as they are
)
def test_feedback_score_on_a_scale(value: Any, scale: tuple[int, int], score: int | None) -> None:
    assert feedback_score(value, scale) == score


# --- Issue 16: multi-argument functions, untagged traces, late feedback, a no-op collect ---------

SERVER = "https://10.20.30.40:8443/api"


def _ask(litellm: Any) -> Any:
    """A traced function with several arguments and no app/prompt_version tags (as in the field).

    Its model call is an LLM span with the attributes `mlflow.litellm.autolog()` records (model,
    token usage), written by hand: litellm's MLflow logger keeps the client of the first tracking
    store it wrote to, and these tests write to several.
    """
    import mlflow

    @mlflow.trace(name="ask")
    def ask(question: str, user_id: str, server_url: str) -> str:
        messages = [{"role": "user", "content": question}]
        with mlflow.start_span("litellm-completion", span_type="LLM") as span:
            span.set_inputs({"model": "offline/support-bot", "messages": messages})
            response = litellm.completion(model="offline/support-bot", messages=messages, temperature=0)
            usage = {"input_tokens": response.usage.prompt_tokens, "output_tokens": response.usage.completion_tokens,
                     "total_tokens": response.usage.total_tokens}
            span.set_attributes({"mlflow.llm.model": "offline/support-bot", "mlflow.chat.tokenUsage": usage})
            span.set_outputs(response.model_dump())
        return str(response.choices[0].message.content)

    return ask


def test_a_multi_argument_request_maps_by_default_and_by_trace_mapping(store: Store, litellm: Any) -> None:
    import mlflow

    with restore_mlflow_globals():
        mlflow.set_tracking_uri(store.tracking_uri)
        mlflow.set_experiment("arguments")
        _ask(litellm)("How do I reset my password?", "alice-01", SERVER)

        @mlflow.trace(name="handle")
        def handle(payload: dict[str, Any], account: dict[str, str]) -> dict[str, str]:
            return {"reply": f"echo {payload['text']}"}

        handle({"text": "Where is my invoice?", "channel": "web"}, {"id": "bob-02", "session": "s-9"})
        mlflow.flush_trace_async_logging()

    default = MlflowTraceSource(store.tracking_uri, "arguments").read(None).frame.to_dict("records")
    asked, handled = default
    assert asked["input"] == "How do I reset my password?" and asked["user_id"] == "alice-01"
    assert SERVER not in str(asked["input"]) and asked["inputs"] is None
    assert handled["user_id"] is None  # neither a user_id argument nor a mapping

    mapping = {"input": "$.payload.text", "output": "$.reply", "user_id": "$.account.id",
               "session_id": "$.account.session", "inputs.channel": '$["payload"].channel'}
    mapped = MlflowTraceSource(store.tracking_uri, "arguments", trace_mapping=mapping).read(None)
    asked, handled = mapped.frame.to_dict("records")
    assert (handled["input"], handled["output"]) == ("Where is my invoice?", "echo Where is my invoice?")
    assert handled["user_id"] == "bob-02"
    assert handled["metadata"]["session_id"] == "s-9" and handled["inputs"] == {"channel": "web"}
    # Paths that find nothing in a trace leave it to the defaults.
    assert asked["input"] == "How do I reset my password?" and asked["user_id"] == "alice-01"


def _stored(workspace: Any) -> pd.DataFrame:
    logs = workspace.path(workspace.app_settings("support-bot").data_dir) / "logs"
    return pd.concat([pq.read_table(p).to_pandas() for p in sorted(logs.glob("*.parquet"))], ignore_index=True)


def test_untagged_traces_and_late_feedback_are_collected_exactly_once(
    workspace: Any, litellm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five untagged traces of a three-argument function: all stored once with the collected app and
    the version released at their time; feedback logged after the first collect arrives in the
    second, once each; a third collect with nothing new reads no trace body and stores nothing."""
    import git
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import AssessmentSource

    from promptloop.collect.stage import collect
    from promptloop.workspace.tracking import log_run

    user = AssessmentSource(source_type="HUMAN", source_id="user")
    questions = [f"Question number {i} about my account?" for i in range(5)]
    with restore_mlflow_globals():
        mlflow.set_tracking_uri(workspace.tracking_uri)
        mlflow.set_experiment("support-prod")
        ask = _ask(litellm)
        ids = []
        for number, question in enumerate(questions):
            if number == 2:  # versions 1..: released between the second and the third trace
                mlflow.flush_trace_async_logging()
                log_run(workspace.tracking_uri, workspace.artifact_root, workspace.experiment_name("support-bot"),
                        "release support-bot v7", {"version": 7}, {}, {"promptloop.stage": "release"}, {})
                time.sleep(0.01)  # the release run and the next trace must not share a millisecond
            ask(question, f"user-{number}", SERVER)
            ids.append(mlflow.get_last_active_trace_id())
        mlflow.flush_trace_async_logging()
        mlflow.log_feedback(trace_id=ids[0], name="user_feedback", value=False, source=user)

        first = collect(workspace, "support-bot", source_uri="mlflow:support-prod")
        counts = (first.rows_in, first.rows_valid, first.rows_quarantined, first.rows_duplicate)
        assert counts == (5, 5, 0, 0), first.failures
        assert first.feedback_updated == 0  # its feedback came with the row
        stored = _stored(workspace)
        assert sorted(stored["id"]) == sorted(ids)
        assert set(stored["app"]) == {"support-bot"}
        by_id = stored.set_index("id")
        assert [by_id.at[i, "prompt_version"] for i in ids] == ["unknown", "unknown", "7", "7", "7"]
        assert [by_id.at[i, "input"] for i in ids] == questions
        assert by_id["user_hash"].notna().all() and not stored.astype(str).apply(
            lambda c: c.str.contains("user-1|10.20.30.40")).any().any()

        # Late feedback: three new thumbs and one changed mind, all after the first collect.
        for trace_id, value in ((ids[1], True), (ids[2], False), (ids[3], True), (ids[0], True)):
            mlflow.log_feedback(trace_id=trace_id, name="user_feedback", value=value, source=user)
        second = collect(workspace, "support-bot", source_uri="mlflow:support-prod")
        assert (second.rows_in, second.feedback_updated) == (0, 4)
        assert second.dvc_md5 != first.dvc_md5 and second.git_commit is not None
        stored = _stored(workspace)
        assert sorted(stored["id"]) == sorted(ids)  # updated in place, not appended
        feedback = stored.set_index("id").loc[ids, "feedback"]
        assert [None if pd.isna(v) else int(v) for v in feedback] == [1, 1, -1, 1, None]

        bodies = []
        search = MlflowClient.search_traces

        def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
            page = search(self, *args, **kwargs)
            bodies.extend(t.info.trace_id for t in page if kwargs.get("include_spans", True))
            return page

        monkeypatch.setattr(MlflowClient, "search_traces", counting)
        head = git.Repo(workspace.root).head.commit.hexsha
        started = time.perf_counter()
        third = collect(workspace, "support-bot", source_uri="mlflow:support-prod")
        print(f"no-op collect: {time.perf_counter() - started:.2f} s")  # reported, never asserted
        assert (third.rows_in, third.feedback_updated, third.git_commit) == (0, 0, None)
        assert bodies == [] and third.dvc_md5 == second.dvc_md5
        assert git.Repo(workspace.root).head.commit.hexsha == head
        assert len(_stored(workspace)) == 5
