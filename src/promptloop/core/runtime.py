"""Process-wide settings that keep promptloop offline and quiet.

Called by the entry points (CLI, flows, tests), never at import time.
"""

from __future__ import annotations

import logging
import os

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
