"""Process-wide settings that keep promptloop offline and quiet.

Called by the entry points (CLI, flows, tests), never at import time.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from multiprocessing import util
from typing import NoReturn

# Telemetry of every library we use is off, and litellm reads its bundled price map instead
# of fetching one: nothing at run time may reach the internet.
OFFLINE_ENV: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "GX_ANALYTICS_ENABLED": "False",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# Prefect's temporary server gets 20 s to start by default; on a loaded machine (a shared CI runner)
# it can take longer, and a flow run would fail for no fault of its own.
PATIENT_ENV: dict[str, str] = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
}

# No progress bar on stderr when deploy reads an evaluation's table back from MLflow.
QUIET_ENV: dict[str, str] = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


# Loggers whose INFO lines say nothing a user acts on: MLflow announcing that it creates (and "updates")
# the tables of a new store, on the first run of every workspace.
QUIET_LOGGERS = ("mlflow.store.db.utils",)


def prepare_environment() -> None:
    """Set the offline and start-up defaults; a value the user exported wins."""
    for key, value in {**OFFLINE_ENV, **PATIENT_ENV, **QUIET_ENV}.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:  # a level the user set wins
            logger.setLevel(logging.WARNING)


# Whether promptloop may start helper processes of its own accord (the MLflow recording process): only
# under an entry point that allows it. A spawned process imports the caller's main module again, and a
# user's script without an `if __name__ == "__main__":` guard would run a second time in it.
_helper_processes = {"allowed": False}


def allow_helper_processes() -> None:
    """Let promptloop start helper processes (the `promptloop` command's guarded entry point does)."""
    _helper_processes["allowed"] = True


def helper_processes_allowed() -> bool:
    return _helper_processes["allowed"]


def end_helper_without_teardown() -> None:
    """Called in a helper process (a process pool's worker, at its start): once its work loop has ended,
    it ends as the command does, after its threads and exit handlers, without the teardown (the caller
    waits for it: about 0.4 s for the MLflow recording process). multiprocessing runs this finalizer after
    the worker's loop and before it would start the interpreter's exit; the status is then 0."""
    util.Finalize(None, exit_without_teardown, args=(0,), exitpriority=-100)  # after any other finalizer


def exit_without_teardown(status: int) -> NoReturn:
    """End the process once its work is safely done, without the interpreter freeing every object.

    With litellm, MLflow and pandas loaded that teardown takes most of a second after the result is
    printed (mypy ends the same way, for the same reason), and a helper process's is waited for.
    Everything a normal exit would still do is done first, in the interpreter's own order: threading's
    exit hooks run and other threads are joined (`threading._shutdown`, which a normal exit calls first;
    joining alone waited forever on an idle thread pool's worker, MLflow's artifact copier, which only that
    hook tells to stop), then the exit handlers (litellm's and MLflow's flushes, logging's shutdown), then
    the streams are flushed.
    """
    shut_down_threads()
    atexit._run_exitfuncs()  # what the interpreter's own exit runs, in the same (reverse) order
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it anyway
            pass
    os._exit(status)


def shut_down_threads() -> None:
    """threading's own exit step (`threading._shutdown`: its exit hooks, then the joins), finished even
    when CPython 3.11's process-pool race interrupts it.

    A process pool shut down without waiting (the recorder's, the workers') closes its wake-up pipe from
    its manager thread, and the pool's exit hook can write to that pipe just after its check that the pipe
    is open (fixed in 3.12 by a lock): the write fails with EBADF and the rest of the step is skipped.
    By then the pipe is marked closed and every hook can run twice, so running the step again finishes it.
    """
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # CPython's exit step: thread-pool hooks, then joins
    except OSError:
        threading._shutdown()  # type: ignore[attr-defined]
