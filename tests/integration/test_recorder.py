"""The recording process: an evaluation recorded from it writes what one recorded in process writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptloop.core import runtime
from promptloop.evaluate.stage import evaluate
from promptloop.ops.initialize import init_workspace
from promptloop.workspace.tracking import tracking_client
from promptloop.workspace.workspace import Workspace, open_workspace

CANDIDATE = Path(__file__).parents[1] / "data" / "candidates" / "better.yaml"


def recorded_runs(workspace: Workspace, parent_id: str) -> dict[str, dict[str, float]]:
    """The metrics of the evaluation's parent run and of each prompt's child run, by run name."""
    client = tracking_client(workspace.tracking_uri)
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {run.info.run_name: run.data.metrics for run in [parent, *children]}


def test_an_evaluation_recorded_from_its_own_process_is_recorded_as_in_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here_root, apart_root = tmp_path / "here", tmp_path / "apart"
    for root in (here_root, apart_root):
        init_workspace(root)
    here = evaluate(open_workspace(here_root), "support-bot", [CANDIDATE])
    monkeypatch.setitem(runtime._helper_processes, "allowed", True)  # as under the `promptloop` command
    apart = evaluate(open_workspace(apart_root), "support-bot", [CANDIDATE])
    assert apart.mlflow_run_id and apart.mlflow_run_id != here.mlflow_run_id
    assert [(c.name, c.decision, c.registry_version) for c in apart.candidates] == \
        [(c.name, c.decision, c.registry_version) for c in here.candidates]
    here_runs = recorded_runs(open_workspace(here_root), here.mlflow_run_id)
    apart_runs = recorded_runs(open_workspace(apart_root), apart.mlflow_run_id)
    assert set(apart_runs) == set(here_runs) and len(apart_runs) == 3  # the evaluation, baseline, candidate
    for name, metrics in here_runs.items():
        assert {k: v for k, v in apart_runs[name].items() if k != "llm_calls"} == \
            {k: v for k, v in metrics.items() if k != "llm_calls"}, name
