"""Planning an evaluation: which prompts, on which golden cases, scored by which scorers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from promptloop.core.config import AppSettings, EvaluateSettings, Params
from promptloop.core.errors import InputError
from promptloop.domain.app import unfilled_variables
from promptloop.domain.golden import GoldenCase, load_golden
from promptloop.domain.kb import Retriever, load_kb
from promptloop.domain.prompts import PromptVersion, load_prompt
from promptloop.evaluate.scorers import Answer, GuardJudge, PairwiseJudge, ProxyMetrics, RubricJudge, Scorer
from promptloop.llm.runner import Runner
from promptloop.quality.detectors import detectors_of
from promptloop.quality.judge_files import JudgeFile, load_judges
from promptloop.workspace.workspace import Workspace

BASELINE = "baseline"


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
    blocked: dict[str, str] = field(default_factory=dict)  # candidate -> why it may not be run at all
    judges: list[JudgeFile] = field(default_factory=list)  # the app's judge files
    # The labelled cases whose baseline answer the judge is calibrated on (None: those among `cases`). A look
    # of the sequential race calibrates on every labelled case at once, whichever cases it scores.
    calibration_cases: list[GoldenCase] | None = None
    # Whether the pairwise judge runs (when the app has one). A race's looks leave it out: it never enters
    # the gate, and the race judges pairwise afterwards for the candidates it decided (`race.report_decided`).
    pairwise: bool = True
    # Whether the guard judge files run on the cases (calibration aside). The optimizer's cases after a race
    # leave them out: only the rubric's gain is reported there, and the guards gate on held-out cases only.
    guards: bool = True
    # case id -> the baseline's answer an earlier pass of the evaluation already made: reused, not asked again
    # (without a response cache it would be paid twice; see EvalRun.baseline_answers)
    baseline_answers: dict[str, Answer] = field(default_factory=dict)

    @property
    def labelled(self) -> list[GoldenCase]:
        """The cases the judge is calibrated on."""
        found = self.cases if self.calibration_cases is None else self.calibration_cases
        return [c for c in found if c.human_label is not None]

    @property
    def guard_judges(self) -> list[JudgeFile]:
        return [j for j in self.judges if j.role == "guard"]

    @property
    def has_pairwise(self) -> bool:
        """Whether the app's evaluation has a pairwise judge (the built-in one or a primary pairwise judge file)."""
        return "pairwise" in self.app_settings.scorers or self.primary_judge(pairwise=True) is not None

    def primary_judge(self, pairwise: bool) -> JudgeFile | None:
        """The judge file that replaces the built-in rubric (or pairwise) judge, if the app has one."""
        return next((j for j in self.judges if j.role == "primary" and (j.kind == "pairwise") == pairwise), None)

    @property
    def contenders(self) -> list[Contender]:
        return [self.baseline, *self.candidates]

    @property
    def runnable(self) -> list[Contender]:
        """The contenders whose answers are asked for: all but the blocked candidates."""
        return [c for c in self.contenders if c.name not in self.blocked]


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


def hand_written_candidates(workspace: Workspace, app: str) -> list[Path]:
    """The candidates people wrote: prompts/<app>/candidates/*.yaml next to the app's prompt."""
    folder = workspace.path(workspace.app_settings(app).prompt).parent / "candidates"
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def load_candidates(app: str, paths: list[Path]) -> list[PromptVersion]:
    """The candidate prompt files, each for `app`."""
    prompts = [load_prompt(path) for path in paths]
    for path, prompt in zip(paths, prompts, strict=True):
        if prompt.app != app:
            raise InputError(path, f"prompt is for app {prompt.app!r}, not {app!r}", field="app")
    return prompts


def plan_evaluation(workspace: Workspace, app: str, candidate_paths: list[Path] | None = None,
                    baseline: tuple[PromptVersion, str] | None = None) -> EvalPlan:
    """Load the golden set, the baseline (the app's prompt file unless given) and the candidates.

    Without candidate paths, the files in `prompts/<app>/candidates/` are the candidates.
    """
    settings = workspace.app_settings(app)
    baseline_file, baseline_source = baseline or (load_prompt(workspace.path(settings.prompt)), str(settings.prompt))
    paths = hand_written_candidates(workspace, app) if candidate_paths is None else candidate_paths
    prompts = load_candidates(app, paths)
    docs = load_kb(workspace.path(settings.knowledge_base)) if settings.knowledge_base else []
    plan = EvalPlan(
        app=app, app_settings=settings, settings=workspace.params.evaluate,
        cases=load_golden(workspace.path(settings.golden_set)),
        baseline=Contender(BASELINE, baseline_file, contender_model(baseline_file, baseline_file, settings.model),
                           baseline_source),
        candidates=[Contender(name, prompt, contender_model(prompt, baseline_file, settings.model), str(path))
                    for name, prompt, path in zip(candidate_names(paths), prompts, paths, strict=True)],
        retriever=Retriever(docs) if docs else None, kb_ids=frozenset(d.id for d in docs), top_k=settings.top_k,
        judges=load_judges(workspace.path(settings.judges or Path("judges") / app)),
    )
    plan.blocked = {c.name: problem for c in plan.candidates
                    if (problem := locality_problem(workspace, app, c.model)) is not None}
    check_case_inputs(plan, workspace.path(settings.golden_set))
    return plan


