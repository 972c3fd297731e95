"""Process-wide settings that keep promptloop offline and quiet.

Called by the entry points (CLI, flows, tests), never at import time.
"""

from __future__ import annotations

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


def prepare_environment() -> None:
    """Set the offline and start-up defaults; a value the user exported wins."""
    for key, value in {**OFFLINE_ENV, **PATIENT_ENV, **QUIET_ENV}.items():
        os.environ.setdefault(key, value)
