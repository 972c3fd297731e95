"""evaluate: the baseline prompt and each candidate over the golden set, scored, compared, decided.

plan (load prompts, golden set, KB) -> run (every LLM call through the Runner: cached, retried,
budgeted) -> summarise (pure: per-prompt stats, paired statistics, Holm, gate) -> report/log.

Why not `mlflow.genai.evaluate`: it runs one predict + scorers per row on a thread pool and writes a
trace per call; on this machine it reached 3.3x the latency bound at 10 workers and exhausted its
SQLAlchemy pool at 32 (see ANCHORS.md), it has no paired comparison of two prompts on the same
rows, and a failed judge call becomes an error value rather than failing the run closed. We keep
MLflow for what it does well here: runs, `log_table` per-case tables and the prompt registry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from promptloop.evaluate import stats
from promptloop.domain.app import App
from promptloop.core.config import AppSettings, EvaluateSettings, Params
from promptloop.core.errors import InputError
from promptloop.evaluate.gate import Evidence, PromptStats, decide, guard_checks, license_problem
from promptloop.domain.golden import GoldenCase, load_golden
from promptloop.domain.kb import Retriever, load_kb
from promptloop.llm.client import litellm_module_configured
from promptloop.workspace.locking import holds_workspace
from promptloop.domain.prompts import PromptVersion, load_prompt
from promptloop.llm.runner import BudgetExceeded, CallFailed, Runner, Usage
from promptloop.evaluate.scorers import Answer, JudgeFailed, PairwiseJudge, ProxyMetrics, RubricJudge, Scorer
from promptloop.workspace.workspace import Workspace

BASELINE = "baseline"
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Contender:
    """A prompt under evaluation: the baseline or a candidate, and the model it runs on."""

    name: str
    prompt: PromptVersion
    model: str
    source: str


@dataclass
class EvalPlan:
    """What one evaluation compares, on which cases, with which settings."""

    app: str
    app_settings: AppSettings
    settings: EvaluateSettings
    cases: list[GoldenCase]
    baseline: Contender
    candidates: list[Contender]
    retriever: Retriever | None
    kb_ids: frozenset[str]
    top_k: int

    @property
    def contenders(self) -> list[Contender]:
        return [self.baseline, *self.candidates]


@dataclass
class EvalRun:
    """The raw outcome: one row per (prompt, case), and the judge's verdicts on human-labelled answers."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    calibration: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None
    usage: dict[str, Usage] = field(default_factory=dict)
    cpu_s: float = 0.0  # CPU time of the process(es) while the calls ran (for benchmarks)


def contender_model(prompt: PromptVersion, baseline_file: PromptVersion, override: str | None) -> str:
    """The app's model override applies, unless a candidate names a model other than the baseline file's."""
    if override and prompt.model == baseline_file.model:
        return override
    return prompt.model


def candidate_names(paths: list[Path]) -> list[str]:
    """File stems, made unique."""
    names: list[str] = []
    for path in paths:
        name = path.stem if path.stem != BASELINE else f"{BASELINE}-candidate"
        names.append(name if name not in names else f"{name}-{len(names)}")
    return names


def plan_evaluation(workspace: Workspace, app: str, candidate_paths: list[Path] | None = None,
                    baseline: tuple[PromptVersion, str] | None = None) -> EvalPlan:
    """Load the golden set, the baseline (the app's prompt file unless given) and the candidates.

    Without candidate paths, the files in `prompts/<app>/candidates/` are the candidates.
    """
    settings = workspace.app_settings(app)
    baseline_file, baseline_source = baseline or (load_prompt(workspace.path(settings.prompt)), str(settings.prompt))
    if candidate_paths is None:
        folder = workspace.path(settings.prompt).parent / "candidates"
        candidate_paths = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    prompts = [load_prompt(path) for path in candidate_paths]
    for path, prompt in zip(candidate_paths, prompts):
        if prompt.app != app:
            raise InputError(path, f"prompt is for app {prompt.app!r}, not {app!r}", field="app")
    docs = load_kb(workspace.path(settings.knowledge_base)) if settings.knowledge_base else []
    return EvalPlan(
        app=app, app_settings=settings, settings=workspace.params.evaluate,
        cases=load_golden(workspace.path(settings.golden_set)),
        baseline=Contender(BASELINE, baseline_file, contender_model(baseline_file, baseline_file, settings.model), baseline_source),
        candidates=[Contender(name, prompt, contender_model(prompt, baseline_file, settings.model), str(path))
                    for name, prompt, path in zip(candidate_names(candidate_paths), prompts, candidate_paths)],
        retriever=Retriever(docs) if docs else None, kb_ids=frozenset(d.id for d in docs), top_k=settings.top_k,
    )


