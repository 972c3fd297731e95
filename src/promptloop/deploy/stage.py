"""deploy: the candidate improve promoted becomes a pull request; a hold or incomplete opens nothing."""

from __future__ import annotations

import difflib
from pathlib import Path

from promptloop.core.config import parse_yaml_text
from promptloop.core.errors import InputError
from promptloop.deploy.pull_request import open_pull_request
from promptloop.domain.prompts import PromptVersion, load_prompt
from promptloop.domain.results import BestCandidate, DeployResult, ImproveOutcome
from promptloop.workspace.handoff import load_outcome, outcome_path
from promptloop.workspace.locking import holds_workspace
from promptloop.workspace.registry import name_challenger
from promptloop.workspace.workspace import Workspace


def prompt_diff(current: PromptVersion, candidate: PromptVersion) -> str:
    """A unified diff of the two prompt versions' templates."""
    before = current.text.splitlines(keepends=True)
    after = candidate.text.splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, f"v{current.version}", "candidate"))


def pull_request_body(outcome: ImproveOutcome, best: BestCandidate, current: PromptVersion,
                      candidate: PromptVersion) -> str:
    """The evaluation report, then the prompt diff and what came into the golden set."""
    golden = outcome.golden
    ci_low = "n/a" if best.ci_low is None else f"{best.ci_low:+.3f}"
    lines = [
        f"Proposed by promptloop: **{best.name}** ({candidate.changelog}); CI lower bound "
        f"{ci_low} on held-out cases. Merge to promote, then run `promptloop release --app "
        f"{outcome.app}`.",
        "",
        "## Prompt diff",
        "",
        "```diff",
        prompt_diff(current, candidate).rstrip(),
        "```",
        "",
        f"## Golden set: {golden.added} mined case(s) added ({golden.optimize} to the optimisation split, "
        f"{golden.holdout} held out); DVC md5 `{golden.dvc_md5 or 'unchanged'}`",
        "",
    ]
    return "\n".join(lines) + "\n" + outcome.evaluation.report


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
    proposed = open_pull_request(workspace, app, candidate, pull_request_body(outcome, best, current, candidate),
                                 golden_dvc if golden_dvc.is_file() else None,
                                 github_api_url=workspace.params.deploy.github_api_url,
                                 token_env=workspace.params.deploy.token_env)
    # The registry names what the open pull request proposes (the same content evaluate registered).
    challenger = name_challenger(workspace.tracking_uri, app, candidate, outcome.evaluation.mlflow_run_id)
    return DeployResult(app=app, decision="promote", reasons=[], challenger_version=challenger,
                        **proposed.model_dump())
