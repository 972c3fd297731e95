"""deploy: the candidate improve promoted becomes a pull request; a hold or incomplete opens nothing."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml

from promptloop.core.errors import InputError
from promptloop.workspace.locking import holds_workspace
from promptloop.domain.prompts import PromptVersion, load_prompt
from promptloop.workspace.workspace import Workspace, outcome_path


def load_outcome(workspace: Workspace, app: str) -> dict[str, Any]:
    """What the last improve run of `app` decided."""
    path = outcome_path(workspace, app)
    if not path.is_file():
        raise InputError(path, f"no improve run yet: run `promptloop improve --app {app}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def prompt_diff(current: PromptVersion, candidate: PromptVersion) -> str:
    """A unified diff of the two prompt versions' templates."""
    before = f"{current.system}\n{current.user}\n".splitlines(keepends=True)
    after = f"{candidate.system}\n{candidate.user}\n".splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, f"v{current.version}", "candidate"))


def pull_request_body(outcome: dict[str, Any], current: PromptVersion, candidate: PromptVersion) -> str:
    """The evaluation report, then the prompt diff and what came into the golden set."""
    golden = outcome["golden"]
    best = outcome["best"]
    lines = [f"Proposed by promptloop: **{best['name']}** ({candidate.changelog}); CI lower bound "
             f"{best['ci_low']:+.3f} on held-out cases. Merge to promote, then run `promptloop release --app "
             f"{outcome['app']}`.", "", "## Prompt diff", "", "```diff", prompt_diff(current, candidate).rstrip(), "```", "",
             f"## Golden set: {golden['added']} mined case(s) added ({golden['optimize']} to the optimisation split, "
             f"{golden['holdout']} held out); DVC md5 `{golden.get('dvc_md5') or 'unchanged'}`", ""]
    return "\n".join(lines) + "\n" + outcome["evaluation"]["report"]


@holds_workspace("deploy")
def deploy(workspace: Workspace, app: str) -> dict[str, Any]:
    """Open (or find) the pull request of improve's promoted candidate; nothing to do after a hold."""
    from promptloop.deploy.pull_request import open_pull_request

    outcome = load_outcome(workspace, app)
    if outcome["decision"] != "promote":
        return {"app": app, "decision": outcome["decision"], "reasons": outcome["reasons"], "branch": None, "created": False}
    settings = workspace.app_settings(app)
    candidate = PromptVersion.model_validate(yaml.safe_load(outcome["best"]["prompt"]))
    current = load_prompt(workspace.path(settings.prompt))
    golden_dvc = Path(f"{workspace.path(settings.golden_set)}.dvc")
    pr = open_pull_request(workspace, app, candidate, pull_request_body(outcome, current, candidate),
                           golden_dvc if golden_dvc.is_file() else None,
                           github_api_url=workspace.params.deploy.github_api_url, token_env=workspace.params.deploy.token_env)
    return {"app": app, "decision": "promote", "reasons": [], **pr}
