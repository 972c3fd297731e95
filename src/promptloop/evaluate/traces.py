"""An evaluation as MLflow GenAI evaluation data: one trace per (prompt, case), judges' verdicts as
Feedback, the case's expectations as Expectations, the golden set as the run's dataset input.

Traces are built after the calls from the recorded rows (the answer, the retrieved context, tokens,
latency) and written straight to the tracking store in batches: one `start_trace` per trace carrying
its assessments, one `log_spans` per batch, one `link_traces_to_run` per 100 traces. MLflow's own
tracer (its global provider, async exporter and tracking URI) is never involved, so nothing leaks into
the process-global MLflow state. Every text goes through the same secret redaction as the tables.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from promptloop.core.secrets import redact_secrets, redactor
from promptloop.domain.golden import GoldenCase

# The trace metadata `mlflow.genai.evaluate` writes so that the Evaluation runs page lists a trace under its run.
SOURCE_RUN = "mlflow.sourceRun"
LINKS_PER_CALL = 100  # MLflow's cap on link_traces_to_run
TRACES_PER_SESSION = 500  # traces written in one SQL transaction
GOLDEN_CONTEXT = "evaluation"  # mlflow.data.context of the golden set input, as mlflow.genai.evaluate tags it


@dataclass(frozen=True)
class JudgeColumns:
    """Which columns of a row hold an LLM judge's verdict and its reason, and which model judged."""

    name: str
    value: str
    model: str
    rationale: str | None = None


def judge_columns(rubric_model: str, pairwise_model: str, guards: Mapping[str, tuple[str, str]]) -> list[JudgeColumns]:
    """The built-in judges (rubric, pairwise) plus each guard judge file (name -> its column and model)."""
    return [JudgeColumns("rubric", "rubric_score", rubric_model, "rubric_reason"),
            JudgeColumns("rubric_passed", "rubric_passed", rubric_model, "rubric_reason"),
            JudgeColumns("pairwise", "pairwise_score", pairwise_model),
            *(JudgeColumns(name, column, model) for name, (column, model) in guards.items())]


def trace_number(run_id: str, prompt: str, case_id: str) -> int:
    """A stable 128-bit OpenTelemetry trace id: logging the same run twice rewrites the same traces."""
    return int.from_bytes(hashlib.blake2b(f"{run_id}\0{prompt}\0{case_id}".encode(), digest_size=16).digest(), "big")


def _text(value: Any, redact: Callable[[str], str] = redact_secrets) -> Any:
    """Strings redacted of known secrets; nested values redacted through their JSON form."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (dict, list)):
        return json.loads(redact(json.dumps(value, ensure_ascii=False, default=str)))
    return value


def _present(value: Any) -> bool:
    """False for a missing cell (None, NaN): that judge did not run on the row."""
    return value is not None and not (isinstance(value, float) and value != value)


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones (assessment values must be JSON-serialisable)."""
    return value.item() if hasattr(value, "item") else value


def feedbacks(row: Mapping[str, Any], judges: Sequence[JudgeColumns]) -> list[Any]:
    """Every judge verdict on the row as a Feedback from its judge model (LLM_JUDGE)."""
    from mlflow.entities import AssessmentSource, AssessmentSourceType, Feedback

    found = []
    for judge in judges:
        source = AssessmentSource(source_type=AssessmentSourceType.LLM_JUDGE, source_id=judge.model)
        value = row.get(judge.value)
        if not _present(value):
            continue
        reason = row.get(judge.rationale) if judge.rationale else None
        found.append(Feedback(name=judge.name, value=_plain(value), source=source,
                              rationale=reason if isinstance(reason, str) and reason else None))
    if isinstance(row.get("judge_failure"), str) and row["judge_failure"] and judges:
        source = AssessmentSource(source_type=AssessmentSourceType.LLM_JUDGE, source_id=judges[0].model)
        found.append(Feedback(name="judge_failure", source=source, error=row["judge_failure"]))
    return found


def expectations(case: GoldenCase, redact: Callable[[str], str] = redact_secrets) -> list[Any]:
    """The golden case's expectations (MLflow's names and the app's own keys), from a human (HUMAN source)."""
    from mlflow.entities import AssessmentSource, AssessmentSourceType, Expectation

    source = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id="golden-set")
    values = {"expected_behavior": case.expectations.expected_behavior,
              **case.expectations.model_dump(exclude_defaults=True)}
    return [Expectation(name=name, value=_text(value, redact), source=source) for name, value in values.items()
            if value not in ("", [], {}, None)]


