"""analyze: how healthy is the app over a window of its collected logs, and where does it fail."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from promptloop.analyze.classifier import classifier_enabled, classify, quality_metrics
from promptloop.analyze.gaps import find_gaps
from promptloop.analyze.metrics import compute_metrics, daily_metrics, evaluate_alerts, metrics_by
from promptloop.analyze.mining import cluster_conversations, cluster_failures, mine_failures, with_topic
from promptloop.analyze.online_judge import judge_sample
from promptloop.analyze.report import render_report
from promptloop.analyze.topics import name_topics
from promptloop.core.config import AnalyzeSettings
from promptloop.core.errors import InputError
from promptloop.domain.kb import Retriever, load_kb
from promptloop.domain.logs import STORED_LOG_SCHEMA
from promptloop.domain.results import (
    AlertResult,
    AnalyzeResult,
    ClusterLabelsResult,
    ClusterResult,
    DetectorQualityResult,
    OnlineJudgeResult,
    WebhookResult,
    Window,
)
from promptloop.llm.prices import fill_missing_costs
from promptloop.quality.detectors import Detector, detectors_of
from promptloop.quality.injection import followed
from promptloop.workspace.locking import holds_workspace
from promptloop.workspace.preflight import preflight
from promptloop.workspace.tracking import log_run
from promptloop.workspace.versioning import commit_paths, dataset_change, dvc_add_and_push
from promptloop.workspace.workspace import FAILURES, LOGS, Workspace

COLUMNS = ["id", "timestamp", "prompt_version", "model", "input", "output", "latency_ms", "prompt_tokens",
           "completion_tokens", "cost_usd", "error", "feedback", "feedback_comment", "inputs", "user_hash", "metadata"]
# flag column -> the text its detector reads; `followed_injection` is derived from injection (quality/injection.py)
FLAGS = {"refusal": "output", "uncertain": "output", "toxic": "output", "biased": "output", "injection": "input"}


def parse_window(text: str) -> timedelta:
    """`7d`, `36h` or a bare number of days."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise InputError("--window", f"expected a duration like 7d or 36h, got {text!r}")
    value = float(match.group(1))
    return timedelta(hours=value) if match.group(2) == "h" else timedelta(days=value)