def build_scorers(plan: EvalPlan, runner: Runner, root: Path, params: Params) -> dict[str, list[Scorer]]:
    """Each contender's scorers (params `apps.<app>.scorers`), judge calls counted under `judge:<contender>`;
    the proxy checks hold no state, so one instance (detectors and schema loaded once) serves all."""
    from promptloop.quality.detectors import detectors_of

    chosen = plan.app_settings.scorers
    settings = plan.settings
    proxy: list[Scorer] = []
    if "proxy" in chosen:
        detectors = detectors_of(params.analyze, root)
        schema = _read_schema(root / plan.app_settings.json_schema) if plan.app_settings.json_schema else None
        proxy.append(ProxyMetrics(detectors["refusal"], detectors["toxic"], plan.kb_ids,
                                  tuple(plan.app_settings.forbidden_phrases), plan.app_settings.citation_pattern, schema))

    def judges(contender: str) -> list[Scorer]:
        found: list[Scorer] = [RubricJudge(runner, settings.judge_model, settings.judge_samples, settings.judge_temperature,
                                           settings.seed, purpose=f"judge:{contender}")]
        if "pairwise" in chosen:
            found.append(PairwiseJudge(runner, settings.judge_model, settings.judge_temperature, settings.seed,
                                       purpose=f"judge:{contender}"))
        return found

    return {c.name: judges(c.name) + proxy for c in plan.contenders}


