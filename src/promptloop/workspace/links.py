"""MLflow run ids as links to the MLflow UI, when its address is known.

The address is params.yaml `tracking.ui_url`, else the one `promptloop serve` gave the MLflow UI it
started (in the environment of the worker, so of every flow run). With neither, a run id stays
plain text: a link to a guessed address would lead nowhere.
"""

from __future__ import annotations

import os

from promptloop.workspace.workspace import Workspace

# Set by `promptloop serve` for its worker; params.yaml wins over it.
UI_URL_ENV = "PROMPTLOOP_MLFLOW_UI_URL"


def mlflow_ui_url(workspace: Workspace) -> str | None:
    """Where the workspace's MLflow UI is, if anybody said."""
    return workspace.params.tracking.ui_url or os.environ.get(UI_URL_ENV) or None


def run_link(run_id: str | None, ui_url: str | None) -> str:
    """A run id as markdown: a link to its page in the MLflow UI (`/#/runs/<id>` finds its experiment)
    when the UI's address is known, else the id in code; "" without a run."""
    if not run_id:
        return ""
    if not ui_url:
        return f"`{run_id}`"
    # Plain link text: Prefect's artifact renderer shows backticks inside a link literally.
    return f"[{run_id}]({ui_url.rstrip('/')}/#/runs/{run_id})"
