"""An evaluation as MLflow GenAI evaluation data: a trace per (prompt, case) linked to the prompt's run,
judges' verdicts as Feedback, the case's expectations as Expectations, the golden set as dataset input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from promptloop.domain.evaluation import EvaluationResult
from promptloop.evaluate.stage import evaluate
from promptloop.evaluate.traces import judge_columns, log_case_traces, write_traces
from promptloop.workspace.tracking import tracking_client
from promptloop.workspace.workspace import Workspace, open_workspace

CANDIDATES = Path(__file__).parents[1] / "data" / "candidates"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from promptloop.ops.initialize import init_workspace

    root = tmp_path_factory.mktemp("traces") / "ws"
    init_workspace(root)
    workspace = open_workspace(root)
    # Every case evaluated (the sequential race off), so there is a trace for every (prompt, golden case).
    params = workspace.params
    settings = params.evaluate.model_copy(
        update={"sequential": params.evaluate.sequential.model_copy(update={"enabled": False})})
    return Workspace(workspace.root, params.model_copy(update={"evaluate": settings}))


@pytest.fixture(scope="module")
def evaluated(workspace: Workspace) -> EvaluationResult:
    return evaluate(workspace, "support-bot", [CANDIDATES / "better.yaml"])


def prompt_runs(workspace: Workspace, result: EvaluationResult) -> dict[str, Any]:
    client = tracking_client(workspace.tracking_uri)
    parent = client.get_run(result.mlflow_run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {run.info.run_name: run for run in children}


def run_traces(workspace: Workspace, run: Any) -> list[Any]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=workspace.tracking_uri)
    return client.search_traces(locations=[run.info.experiment_id], run_id=run.info.run_id, max_results=5000)


def test_each_prompt_run_has_one_trace_per_case_with_feedback_and_expectations(
    workspace: Workspace, evaluated: EvaluationResult
) -> None:
    import pandas as pd

    runs = prompt_runs(workspace, evaluated)
    assert sorted(runs) == ["baseline", "better"]
    client = tracking_client(workspace.tracking_uri)
    for name, run in runs.items():
        traces = run_traces(workspace, run)
        table = pd.read_json(client.download_artifacts(run.info.run_id, "eval_cases.json"), orient="split")
        by_case = {t.info.tags["promptloop.case_id"]: t for t in traces}
        assert len(traces) == len(by_case) == evaluated.cases == len(table)
        assert set(by_case) == set(table["case_id"])
        for row in table.to_dict("records"):
            trace = by_case[row["case_id"]]
            assert trace.info.trace_metadata["mlflow.sourceRun"] == run.info.run_id
            assert trace.info.tags["promptloop.prompt"] == name
            feedback = {a.name: a for a in trace.info.assessments if a.feedback is not None}
            assert feedback["rubric"].value == pytest.approx(row["rubric_score"])
            assert feedback["rubric"].rationale == row["rubric_reason"]
            assert feedback["rubric"].source.source_type == "LLM_JUDGE"
            assert feedback["rubric"].source.source_id == workspace.params.evaluate.judge_model
            expected = {a.name: a for a in trace.info.assessments if a.expectation is not None}
            assert expected["expected_behavior"].value == row["expected_behavior"]
            assert {a.source.source_type for a in expected.values()} == {"HUMAN"}
            spans = {span.span_type: span for span in trace.data.spans}
            assert set(spans) == {"CHAIN", "RETRIEVER", "LLM"}
            assert spans["CHAIN"].inputs == {"question": row["input"]} and spans["CHAIN"].outputs == row["answer"]
            documents = [d["metadata"]["doc_uri"] for d in spans["RETRIEVER"].outputs]
            assert documents == str(row["retrieved"] or "").split()
            assert trace.info.execution_duration == int(row["latency_ms"])
            assert trace.info.token_usage["total_tokens"] > 0


def test_the_evaluation_run_finds_one_trace_per_case_and_prompt(
    workspace: Workspace, evaluated: EvaluationResult
) -> None:
    client = tracking_client(workspace.tracking_uri)
    traces = run_traces(workspace, client.get_run(evaluated.mlflow_run_id))
    found = [(t.info.tags["promptloop.prompt"], t.info.tags["promptloop.case_id"]) for t in traces]
    cases = {case for _, case in found}
    assert len(cases) == evaluated.cases
    assert sorted(found) == sorted((prompt, case) for prompt in ("baseline", "better") for case in cases)
    runs = prompt_runs(workspace, evaluated)
    assert {t.info.trace_metadata["mlflow.sourceRun"] for t in traces} == {r.info.run_id for r in runs.values()}


def test_a_candidate_trace_holds_the_pairwise_verdict_and_the_baseline_none(
    workspace: Workspace, evaluated: EvaluationResult
) -> None:
    runs = prompt_runs(workspace, evaluated)
    names = {name: {a.name for t in run_traces(workspace, run) for a in t.info.assessments}
             for name, run in runs.items()}
    assert "pairwise" in names["better"] and "pairwise" not in names["baseline"]


def test_every_run_has_the_golden_set_as_dataset_input_with_its_dvc_md5(
    workspace: Workspace, evaluated: EvaluationResult
) -> None:
    client = tracking_client(workspace.tracking_uri)
    runs = [client.get_run(evaluated.mlflow_run_id), *prompt_runs(workspace, evaluated).values()]
    assert evaluated.golden_md5
    for run in runs:
        (dataset_input,) = run.inputs.dataset_inputs
        assert dataset_input.dataset.digest == evaluated.golden_md5
        assert {t.key: t.value for t in dataset_input.tags}["promptloop.dvc_md5"] == evaluated.golden_md5


def test_trace_contents_are_redacted_like_the_tables(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("PROVIDER_API_KEY", secret)
    client = tracking_client(workspace.tracking_uri)
    experiment = client.create_experiment("redaction")
    run_id = client.create_run(experiment).info.run_id
    row = {"prompt": "p", "case_id": "c1", "input": f"my key is {secret}", "answer": f"echo {secret}",
           "retrieved": "", "latency_ms": 5.0, "rubric_score": 0.5, "rubric_reason": f"quotes {secret}"}
    log_case_traces(client, experiment, run_id, [row], {}, judge_columns("offline/judge", "offline/judge", {}))
    (trace,) = run_traces(workspace, client.get_run(run_id))
    stored = trace.to_json()
    assert secret not in stored and "<api-key>" in stored


def test_the_batched_write_stores_what_mlflows_own_calls_store(workspace: Workspace) -> None:
    """The one-transaction write reads back exactly like start_trace + log_spans (the fallback path)."""
    from promptloop.evaluate.traces import case_spans, case_trace_info

    client = tracking_client(workspace.tracking_uri)
    experiment = client.create_experiment("batched-vs-public")
    row = {"prompt": "p", "case_id": "c1", "input": "q?", "answer": "a.", "retrieved": "doc-1 doc-2",
           "latency_ms": 12.0, "prompt_tokens": 7, "completion_tokens": 3, "rubric_score": 0.75,
           "rubric_reason": "fine", "rubric_passed": True}
    store = client._tracking_client.store

    class PublicOnly:  # the store without its SQL session: write_traces takes the public calls
        def __init__(self, inner: Any) -> None:
            self.start_trace, self.log_spans = inner.start_trace, inner.log_spans

    read = []
    for number, target in ((101, store), (202, PublicOnly(store))):
        judges = judge_columns("offline/judge", "offline/judge", {})
        info = case_trace_info(experiment, "run", number, row, [], judges, 1_000)
        write_traces(target, experiment, [(info, case_spans(number, row, 1_000_000_000))])
        read.append(client.get_trace(info.trace_id))
    batched, public = read
    assert batched.info.token_usage == public.info.token_usage == {"input_tokens": 7, "output_tokens": 3,
                                                                   "total_tokens": 10}
    assert batched.info.trace_metadata == public.info.trace_metadata
    assert batched.info.tags.keys() == public.info.tags.keys()
    assert (batched.info.request_time, batched.info.execution_duration, batched.info.state) == (
        public.info.request_time, public.info.execution_duration, public.info.state)
    assert [(a.name, a.value) for a in batched.info.assessments] == [(a.name, a.value) for a in public.info.assessments]
    assert [(s.name, s.span_type, s.inputs, s.outputs, s.start_time_ns, s.end_time_ns) for s in batched.data.spans] == [
        (s.name, s.span_type, s.inputs, s.outputs, s.start_time_ns, s.end_time_ns) for s in public.data.spans]


def test_log_traces_off_logs_no_trace(workspace: Workspace) -> None:
    params = workspace.params
    quiet = Workspace(workspace.root, params.model_copy(
        update={"evaluate": params.evaluate.model_copy(update={"log_traces": False})}))
    result = evaluate(quiet, "support-bot", [])
    runs = prompt_runs(quiet, result)
    assert list(runs) == ["baseline"]
    for run in runs.values():
        assert run_traces(quiet, run) == []


def test_the_rubric_judge_is_registered_once_on_the_judges_page(
    workspace: Workspace, evaluated: EvaluationResult
) -> None:
    from promptloop.evaluate.traces import register_judge

    client = tracking_client(workspace.tracking_uri)
    experiment = client.get_run(evaluated.mlflow_run_id).info.experiment_id
    store = client._tracking_client.store
    (rubric,) = [v for v in store.list_scorers(experiment) if v.scorer_name == "rubric"]
    judge = rubric.serialized_scorer.instructions_judge_pydantic_data
    assert judge["model"] == "offline:/judge" and "{{ outputs }}" in judge["instructions"]
    evaluate(workspace, "support-bot", [])  # the same judge again: no new version
    assert [v.scorer_version for v in store.list_scorers(experiment) if v.scorer_name == "rubric"] == [1]
    assert register_judge(client, experiment, "rubric", "Grade {{ outputs }} strictly.", "offline/judge")
    assert max(v.scorer_version for v in store.list_scorers(experiment) if v.scorer_name == "rubric") == 2