def _span(number: int, span_id: int, parent: int | None, name: str, kind: str, window: tuple[int, int],
          attributes: dict[str, Any]) -> Any:
    """An ended MLflow span with explicit start and end times (attributes JSON-encoded, as MLflow stores them)."""
    from mlflow.entities import Span
    from mlflow.tracing.constant import SpanAttributeKey
    from mlflow.tracing.utils import build_otel_context, generate_mlflow_trace_id_from_otel_trace_id
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import Status, StatusCode

    encoded = {SpanAttributeKey.REQUEST_ID: json.dumps(generate_mlflow_trace_id_from_otel_trace_id(number)),
               SpanAttributeKey.SPAN_TYPE: json.dumps(kind),
               **{k: json.dumps(v, ensure_ascii=False, default=str) for k, v in attributes.items()}}
    return Span(ReadableSpan(name=name, context=build_otel_context(number, span_id),
                             parent=build_otel_context(number, parent) if parent else None,
                             start_time=window[0], end_time=window[1], attributes=encoded,
                             status=Status(StatusCode.OK), resource=Resource.get_empty()))


def token_usage(row: Mapping[str, Any]) -> dict[str, int]:
    """The call's recorded tokens in MLflow's usage keys."""
    used = {"input_tokens": int(row.get("prompt_tokens") or 0), "output_tokens": int(row.get("completion_tokens") or 0)}
    return {**used, "total_tokens": used["input_tokens"] + used["output_tokens"]}


def case_spans(number: int, row: Mapping[str, Any], start_ns: int) -> list[Any]:
    """The root span (the app answering the case), its RETRIEVER span and its LLM span; `row` is already
    redacted."""
    from mlflow.tracing.constant import SpanAttributeKey

    latency_ns = int(float(row.get("latency_ms") or 0.0) * 1_000_000)
    window = (start_ns, start_ns + latency_ns)
    inputs = {"question": row.get("input", "")}
    answer = row.get("answer", "")
    usage = token_usage(row)
    retrieved = str(row.get("retrieved") or "")
    documents = [{"page_content": "", "metadata": {"doc_uri": doc}} for doc in retrieved.split()]
    return [
        _span(number, 1, None, str(row.get("prompt", "app")), "CHAIN", window,
              {SpanAttributeKey.INPUTS: inputs, SpanAttributeKey.OUTPUTS: answer,
               "promptloop.case_id": row.get("case_id"), "promptloop.cost_usd": _plain(row.get("cost_usd"))}),
        _span(number, 2, 1, "retrieve", "RETRIEVER", (start_ns, start_ns),
              {SpanAttributeKey.INPUTS: inputs, SpanAttributeKey.OUTPUTS: documents}),
        _span(number, 3, 1, "answer", "LLM", window,
              {SpanAttributeKey.INPUTS: inputs, SpanAttributeKey.OUTPUTS: answer,
               SpanAttributeKey.CHAT_USAGE: usage}),
    ]


