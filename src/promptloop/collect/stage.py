"""collect: new production logs -> validated, PII-redacted, versioned snapshot.

rows_in = rows_valid + rows_quarantined + rows_duplicate, always. Valid rows are appended to the
app's log dataset (Parquet parts, DVC-tracked); the rest go to the quarantine dataset with the
expectations they failed. Nothing is stored before it is redacted.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from promptloop.collect.mapping import LogMapping
from promptloop.collect.sources import EXTRA, ORIGIN, FileSource, Shape, Source, SourceBatch, Unreadable
from promptloop.collect.trace_collect import collect_late_feedback, prepare_trace_sources, update_stored_feedback
from promptloop.collect.validate import SUITE_FILE, LogValidator, derived_columns, load_suite
from promptloop.collect.waiting_feedback import STATE_KEY, Waiting, as_changes, left_waiting, still_waiting
from promptloop.core.config import AppSettings, CollectSettings
from promptloop.core.errors import InputError
from promptloop.core.files import write_atomic
from promptloop.core.secrets import remember_secret
from promptloop.domain.logs import LOG_FIELDS, STORED_LOG_SCHEMA
from promptloop.domain.results import CollectResult
from promptloop.llm.prices import PriceLookup, cost_from_tokens
from promptloop.quality.redact import Redactor, build_redactor, keyed_digest, keyed_hash
from promptloop.workspace.locking import holds_workspace
from promptloop.workspace.tracking import log_run
from promptloop.workspace.versioning import commit_paths, dataset_change, dvc_add_and_push, dvc_md5
from promptloop.workspace.workspace import LOGS, QUARANTINE, Workspace

STATE_FILE = "collect-state.json"
KEY_FILE = Path(".promptloop") / "pii.key"
# Every stored string column is redacted: a log may hold personal data anywhere, ids and file names too.
TEXT_COLUMNS = ("id", "source", "input", "output", "error", "feedback_comment", "metadata", "inputs")
LABEL_COLUMNS = ("app", "prompt_version", "model")  # few distinct values: each is redacted once
# Explicit schemas: a part whose column happens to be all null must still read with the others.
LOG_SCHEMA = STORED_LOG_SCHEMA
QUARANTINE_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("origin", "id", "kind", "reasons", "raw", "collect_run")]
)


@dataclass
class CollectPlan:
    """What one collect run reads and where it writes."""

    workspace: Workspace
    app: str
    settings: AppSettings
    sources: list[Source]
    state: dict[str, Any]
    run: str
    now: datetime
    mapping: LogMapping | None = None  # of the app's own log format (its file sources read through it)

    @property
    def data_dir(self) -> Path:
        return self.workspace.path(self.settings.data_dir)


@dataclass
class Totals:
    """Counts of a collect run; the identity rows_in = valid + quarantined + duplicate holds."""

    rows_in: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    feedback_updated: int = 0  # stored rows whose feedback changed later (trace sources)
    lines_skipped: int = 0  # lines that are not interactions: other events, feedback lines (outside the identity)
    waiting: Waiting | None = None  # feedback lines whose interaction is not stored yet (log_feedback only)
    feedback_unreadable: int = 0  # feedback lines without a rated id or a readable rating (log_feedback only)
    pii_redactions: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    parts: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    watermarks: dict[str, Any] = field(default_factory=dict)

    def add(self, other: Totals) -> None:
        for name in ("rows_in", "rows_valid", "rows_quarantined", "rows_duplicate", "feedback_updated",
                     "lines_skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.pii_redactions.update(other.pii_redactions)
        self.failures.update(other.failures)
        self.parts += other.parts
        self.watermarks.update(other.watermarks)
        self.examples += other.examples[: max(0, 20 - len(self.examples))]


def source_from_uri(uri: str, root: Path, *, allow_outside: bool = True, max_line_bytes: int = 1_000_000,
                    settings: CollectSettings | None = None, shape: Shape | None = None) -> Source:
    """A log source: a path or glob of files, `mlflow:<experiment>` for MLflow traces,
    `langfuse-export:<path>` / `langfuse:[<host>]` for Langfuse, `otel:<path>` for OTLP JSON files.

    Without `allow_outside`, files must be inside the workspace (`--source` needs `--allow-outside`
    to read elsewhere; a Prefect run form never can). `settings` (collect's) configure the trace sources;
    `shape` reads a file's lines in the app's own format (`collect.mapping`).
    """
    settings = settings or CollectSettings()
    if uri.startswith("mlflow:"):
        from promptloop.collect.traces import MlflowTraceSource

        return MlflowTraceSource.from_uri(uri, root)
    if uri.startswith("langfuse:"):
        from promptloop.collect.langfuse import api_source

        named = uri[len("langfuse:"):].strip().rstrip("/")
        if named and not allow_outside and named != (settings.langfuse.host or "").rstrip("/"):
            # The Langfuse keys go to that host: a run form or --source may not choose one params.yaml does not name.
            raise InputError(uri, "a Langfuse host other than collect.langfuse.host: pass --allow-outside to send "
                             "the keys there, or set collect.langfuse.host", "--source")
        from promptloop.llm.client import resolve_api_key

        def resolve(source: str, field_name: str) -> str:
            value = resolve_api_key(source, "params.yaml", field_name)
            remember_secret(value)  # redacted from every error and log from now on
            return value

        api = api_source(uri, settings.langfuse, resolve)
        api.feedback_names = tuple(settings.feedback_names)
        return api
    for scheme in ("langfuse-export:", "otel:"):
        if uri.startswith(scheme) and not allow_outside and not inside(root, uri[len(scheme):]):
            raise InputError(uri, "outside the workspace: pass --allow-outside to collect logs from there", "--source")
    if uri.startswith("langfuse-export:"):
        from promptloop.collect.langfuse import LangfuseExportSource

        export = LangfuseExportSource.from_uri(uri, root)
        export.feedback_names = tuple(settings.feedback_names)
        return export
    if uri.startswith("otel:"):
        from promptloop.collect.otel import FeedbackSettings, OtelFileSource

        otel = OtelFileSource.from_uri(uri, root)
        otel.feedback = FeedbackSettings(settings.otel_feedback_event, settings.otel_feedback_attribute,
                                         tuple(settings.feedback_names))
        return otel
    if not allow_outside and not inside(root, uri):
        raise InputError(uri, "outside the workspace: pass --allow-outside to collect logs from there", "--source")
    if not any(ch in uri for ch in "*?[") and not (root / uri).exists() and not Path(uri).exists():
        raise InputError(
            uri, "source not found (a file, folder or glob of .jsonl/.parquet files, or mlflow:<experiment>)"
        )
    return FileSource(uri, root, max_line_bytes, shape)


def inside(root: Path, uri: str) -> bool:
    """True when the files `uri` names (a path or a glob) lie inside `root`."""
    base = Path(re.split(r"[*?\[]", uri, maxsplit=1)[0] or ".")
    where = (base if base.is_absolute() else root / base).resolve()
    return where.is_relative_to(root.resolve())


def plan_collect(workspace: Workspace, app: str, source_uri: str | None = None, now: datetime | None = None,
                 allow_outside: bool = False) -> CollectPlan:
    """Sources, watermarks and a run id for collecting `app`.

    The app's configured sources may lie anywhere (params.yaml is reviewed like code); a `source_uri`
    given for one run must be inside the workspace unless `allow_outside`.
    """
    settings = workspace.app_settings(app)
    max_line = workspace.params.collect.max_line_bytes
    mapping = LogMapping.of(app, settings)
    shape = None if mapping is None else mapping.record
    if source_uri:
        sources = [source_from_uri(source_uri, workspace.root, allow_outside=allow_outside, max_line_bytes=max_line,
                                   settings=workspace.params.collect, shape=shape)]
    else:
        sources = [source_from_uri(uri, workspace.root, max_line_bytes=max_line, settings=workspace.params.collect,
                                   shape=shape)
                   for uri in settings.sources or [str(settings.log_dir)]]
    state_path = workspace.path(settings.data_dir) / STATE_FILE
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {"watermarks": {}}
    now = now or datetime.now(UTC)
    plan = CollectPlan(workspace, app, settings, sources, state, f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", now,
                       mapping)
    prepare_trace_sources(sources, workspace, app, settings, now)
    return plan


def pii_key(workspace: Workspace) -> bytes:
    """The user-id hashing key: from the configured env var, else the workspace's key file (made once)."""
    env_value = os.environ.get(workspace.params.collect.pii_key_env)
    if env_value:
        return env_value.encode()
    path = workspace.path(KEY_FILE)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32), encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip().encode()


