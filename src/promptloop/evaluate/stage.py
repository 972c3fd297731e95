"""evaluate: the baseline prompt and each candidate over the golden set, scored, compared, decided.

plan (load prompts, golden set, KB) -> run (every LLM call through the Runner: cached, retried,
budgeted) -> summary (pure: per-prompt stats, paired statistics, Holm, gate) -> record and report.

Why not `mlflow.genai.evaluate`: it runs one predict + scorers per row on a thread pool and writes a
trace per call; against the same loopback endpoint it is several times slower than this runner
(`make bench` measures both side by side), it has no paired comparison of two prompts on the same
rows, and a failed judge call becomes an error value rather than failing the run closed. We keep
MLflow for what it does well here: runs, `log_table` per-case tables and the prompt registry.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from promptloop.core.config import check_inside
from promptloop.core.errors import InputError
from promptloop.core.progress import NO_PROGRESS, ProgressHooks
from promptloop.domain.evaluation import EvaluationResult
from promptloop.domain.prompts import PromptVersion
from promptloop.evaluate.plan import EvalPlan, case_batches, plan_evaluation, progress_total
from promptloop.evaluate.race import races, report_decided, run_race, sequential_result
from promptloop.evaluate.record import git_commit, golden_md5, write_dvc_metrics
from promptloop.evaluate.recorder import Record, recorder, recording_here
from promptloop.evaluate.report import markdown_report
from promptloop.evaluate.run import EvalRun, Stopwatch, merge_runs, probe_if_unreported
from promptloop.evaluate.sequential import Race
from promptloop.evaluate.summary import decision_split, evaluated_cases, summarise, usage_summary
from promptloop.evaluate.workers import Workers
from promptloop.workspace.locking import holds_workspace
from promptloop.workspace.preflight import preflight
from promptloop.workspace.workspace import Workspace


def plan_roles(plan: EvalPlan) -> dict[str, str]:
    """role -> model of every model the evaluation calls (blocked candidates are never called)."""
    roles = {"app": plan.baseline.model, "judge": plan.settings.judge_model}
    roles |= {f"candidate {c.name}": c.model for c in plan.runnable if c is not plan.baseline}
    roles |= {f"judge {j.name}": j.model for j in plan.judges if j.model}
    return roles


def with_provenance(workspace: Workspace, plan: EvalPlan, run: EvalRun, result: EvaluationResult) -> EvaluationResult:
    """The result with what reproduces it: usage, golden-set version, commit, seed and statistics settings."""
    settings = plan.settings
    result.baseline.license = workspace.params.llm.license_of(plan.baseline.model)
    result.usage = usage_summary(run.usage)
    result.golden_set, result.golden_md5 = str(plan.app_settings.golden_set), golden_md5(workspace, plan.app_settings)
    result.git_commit, result.seed, result.confidence = git_commit(workspace.root), settings.seed, settings.confidence
    result.resamples, result.min_effect = settings.bootstrap_resamples, settings.min_effect
    result.experiment = workspace.experiment_name(plan.app)
    result.llm_calls, result.cache_hits, result.cost_usd = (
        result.usage.calls,
        result.usage.cache_hits,
        result.usage.cost_usd,
    )
    return result


def finish_evaluation(workspace: Workspace, plan: EvalPlan, run: EvalRun, record: Record | None = None,
                      metrics_file: Path | None = None, clock: Stopwatch | None = None,
                      race: Race | None = None) -> EvaluationResult:
    """Statistics and decisions from the merged run (with a latency probe when the provider reported no
    time for some answer), the MLflow runs (through `record`; default: from this process), the report and
    the metrics file."""
    record = record or recording_here(workspace)
    clock = clock or Stopwatch()
    held_out = decision_split(plan.cases)[0]
    if race is not None:  # the probe measures the cases the race evaluated
        held_out = evaluated_cases(held_out, pd.DataFrame(run.rows), race)
    run = probe_if_unreported(workspace, plan, run, held_out)
    clock.lap("latency_probe_s")
    reported = None
    if race is not None:  # the pairwise judge and the optimizer's cases, for the candidates the race decided
        run, reported = report_decided(workspace, plan, run, race, workspace.params.llm.license_of)
        clock.lap("reported_s")
    result = summarise(plan, run, workspace.params.llm.license_of, race)
    clock.lap("statistics_s")
    with_provenance(workspace, plan, run, result)
    if race is not None:
        result.sequential = sequential_result(plan, run, race, reported)
        result.confidence = result.sequential.final_confidence  # the level of the CIs the table shows
    result = record(plan, result, pd.DataFrame(run.rows), markdown_report)
    clock.lap("mlflow_s")
    result.report = markdown_report(result)
    result.timings = clock.laps
    if metrics_file is not None:
        write_dvc_metrics(workspace.root / metrics_file, result)
    return result


def metrics_path(metrics_file: Path) -> Path:
    """The metrics file, which must stay inside the workspace (relative, no `..`)."""
    try:
        return check_inside(metrics_file)
    except ValueError as exc:
        raise InputError("--metrics-file", str(exc)) from None


@holds_workspace("evaluate")
def evaluate(workspace: Workspace, app: str, candidate_paths: list[Path] | None = None, *,
             baseline: tuple[PromptVersion, str] | None = None, metrics_file: Path | None = None,
             progress: ProgressHooks = NO_PROGRESS) -> EvaluationResult:
    """Evaluate the baseline and candidates, decide per candidate, log to MLflow.

    With `llm.processes` > 1 the cases are split into that many batches: one here, each other on a worker
    process.
    """
    clock = Stopwatch()
    if metrics_file is not None:
        metrics_path(metrics_file)  # refused before anything is run
    # The worker processes first: their imports then overlap this process's planning and imports.
    with Workers(workspace, workspace.params.llm.processes) as workers:
        plan = plan_evaluation(workspace, app, candidate_paths, baseline)
        preflight(workspace, app, plan_roles(plan), budget_usd=plan.settings.budget_usd)
        progress.start(progress_total(plan))
        with recorder(workspace) as record:
            workers.ready_here(clock)
            if races(plan):
                run, race = run_race(plan, workers, progress)
            else:
                race = None
                run = merge_runs(plan, workers.run(plan, case_batches(plan, workers.processes), progress.advance))
            clock.lap("calls_s")
            clock.laps["calls_cpu_s"] = round(run.cpu_s, 3)
            return finish_evaluation(workspace, plan, run, record, metrics_file, clock, race)
