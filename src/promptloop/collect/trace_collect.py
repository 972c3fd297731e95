"""What collect adds around an MLflow trace source: its app's settings, the release history, and
late user feedback applied to rows already stored.

Late feedback: each run re-reads (metadata only) the traces started within
`collect.feedback_lookback_days` before the run and takes those whose user Feedback was written at
or after the previous run's feedback mark. A stored row whose feedback or comment differs is
rewritten in its Parquet part (the comment redacted like any stored text); the rewritten parts are
a new DVC version of the log dataset, and the rows are counted as `feedback_updated`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow.parquet as pq

from promptloop.collect.traces import Feedback, MlflowTraceSource
from promptloop.domain.logs import STORED_LOG_SCHEMA
from promptloop.quality.redact import Redactor
from promptloop.workspace.workspace import LOGS

if TYPE_CHECKING:
    from promptloop.collect.stage import CollectPlan

RELEASE_STAGE = "release"  # the promptloop.stage tag of release and rollback runs (deploy/release.py)
DAY_MS = 86_400_000


def feedback_key(source: MlflowTraceSource) -> str:
    """Where the source's feedback mark is kept among the watermarks."""
    return f"{source.key}#feedback"


def trace_sources(plan: CollectPlan) -> list[MlflowTraceSource]:
    return [s for s in plan.sources if isinstance(s, MlflowTraceSource)]


def prepare_trace_sources(plan: CollectPlan) -> None:
    """Give each MLflow source the collected app (for untagged traces), its mapping and its releases."""
    sources = trace_sources(plan)
    if not sources:
        return
    releases = release_history(plan.workspace.tracking_uri, plan.workspace.experiment_name(plan.app))
    for source in sources:
        source.app = source.app or plan.app
        source.trace_mapping = dict(plan.settings.trace_mapping)
        source.releases = releases


def release_history(tracking_uri: str, experiment: str) -> list[tuple[int, str]]:
    """(start time in ms, prompt version) of every release and rollback of the app, oldest first.

    Each one moved the registry alias `production` to that version, so the last one started at or
    before a moment is the version the app served then.
    """
    from promptloop.workspace.tracking import tracking_client

    client = tracking_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`promptloop.stage` = '{RELEASE_STAGE}'",
                              max_results=10_000)
    return sorted((int(r.info.start_time), str(r.data.params["version"])) for r in runs if "version" in r.data.params)


@dataclass
class FeedbackOutcome:
    """Stored rows whose feedback changed, the parts rewritten, the new marks."""

    updated: int = 0
    parts: list[str] = field(default_factory=list)
    watermarks: dict[str, Any] = field(default_factory=dict)


def collect_late_feedback(plan: CollectPlan, redactor: Redactor) -> FeedbackOutcome:
    """Apply feedback that changed since the last run to the stored rows of every MLflow source."""
    outcome = FeedbackOutcome()
    now_ms = int(plan.now.timestamp() * 1000)
    lookback_ms = int(plan.workspace.params.collect.feedback_lookback_days * DAY_MS)
    for source in trace_sources(plan):
        key = feedback_key(source)
        previous = plan.state["watermarks"].get(key) or {}
        changes, mark = source.feedback_changes(now_ms - lookback_ms, previous.get("updated_ms"))
        if changes:
            updated, parts = update_stored_feedback(plan.data_dir / LOGS, changes, redactor)
            outcome.updated += updated
            outcome.parts += [str(p.relative_to(plan.workspace.root)) for p in parts]
        if mark is not None and mark != previous.get("updated_ms"):
            outcome.watermarks[key] = {"updated_ms": mark}
    return outcome


def update_stored_feedback(logs_dir: Path, changes: dict[str, Feedback],
                           redactor: Redactor) -> tuple[int, list[Path]]:
    """Rewrite the stored rows whose feedback differs from `changes`; (rows updated, parts rewritten)."""
    from promptloop.collect.stage import write_part

    comments = redacted_comments(changes, redactor)
    updated, rewritten = 0, []
    for part in sorted(logs_dir.glob("*.parquet")):
        stored = pq.read_table(part, columns=["id", "feedback", "feedback_comment"]).to_pandas()
        hits = [i for i, (row_id, score, comment) in enumerate(stored.itertuples(index=False, name=None))
                if row_id in changes and not same_feedback((score, comment), (changes[row_id][0], comments[row_id]))]
        if not hits:
            continue
        frame = pq.read_table(part, schema=STORED_LOG_SCHEMA).to_pandas()
        for index in hits:
            row_id = frame.at[index, "id"]
            frame.at[index, "feedback"] = changes[row_id][0]
            frame.at[index, "feedback_comment"] = comments[row_id]
        frame["feedback"] = frame["feedback"].astype("Int8")
        rewritten.append(write_part(frame, logs_dir, part.name, STORED_LOG_SCHEMA))
        updated += len(hits)
    return updated, rewritten


def redacted_comments(changes: dict[str, Feedback], redactor: Redactor) -> dict[str, str | None]:
    """Each change's comment as it would be stored: redacted."""
    ids = list(changes)
    series, _ = redactor.redact_series(pd.Series([changes[i][1] for i in ids], dtype=object))
    return {i: (None if pd.isna(c) else str(c)) for i, c in zip(ids, series, strict=True)}


def same_feedback(stored: tuple[Any, Any], new: Feedback) -> bool:
    """Stored (score, comment) equal to the new one, with pandas' missing values as None."""
    return tuple(None if pd.isna(v) else v for v in stored) == new