def check_case_inputs(plan: EvalPlan, golden_set: Path) -> None:
    """Before any call, where promptloop renders the prompt (the template target, which fills `context` from the
    knowledge base, and an HTTP target): every case holds every variable each prompt uses. A `python:` app renders
    it itself and may add variables of its own: a case it cannot answer stops the evaluation there, named."""
    for contender in plan.runnable:
        for case in plan.cases:
            problem = unfilled_variables(contender.prompt, contender.source, case.inputs, plan.app_settings.target,
                                         plan.retriever is not None)
            if problem:
                raise InputError(golden_set, problem, field=f"case {case.id}")


def locality_problem(workspace: Workspace, app: str, model: str) -> str | None:
    """Why a local-only app may not send its cases to `model` (so a candidate on it is never run), if it may not."""
    if workspace.app_settings(app).data_policy != "local-only":
        return None
    locality = workspace.params.llm.locality_of(model)
    if locality == "local":
        return None
    return (f"model {model} is {'hosted' if locality == 'hosted' else 'not known to be local'} and app {app} is "
            f"local-only (apps.{app}.data_policy): not run, never promoted")


def proxy_scorers(plan: EvalPlan, root: Path, params: Params) -> list[Scorer]:
    """The checks without an LLM, when `apps.<app>.scorers` asks for them (detectors and schema loaded once)."""
    if "proxy" not in plan.app_settings.scorers:
        return []
    detectors = detectors_of(params.analyze, root)
    app = plan.app_settings
    schema = read_schema(root / app.json_schema) if app.json_schema else None
    return [ProxyMetrics(detectors["refusal"], detectors["toxic"], plan.kb_ids, tuple(app.forbidden_phrases),
                         app.citation_pattern, schema, uncertainty=detectors["uncertain"])]


def judge_scorers(plan: EvalPlan, runner: Runner, contender: str) -> list[Scorer]:
    """The LLM judges of one contender, their calls counted under `judge:<contender>`."""
    settings = plan.settings
    description, purpose = plan.app_settings.description, f"judge:{contender}"
    primary, pairwise = plan.primary_judge(pairwise=False), plan.primary_judge(pairwise=True)
    found: list[Scorer] = [RubricJudge(runner, judge_model(primary, settings), settings.judge_samples,
                                       settings.judge_temperature, settings.seed, purpose=purpose,
                                       description=description, file=primary)]
    if plan.pairwise and plan.has_pairwise:
        found.append(PairwiseJudge(runner, judge_model(pairwise, settings), settings.judge_temperature, settings.seed,
                                   purpose=purpose, description=description, file=pairwise))
    found += [GuardJudge(runner, judge_model(guard, settings), guard, settings.judge_temperature, settings.seed,
                         purpose=purpose, description=description) for guard in plan.guard_judges if plan.guards]
    return found


def judge_model(judge: JudgeFile | None, settings: EvaluateSettings) -> str:
    """A judge file's own model, else evaluate.judge_model."""
    return judge.model if judge is not None and judge.model else settings.judge_model


def build_scorers(plan: EvalPlan, runner: Runner, root: Path, params: Params) -> dict[str, list[Scorer]]:
    """Each contender's scorers (params `apps.<app>.scorers`); the proxy checks hold no state, so one
    instance serves all."""
    proxy = proxy_scorers(plan, root, params)
    return {c.name: judge_scorers(plan, runner, c.name) + proxy for c in plan.contenders}


def read_schema(path: Path) -> dict[str, object]:
    """The JSON schema answers must follow (`apps.<app>.json_schema`)."""
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the JSON schema: {exc}", field="apps.json_schema") from None
    if not isinstance(schema, dict):
        raise InputError(path, "a JSON schema is an object", field="apps.json_schema")
    return schema


def progress_total(plan: EvalPlan) -> int:
    """Units of progress: one per (prompt, case) scored and per labelled case judged."""
    return len(plan.runnable) * len(plan.cases) + len(plan.labelled)


def case_batches(plan: EvalPlan, batches: int) -> list[list[str]]:
    """The golden set's case ids in `batches` contiguous parts of near-equal size (none empty)."""
    ids = [c.id for c in plan.cases]
    size, extra = divmod(len(ids), max(1, batches))
    bounds = [i * size + min(i, extra) for i in range(max(1, batches) + 1)]
    return [ids[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
