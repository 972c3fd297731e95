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


KILLED_MID_EVALUATION = r"""
import os, signal, sys
from promptloop.core.runtime import allow_helper_processes
from promptloop.evaluate.recorder import recorder
from promptloop.workspace.workspace import open_workspace

if __name__ == "__main__":
    allow_helper_processes()
    with recorder(open_workspace(sys.argv[1])):
        import multiprocessing
        while not multiprocessing.active_children():
            pass
        print(multiprocessing.active_children()[0].pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # as a cycle killed mid-evaluation
"""


def test_the_recording_process_ends_when_the_evaluation_is_killed(tmp_path: Path) -> None:
    import subprocess
    import sys

    import psutil

    init_workspace(tmp_path / "ws")
    script = tmp_path / "killed.py"
    script.write_text(KILLED_MID_EVALUATION, encoding="utf-8")
    # An orphaned recording process would also hold the script's stdout open: run's timeout then fails the test.
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "ws")], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == -9, done.stderr[-2000:]
    pid = int(done.stdout.split()[0])
    try:
        _, alive = psutil.wait_procs([psutil.Process(pid)], timeout=120)  # generous: it goes once its imports end
    except psutil.NoSuchProcess:
        alive = []  # gone already
    assert not alive, f"the recording process {pid} outlived its killed parent"