def case_trace_info(experiment: str, run_id: str, number: int, row: Mapping[str, Any], expected: list[Any],
                    judges: Sequence[JudgeColumns], start_ms: int) -> Any:
    """The trace's header: run link, previews, tags, and its assessments (stored with it in one write);
    `row` is already redacted."""
    from mlflow.entities import TraceInfo, TraceLocation, TraceState
    from mlflow.tracing.constant import TraceMetadataKey
    from mlflow.tracing.utils import generate_mlflow_trace_id_from_otel_trace_id

    trace_id = generate_mlflow_trace_id_from_otel_trace_id(number)
    assessments = [*feedbacks(row, judges), *expected]
    for assessment in assessments:
        assessment.trace_id = trace_id
        assessment.metadata = {**(assessment.metadata or {}), "mlflow.assessment.sourceRunId": run_id}
    return TraceInfo(trace_id=trace_id, trace_location=TraceLocation.from_experiment_id(experiment),
                     request_time=start_ms, state=TraceState.OK,
                     execution_duration=int(float(row.get("latency_ms") or 0.0)),
                     request_preview=json.dumps({"question": row.get("input", "")}, ensure_ascii=False)[:1000],
                     response_preview=json.dumps(row.get("answer", ""), ensure_ascii=False)[:1000],
                     trace_metadata={SOURCE_RUN: run_id, TraceMetadataKey.TRACE_INFO_FINALIZED: "true",
                                     TraceMetadataKey.TOKEN_USAGE: json.dumps(token_usage(row))},
                     tags={"mlflow.traceName": str(row.get("prompt", "app")), "promptloop.case_id": str(row["case_id"]),
                           "promptloop.prompt": str(row.get("prompt", ""))},
                     assessments=assessments)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def log_case_traces(client: Any, experiment: str, run_id: str, rows: Sequence[Mapping[str, Any]],
                    cases: Mapping[str, GoldenCase], judges: Sequence[JudgeColumns],
                    also_linked: Sequence[str] = ()) -> list[str]:
    """One trace per row, linked to `run_id` (metadata and entity link, as mlflow.genai.evaluate does) and
    to the runs `also_linked` (an entity link only); returns the trace ids."""
    start_ms = int(time.time() * 1000)  # the calls' own start times are not recorded: their latency is
    redact = redactor()
    traces = []
    for recorded in rows:
        row = {key: redact(value) if isinstance(value, str) else value for key, value in recorded.items()}
        number = trace_number(run_id, str(row.get("prompt")), str(row["case_id"]))
        case = cases.get(str(row["case_id"]))
        info = case_trace_info(experiment, run_id, number, row, expectations(case, redact) if case else [], judges,
                               start_ms)
        traces.append((info, case_spans(number, row, start_ms * 1_000_000)))
    store = client._tracking_client.store  # the fluent API would write through MLflow's process-global tracer
    for batch in _chunks(traces, TRACES_PER_SESSION):
        write_traces(store, experiment, batch)
    trace_ids = [info.trace_id for info, _ in traces]
    for linked in (run_id, *also_linked):
        for links in _chunks(trace_ids, LINKS_PER_CALL):
            client.link_traces_to_run(list(links), linked)
    return trace_ids


def write_traces(store: Any, experiment: str, traces: Sequence[tuple[Any, list[Any]]]) -> None:
    """Write finished traces: on a SQL store, the rows `start_trace` then `log_spans` write, inserted table by
    table in one transaction (one commit for the batch instead of four per trace); else the public calls."""
    if not hasattr(store, "ManagedSessionMaker"):
        for info, spans in traces:
            store.start_trace(info)
            store.log_spans(experiment, spans)
        return
    from mlflow.store.tracking.dbmodels.models import (
        SqlAssessments,
        SqlSpan,
        SqlTraceInfo,
        SqlTraceMetadata,
        SqlTraceTag,
    )
    from mlflow.store.tracking.utils.sql_trace_rollups import RollupFamily, enqueue_rollup_rebuild_partitions
    from sqlalchemy import insert

    found = store.get_experiment(experiment)
    tables: dict[Any, list[dict[str, Any]]] = {SqlTraceInfo: [], SqlTraceTag: [], SqlTraceMetadata: [],
                                               SqlAssessments: [], SqlSpan: []}
    for info, spans in traces:
        for model, rows in trace_rows(store, found, info, spans).items():
            tables[model].extend(rows)
    with store.ManagedSessionMaker(read_only=False) as session:
        enqueue_rollup_rebuild_partitions(session, [
            (family, int(experiment), sorted({info.request_time for info, _ in traces}))
            for family in (RollupFamily.TRACE_METRIC, RollupFamily.ASSESSMENT, RollupFamily.SPAN_COST)])
        for model, rows in tables.items():  # parents first: trace_info before the rows that refer to it
            if rows:
                session.execute(insert(model), rows)


def _columns(record: Any) -> dict[str, Any]:
    """An ORM object's column values (unset ones left to the table's defaults)."""
    return {c.key: getattr(record, c.key) for c in record.__table__.columns
            if getattr(record, c.key) is not None and not c.computed}


