"""Recording an evaluation: MLflow runs (a parent, a child per prompt), the prompt registry, the DVC metrics file."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import git
import pandas as pd

from promptloop.core.config import AppSettings
from promptloop.core.files import write_atomic
from promptloop.domain.evaluation import (
    CalibrationResult,
    EvaluationResult,
    PromptResult,
    SliceAgreement,
    best_candidate,
)
from promptloop.evaluate.plan import Contender, EvalPlan, judge_model
from promptloop.evaluate.traces import judge_columns, log_case_traces, log_golden_input, register_judge
from promptloop.quality.judges import RUBRIC_SYSTEM, about
from promptloop.workspace import registry
from promptloop.workspace.tracking import experiment_id, log_contents, started_run, tracking_client
from promptloop.workspace.versioning import dvc_md5
from promptloop.workspace.workspace import Workspace

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("case_id", "split", "slice", "severity", "lang", "input", "expected_behavior", "answer",
                 "rubric_score", "rubric_passed", "rubric_reason",
                 "pairwise_score", "pairwise_consistent", "language_match", "facts_found", "cites", "citation_valid",
                 "refused", "toxic", "format_valid", "latency_ms", "provider_ms", "cost_usd", "retrieved",
                 "judge_failure")
PROMPT_METRICS = ("mean_score", "pass_rate", "refusal_on_answerable", "toxicity", "format_invalid", "cost_per_1k_usd",
                  "latency_p95_ms", "diff", "ci_low", "ci_high", "p_value", "p_adjusted", "mcnemar_p", "wins", "ties",
                  "losses", "pairwise_win_rate", "mde")
# The baseline's deterministic figures, for `dvc metrics diff` (no wall-clock latency: it is noise).
DVC_METRICS = ("mean_score", "pass_rate", "refusal_on_answerable", "toxicity", "format_invalid", "cost_per_1k_usd")


def case_table(frame: pd.DataFrame, contender: str) -> pd.DataFrame:
    """One prompt's per-case rows for `mlflow.log_table` (inputs, outputs and scores side by side)."""
    rows = frame[frame["prompt"] == contender] if len(frame) else frame
    columns = [c for c in TABLE_COLUMNS if c in rows]
    return rows[columns].sort_values("case_id").reset_index(drop=True) if len(rows) else rows


def prompt_metrics(result: PromptResult) -> dict[str, float]:
    """The numeric fields of a prompt's summary line, as MLflow metrics."""
    values = result.model_dump()
    return {k: float(values[k]) for k in PROMPT_METRICS
            if isinstance(values.get(k), (int, float)) and not isinstance(values.get(k), bool)}


def calibration_metrics(result: EvaluationResult) -> dict[str, float]:
    """Each judge's agreement with people, overall and per golden-set slice: `calibration.<judge>[.<slice>].<figure>`
    (the rubric judge is `rubric`), plus the label counts. Undefined figures are left out."""
    judges = {"rubric": result.judge.calibration, **{f"guard_{n}": g for n, g in result.judge.guard_agreement.items()}}
    metrics: dict[str, float] = {}
    for name, cal in judges.items():
        parts: dict[str, CalibrationResult | SliceAgreement] = {"": cal}
        parts.update({f".{_metric_safe(s)}": part for s, part in cal.by_slice.items()})
        for suffix, part in parts.items():
            for figure in ("accuracy", "balanced_accuracy", "kappa", "up", "down"):
                value = getattr(part, figure)
                if value is not None:
                    metrics[f"calibration.{_metric_safe(name)}{suffix}.{figure}"] = float(value)
    return metrics


def sequential_metrics(result: EvaluationResult) -> dict[str, float]:
    """The race's look, cases per prompt and requests against a full evaluation (none without a race)."""
    race = result.sequential
    if race is None:
        return {}
    return {"sequential.stopped_at_look": race.stopped_at_look, "sequential.calls_spent": race.calls_spent,
            "sequential.calls_full_estimate": race.calls_full_estimate,
            "sequential.pairs_evaluated": race.pairs_evaluated, "sequential.pairs_full": race.pairs_full,
            "sequential.final_confidence": race.final_confidence,
            **{f"sequential.cases.{_metric_safe(name)}": n for name, n in race.cases_evaluated.items()}}