@dataclass
class BatchContext:
    """What every batch of one run shares."""

    validator: LogValidator
    redactor: Redactor
    key: bytes
    price_lookup: PriceLookup
    seen_ids: set[str]
    run: str
    now: datetime


def process_batch(batch: SourceBatch, ctx: BatchContext) -> tuple[Totals, pd.DataFrame, pd.DataFrame]:
    """Validate, de-duplicate and redact one batch: (counts, valid rows, quarantined rows)."""
    totals = Totals(rows_in=batch.rows_in, lines_skipped=batch.skipped)
    frame = batch.frame.reset_index(drop=True)
    models = sorted({m for m in frame["model"] if isinstance(m, str)})  # not .unique(): a list or dict is unhashable
    prices = ctx.price_lookup(models)
    checked = derived_columns(frame, prices)
    # Only stored ids that recur in this batch can make a row non-unique: the expectation sees those.
    recurring = ctx.seen_ids.intersection(i for i in frame["id"] if isinstance(i, str))
    prior = pd.Series(sorted(recurring), dtype=object)
    outcome = ctx.validator.validate(checked, ctx.now, prior) if len(frame) else None
    failures = outcome.failures if outcome else {}
    duplicate = duplicate_rows(frame, failures, ctx.seen_ids)
    bad = np.zeros(len(frame), dtype=bool)
    bad[[i for i, names in failures.items() if names and not duplicate[i]]] = True
    valid_mask = ~bad & ~duplicate
    ctx.seen_ids.update(i for i in frame["id"] if isinstance(i, str))

    totals.rows_duplicate = int(duplicate.sum())
    totals.rows_quarantined = int(bad.sum()) + len(batch.unreadable)
    totals.rows_valid = int(valid_mask.sum())
    valid = typed_rows(checked[valid_mask], prices, ctx)
    valid, redactions = redact_columns(valid, TEXT_COLUMNS, ctx.redactor, LABEL_COLUMNS)
    quarantined, more = quarantine_rows(frame, failures, bad, duplicate, batch.unreadable, ctx)
    totals.pii_redactions = redactions + more
    totals.failures = Counter(n for i, names in failures.items() if bad[i] for n in names)
    totals.failures["duplicate_id"] += totals.rows_duplicate
    totals.failures.update(u.reason.split(":")[0] for u in batch.unreadable)
    totals.failures = +totals.failures
    totals.examples = quarantined.head(5)[["origin", "reasons", "raw"]].to_dict("records")
    return totals, valid, quarantined