def trace_rows(store: Any, experiment: Any, info: Any, spans: Sequence[Any]) -> dict[Any, list[dict[str, Any]]]:
    """The rows of one trace, table by table: trace_info, its tags, metadata and assessments as `start_trace`
    builds them, plus what `log_spans` adds for spans kept in the tracking store (its spans, token usage,
    spans location, payload generation). A span's content is its dict: `log_spans` first translates other
    tracers' attribute keys to MLflow's, which these spans already use (the batched-vs-public test checks)."""
    from mlflow.store.tracking.dbmodels.models import (
        SqlAssessments,
        SqlSpan,
        SqlTraceInfo,
        SqlTraceMetadata,
        SqlTraceTag,
    )
    from mlflow.store.tracking.utils.trace_analytics import analytics_columns_from_metadata
    from mlflow.tracing.constant import SpansLocation, TraceMetadataKey, TraceTagKey
    from mlflow.tracing.utils import TraceJSONEncoder

    trace_id, experiment_id = info.trace_id, int(info.experiment_id)
    metadata = dict(info.trace_metadata)
    header = {"request_id": trace_id, "experiment_id": experiment_id, "timestamp_ms": info.request_time,
              "execution_time_ms": info.execution_duration, "status": info.state.value,
              "request_preview": info.request_preview, "response_preview": info.response_preview,
              "trace_name": info.tags.get(TraceTagKey.TRACE_NAME), "db_payload_generation": 1,
              **analytics_columns_from_metadata(metadata)}
    location = store._get_trace_artifact_location_tag(experiment, trace_id)
    tags = {**{k: v for k, v in info.tags.items() if k != TraceTagKey.TRACE_NAME}, location.key: location.value,
            TraceTagKey.SPANS_LOCATION: SpansLocation.TRACKING_STORE.value}
    assessments = []
    for assessment in info.assessments:
        record = SqlAssessments.from_mlflow_entity(assessment)
        record.trace_id, record.experiment_id, record.trace_timestamp_ms = trace_id, experiment_id, info.request_time
        assessments.append(_columns(record))
    return {
        SqlTraceInfo: [header],
        SqlTraceTag: [{"request_id": trace_id, "key": k, "value": v} for k, v in tags.items()],
        SqlTraceMetadata: [{"request_id": trace_id, "key": k, "value": v} for k, v in sorted(metadata.items())
                           if k not in (TraceMetadataKey.TOKEN_USAGE, TraceMetadataKey.COST)],
        SqlAssessments: assessments,
        SqlSpan: [{"trace_id": span.trace_id, "experiment_id": experiment_id, "span_id": span.span_id,
                   "parent_span_id": span.parent_id, "name": span.name, "type": span.span_type,
                   "status": span.status.status_code, "start_time_unix_nano": span.start_time_ns,
                   "end_time_unix_nano": span.end_time_ns,
                   "content": json.dumps(span.to_dict(), cls=TraceJSONEncoder, ensure_ascii=False)}
                  for span in spans],
    }


def log_golden_input(client: Any, run_id: str, name: str, md5: str | None, source: str, cases: int) -> None:
    """The golden set as the run's evaluation dataset input, its digest the DVC md5 (what `dvc status` checks)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest = md5 or "untracked"
    dataset = Dataset(name=name, digest=digest[:36], source_type="local", source=json.dumps({"uri": source}),
                      profile=json.dumps({"num_rows": cases}))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", GOLDEN_CONTEXT),
                                                                    InputTag("promptloop.dvc_md5", digest)])])


# Where a judge's instructions have none of MLflow's template variables, the case is appended with them.
CASE_VARIABLES = "\n\nQuestion: {{ inputs }}\nAnswer: {{ outputs }}\nExpectations: {{ expectations }}"
TEMPLATE_VARIABLE = re.compile(r"\{\{\s*(inputs|outputs|expectations|trace)\s*\}\}")


def mlflow_model(model: str) -> str:
    """litellm's `provider/model` in MLflow's judge notation `provider:/model`."""
    provider, _, name = model.partition("/")
    return f"{provider}:/{name}" if name else model


def register_judge(client: Any, experiment: str, name: str, instructions: str, model: str) -> bool:
    """The judge on the experiment's Judges page (a registered MLflow judge); a new version only when its
    instructions or model changed. Returns True when it registered one."""
    from mlflow.genai.judges import make_judge

    if not TEMPLATE_VARIABLE.search(instructions):
        instructions += CASE_VARIABLES
    judge = make_judge(name=name, instructions=instructions, model=mlflow_model(model))
    serialized = judge.model_dump()
    store = client._tracking_client.store  # Scorer.register would use the process-global tracking URI
    versions = [v for v in store.list_scorers(experiment) if v.scorer_name == name]
    if versions:
        latest = max(versions, key=lambda v: v.scorer_version).serialized_scorer.instructions_judge_pydantic_data
        if latest == serialized["instructions_judge_pydantic_data"]:
            return False
    store.register_scorer(experiment, name, json.dumps(serialized))
    return True
