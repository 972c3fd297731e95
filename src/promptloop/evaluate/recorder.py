"""Where an evaluation is recorded in MLflow from: a process of its own, started with the evaluation.

Importing MLflow and opening its store take seconds, and recording needs the finished results, so in
the evaluation's own process they would come after the last call. A recording process imports and
opens them on the machine's other core while the calls are made; when the results are in, it writes
the runs and hands back the result with their ids. With one core there is nothing to overlap, and a
Python caller other than the `promptloop` command may run unguarded scripts: there the evaluation's
own process records.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any

import pandas as pd

from promptloop.core.runtime import end_helper_without_teardown, helper_processes_allowed, prepare_environment
from promptloop.domain.evaluation import EvaluationResult
from promptloop.evaluate.plan import EvalPlan
from promptloop.evaluate.record import log_evaluation
from promptloop.workspace.tracking import tracking_client
from promptloop.workspace.workspace import Workspace

Record = Callable[[EvalPlan, EvaluationResult, pd.DataFrame, Callable[[EvaluationResult], str]], EvaluationResult]

# The recording process's MLflow client, or what opening it raised (raised again when recording).
_opened: dict[str, Any] = {}


def end_with_parent() -> None:
    """End this process as soon as the process that started it is gone (killed mid-evaluation, say):
    a pool's worker would otherwise wait for work forever, an orphan holding the store open."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def open_store(tracking_uri: str) -> None:
    """The recording process's start: offline defaults, MLflow imported, its store opened."""
    end_with_parent()
    end_helper_without_teardown()
    prepare_environment()
    try:
        client = tracking_client(tracking_uri)
        client.search_experiments(max_results=1)  # opens the store (and creates its tables the first time)
        _opened["client"] = client
    except Exception as exc:  # noqa: BLE001 - kept for `record_here` to raise where the caller sees it
        _opened["error"] = exc


def record_here(workspace: Workspace, plan: EvalPlan, result: EvaluationResult, frame: pd.DataFrame,
                render: Callable[[EvaluationResult], str]) -> EvaluationResult:
    """Record in this process (with the client `open_store` opened, if it did): the result with its run ids."""
    if "error" in _opened:
        raise _opened["error"]
    log_evaluation(workspace, plan, result, frame, render, client=_opened.get("client"))
    return result


def recording_here(workspace: Workspace) -> Record:
    """A function recording an evaluation of `workspace` from this process."""
    return lambda plan, result, frame, render: record_here(workspace, plan, result, frame, render)


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def recorder(workspace: Workspace) -> Iterator[Record]:
    """A function recording an evaluation of `workspace` in MLflow, returning the result with its run ids.

    Under the `promptloop` command on a machine with more than one core it records in a process started
    now, so that process's MLflow import overlaps the evaluation's calls; leaving the block ends that
    process.
    """
    if usable_cores() < 2 or not helper_processes_allowed():
        yield recording_here(workspace)
        return
    # spawn: no forked copies of the caller's threads, event loops or open databases.
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=open_store,
                               initargs=(workspace.tracking_uri,))
    try:
        pool.submit(int)  # starts the process now, not when the results are in
        yield lambda plan, result, frame, render: pool.submit(
            record_here, workspace, plan, result, frame, render).result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
