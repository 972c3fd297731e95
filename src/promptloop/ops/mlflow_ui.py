"""How promptloop starts the MLflow UI, or tells a person to: on loopback, with MLflow's telemetry off.

MLflow 3.17 decides telemetry in `mlflow.telemetry.utils.is_telemetry_disabled`: off when
`MLFLOW_DISABLE_TELEMETRY` is true or `DO_NOT_TRACK` is exactly "true" (it ignores the common "1").
The UI's Settings page shows a per-browser switch (localStorage `mlflow.settings.telemetry.enabled`,
"On" until someone turns it off) that no server setting changes; what the UI actually sends is
governed by the server: its telemetry worker reads `GET /ajax-api/3.0/mlflow/ui-telemetry` and sends
nothing while that answers `disable_ui_telemetry: true`, which a server started with the variables
below always does (and its POST handler drops whatever arrives). So the server we start gets them,
and the command we print sets them.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from promptloop.core.runtime import OFFLINE_ENV

HOST = "127.0.0.1"
# Both spellings MLflow reads; "true", not "1", because MLflow compares DO_NOT_TRACK to "true".
TELEMETRY_OFF: dict[str, str] = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# The endpoint the UI's telemetry worker reads before it sends anything.
UI_TELEMETRY_PATH = "/ajax-api/3.0/mlflow/ui-telemetry"


def ui_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The environment of an MLflow UI server we start: `base`, offline, telemetry off, no job runner."""
    # One person's UI on a small machine: no background job runner.
    return {**base, **OFFLINE_ENV, **TELEMETRY_OFF, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_arguments(mlflow_bin: str, tracking_uri: str, port: int, *, workers: int | None = None) -> list[str]:
    """`mlflow ui` on the tracking store, on loopback (one web worker when `workers` is 1)."""
    args = [mlflow_bin, "ui", "--backend-store-uri", tracking_uri, "--host", HOST, "--port", str(port)]
    return args + (["--workers", str(workers)] if workers else [])


def ui_command(mlflow_bin: str, tracking_uri: str, port: int = 5000) -> str:
    """The shell command we print for a person to open the UI: telemetry off, as when we start it."""
    variables = " ".join(f"{key}={value}" for key, value in TELEMETRY_OFF.items())
    return f"{variables} {shlex.join(ui_arguments(mlflow_bin, tracking_uri, port))}"