def duplicate_rows(frame: pd.DataFrame, failures: dict[Any, list[str]], seen_ids: set[str]) -> np.ndarray:
    """Rows whose id was stored before or came earlier in this batch; the first copy is kept.

    The suite's uniqueness expectation flags every copy; only the later ones are duplicates, so the
    first copy's uniqueness failure is withdrawn here and it is judged on its other expectations.
    Only str ids can be duplicates: repeated ids of another type (even unhashable lists) stay invalid.
    """
    flagged = [i for i, names in failures.items() if "id_not_unique" in names and isinstance(frame.at[i, "id"], str)]
    duplicate = np.zeros(len(frame), dtype=bool)
    first_seen: set[str] = set()
    for index in sorted(flagged):
        row_id = frame.at[index, "id"]
        if row_id in seen_ids or row_id in first_seen:
            duplicate[index] = True
        else:
            first_seen.add(row_id)
            failures[index] = [n for n in failures[index] if n != "id_not_unique"]
    return duplicate


def cost_sources(logged: pd.Series, computed: pd.Series) -> np.ndarray:
    """Where each row's cost comes from: 'logged', 'price_map', or None when neither knows it."""
    sources = np.full(len(logged), None, dtype=object)
    sources[computed.notna().to_numpy()] = "price_map"
    sources[logged.notna().to_numpy()] = "logged"
    return sources