def _metric_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def common_params(plan: EvalPlan, result: EvaluationResult) -> dict[str, object]:
    """What every run of one evaluation records: what was evaluated, on what, by which judge, from which commit."""
    return {"app": plan.app, "golden_md5": result.golden_md5, "judge_model": plan.settings.judge_model,
            "judge_samples": plan.settings.judge_samples, "rejudge_samples": plan.settings.rejudge_samples,
            "seed": plan.settings.seed, "git_commit": result.git_commit}


def registry_prompt_name(app: str, result: EvaluationResult, line: PromptResult) -> str:
    """Where an evaluated prompt is registered: the app's prompt for the baseline and the winner, so its
    latest version is never a rejected candidate; `<app>-candidates` for every other candidate."""
    winner = best_candidate(result)
    if line is result.baseline or (winner is not None and line.name == winner.name):
        return app
    return registry.candidates_name(app)


def log_prompt_run(client: Any, context: tuple[str, str, dict[str, str]], plan: EvalPlan, contender: Contender,
                   result: EvaluationResult, frame: pd.DataFrame) -> None:
    """A child run for one prompt: its registry version, parameters, metrics and per-case table."""
    experiment, parent_id, tags = context
    line = next(p for p in result.prompts if p.name == contender.name)
    with started_run(client, experiment, contender.name, {**tags, "promptloop.prompt": contender.name},
                     parent_id) as child_id:
        name = registry_prompt_name(plan.app, result, line)
        version = registry.register(client, name, contender.prompt, evaluation_run=child_id)
        registry.link_to_run(client, child_id, name, version)
        line.registry_version, line.registry_name = version, name
        log_contents(client, child_id,
                     params={**common_params(plan, result), "prompt_hash": contender.prompt.content_hash,
                             "prompt_version": contender.prompt.version, "prompt_source": contender.source,
                             "model": contender.model, "registry_version": version, "registry_name": name},
                     metrics=prompt_metrics(line), tags={"promptloop.decision": getattr(line, "decision", "baseline")},
                     artifacts={"summary.json": line.model_dump(mode="json")},
                     tables={"eval_cases.json": case_table(frame, contender.name)})
        log_golden(client, child_id, plan, result)
        if plan.settings.log_traces:
            log_prompt_traces(client, (experiment, child_id, parent_id), plan, frame, contender.name)


def log_prompt_traces(client: Any, runs: tuple[str, str, str], plan: EvalPlan, frame: pd.DataFrame,
                      contender: str) -> list[str]:
    """The prompt's answers as traces of its run (`runs`: experiment, the prompt's run, the evaluation run),
    each with its judges' Feedback and its case's Expectations. The evaluation run is linked too, so
    searching its traces finds every (prompt, case)."""
    experiment, run_id, parent_id = runs
    rows = frame[frame["prompt"] == contender].to_dict("records") if len(frame) else []
    settings = plan.settings
    judges = judge_columns(judge_model(plan.primary_judge(pairwise=False), settings),
                           judge_model(plan.primary_judge(pairwise=True), settings),
                           {guard.name: (guard.column, judge_model(guard, settings)) for guard in plan.guard_judges})
    return log_case_traces(client, experiment, run_id, rows, {case.id: case for case in plan.cases}, judges,
                           also_linked=[parent_id])


def register_judges(client: Any, experiment: str, plan: EvalPlan) -> None:
    """The rubric judge (or the app's primary judge file) and each guard judge file on the Judges page.
    The pairwise judge compares two answers: MLflow's judges grade one trace, so it is not registered."""
    settings, primary = plan.settings, plan.primary_judge(pairwise=False)
    rubric = primary.instructions if primary else RUBRIC_SYSTEM.format(about=about(plan.app_settings.description))
    judges = [("rubric", rubric, judge_model(primary, settings)),
              *((guard.name, guard.instructions, judge_model(guard, settings)) for guard in plan.guard_judges)]
    from mlflow.exceptions import MlflowException

    for name, instructions, model in judges:
        try:
            register_judge(client, experiment, name, instructions, model)
        except MlflowException as exc:  # MLflow refusing a judge (its name, a variable) must not lose the run
            log.warning("judge %s not registered on MLflow's Judges page: %s", name, exc)