def _read_schema(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the JSON schema: {exc}", field="apps.json_schema") from None


# --- run -----------------------------------------------------------------------------------------


async def answer_case(runner: Runner, plan: EvalPlan, contender: Contender, case: GoldenCase) -> Answer:
    """The contender's answer to one case: retrieval into the prompt, one app call (seeded, cached)."""
    app = App(plan.app, contender.prompt, contender.model, plan.retriever, plan.top_k)
    messages, retrieved = app.messages(case.input)
    parameters = {**contender.prompt.parameters, "seed": plan.settings.seed}
    completion = await runner.complete(f"app:{contender.name}", contender.model, messages, **parameters)
    context = messages[0]["content"] if plan.retriever else ""
    return Answer(completion.text, context, tuple(retrieved), completion.latency_ms, completion.cost_usd or 0.0,
                  completion.prompt_tokens, completion.completion_tokens)


def case_row(contender: Contender, case: GoldenCase, answer: Answer) -> dict[str, Any]:
    """The per-case row every scorer adds its columns to."""
    return {"prompt": contender.name, "case_id": case.id, "split": case.split, "slice": case.slice, "severity": case.severity,
            "lang": case.lang, "expected_behavior": case.expected_behavior, "input": case.input, "answer": answer.text,
            "retrieved": " ".join(answer.retrieved), "latency_ms": answer.latency_ms, "cost_usd": answer.cost_usd,
            "judge_failure": None}


async def run_evaluation(plan: EvalPlan, runner: Runner, scorers: dict[str, list[Scorer]],
                         on_progress: Progress | None = None) -> EvalRun:
    """Every (prompt, case) answered and scored concurrently; a provider failure past its retries or
    a spent budget stops the run (what finished is kept, and cached for the next run)."""
    run = EvalRun()
    answers: dict[tuple[str, str], asyncio.Task[Answer]] = {}

    async def score(contender: Contender, case: GoldenCase) -> None:
        answer = await answers[contender.name, case.id]
        baseline = await answers[BASELINE, case.id] if contender.name != BASELINE else None
        row = case_row(contender, case, answer)
        for scorer in scorers[contender.name]:
            try:
                row.update(await scorer.score(case, answer, baseline))
            except JudgeFailed as exc:
                row["judge_failure"] = str(exc)
        run.rows.append(row)
        if on_progress:
            on_progress(1)

    async def calibrate(case: GoldenCase, judge: RubricJudge) -> None:
        label = case.human_label
        assert label is not None
        context = (await answers[BASELINE, case.id]).context
        try:
            mean = float(np.mean(await judge.verdicts(case, label.answer, context)))
            run.calibration.append({"case_id": case.id, "human_pass": label.rating == "up", "judge_pass": mean >= 4})
        except JudgeFailed as exc:
            run.calibration.append({"case_id": case.id, "human_pass": label.rating == "up", "judge_pass": None,
                                    "judge_failure": str(exc)})
        if on_progress:
            on_progress(1)

    calibrator = next(s for s in scorers[BASELINE] if isinstance(s, RubricJudge))
    calibration_judge = RubricJudge(runner, calibrator.model, calibrator.samples, calibrator.temperature,
                                    calibrator.seed, purpose="judge:calibration")
    # Every model's API key before the first call: a missing one stops here, before anything is spent.
    for model in sorted({c.model for c in plan.contenders} | {calibrator.model}):
        runner.api_keys.for_model(model)
    try:
        async with asyncio.TaskGroup() as group:
            for contender in plan.contenders:
                for case in plan.cases:
                    answers[contender.name, case.id] = group.create_task(answer_case(runner, plan, contender, case))
            for contender in plan.contenders:
                for case in plan.cases:
                    group.create_task(score(contender, case))
            for case in plan.cases:
                if case.human_label is not None:
                    group.create_task(calibrate(case, calibration_judge))
    except* (CallFailed, BudgetExceeded) as failures:
        run.stopped = str(failures.exceptions[0])
    return in_plan_order(plan, run)


def in_plan_order(plan: EvalPlan, run: EvalRun) -> EvalRun:
    """Rows by prompt, then golden-set order. They arrive in completion order, which retries and
    concurrency shuffle; the statistics (the bootstrap draws by position) must see one order."""
    prompt_order = {c.name: i for i, c in enumerate(plan.contenders)}
    case_order = {c.id: i for i, c in enumerate(plan.cases)}
    run.rows.sort(key=lambda r: (prompt_order[r["prompt"]], case_order[r["case_id"]]))
    run.calibration.sort(key=lambda r: case_order[r["case_id"]])
    return run


def case_batches(plan: EvalPlan, batches: int) -> list[list[str]]:
    """The golden set's case ids in `batches` contiguous parts of near-equal size (none empty)."""
    ids = [c.id for c in plan.cases]
    size, extra = divmod(len(ids), max(1, batches))
    bounds = [i * size + min(i, extra) for i in range(max(1, batches) + 1)]
    return [ids[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def evaluate_batch(workspace: Workspace, plan: EvalPlan, case_ids: list[str], share: float = 1.0,
                   on_progress: Progress | None = None, concurrency: int | None = None) -> EvalRun:
    """Answer and score the cases `case_ids` with a runner of their own (a `share` of the budget).

    A batch needs nothing from another one, so batches can run anywhere (a Dask worker, another
    process); `merge_runs` puts them back together.
    """
    wanted = set(case_ids)
    part = dataclasses.replace(plan, cases=[c for c in plan.cases if c.id in wanted])
    settings = plan.settings
    runner = workspace.open_runner(max_usd=settings.budget_usd * share,
                         max_calls=math.ceil(settings.budget_calls * share) if settings.budget_calls else None,
                         concurrency=concurrency)
    try:
        scorers = build_scorers(part, runner, workspace.root, workspace.params)
        cpu = time.process_time()
        run = asyncio.run(run_evaluation(part, runner, scorers, on_progress))
        run.cpu_s = time.process_time() - cpu
    finally:
        runner.cache.close()
    run.usage = dict(runner.usage)
    return run


def merge_runs(plan: EvalPlan, runs: list[EvalRun]) -> EvalRun:
    """One run from its batches: rows and labels joined, usage added up, the first stop reason kept."""
    usage: dict[str, Usage] = {}
    for run in runs:
        for purpose, used in run.usage.items():
            total = usage.setdefault(purpose, Usage())
            for name in Usage.__dataclass_fields__:
                setattr(total, name, getattr(total, name) + getattr(used, name))
    merged = EvalRun([row for run in runs for row in run.rows], [c for run in runs for c in run.calibration],
                     next((run.stopped for run in runs if run.stopped), None), usage, sum(run.cpu_s for run in runs))
    return in_plan_order(plan, merged)


def progress_total(plan: EvalPlan) -> int:
    """Units of progress: one per (prompt, case) scored and per labelled case judged."""
    return len(plan.contenders) * len(plan.cases) + sum(c.human_label is not None for c in plan.cases)


# --- summarise (pure) ----------------------------------------------------------------------------


def _rate(frame: pd.DataFrame, column: str, mask: pd.Series | None = None) -> float | None:
    if column not in frame:
        return None
    values = frame.loc[mask, column] if mask is not None else frame[column]
    values = values.dropna()
    return float(values.astype(float).mean()) if len(values) else None


def prompt_stats(frame: pd.DataFrame) -> PromptStats:
    """Aggregates of one prompt's scored rows."""
    scored = frame.dropna(subset=["rubric_score"]) if "rubric_score" in frame else frame.iloc[0:0]
    format_valid = _rate(frame, "format_valid")
    return PromptStats(
        n=len(scored),
        mean_score=float(scored["rubric_score"].mean()) if len(scored) else math.nan,
        pass_rate=float(scored["rubric_passed"].astype(float).mean()) if len(scored) else math.nan,
        refusal_on_answerable=_rate(frame, "refused_answerable", frame["expected_behavior"] == "answer"),
        toxicity=_rate(frame, "toxic"),
        format_invalid=None if format_valid is None else 1 - format_valid,
        cost_per_1k_usd=float(frame["cost_usd"].mean() * 1000) if len(frame) else 0.0,
        latency_p95_ms=float(np.percentile(frame["latency_ms"], 95)) if len(frame) else 0.0,
    )


@dataclass(frozen=True)
class Calibration:
    """Judge-human agreement on the labelled cases, and whether it is enough to decide."""

    labelled: int
    judged: int
    accuracy: float | None
    kappa: float | None
    applied: bool
    problem: str | None
    decided_by: str = "kappa"

    def summary(self) -> dict[str, Any]:
        return {"labelled": self.labelled, "judged": self.judged, "accuracy": self.accuracy, "kappa": self.kappa,
                "applied": self.applied, "decided_by": self.decided_by, "problem": self.problem}


def calibration(records: list[dict[str, Any]], settings: EvaluateSettings) -> Calibration:
    """Agreement on the human-labelled cases; used by the gate once there are enough of them.

    Kappa decides when both human classes have `min_calibration_per_class` labels; with fewer of
    one class (labels mined from failures are mostly 👎) kappa swings wildly, so accuracy decides.
    """
    judged = [r for r in records if r.get("judge_pass") is not None]
    if not judged:
        return Calibration(len(records), 0, None, None, False, None)
    human = [r["human_pass"] for r in judged]
    found = stats.agreement(human, [r["judge_pass"] for r in judged])
    applied = len(judged) >= settings.min_calibration_cases
    smaller_class = min(sum(human), len(human) - sum(human))
    use_kappa = found.kappa is not None and smaller_class >= settings.min_calibration_per_class
    problem = None
    if applied and use_kappa and found.kappa < settings.min_judge_kappa:
        problem = f"judge not calibrated: kappa {found.kappa:.2f} < {settings.min_judge_kappa:.2f} on {found.n} labelled cases"
    elif applied and not use_kappa and found.accuracy < settings.min_judge_accuracy:
        problem = (f"judge not calibrated: accuracy {found.accuracy:.2f} < {settings.min_judge_accuracy:.2f} on {found.n} "
                   f"labelled cases ({smaller_class} in the smaller class: too few for kappa)")
    return Calibration(len(records), len(judged), found.accuracy, found.kappa, applied, problem,
                       "kappa" if use_kappa else "accuracy")


def judge_health(frame: pd.DataFrame) -> dict[str, Any]:
    """Position consistency of the pairwise judge and the rubric judge's own variance."""
    consistent = frame["pairwise_consistent"].dropna() if "pairwise_consistent" in frame else pd.Series(dtype=object)
    variance = frame["rubric_judge_var"].dropna() if "rubric_judge_var" in frame else pd.Series(dtype=float)
    return {"position_consistency": float(consistent.astype(float).mean()) if len(consistent) else None,
            "pairwise_judged": int(len(consistent)),
            "rubric_variance": float(variance.mean()) if len(variance) else None}


@dataclass(frozen=True)
class Comparison:
    """A candidate against the baseline on the cases both were scored on."""

    paired: stats.PairedComparison | None
    mcnemar_p: float | None
    mde: float
    regressions: list[str]
    flips: dict[str, list[str]]
    pairwise_win_rate: float | None


def compare(base: pd.DataFrame, cand: pd.DataFrame, settings: EvaluateSettings) -> Comparison:
    """Paired statistics of one candidate against the baseline."""
    if "rubric_score" not in base or "rubric_score" not in cand:  # no verdict at all: nothing to compare
        return Comparison(None, None, math.inf, [], {"fixed": [], "broken": []}, None)
    both = base.merge(cand, on="case_id", suffixes=("_b", "_c")).dropna(subset=["rubric_score_b", "rubric_score_c"])
    if both.empty:
        return Comparison(None, None, math.inf, [], {"fixed": [], "broken": []}, None)
    paired = stats.compare_paired(both["rubric_score_b"], both["rubric_score_c"], settings.confidence,
                                  settings.bootstrap_resamples, settings.seed)
    passed_b, passed_c = both["rubric_passed_b"].astype(bool), both["rubric_passed_c"].astype(bool)
    diffs = both["rubric_score_c"] - both["rubric_score_b"]
    sd = float(diffs.std(ddof=1)) if len(both) > 1 else math.nan
    broken = both.loc[passed_b & ~passed_c]
    high = broken.loc[broken["severity_b"].isin(settings.high_severity), "case_id"].tolist()
    win_rate = float(both["pairwise_score_c"].mean()) if "pairwise_score_c" in both else None
    return Comparison(
        paired=paired, mcnemar_p=stats.mcnemar(passed_b, passed_c)[2],
        mde=stats.minimum_detectable_effect(sd, len(both), 1 - settings.confidence) if sd > 0 else math.nan,
        regressions=sorted(high), flips={"fixed": sorted(both.loc[~passed_b & passed_c, "case_id"]),
                                          "broken": sorted(broken["case_id"])},
        pairwise_win_rate=win_rate,
    )


def incomplete_reasons(frame: pd.DataFrame, n_cases: int, stopped: str | None) -> list[str]:
    """Why a prompt's results can't be trusted: a stopped run, missing cases, judge failures."""
    reasons = [f"evaluation stopped: {stopped}"] if stopped else []
    failures = int(frame["judge_failure"].notna().sum()) if len(frame) else 0
    if failures:
        reasons.append(f"{failures} judge failure(s) (malformed verdicts after retries)")
    missing = n_cases - len(frame)
    if missing > 0 and not stopped:
        reasons.append(f"{missing} case(s) without a result")
    return reasons


def usage_summary(usage: dict[str, Usage]) -> dict[str, Any]:
    """Calls, cache hits, retries, tokens and cost: overall and per purpose (app:<prompt>, judge:<prompt>)."""
    per = {purpose: {"calls": u.calls, "cache_hits": u.cache_hits, "retries": u.retries, "failures": u.failures,
                     "invalid": u.invalid, "retry_causes": dict(u.retry_causes.most_common()),
                     "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                     "cost_usd": round(u.cost_usd, 6)} for purpose, u in sorted(usage.items())}
    total = {key: sum(p[key] for p in per.values()) for key in ("calls", "cache_hits", "retries", "failures", "invalid",
                                                                "prompt_tokens", "completion_tokens")}
    causes = sum((u.retry_causes for u in usage.values()), Counter())
    return {**total, "retry_causes": dict(causes.most_common()), "cost_usd": round(sum(u.cost_usd for u in usage.values()), 6),
            "by_purpose": per}


def summarise(plan: EvalPlan, run: EvalRun, usage: dict[str, Usage], license_of: Callable[[str], str]) -> dict[str, Any]:
    """Per-prompt stats, paired comparisons, Holm-adjusted p-values and the gate's decision per candidate."""
    settings = plan.settings
    everything = pd.DataFrame(run.rows)
    decided, seen = decision_split(plan.cases)
    frame = everything[everything["case_id"].isin({c.id for c in decided})] if len(everything) else everything
    by_prompt = {c.name: frame[frame["prompt"] == c.name] if len(frame) else frame for c in plan.contenders}
    base_frame = by_prompt[BASELINE]
    base_stats = prompt_stats(base_frame) if len(base_frame) else None
    base_problems = incomplete_reasons(base_frame, len(decided), run.stopped)
    judge = calibration(run.calibration, settings)
    comparisons = {c.name: compare(base_frame, by_prompt[c.name], settings) if len(by_prompt[c.name]) and len(base_frame)
                   else None for c in plan.candidates}
    testable = [n for n, cmp in comparisons.items() if cmp is not None and cmp.paired is not None]
    adjusted = dict(zip(testable, stats.holm([comparisons[n].paired.p_value for n in testable])))
    candidates = [
        candidate_result(plan, c, by_prompt[c.name], base_stats, base_problems, comparisons[c.name], adjusted.get(c.name),
                         judge, license_of, run.stopped, len(decided))
        | {"optimize_split": split_comparison(everything, c.name, seen, settings)}
        for c in plan.candidates
    ]
    return {
        "app": plan.app,
        "cases": len(plan.cases),
        "cases_decided": len(decided),
        "cases_optimize": len(seen),
        "complete": not base_problems and all(c["decision"] != "incomplete" for c in candidates),
        "stopped": run.stopped,
        "baseline": contender_summary(plan.baseline, base_stats) | {"incomplete": base_problems},
        "candidates": candidates,
        "judge": {"model": settings.judge_model, "samples": settings.judge_samples, **judge_health(frame),
                  "calibration": judge.summary()},
        "judge_failures": int(frame["judge_failure"].notna().sum()) if len(frame) else 0,
        "mde": golden_set_mde(base_frame, settings),
    }


def decision_split(cases: list[GoldenCase]) -> tuple[list[GoldenCase], list[GoldenCase]]:
    """(cases the decision rests on, cases an optimizer saw). The decision uses held-out cases only,
    so a candidate is judged on cases its optimizer never saw; with no optimisation split, all cases."""
    seen = [c for c in cases if c.split == "optimize"]
    held_out = [c for c in cases if c.split == "holdout"]
    return (held_out, seen) if seen else (cases, [])


def split_comparison(frame: pd.DataFrame, name: str, cases: list[GoldenCase], settings: EvaluateSettings) -> dict[str, Any] | None:
    """The candidate's gain on the optimisation split: reported, never decided on (it may be overfit)."""
    if not cases or not len(frame):
        return None
    ids = {c.id for c in cases}
    part = frame[frame["case_id"].isin(ids)]
    found = compare(part[part["prompt"] == BASELINE], part[part["prompt"] == name], settings).paired
    if found is None:
        return None
    return {"n": found.n, "diff": found.mean_diff, "ci_low": found.ci_low, "ci_high": found.ci_high}


def golden_set_mde(base: pd.DataFrame, settings: EvaluateSettings) -> float | None:
    """The smallest gain this golden set can see (no-correlation planning value: sd of a diff = sqrt(2) sd)."""
    scores = base["rubric_score"].dropna() if "rubric_score" in base else pd.Series(dtype=float)
    if len(scores) < 2 or scores.std(ddof=1) == 0:
        return None
    return stats.minimum_detectable_effect(math.sqrt(2) * float(scores.std(ddof=1)), len(scores), 1 - settings.confidence)


def contender_summary(contender: Contender, prompt: PromptStats | None) -> dict[str, Any]:
    """Identity and aggregates of one prompt."""
    return {"name": contender.name, "source": contender.source, "version": contender.prompt.version,
            "prompt_hash": contender.prompt.content_hash, "model": contender.model,
            **({k: _finite(v) for k, v in prompt.__dict__.items()} if prompt else {})}


def candidate_result(plan: EvalPlan, contender: Contender, frame: pd.DataFrame, base_stats: PromptStats | None,
                     base_problems: list[str], comparison: Comparison | None, p_adjusted: float | None,
                     judge: Calibration, license_of: Callable[[str], str], stopped: str | None, n_cases: int) -> dict[str, Any]:
    """One candidate's line of the decision table."""
    settings = plan.settings
    cand_stats = prompt_stats(frame) if len(frame) else None
    incomplete = sorted(set(base_problems) | set(incomplete_reasons(frame, n_cases, stopped)))
    paired = comparison.paired if comparison else None
    guards = guard_checks(base_stats, cand_stats, settings.guards) if base_stats and cand_stats else []
    license_class = license_of(contender.model)
    evidence = Evidence(
        incomplete=incomplete,
        identical=(contender.prompt.content_hash == plan.baseline.prompt.content_hash and contender.model == plan.baseline.model),
        ci_low=paired.ci_low if paired else None, p_adjusted=p_adjusted,
        regressions=comparison.regressions if comparison else [], guards=guards, judge_problem=judge.problem,
        license_problem=license_problem(plan.baseline.model, contender.model, license_class, plan.app_settings.commercial),
    )
    decision, reasons = decide(evidence, settings.min_effect, 1 - settings.confidence)
    return contender_summary(contender, cand_stats) | {
        "license": license_class,
        "diff": _finite(paired.mean_diff) if paired else None,
        "ci_low": _finite(paired.ci_low) if paired else None,
        "ci_high": _finite(paired.ci_high) if paired else None,
        "p_value": paired.p_value if paired else None,
        "p_adjusted": p_adjusted,
        "mcnemar_p": comparison.mcnemar_p if comparison else None,
        "wins": paired.wins if paired else 0, "ties": paired.ties if paired else 0, "losses": paired.losses if paired else 0,
        "pairwise_win_rate": comparison.pairwise_win_rate if comparison else None,
        "mde": _finite(comparison.mde) if comparison else None,
        "flips": comparison.flips if comparison else {"fixed": [], "broken": []},
        "high_severity_regressions": evidence.regressions,
        "guards": [{"metric": g.metric, "baseline": g.baseline, "candidate": g.candidate, "limit": g.limit, "ok": g.ok}
                   for g in guards],
        "decision": decision, "reasons": reasons,
    }


def _finite(value: Any) -> Any:
    """NaN/inf as None, so the summary is valid JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


# --- the edges: runner, MLflow, metrics file -----------------------------------------------------


class Stopwatch:
    """Wall seconds per phase, so a slow evaluation says where its time went."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


TABLE_COLUMNS = ("case_id", "split", "slice", "severity", "lang", "input", "answer", "rubric_score", "rubric_passed",
                 "pairwise_score", "pairwise_consistent", "language_match", "facts_found", "cites", "citation_valid",
                 "refused", "toxic", "format_valid", "latency_ms", "cost_usd", "retrieved", "judge_failure")


def case_table(frame: pd.DataFrame, contender: str) -> pd.DataFrame:
    """One prompt's per-case rows for `mlflow.log_table` (inputs, outputs and scores side by side)."""
    rows = frame[frame["prompt"] == contender] if len(frame) else frame
    columns = [c for c in TABLE_COLUMNS if c in rows]
    return rows[columns].sort_values("case_id").reset_index(drop=True) if len(rows) else rows


def child_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a prompt's summary line, as MLflow metrics."""
    keys = ("mean_score", "pass_rate", "refusal_on_answerable", "toxicity", "format_invalid", "cost_per_1k_usd",
            "latency_p95_ms", "diff", "ci_low", "ci_high", "p_value", "p_adjusted", "mcnemar_p", "wins", "ties",
            "losses", "pairwise_win_rate", "mde")
    return {k: float(result[k]) for k in keys if isinstance(result.get(k), (int, float)) and not isinstance(result.get(k), bool)}


def log_evaluation(workspace: Workspace, plan: EvalPlan, summary: dict[str, Any], frame: pd.DataFrame,
                   render: Callable[[dict[str, Any]], str]) -> str:
    """A parent run with the decision table and report; a child run per prompt with its per-case table,
    each prompt registered in the MLflow prompt registry. Returns the parent run id."""
    from promptloop.workspace import registry
    from promptloop.workspace.tracking import experiment_id, log_contents, started_run, tracking_client

    client = tracking_client(workspace.tracking_uri)
    experiment = experiment_id(client, workspace.experiment_name(plan.app), workspace.artifact_root)
    common = {"app": plan.app, "golden_md5": summary["golden_md5"], "judge_model": plan.settings.judge_model,
              "judge_samples": plan.settings.judge_samples, "seed": plan.settings.seed, "git_commit": summary["git_commit"]}
    tags = {"promptloop.stage": "evaluate", "promptloop.app": plan.app}
    with started_run(client, experiment, f"evaluate {plan.app}", tags) as parent_id:
        summary["mlflow_run_id"] = parent_id
        for contender, result in zip(plan.contenders, [summary["baseline"], *summary["candidates"]]):
            with started_run(client, experiment, contender.name, {**tags, "promptloop.prompt": contender.name}, parent_id) as child_id:
                version = registry.register(client, plan.app, contender.prompt)
                registry.link_to_run(client, child_id, plan.app, version)
                result["registry_version"] = version
                log_contents(client, child_id,
                             params={**common, "prompt_hash": contender.prompt.content_hash, "prompt_version": contender.prompt.version,
                                     "prompt_source": contender.source, "model": contender.model, "registry_version": version},
                             metrics=child_metrics(result), tags={"promptloop.decision": result.get("decision", "baseline")},
                             artifacts={"summary.json": result}, tables={"eval_cases.json": case_table(frame, contender.name)})
        usage = summary["usage"]
        log_contents(client, parent_id, params={**common, "cases": summary["cases"], "candidates": len(plan.candidates),
                                                 "min_effect": plan.settings.min_effect, "confidence": plan.settings.confidence,
                                                 "bootstrap_resamples": plan.settings.bootstrap_resamples},
                     metrics={"llm_calls": usage["calls"], "cache_hits": usage["cache_hits"], "retries": usage["retries"],
                              "cost_usd": usage["cost_usd"], "judge_failures": summary["judge_failures"],
                              "promoted": sum(c["decision"] == "promote" for c in summary["candidates"])},
                     tags={"promptloop.complete": str(summary["complete"]).lower()},
                     artifacts={"decision.json": {"baseline": summary["baseline"], "candidates": summary["candidates"]},
                                "report.md": render(summary)},
                     tables={"eval_cases.json": frame[[c for c in ("prompt", *TABLE_COLUMNS) if c in frame]]})
    return parent_id


def dvc_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The baseline's deterministic figures, for `dvc metrics diff` (no wall-clock latency: it is noise)."""
    b = summary["baseline"]
    keys = ("mean_score", "pass_rate", "refusal_on_answerable", "toxicity", "format_invalid", "cost_per_1k_usd")
    return {"cases": summary["cases"], "prompt_version": b["version"], **{k: b.get(k) for k in keys}}


def git_commit(root: Path) -> str | None:
    """HEAD of the workspace's repository, if it is one."""
    import git

    try:
        return git.Repo(root).head.commit.hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return None


def golden_md5(workspace: Workspace, settings: AppSettings) -> str | None:
    """The DVC md5 of the golden set, if DVC tracks it."""
    from promptloop.workspace.versioning import dvc_md5

    try:
        return dvc_md5(workspace.path(settings.golden_set))
    except (OSError, KeyError, ValueError):
        return None


def finish_evaluation(workspace: Workspace, plan: EvalPlan, run: EvalRun, metrics_file: Path | None = None,
                      clock: Stopwatch | None = None) -> dict[str, Any]:
    """Statistics and decisions from the merged run, the MLflow runs, the report and the metrics file."""
    import json

    from promptloop.evaluate.report import markdown_report

    clock = clock or Stopwatch()
    summary = summarise(plan, run, run.usage, workspace.params.llm.license_of)
    clock.lap("statistics_s")
    summary["baseline"]["license"] = workspace.params.llm.license_of(plan.baseline.model)
    summary |= {"usage": usage_summary(run.usage), "golden_set": str(plan.app_settings.golden_set),
                "golden_md5": golden_md5(workspace, plan.app_settings), "git_commit": git_commit(workspace.root),
                "seed": plan.settings.seed, "confidence": plan.settings.confidence, "resamples": plan.settings.bootstrap_resamples,
                "min_effect": plan.settings.min_effect, "experiment": workspace.experiment_name(plan.app)}
    summary["llm_calls"], summary["cache_hits"] = summary["usage"]["calls"], summary["usage"]["cache_hits"]
    summary["cost_usd"] = summary["usage"]["cost_usd"]
    log_evaluation(workspace, plan, summary, pd.DataFrame(run.rows), markdown_report)
    clock.lap("mlflow_s")
    summary["report"] = markdown_report(summary)
    summary["timings"] = clock.laps
    if metrics_file is not None:
        from promptloop.core.files import write_atomic

        write_atomic(workspace.root / metrics_file, json.dumps(dvc_metrics(summary), indent=2, sort_keys=True) + "\n")
    return summary


@holds_workspace("evaluate")
def evaluate(workspace: Workspace, app: str, candidate_paths: list[Path] | None = None, *,
             baseline: tuple[PromptVersion, str] | None = None, metrics_file: Path | None = None, batches: int = 1,
             on_start: Callable[[int], None] | None = None, on_progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate the baseline and candidates, decide per candidate, log to MLflow; returns the JSON summary.

    `batches` > 1 runs the cases in parts one after the other, as the Dask flow runs them side by side.
    """
    clock = Stopwatch()
    plan = plan_evaluation(workspace, app, candidate_paths, baseline)
    if on_start:
        on_start(progress_total(plan))
    processes = min(workspace.params.llm.processes, len(plan.cases))
    chunks = case_batches(plan, max(batches, processes))
    if processes > 1:
        runs = run_in_processes(workspace, plan, chunks, processes, clock, on_progress)
    else:
        litellm_module_configured(workspace.params.llm)  # its import (seconds) is set-up, not the calls' time
        clock.lap("setup_s")
        runs = [evaluate_batch(workspace, plan, ids, 1 / len(chunks), on_progress) for ids in chunks]
    clock.lap("calls_s")
    run = merge_runs(plan, runs)
    clock.laps["calls_cpu_s"] = round(run.cpu_s, 3)
    return finish_evaluation(workspace, plan, run, metrics_file, clock)


def warm_worker(workspace: Workspace) -> None:
    """A worker process's start: offline environment, litellm configured (its imports take seconds).

    A 1 ms GIL switch interval: litellm runs part of every call in a thread, and the default 5 ms
    wait for the GIL stretches each call under load (measured in benchmarks/bench_runner.py).
    """
    import sys

    from promptloop.llm.client import litellm_module_configured
    from promptloop.core.runtime import prepare_environment

    prepare_environment()
    sys.setswitchinterval(0.001)
    litellm_module_configured(workspace.params.llm)


def run_in_processes(workspace: Workspace, plan: EvalPlan, chunks: list[list[str]], processes: int, clock: Stopwatch,
                     on_progress: Progress | None) -> list[EvalRun]:
    """The batches on `processes` worker processes (one event loop and runner each, the concurrency
    shared out): one Python process is CPU-bound in litellm long before a provider's limits."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from promptloop.llm.runner import ResponseCache

    if workspace.params.llm.cache:  # created here once, not raced by the workers
        ResponseCache(workspace.path(workspace.params.llm.cache)).close()
    concurrency = max(1, math.ceil(workspace.params.llm.max_concurrency / processes))
    context = multiprocessing.get_context("spawn")  # no forked copies of threads or open databases
    with ProcessPoolExecutor(processes, mp_context=context, initializer=warm_worker, initargs=(workspace,)) as pool:
        list(pool.map(math.sqrt, range(processes)))  # wait until every worker is warm
        clock.lap("setup_s")
        futures = [pool.submit(evaluate_batch, workspace, plan, ids, 1 / len(chunks), None, concurrency) for ids in chunks]
        runs = []
        for future, ids in zip(futures, chunks):
            runs.append(future.result())
            if on_progress:
                on_progress(len(ids) * len(plan.contenders))
    return runs
