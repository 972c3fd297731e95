"""check: the working tree's prompt against the one on main, for CI on a pull request that edits it by hand."""

from __future__ import annotations

from pathlib import Path

import git

from promptloop.core.config import PARAMS_FILE, PLUGIN_SPEC, parse_yaml_text, read_yaml
from promptloop.core.errors import InputError
from promptloop.core.progress import NO_PROGRESS, ProgressHooks
from promptloop.domain.evaluation import CandidateResult
from promptloop.domain.prompts import PromptVersion, load_prompt
from promptloop.domain.results import CheckResult
from promptloop.evaluate.plan import contender_model, locality_problem
from promptloop.evaluate.stage import evaluate
from promptloop.workspace.preflight import app_models, preflight
from promptloop.workspace.repository import prompt_at
from promptloop.workspace.workspace import Workspace


def prompt_on_branch(workspace: Workspace, relative: Path, branch: str) -> PromptVersion:
    """The prompt file as committed on `branch` (e.g. main), validated."""
    try:
        committed = prompt_at(git.Repo(workspace.root), branch, relative.as_posix())
    except git.InvalidGitRepositoryError:
        committed = None
    if committed is None:
        raise InputError(
            workspace.root / relative, f"cannot read it from branch {branch!r} (no such branch, file or repository)"
        )
    return committed


def regressions(candidate: CandidateResult) -> list[str]:
    """What makes a hand edit a significant regression: the whole CI below zero, or a high-severity case broken."""
    found = []
    if candidate.ci_high is not None and candidate.ci_high < 0 and candidate.diff is not None:
        found.append(
            f"score drops by {-candidate.diff:.3f} (CI [{candidate.ci_low:+.3f}, {candidate.ci_high:+.3f}] is below 0)"
        )
    if candidate.high_severity_regressions:
        found.append(f"high-severity case(s) broken: {', '.join(candidate.high_severity_regressions)}")
    return found


def plugins(params: object) -> dict[str, str]:
    """The code params.yaml names (custom providers, detector plug-ins): setting -> `module:object`."""
    found: dict[str, str] = {}
    for section, key in (("llm", "providers"), ("analyze", "detectors")):
        part = params.get(section) if isinstance(params, dict) else None
        entries = part.get(key) if isinstance(part, dict) else None
        for name, target in (entries or {}).items():
            if isinstance(target, str) and PLUGIN_SPEC.fullmatch(target):
                found[f"{section}.{key}.{name}"] = target
    return found


def refuse_changed_plugins(workspace: Workspace, branch: str) -> None:
    """A pull request that changes which code params.yaml loads is not run by `check`: importing that
    code is running it, with this CI job's keys. A person reviews and merges such a change first."""
    try:
        committed = git.Repo(workspace.root).git.show(f"{branch}:{PARAMS_FILE}")
    except (git.GitCommandError, git.InvalidGitRepositoryError):
        return  # no params.yaml on the base branch to compare with: prompt_on_branch reports the branch
    before = plugins(parse_yaml_text(str(committed), f"{branch}:{PARAMS_FILE}"))
    after = plugins(read_yaml(workspace.root / PARAMS_FILE))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        raise InputError(workspace.root / PARAMS_FILE,
                         f"changes the code it loads ({', '.join(changed)}) compared with {branch}: `promptloop "
                         "check` does not run code a pull request brings; review and merge that change first")


def check(workspace: Workspace, app: str, base_branch: str | None = None,
          progress: ProgressHooks = NO_PROGRESS, probe: bool = False) -> CheckResult:
    """Evaluate the working tree's prompt against the one on the base branch (for CI on a hand edit).

    With `probe`, each model first answers a 1-token request: after the plug-in check, since probing
    configures the providers params.yaml names.
    """
    settings = workspace.app_settings(app)
    branch = base_branch or workspace.params.deploy.base_branch
    refuse_changed_plugins(workspace, branch)
    if probe:
        preflight(workspace, app, app_models(workspace, app), probe=True)
    committed = prompt_on_branch(workspace, Path(settings.prompt), branch)
    edited_path = workspace.path(settings.prompt)
    edited = load_prompt(edited_path)
    if edited.content_hash == committed.content_hash:
        return CheckResult(app=app, base=branch, changed=False, regressions=[], complete=True,
                           report=f"`{settings.prompt}` is the same as on {branch}: nothing to check.\n")
    result = evaluate(
        workspace, app, [edited_path], baseline=(committed, f"{branch}:{settings.prompt}"), progress=progress
    )
    found = regressions(result.candidates[0]) if result.complete else []
    # A local-only app's prompt moved to a model its data may not reach: held without a call, and a regression.
    moved = locality_problem(workspace, app, contender_model(edited, committed, settings.model))
    found += [moved] if moved else []
    return CheckResult(app=app, base=branch, changed=True, regressions=found, complete=result.complete,
                       report=result.report, evaluation=result)