def log_golden(client: Any, run_id: str, plan: EvalPlan, result: EvaluationResult) -> None:
    """The golden set version the run evaluated on, as its evaluation dataset input."""
    log_golden_input(client, run_id, f"{plan.app}-golden", result.golden_md5, str(plan.app_settings.golden_set),
                     result.cases)


def log_evaluation(workspace: Workspace, plan: EvalPlan, result: EvaluationResult, frame: pd.DataFrame,
                   render: Callable[[EvaluationResult], str], client: Any = None) -> str:
    """A parent run with the decision table and report; a child run per prompt with its per-case table,
    each prompt registered in the MLflow prompt registry (through `client`, else one opened here).
    Returns the parent run id."""
    client = client or tracking_client(workspace.tracking_uri)
    experiment = experiment_id(client, workspace.experiment_name(plan.app), workspace.artifact_root)
    tags = {"promptloop.stage": "evaluate", "promptloop.app": plan.app}
    with started_run(client, experiment, f"evaluate {plan.app}", tags) as parent_id:
        result.mlflow_run_id = parent_id
        for contender in plan.contenders:
            log_prompt_run(client, (experiment, parent_id, tags), plan, contender, result, frame)
        usage, settings = result.usage, plan.settings
        log_golden(client, parent_id, plan, result)
        if settings.log_traces:
            register_judges(client, experiment, plan)
        log_contents(client, parent_id,
                     params={**common_params(plan, result), "cases": result.cases, "candidates": len(plan.candidates),
                             "min_effect": settings.min_effect, "confidence": settings.confidence,
                             "bootstrap_resamples": settings.bootstrap_resamples,
                             "sequential": settings.sequential.enabled and result.sequential is not None,
                             "sequential_looks": settings.sequential.looks,
                             "sequential_spending": settings.sequential.spending},
                     metrics={"llm_calls": usage.calls, "cache_hits": usage.cache_hits, "retries": usage.retries,
                              "cost_usd": usage.cost_usd, "judge_failures": result.judge_failures,
                              "promoted": sum(c.decision == "promote" for c in result.candidates),
                              **calibration_metrics(result), **sequential_metrics(result)},
                     tags={"promptloop.complete": str(result.complete).lower()},
                     artifacts={"decision.json": {"baseline": result.baseline.model_dump(mode="json"),
                                                  "candidates": [c.model_dump(mode="json") for c in result.candidates]},
                                "report.md": render(result)},
                     tables={"eval_cases.json": frame[[c for c in ("prompt", *TABLE_COLUMNS) if c in frame]]})
    return parent_id


def dvc_metrics(result: EvaluationResult) -> dict[str, float | int | None]:
    """The baseline's deterministic figures, for `dvc metrics diff`."""
    baseline = result.baseline.model_dump()
    return {"cases": result.cases, "prompt_version": result.baseline.version, **{k: baseline[k] for k in DVC_METRICS}}


def write_dvc_metrics(path: Path, result: EvaluationResult) -> None:
    """The metrics file the DVC stage declares."""
    write_atomic(path, json.dumps(dvc_metrics(result), indent=2, sort_keys=True) + "\n")


def git_commit(root: Path) -> str | None:
    """HEAD of the workspace's repository, if it is one."""
    try:
        return git.Repo(root).head.commit.hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return None


def golden_md5(workspace: Workspace, settings: AppSettings) -> str | None:
    """The DVC md5 of the golden set, if DVC tracks it."""
    try:
        return dvc_md5(workspace.path(settings.golden_set))
    except (OSError, KeyError, ValueError):
        return None
