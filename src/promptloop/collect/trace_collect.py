"""What collect adds around a trace source (MLflow, Langfuse, OTLP): its app's settings, the release
history, and late user feedback applied to rows already stored.

Late feedback: each run re-reads (metadata only) the traces started within
`collect.feedback_lookback_days` before the run and takes those whose user Feedback was written at
or after the previous run's feedback mark. A stored row whose feedback or comment differs is
rewritten in its Parquet part (the comment redacted like any stored text); the rewritten parts are
a new DVC version of the log dataset, and the rows are counted as `feedback_updated`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from promptloop.collect.exports import TraceExportSource
from promptloop.collect.sources import Source
from promptloop.collect.traces import Feedback, MlflowTraceSource
from promptloop.core.config import AppSettings
from promptloop.domain.logs import STORED_LOG_SCHEMA
from promptloop.quality.redact import Redactor
from promptloop.workspace.workspace import Workspace

RELEASE_STAGE = "release"  # the promptloop.stage tag of release and rollback runs (deploy/release.py)
DAY_MS = 86_400_000


LateFeedbackSource = MlflowTraceSource | TraceExportSource  # sources whose feedback can change after a row is read


def feedback_key(source: LateFeedbackSource) -> str:
    """Where the source's feedback mark is kept among the watermarks."""
    return f"{source.key}#feedback"


def trace_sources(sources: Sequence[Source]) -> list[LateFeedbackSource]:
    return [s for s in sources if isinstance(s, (MlflowTraceSource, TraceExportSource))]


def prepare_trace_sources(sources: Sequence[Source], workspace: Workspace, app: str, settings: AppSettings,
                          now: datetime | None = None) -> None:
    """Give each trace source the collected app (for untagged traces) and its releases; MLflow sources
    their mapping, the others the run's time (unfinished traces older than their grace are read)."""
    traced = trace_sources(sources)
    if not traced:
        return
    releases = release_history(workspace.tracking_uri, workspace.experiment_name(app))
    for source in traced:
        source.app = source.app or app
        source.releases = releases
        source.feedback_scale = settings.feedback_scale
        if isinstance(source, MlflowTraceSource):
            source.trace_mapping = dict(settings.trace_mapping)
        elif now is not None:
            source.now_ms = int(now.timestamp() * 1000)


def release_history(tracking_uri: str, experiment: str) -> list[tuple[int, str]]:
    """(start time in ms, prompt version) of every release and rollback of the app, oldest first.

    Each one moved the registry alias `champion` (`production` before it) to that version, so the last one started at or
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


def collect_late_feedback(sources: Sequence[Source], watermarks: dict[str, Any], now: datetime, lookback_days: float,
                          logs_dir: Path, root: Path, redactor: Redactor) -> FeedbackOutcome:
    """Apply feedback that changed since the last run to the stored rows (in `logs_dir`) of every trace
    source; `watermarks` are the previous run's, `now` the run's time (the lookback ends there)."""
    outcome = FeedbackOutcome()
    now_ms = int(now.timestamp() * 1000)
    for source in trace_sources(sources):
        key = feedback_key(source)
        previous = watermarks.get(key) or {}
        changes, mark = source.feedback_changes(now_ms - int(lookback_days * DAY_MS), previous.get("updated_ms"))
        if changes:
            applied = update_stored_feedback(logs_dir, changes, redactor)
            outcome.updated += applied.updated
            outcome.parts += [str(p.relative_to(root)) for p in applied.rewritten]
        if mark is not None and mark != previous.get("updated_ms"):
            outcome.watermarks[key] = {"updated_ms": mark}
    return outcome


class StoredFeedback(NamedTuple):
    """What applying feedback to the stored rows did."""

    updated: int  # rows whose feedback or comment changed
    rewritten: list[Path]  # the parts rewritten
    found: set[str]  # the rated ids some stored row has (changed or not)


def update_stored_feedback(logs_dir: Path, changes: dict[str, Feedback], redactor: Redactor) -> StoredFeedback:
    """Rewrite the stored rows whose feedback differs from `changes` (rated id -> feedback)."""
    if not changes:  # nothing to look for: the stored parts are not read
        return StoredFeedback(0, [], set())
    comments = redacted_comments(changes, redactor)
    # Stored ids are redacted like every stored text: a rated id is looked for in that form.
    rated = {str(redactor.redact_text(row_id)[0]): row_id for row_id in changes}
    updated, rewritten, found = 0, [], set()
    for part in sorted(logs_dir.glob("*.parquet")):
        stored = pq.read_table(part, columns=["id", "feedback", "feedback_comment"]).to_pandas()
        hits = []
        for index, (row_id, score, comment) in enumerate(stored.itertuples(index=False, name=None)):
            if row_id not in rated:
                continue
            found.add(rated[row_id])
            if not same_feedback((score, comment), (changes[rated[row_id]][0], comments[rated[row_id]])):
                hits.append(index)
        if not hits:
            continue
        frame = pq.read_table(part, schema=STORED_LOG_SCHEMA).to_pandas()
        for index in hits:
            row_id = rated[frame.at[index, "id"]]
            frame.at[index, "feedback"] = changes[row_id][0]
            frame.at[index, "feedback_comment"] = comments[row_id]
        frame["feedback"] = frame["feedback"].astype("Int8")
        rewrite_part(frame, part)
        rewritten.append(part)
        updated += len(hits)
    return StoredFeedback(updated, rewritten, found)


def redacted_comments(changes: dict[str, Feedback], redactor: Redactor) -> dict[str, str | None]:
    """Each change's comment as it would be stored: redacted."""
    ids = list(changes)
    series, _ = redactor.redact_series(pd.Series([changes[i][1] for i in ids], dtype=object))
    return {i: (None if pd.isna(c) else str(c)) for i, c in zip(ids, series, strict=True)}


def same_feedback(stored: tuple[Any, Any], new: Feedback) -> bool:
    """Stored (score, comment) equal to the new one, with pandas' missing values as None."""
    return tuple(None if pd.isna(v) else v for v in stored) == new


def rewrite_part(frame: pd.DataFrame, path: Path) -> None:
    """Replace a stored part atomically (a crash leaves the old part or the new one, never half of one)."""
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pandas(frame, schema=STORED_LOG_SCHEMA, preserve_index=False), tmp,
                   compression="zstd")
    os.replace(tmp, path)
