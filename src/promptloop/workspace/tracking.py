"""MLflow runs, always against the workspace's own tracking URI (never the process-global one)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from promptloop.core.secrets import holds_secret, redact_secrets

MAX_PARAM_CHARS = 6000


def experiment_id(client: Any, name: str, artifact_root: Path) -> str:
    """Get or create the experiment `name`, its artifacts under `artifact_root` (not the current directory)."""
    existing = client.get_experiment_by_name(name)
    if existing:
        return existing.experiment_id
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
    return client.create_experiment(name, artifact_location=(artifact_root / slug).as_uri())


@contextmanager
def started_run(client: Any, experiment: str, run_name: str, tags: dict[str, str],
                parent_run_id: str | None = None) -> Iterator[str]:
    """A run that ends FINISHED when the block completes and FAILED when it raises (never left running)."""
    if parent_run_id:
        tags = {**tags, "mlflow.parentRunId": parent_run_id}
    else:
        close_interrupted_runs(client, experiment)
    run_id = client.create_run(experiment, run_name=run_name, tags=tags).info.run_id
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


def close_interrupted_runs(client: Any, experiment: str) -> None:
    """Mark KILLED the runs a killed process left RUNNING in `experiment`.

    Runs are only written under the workspace lock (promptloop.locking), so when a new run starts
    no other live process can own a RUNNING run of the workspace: it was interrupted.
    """
    stale = client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for run in stale:
        client.set_tag(run.info.run_id, "promptloop.interrupted", "true")
        client.set_terminated(run.info.run_id, status="KILLED")


def log_contents(
    client: Any,
    run_id: str,
    params: dict[str, Any],
    metrics: Mapping[str, float],
    tags: dict[str, str],
    artifacts: dict[str, Any],
    tables: dict[str, Any] | None = None,
    metric_time_ms: int | None = None,
) -> None:
    """Params, metrics and tags in one batch; artifacts (dicts as JSON, strings as text); tables via log_table.

    Every text is redacted of known keys first: what is stored may quote a provider's error.
    """
    from mlflow.entities import Metric, Param, RunTag

    now_ms = metric_time_ms if metric_time_ms is not None else int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()],
        params=[Param(k, redact_secrets(_param_text(v))) for k, v in params.items()],
        tags=[RunTag(k, redact_secrets(v)) for k, v in tags.items()],
    )
    for name, content in artifacts.items():
        if isinstance(content, str):
            client.log_text(run_id, redact_secrets(content), name)
        else:
            client.log_dict(run_id, json.loads(redact_secrets(json.dumps(content, default=str))), name)
    for name, table in (tables or {}).items():
        client.log_table(run_id, redacted_table(table), name)


def redacted_table(table: Any) -> Any:
    """A DataFrame with known keys redacted from its text cells (answers may quote what they were sent)."""
    if not holds_secret(table.to_json(orient="values", default_handler=str)):
        return table
    return table.map(lambda cell: redact_secrets(cell) if isinstance(cell, str) else cell)


def tracking_client(tracking_uri: str) -> Any:
    """A client bound to `tracking_uri` for runs and the prompt registry alike."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def log_run(
    tracking_uri: str,
    artifact_root: Path,
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    metrics: Mapping[str, float],
    tags: dict[str, str],
    artifacts: dict[str, Any],
    metric_time_ms: int | None = None,
) -> str:
    """One finished run with params, metrics (at `metric_time_ms`, default now), tags, and artifacts
    (dicts as JSON, strings as text); returns its id."""
    client = tracking_client(tracking_uri)
    with started_run(client, experiment_id(client, experiment, artifact_root), run_name, tags) as run_id:
        log_contents(client, run_id, params, metrics, tags, artifacts, metric_time_ms=metric_time_ms)
    return run_id


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