@dataclass
class AnalyzePlan:
    """One analyze run: the app, its settings and the window."""

    workspace: Workspace
    app: str
    settings: AnalyzeSettings
    start: pd.Timestamp
    end: pd.Timestamp
    run: str

    @property
    def data_dir(self) -> Path:
        return self.workspace.path(self.workspace.app_settings(self.app).data_dir)

    @property
    def previous(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        return self.start - (self.end - self.start), self.start


def logs_dataset(data_dir: Path) -> ds.Dataset:
    """The app's collected log dataset; an app never collected is an input error."""
    parts = sorted((data_dir / LOGS).glob("*.parquet"))
    if not parts:
        raise InputError(data_dir / LOGS, "no collected logs yet: run `promptloop collect` first")
    # The stored schema: parts collected before a column existed (`inputs`) read it as null.
    return ds.dataset([str(p) for p in parts], format="parquet", schema=STORED_LOG_SCHEMA)


def plan_analyze(workspace: Workspace, app: str, window: str | None = None, until: str | None = None) -> AnalyzePlan:
    """The window ends at `until` (ISO time) or just after the newest collected row."""
    settings = workspace.params.analyze
    length = parse_window(window) if window else timedelta(days=settings.window_days)
    data_dir = workspace.path(workspace.app_settings(app).data_dir)
    if until:
        try:
            end = pd.Timestamp(until)
        except ValueError:
            raise InputError("--until", f"not an ISO-8601 time: {until!r}") from None
        end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    else:
        newest = logs_dataset(data_dir).to_table(columns=["timestamp"]).column("timestamp")
        end = pd.Timestamp(newest.to_numpy().max()).tz_localize("UTC") + pd.Timedelta(microseconds=1)
    return AnalyzePlan(workspace, app, settings, end - length, end, f"{end:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}")


def load_window(plan: AnalyzePlan, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The collected rows with start <= timestamp < end (read with a Parquet filter)."""
    dataset = logs_dataset(plan.data_dir)
    condition = (ds.field("timestamp") >= start.to_pydatetime()) & (ds.field("timestamp") < end.to_pydatetime())
    frame = dataset.to_table(columns=COLUMNS, filter=condition).to_pandas()
    # A model priced since collect ran (params.yaml, or a newer litellm) gets its rows costed now.
    return fill_missing_costs(frame, plan.workspace.price_lookup())


def flag_rows(frame: pd.DataFrame, detectors: dict[str, Detector]) -> pd.DataFrame:
    """Add the detector flags: refusal, uncertain, toxic, biased (on the answer), injection (an attempt, on the
    question) and followed_injection (an attempt the answer carried out)."""
    out = frame.copy()
    for flag, column in FLAGS.items():
        out[flag] = detectors[flag].flags(frame[column]).astype(bool)
    out["followed_injection"] = followed(frame["input"], frame["output"], out["injection"])
    return out


def run_online_judge(plan: AnalyzePlan, frame: pd.DataFrame) -> tuple[pd.Series, OnlineJudgeResult | None]:
    """Scores of the online judge on a seeded sample of answered rows (None: judge off)."""
    settings = plan.settings
    answered = frame[frame["output"].notna()]
    if not settings.judge_model or settings.judge_sample == 0 or answered.empty:
        return pd.Series(np.nan, index=frame.index), None
    preflight(plan.workspace, plan.app, {"online judge": settings.judge_model}, budget_usd=settings.judge_budget_usd)
    sample = answered.sample(n=min(settings.judge_sample, len(answered)), random_state=settings.seed)
    # The sample bounds the answers judged; the budget is in dollars. A cap on calls would count retries
    # and repair turns too, so a provider's 429s would leave some rows unjudged, which ones by timing.
    runner = plan.workspace.open_runner(max_usd=settings.judge_budget_usd, max_calls=None)
    try:
        description = plan.workspace.app_settings(plan.app).description
        run = asyncio.run(judge_sample(runner, settings.judge_model, sample, settings.seed, description))
    finally:
        runner.cache.close()
    scores = frame["id"].astype(str).map(run.scores).astype(float)
    return scores, run.result(settings.judge_model)


def run_classifier(plan: AnalyzePlan, flagged: pd.DataFrame,
                   detectors: dict[str, Detector]) -> tuple[pd.DataFrame, DetectorQualityResult | None]:
    """The LLM classifier's labels on a sample and the unsure rows (analyze/classifier.py); None: off."""
    settings, model = plan.settings, plan.settings.classifier_model
    if not model or not classifier_enabled(settings, flagged):
        return flagged, None
    preflight(plan.workspace, plan.app, {"classifier": model}, budget_usd=settings.classifier_budget_usd)
    # A budget in dollars, not calls: retries of a provider's 429s must not decide which rows get labels.
    runner = plan.workspace.open_runner(max_usd=settings.classifier_budget_usd, max_calls=None)
    try:
        return classify(runner, settings, flagged, detectors, plan.workspace.app_settings(plan.app).description)
    finally:
        runner.cache.close()


LABEL_EXAMPLES = 8  # conversations of a cluster shown to the labeller


def label_clusters(plan: AnalyzePlan, failures: pd.DataFrame, assignment: np.ndarray,
                   clusters: list[ClusterResult]) -> tuple[list[ClusterResult], ClusterLabelsResult | None]:
    """Each cluster's topic named by `analyze.label_model` (None: off); a cluster it cannot name keeps its
    distinctive-words label, counted as a fallback."""
    model = plan.settings.label_model
    if not model or not clusters:
        return clusters, None
    budget = plan.settings.label_budget_usd
    preflight(plan.workspace, plan.app, {"cluster labeller": model}, budget_usd=budget)
    conversations = cluster_conversations(failures, assignment, clusters, LABEL_EXAMPLES)
    runner = plan.workspace.open_runner(max_usd=budget, max_calls=None)
    try:
        description = plan.workspace.app_settings(plan.app).description
        run = asyncio.run(name_topics(runner, model, conversations, description, plan.settings.seed))
    finally:
        runner.cache.close()
    named = [with_topic(c, run.topics[c.id]) if c.id in run.topics else c for c in clusters]
    return named, ClusterLabelsResult(model=model, labelled=len(run.topics), fallbacks=run.fallbacks,
                                      calls=run.calls, cache_hits=run.cache_hits, cost_usd=round(run.cost_usd, 6),
                                      stopped_by_budget=run.stopped_by_budget)


@dataclass
class Mined:
    """An analysed window: the result so far, the failing rows and each one's cluster."""

    result: AnalyzeResult
    failures: pd.DataFrame
    assignment: np.ndarray


def store_failures(plan: AnalyzePlan, mined: Mined) -> AnalyzeResult:
    """Write the mined failures and clusters, version them with DVC, commit the .dvc file."""
    target = plan.data_dir / FAILURES
    keep = ["id", "timestamp", "prompt_version", "model", "input", "output", "error", "feedback", "feedback_comment",
            "kinds", "severity", "judge_score"]
    # The logged inputs (JSON) go with them: a golden case drafted from a failure needs the prompt's other
    # variables and the conversation before the question, not only the question.
    keep += [c for c in ("inputs",) if c in mined.failures]
    # Whose flag each failure's kind is (`<flag>_by`: "llm" where the classifier labelled the row, else "fast"),
    # so a reviewer of the failures can tell the detectors' guesses from the LLM's labels.
    keep += sorted(c for c in mined.failures if c.endswith("_by"))
    stored = mined.failures[keep].assign(cluster=mined.assignment, analyze_run=plan.run)
    clusters = [c.model_dump() for c in mined.result.clusters]
    gaps = [g.model_dump() for g in mined.result.kb_gaps]  # improve drafts articles for them
    gitignore = plan.data_dir / ".gitignore"
    with dataset_change(plan.workspace.root, [target, gitignore], f"analyze {plan.app} (run {plan.run})"):
        target.mkdir(parents=True, exist_ok=True)
        stored.to_parquet(target / "failures.parquet", index=False)
        stored_clusters = {"run": plan.run, "window": [str(plan.start), str(plan.end)], "clusters": clusters,
                           "kb_gaps": gaps}
        (target / "clusters.json").write_text(json.dumps(stored_clusters, ensure_ascii=False, indent=2) + "\n",
                                              encoding="utf-8")
        md5 = dvc_add_and_push(plan.workspace.root, [target])[str(target.relative_to(plan.workspace.root))]
        tracked = [Path(f"{target}.dvc")] + [p for p in (gitignore,) if p.is_file()]
        commit = commit_paths(
            plan.workspace.root,
            tracked,
            f"analyze {plan.app}: {len(stored)} failures in {len(clusters)} clusters (run {plan.run})",
        )
    mined.result.failures_snapshot = str(target.relative_to(plan.workspace.root))
    mined.result.dvc_md5, mined.result.git_commit = md5, commit
    return mined.result


def send_webhook(url: str | None, app: str, alerts: list[AlertResult]) -> WebhookResult | None:
    """POST the alerts as JSON to the configured webhook; a failure is reported, not raised."""
    if not url or not alerts:
        return None
    body = json.dumps({"app": app, "alerts": [a.model_dump() for a in alerts]}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.build_opener(NoRedirects).open(request, timeout=5) as response:
            return WebhookResult(sent=True, status=response.status)
    except OSError as exc:
        return WebhookResult(sent=False, error=str(exc))


class NoRedirects(urllib.request.HTTPRedirectHandler):
    """The alerts go to the configured URL only: a redirect elsewhere is a failed delivery, not a new target."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def window_of(plan: AnalyzePlan) -> Window:
    return Window(
        start=plan.start.isoformat(), end=plan.end.isoformat(), days=(plan.end - plan.start) / pd.Timedelta(days=1)
    )


def analyze_frame(plan: AnalyzePlan, frame: pd.DataFrame, previous: pd.DataFrame) -> Mined:
    """Metrics, alerts, failures and clusters of a window (pure apart from the LLM classifier and online judge)."""
    detectors = detectors_of(plan.settings, plan.workspace.root)
    flagged, quality = run_classifier(plan, flag_rows(frame, detectors), detectors)
    flagged["judge_score"], judge = run_online_judge(plan, flagged)
    metrics = compute_metrics(flagged)
    previous_metrics = compute_metrics(flag_rows(previous, detectors)) if len(previous) else None
    rules = plan.settings.alert_rules()
    alerts = evaluate_alerts(metrics, previous_metrics, rules)
    failures = mine_failures(flagged)
    assignment, clusters = cluster_failures(failures, plan.settings.clusters, plan.settings.seed)
    clusters, labels = label_clusters(plan, failures, assignment, clusters)
    app = plan.workspace.app_settings(plan.app)
    retriever = Retriever(load_kb(plan.workspace.path(app.knowledge_base))) if app.knowledge_base else None
    gaps = find_gaps(flagged, retriever, plan.settings.kb_gaps, app.top_k)
    result = AnalyzeResult(
        app=plan.app, window=window_of(plan), metrics=metrics, previous_metrics=previous_metrics,
        by_prompt_version=metrics_by(flagged, "prompt_version"), by_model=metrics_by(flagged, "model"),
        daily=daily_metrics(flagged), alerts=alerts, online_judge=judge, detector_quality=quality,
        failures=len(failures), clusters=clusters, cluster_labels=labels, kb_gaps=gaps,
    )
    return Mined(result, failures, assignment)


def log_analyze_run(plan: AnalyzePlan, result: AnalyzeResult, latencies: np.ndarray) -> str:
    """One MLflow run: the window's metrics (timestamped at the window end), the HTML report, the summary."""
    numeric = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and v is not None}
    numeric.update(quality_metrics(result.detector_quality))
    numeric["kb_gaps"] = len(result.kb_gaps)
    tags = {"promptloop.stage": "analyze", "promptloop.app": plan.app, "analyze.run": plan.run,
            "alerts": str(len(result.alerts))}
    tags.update({k: str(v) for k, v in (("dvc_md5", result.dvc_md5), ("git_commit", result.git_commit)) if v})
    params = {"window_start": result.window.start, "window_end": result.window.end,
              "clusters": plan.settings.clusters, "judge_model": plan.settings.judge_model or "none",
              "classifier_model": plan.settings.classifier_model or "none",
              "label_model": plan.settings.label_model or "none"}
    return log_run(plan.workspace.tracking_uri, plan.workspace.artifact_root, plan.workspace.experiment_name(plan.app),
                   f"analyze-{plan.run}", params, numeric, tags,
                   {"summary.json": result.model_dump(mode="json"), "report.html": render_report(result, latencies)},
                   metric_time_ms=int(plan.end.timestamp() * 1000))


@holds_workspace("analyze")
def analyze(workspace: Workspace, app: str, window: str | None = None, until: str | None = None) -> AnalyzeResult:
    """The whole stage: plan, load, measure, mine, store, report."""
    plan = plan_analyze(workspace, app, window, until)
    frame = load_window(plan, plan.start, plan.end)
    previous = load_window(plan, *plan.previous)
    result = store_failures(plan, analyze_frame(plan, frame, previous))
    result.webhook = send_webhook(plan.settings.webhook_url, app, result.alerts)
    result.mlflow_run_id = log_analyze_run(plan, result, frame["latency_ms"].to_numpy())
    return result