def typed_rows(checked: pd.DataFrame, prices: dict[str, tuple[float, float]], ctx: BatchContext) -> pd.DataFrame:
    """Valid rows in the stored schema: proper dtypes, cost filled from the price map, user id hashed."""
    computed = cost_from_tokens(
        checked["model"], checked["prompt_tokens_value"], checked["completion_tokens_value"], prices
    )
    logged = checked["cost_value"]
    return pd.DataFrame(
        {
            "id": checked["id"].astype(str),
            "timestamp": checked["timestamp_utc"].dt.floor("us"),  # stored in us: nanoseconds would fail the cast
            "app": checked["app"].astype(str),
            "prompt_version": checked["prompt_version"].astype(str),
            "model": checked["model"].astype(str),
            "input": checked["input"].astype(object),
            "output": checked["output"].astype(object),
            "latency_ms": checked["latency_value"],
            # the raw ints, not the float *_value columns: a float rounds counts above 2**53
            "prompt_tokens": checked["prompt_tokens"].astype("int64"),
            "completion_tokens": checked["completion_tokens"].astype("int64"),
            "cost_usd": logged.fillna(computed),
            "cost_source": cost_sources(logged, computed),
            "error": checked["error"].astype(object),
            "feedback": checked["feedback"].astype("Int8"),
            "feedback_comment": checked["feedback_comment"].astype(object),
            "user_hash": keyed_hash(checked["user_id"], ctx.key),
            "metadata": checked["metadata"].map(json_object),
            "source": checked[ORIGIN].astype(str),
            "collect_run": ctx.run,
            "inputs": checked["inputs"].map(json_object),
        }
    ).reset_index(drop=True)


def json_object(value: object) -> str | None:
    """A mapping column (metadata, inputs) as stored: JSON text (redacted like any other text), else null."""
    return orjson.dumps(value, default=str).decode() if isinstance(value, dict) else None


def redact_columns(frame: pd.DataFrame, columns: tuple[str, ...], redactor: Redactor,
                   labels: tuple[str, ...] = ()) -> tuple[pd.DataFrame, Counter[str]]:
    """Redact PII in the text columns (and in the label columns, each distinct value once); returns the
    frame and counts per PII kind."""
    counts: Counter[str] = Counter()
    out = frame.copy()
    for column in columns:
        out[column], found = redactor.redact_series(frame[column])
        counts.update(found)
    for column in labels:
        out[column], found = redactor.redact_labels(frame[column])
        counts.update(found)
    return out, counts


def quarantine_rows(
    frame: pd.DataFrame, failures: dict[Any, list[str]], bad: np.ndarray, duplicate: np.ndarray,
    unreadable: list[Unreadable], ctx: BatchContext,
) -> tuple[pd.DataFrame, Counter[str]]:
    """Everything not stored as valid, redacted (user ids hashed as in the logs), with its reasons: nothing is lost."""
    records = []
    for index in np.flatnonzero(bad | duplicate):
        row = frame.iloc[index]
        raw = {name: row[name] for name in LOG_FIELDS}
        if isinstance(row[EXTRA], str):
            raw.update(json.loads(row[EXTRA]))
        if raw.get("user_id") is not None:
            raw["user_id"] = keyed_digest(str(raw["user_id"]), ctx.key)
        reasons = ["duplicate_id"] if duplicate[index] else failures[index]
        records.append({"origin": row[ORIGIN], "id": row["id"] if isinstance(row["id"], str) else None,
                        "kind": "duplicate" if duplicate[index] else "invalid", "reasons": ",".join(reasons),
                        "raw": orjson.dumps(raw, default=str).decode()})
    records += [{"origin": u.origin, "id": None, "kind": "unreadable", "reasons": u.reason.split(":")[0],
                 "raw": hash_user_ids_in_text(u.raw, ctx.key)} for u in unreadable]
    quarantined = pd.DataFrame(records, columns=["origin", "id", "kind", "reasons", "raw"])
    quarantined["collect_run"] = ctx.run
    quarantined, counts = redact_columns(quarantined, ("origin", "id", "raw"), ctx.redactor)
    return quarantined, counts


