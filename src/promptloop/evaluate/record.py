"""Recording an evaluation: MLflow runs (a parent, a child per prompt), the prompt registry, the DVC metrics file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import git
import pandas as pd

from promptloop.core.config import AppSettings
from promptloop.core.files import write_atomic
from promptloop.domain.evaluation import EvaluationResult, PromptResult, best_candidate
from promptloop.evaluate.plan import Contender, EvalPlan
from promptloop.workspace import registry
from promptloop.workspace.tracking import experiment_id, log_contents, started_run, tracking_client
from promptloop.workspace.versioning import dvc_md5
from promptloop.workspace.workspace import Workspace

TABLE_COLUMNS = ("case_id", "split", "slice", "severity", "lang", "input", "expected_behavior", "answer",
                 "rubric_score", "rubric_passed", "rubric_reason",
                 "pairwise_score", "pairwise_consistent", "language_match", "facts_found", "cites", "citation_valid",
                 "refused", "toxic", "format_valid", "latency_ms", "cost_usd", "retrieved", "judge_failure")
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


def log_evaluation(workspace: Workspace, plan: EvalPlan, result: EvaluationResult, frame: pd.DataFrame,
                   render: Callable[[EvaluationResult], str]) -> str:
    """A parent run with the decision table and report; a child run per prompt with its per-case table,
    each prompt registered in the MLflow prompt registry. Returns the parent run id."""
    client = tracking_client(workspace.tracking_uri)
    experiment = experiment_id(client, workspace.experiment_name(plan.app), workspace.artifact_root)
    tags = {"promptloop.stage": "evaluate", "promptloop.app": plan.app}
    with started_run(client, experiment, f"evaluate {plan.app}", tags) as parent_id:
        result.mlflow_run_id = parent_id
        for contender in plan.contenders:
            log_prompt_run(client, (experiment, parent_id, tags), plan, contender, result, frame)
        usage, settings = result.usage, plan.settings
        log_contents(client, parent_id,
                     params={**common_params(plan, result), "cases": result.cases, "candidates": len(plan.candidates),
                             "min_effect": settings.min_effect, "confidence": settings.confidence,
                             "bootstrap_resamples": settings.bootstrap_resamples},
                     metrics={"llm_calls": usage.calls, "cache_hits": usage.cache_hits, "retries": usage.retries,
                              "cost_usd": usage.cost_usd, "judge_failures": result.judge_failures,
                              "promoted": sum(c.decision == "promote" for c in result.candidates)},
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
