"""What the pull request shows beyond the decision: per-case answers, links, new cases, label counts.

The per-case answers are read back from the evaluation's MLflow run (its `eval_cases.json` table),
so deploy re-runs nothing and adds nothing to improve's outcome file.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from promptloop.deploy.body import CaseRow, Links
from promptloop.domain.golden import GoldenCase
from promptloop.workspace.tracking import tracking_client

CASES_TABLE = "eval_cases.json"


def evaluation_rows(tracking_uri: str, run_id: str | None) -> tuple[dict[tuple[str, str], CaseRow], str | None]:
    """The evaluation run's per-case rows by (prompt, case id), and its experiment id.

    Empty (and no experiment) when the run or its table cannot be read: the pull request then lists
    case ids only, and says so, rather than failing a deploy over evidence.
    """
    if not run_id:
        return {}, None
    from mlflow.exceptions import MlflowException

    client = tracking_client(tracking_uri)
    try:
        experiment = str(client.get_run(run_id).info.experiment_id)
        with tempfile.TemporaryDirectory(prefix="promptloop-cases-") as tmp:
            table = json.loads(Path(client.download_artifacts(run_id, CASES_TABLE, tmp)).read_text(encoding="utf-8"))
    except (MlflowException, OSError, ValueError):
        return {}, None
    return rows_by_case(table), experiment


def rows_by_case(table: dict[str, Any]) -> dict[tuple[str, str], CaseRow]:
    """An MLflow table (`{"columns": [...], "data": [[...], ...]}`) keyed by (prompt, case id)."""
    columns = list(table.get("columns") or [])
    rows = [dict(zip(columns, values, strict=False)) for values in table.get("data") or []]
    return {(str(row.get("prompt")), str(row.get("case_id"))): row for row in rows}


def review_links(ui_url: str | None, tracking_uri: str, experiment: str | None, run_id: str | None, app: str,
                 registry_version: int | None) -> Links:
    """Links into the MLflow UI when `tracking.ui_url` is set, else the `mlflow ui` command and the ids."""
    version = f"version {registry_version}" if registry_version is not None else "not registered"
    if ui_url and run_id and experiment:
        base = ui_url.rstrip("/")
        run = f"{base}/#/experiments/{experiment}/runs/{run_id}"
        prompt = (f"{base}/#/prompts/{app}?promptVersion={registry_version}" if registry_version is not None
                  else f"prompt `{app}`, not registered")
        return Links(run=run, prompt=prompt)
    command = f"`mlflow ui --backend-store-uri {tracking_uri}` (from the workspace folder)"
    run = f"run `{run_id}` — open it with {command}" if run_id else "not logged to MLflow"
    return Links(run=run, prompt=f"prompt `{app}` {version} in the same MLflow UI (Prompts)")


def new_cases(golden: list[GoldenCase], added: int) -> list[GoldenCase]:
    """The cases this improve added: the last `added` mined cases of the golden set (growth appends them)."""
    mined = [case for case in golden if case.source.startswith("mined")]
    return mined[-added:] if added > 0 else []