# A line that is not JSON can still name its user: `"user_id": "..."` (escapes included).
USER_ID_IN_TEXT = re.compile(r'("user_id"\s*:\s*")((?:[^"\\]|\\.)*)(")')


def hash_user_ids_in_text(text: str, key: bytes) -> str:
    """An unreadable line with every `"user_id": "..."` value replaced by its keyed hash (best effort)."""
    return USER_ID_IN_TEXT.sub(lambda m: m.group(1) + keyed_digest(m.group(2), key) + m.group(3), text)


def write_part(frame: pd.DataFrame, directory: Path, name: str, schema: pa.Schema) -> Path:
    """Write a Parquet part atomically (a crash never leaves a half-written part)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), tmp, compression="zstd")
    os.replace(tmp, path)
    return path


def stored_ids(data_dir: Path) -> set[str]:
    """Ids of every row already in the app's log dataset."""
    return {
        i
        for part in sorted((data_dir / LOGS).glob("*.parquet"))
        for i in pq.read_table(part, columns=["id"]).column("id").to_pylist()
    }


def collect_source(
    plan: CollectPlan, index: int, ctx: BatchContext, on_batch: Callable[[int], None] = lambda n: None
) -> Totals:
    """Read one source batch by batch; write valid and quarantined parts; returns its totals."""
    totals = Totals()
    source = plan.sources[index]
    watermark = plan.state["watermarks"].get(source.key)
    for number, batch in enumerate(source.batches(watermark, plan.workspace.params.collect.batch_rows)):
        counts, valid, quarantined = process_batch(batch, ctx)
        stem = f"part-{plan.run}-s{index}-{number:04d}.parquet"
        if len(valid):
            counts.parts.append(
                str(write_part(valid, plan.data_dir / LOGS, stem, LOG_SCHEMA).relative_to(plan.workspace.root))
            )
        if len(quarantined):
            counts.parts.append(
                str(
                    write_part(quarantined, plan.data_dir / QUARANTINE, stem, QUARANTINE_SCHEMA).relative_to(
                        plan.workspace.root
                    )
                )
            )
        totals.add(counts)
        totals.watermarks[source.key] = batch.watermark
        on_batch(batch.rows_in)
    return totals


@dataclass(frozen=True)
class Snapshot:
    """The log dataset's version after a run: its folder, DVC md5 and the commit (None when nothing came in)."""

    snapshot: str | None
    dvc_md5: str | None
    commit: str | None


def snapshot(plan: CollectPlan, totals: Totals) -> Snapshot:
    """Version the new parts with DVC (add + push) and commit the .dvc files and watermarks with git."""
    state_path = plan.data_dir / STATE_FILE
    logs_dir = plan.data_dir / LOGS
    if not totals.parts:
        # Lines `log_filter` skipped move the watermark with no row: kept, or each run would skip them again;
        # so are the ratings left waiting or dropped.
        changed = totals.lines_skipped or (totals.waiting is not None and totals.waiting.expired)
        commit = skipped_only(plan, totals, state_path) if changed else None
        return Snapshot(_relative(plan, logs_dir) if logs_dir.exists() else None,
                        dvc_md5(logs_dir) if Path(f"{logs_dir}.dvc").is_file() else None, commit)
    targets = [d for d in (logs_dir, plan.data_dir / QUARANTINE) if d.is_dir()]
    md5s = dvc_add_and_push(plan.workspace.root, targets)
    save_state(plan, totals, state_path)
    tracked = (
        [Path(f"{t}.dvc") for t in targets] + [state_path] + [p for p in (plan.data_dir / ".gitignore",) if p.is_file()]
    )
    message = f"collect {plan.app}: +{totals.rows_valid} rows, {totals.rows_quarantined} quarantined (run {plan.run})"
    if totals.feedback_updated:
        message += f", {totals.feedback_updated} rows with new feedback"
    commit = commit_paths(plan.workspace.root, tracked, message)
    return Snapshot(_relative(plan, logs_dir), md5s.get(_relative(plan, logs_dir)), commit)


