"""deploy: the candidate improve promoted becomes a pull request; a hold or incomplete opens nothing."""

from __future__ import annotations

import difflib
from pathlib import Path

from promptloop.core.config import parse_yaml_text
from promptloop.core.errors import InputError
from promptloop.deploy.body import BodyInput, pull_request_body
from promptloop.deploy.evidence import evaluation_rows, new_cases, review_links
from promptloop.deploy.pull_request import next_version, open_pull_request
from promptloop.domain.golden import load_golden
from promptloop.domain.kb import document_from_text
from promptloop.domain.prompts import PromptVersion, load_prompt
from promptloop.domain.results import BestCandidate, DeployResult, ImproveOutcome
from promptloop.quality.redact import build_redactor
from promptloop.workspace.handoff import load_outcome, outcome_path
from promptloop.workspace.locking import holds_workspace
from promptloop.workspace.registry import name_challenger
from promptloop.workspace.workspace import Workspace


def prompt_diff(current: PromptVersion, candidate: PromptVersion) -> str:
    """A unified diff of the two prompt versions' templates."""
    before = current.text.splitlines(keepends=True)
    after = candidate.text.splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, f"v{current.version}", "candidate"))


def body_input(workspace: Workspace, outcome: ImproveOutcome, best: BestCandidate, current: PromptVersion,
               candidate: PromptVersion) -> BodyInput:
    """What the pull request shows, gathered from the outcome, the evaluation's MLflow run and the golden set."""
    settings = workspace.app_settings(outcome.app)
    evaluation, golden = outcome.evaluation, outcome.golden
    result = next(c for c in evaluation.candidates if c.name == best.name)
    rows, experiment = evaluation_rows(workspace.tracking_uri, evaluation.mlflow_run_id)
    golden_path = workspace.path(settings.golden_set)
    cases = load_golden(golden_path) if golden_path.is_file() else []
    redactor = build_redactor(workspace.params.collect.extra_pii_patterns)
    links = review_links(workspace.params.tracking.ui_url, workspace.params.tracking.uri, experiment,
                         evaluation.mlflow_run_id, outcome.app, result.registry_version)
    return BodyInput(
        app=outcome.app, evaluation=evaluation, candidate=result, changelog=candidate.changelog or "",
        version=next_version(candidate, current).version, prompt_path=settings.prompt.as_posix(),
        diff=prompt_diff(current, candidate), links=links, golden_added=golden.added,
        golden_split=(golden.optimize, golden.holdout), golden_md5=golden.dvc_md5,
        new_cases=new_cases(cases, golden.added), rows=rows,
        min_per_class=workspace.params.evaluate.min_calibration_per_class,
        redact=lambda text: redactor.redact_text(text)[0] or "",
        kb_drafts=outcome.kb_drafts.drafts if outcome.kb_drafts else [])


def draft_files(workspace: Workspace, outcome: ImproveOutcome) -> dict[str, bytes]:
    """The drafted articles as files of the app's knowledge base; each must read back as a draft document
    whose id names its file (the outcome file is input like any other)."""
    folder = workspace.app_settings(outcome.app).knowledge_base
    if outcome.kb_drafts is None or not outcome.kb_drafts.drafts:
        return {}
    if folder is None:
        raise InputError(outcome_path(workspace, outcome.app), "the outcome holds knowledge-base drafts but the app "
                         "has no knowledge_base", field="kb_drafts")
    files = {}
    for draft in outcome.kb_drafts.drafts:
        path = (folder / f"{draft.id}.md").as_posix()
        doc = document_from_text(draft.text, Path(path))
        if not doc.draft:
            raise InputError(outcome_path(workspace, outcome.app), f"draft {draft.id} lacks `draft: true`",
                             field="kb_drafts")
        files[path] = draft.text.encode("utf-8")
    return files


def promoted_prompt(outcome: ImproveOutcome, source: Path) -> tuple[BestCandidate, PromptVersion]:
    """The promoted candidate and its prompt, as improve saved them."""
    if outcome.best is None or outcome.best.prompt is None:
        raise InputError(source, "the outcome promotes a candidate but holds no prompt for it; run improve again",
                         field="best.prompt")
    return outcome.best, PromptVersion.model_validate(parse_yaml_text(outcome.best.prompt, source))


@holds_workspace("deploy")
def deploy(workspace: Workspace, app: str) -> DeployResult:
    """Open (or find) the pull request of improve's promoted candidate; nothing to do after a hold."""
    outcome = load_outcome(workspace, app)
    if outcome.decision != "promote":
        return DeployResult(app=app, decision=outcome.decision, reasons=outcome.reasons)
    settings = workspace.app_settings(app)
    best, candidate = promoted_prompt(outcome, outcome_path(workspace, app))
    current = load_prompt(workspace.path(settings.prompt))
    golden_dvc = Path(f"{workspace.path(settings.golden_set)}.dvc")
    body = pull_request_body(body_input(workspace, outcome, best, current, candidate))
    proposed = open_pull_request(workspace, app, candidate, outcome.evaluation.report,
                                 golden_dvc if golden_dvc.is_file() else None,
                                 github_api_url=workspace.params.deploy.github_api_url,
                                 token_env=workspace.params.deploy.token_env, body=body,
                                 extra_files=draft_files(workspace, outcome))
    # The registry names what the open pull request proposes (the same content evaluate registered).
    challenger = name_challenger(workspace.tracking_uri, app, candidate, outcome.evaluation.mlflow_run_id)
    return DeployResult(app=app, decision="promote", reasons=[], challenger_version=challenger,
                        **proposed.model_dump())