def save_state(plan: CollectPlan, totals: Totals, state_path: Path) -> None:
    """The sources' watermarks after this run, written atomically."""
    state = {"watermarks": {**plan.state["watermarks"], **totals.watermarks}, "last_run": plan.run}
    waiting = totals.waiting.ratings if totals.waiting is not None else plan.state.get(STATE_KEY)
    if waiting:
        state[STATE_KEY] = waiting
    write_atomic(state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")


def skipped_only(plan: CollectPlan, totals: Totals, state_path: Path) -> str | None:
    """Commit the watermarks of a run that read only lines that are not interactions."""
    save_state(plan, totals, state_path)
    return commit_paths(plan.workspace.root, [state_path],
                        f"collect {plan.app}: {totals.lines_skipped} line(s) skipped, no rows (run {plan.run})")


def versioned_paths(plan: CollectPlan) -> list[Path]:
    """What a collect run changes in the workspace: the two datasets, the watermarks and DVC's .gitignore."""
    return [plan.data_dir / LOGS, plan.data_dir / QUARANTINE, plan.data_dir / STATE_FILE, plan.data_dir / ".gitignore"]


def _relative(plan: CollectPlan, path: Path) -> str:
    return str(path.relative_to(plan.workspace.root))


def apply_feedback_lines(plan: CollectPlan, mapping: LogMapping, redactor: Redactor, totals: Totals) -> None:
    """Rate the stored interactions with this run's feedback lines (read by `mapping`) and those earlier runs
    left waiting; the ratings whose interaction is still not stored wait on (`collect.waiting_feedback`)."""
    before = still_waiting(plan.state, plan.now, plan.workspace.params.collect.feedback_lookback_days)
    changes = {**as_changes(before), **mapping.received}  # a new rating of the same id wins
    applied = update_stored_feedback(plan.data_dir / LOGS, changes, redactor)
    totals.feedback_updated += applied.updated
    totals.parts += [_relative(plan, part) for part in applied.rewritten]
    totals.waiting = left_waiting(changes, applied.found, before, plan.now, redactor)
    totals.feedback_unreadable = len(mapping.unreadable)


def log_collect_run(plan: CollectPlan, totals: Totals, versioned: Snapshot, suite_version: object) -> str:
    """One MLflow run: counts as metrics; sources, watermark and DVC hash as params/tags; the report as artifact."""
    metrics = {"rows_in": totals.rows_in, "rows_valid": totals.rows_valid, "rows_quarantined": totals.rows_quarantined,
               "rows_duplicate": totals.rows_duplicate, "pii_redactions": sum(totals.pii_redactions.values()),
               "feedback_updated": totals.feedback_updated, "lines_skipped": totals.lines_skipped}
    if totals.waiting is not None:
        metrics.update(feedback_waiting=len(totals.waiting.ratings), feedback_expired=totals.waiting.expired,
                       feedback_unreadable=totals.feedback_unreadable)
    metrics.update({f"pii_{kind.lower()}": n for kind, n in totals.pii_redactions.items()})
    params = {"app": plan.app, "sources": [s.key for s in plan.sources], "suite_version": suite_version,
              "batch_rows": plan.workspace.params.collect.batch_rows}
    tags = {"promptloop.stage": "collect", "promptloop.app": plan.app, "collect.run": plan.run}
    tags.update({k: str(v) for k, v in {"dvc_md5": versioned.dvc_md5, "git_commit": versioned.commit,
                                         "snapshot": versioned.snapshot}.items() if v})
    report = {"counts": {k: int(v) for k, v in metrics.items()}, "failures": dict(totals.failures.most_common()),
              "examples": totals.examples, "parts": totals.parts}
    return log_run(
        plan.workspace.tracking_uri,
        plan.workspace.artifact_root,
        plan.workspace.experiment_name(plan.app),
        f"collect-{plan.run}",
        params,
        metrics,
        tags,
        {"quarantine_report.json": report, "watermarks.json": {**plan.state["watermarks"], **totals.watermarks}},
    )


def make_context(plan: CollectPlan) -> BatchContext:
    """Validator, redactor, key and prices shared by the batches of a run."""
    workspace = plan.workspace
    suite_path = workspace.path(SUITE_FILE)
    return BatchContext(LogValidator(load_suite(suite_path), suite_path),
                        build_redactor(workspace.params.collect.extra_pii_patterns), pii_key(workspace),
                        workspace.price_lookup(), stored_ids(plan.data_dir), plan.run, plan.now)


def summary(plan: CollectPlan, totals: Totals, versioned: Snapshot, run_id: str) -> CollectResult:
    """The result of a collect run."""
    if totals.rows_in != totals.rows_valid + totals.rows_quarantined + totals.rows_duplicate:
        raise RuntimeError(f"collect lost rows: {totals}")  # fail loudly rather than report wrong counts
    return CollectResult(app=plan.app, rows_in=totals.rows_in, rows_valid=totals.rows_valid,
                         rows_quarantined=totals.rows_quarantined, rows_duplicate=totals.rows_duplicate,
                         feedback_updated=totals.feedback_updated, lines_skipped=totals.lines_skipped,
                         feedback_waiting=len(totals.waiting.ratings) if totals.waiting else 0,
                         feedback_expired=totals.waiting.expired if totals.waiting else 0,
                         feedback_unreadable=totals.feedback_unreadable,
                         pii_redactions=dict(sorted(totals.pii_redactions.items())),
                         failures=dict(totals.failures.most_common()), snapshot=versioned.snapshot,
                         quarantine=(Path(plan.settings.data_dir) / QUARANTINE).as_posix(),
                         dvc_md5=versioned.dvc_md5, git_commit=versioned.commit, mlflow_run_id=run_id,
                         sources=[s.key for s in plan.sources], run=plan.run)


@holds_workspace("collect")
def collect(workspace: Workspace, app: str, source_uri: str | None = None, now: datetime | None = None,
            on_batch: Callable[[int], None] = lambda n: None, allow_outside: bool = False) -> CollectResult:
    """The whole stage: plan, read + validate + redact + write each source, version, log."""
    plan = plan_collect(workspace, app, source_uri, now, allow_outside)
    ctx = make_context(plan)
    totals = Totals()
    # Parts, watermarks and their commit land together: a crash leaves neither parts nor state behind.
    with dataset_change(workspace.root, versioned_paths(plan), f"collect {app} (run {plan.run})"):
        for index in range(len(plan.sources)):
            totals.add(collect_source(plan, index, ctx, on_batch))
        late = collect_late_feedback(plan.sources, plan.state["watermarks"], plan.now,
                                     workspace.params.collect.feedback_lookback_days, plan.data_dir / LOGS,
                                     workspace.root, ctx.redactor)
        totals.feedback_updated += late.updated
        totals.parts += late.parts
        totals.watermarks.update(late.watermarks)
        if plan.mapping is not None and plan.mapping.feedback is not None:  # 👍/👎 logged as lines of their own
            apply_feedback_lines(plan, plan.mapping, ctx.redactor, totals)
        versioned = snapshot(plan, totals)
    run_id = log_collect_run(plan, totals, versioned, ctx.validator.version)
    return summary(plan, totals, versioned, run_id)
