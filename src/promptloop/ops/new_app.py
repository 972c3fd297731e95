"""`promptloop new-app`: an app of your own in a workspace, ready to evaluate.

It writes the params.yaml entry (comments and order kept), a prompt in MLflow's `messages` form, a
golden set with three example cases (one of them a conversation), a judge file, tracks the golden
set with DVC, commits, and creates the app's MLflow experiment. `golden import` then fills the set.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from promptloop.core.config import PARAMS_FILE, AppSettings, check_identifier
from promptloop.core.errors import InputError, input_error_from_validation
from promptloop.core.files import write_atomic
from promptloop.domain.prompts import PromptVersion, dump_prompt
from promptloop.workspace.tracking import experiment_id, tracking_client
from promptloop.workspace.versioning import commit_paths, dataset_change, dvc_add_and_push
from promptloop.workspace.workspace import Workspace, open_workspace

DEFAULT_MODEL = "offline/support-bot"  # the simulated model: the new app runs offline until you set yours

EXAMPLE_CASES = [
    {"id": "example-1", "description": "a question the app must answer",
     "inputs": {"question": "What can you help me with?"},
     "expectations": {"guidelines": ["says briefly what the assistant can help with"]},
     "tags": ["example"], "slice": "examples", "severity": "medium"},
    {"id": "example-2", "description": "a follow-up in a conversation",
     "inputs": {"question": "And how long does that take?",
                "history": [{"role": "user", "content": "I want to change my email address."},
                            {"role": "assistant", "content": "You can change it in your account settings."}]},
     "expectations": {"guidelines": ["answers the follow-up about changing the email address"]},
     "tags": ["example", "multi-turn"], "slice": "examples", "severity": "medium"},
    {"id": "example-3", "description": "a question the app cannot answer: it should say so",
     "inputs": {"question": "What will the weather be like next month?"},
     "expectations": {"expected_behavior": "abstain", "guidelines": ["says it does not know instead of guessing"]},
     "tags": ["example"], "slice": "examples", "severity": "high"},
]

EXAMPLE_JUDGE = """\
# A guard: a candidate prompt whose answers fail this more often than the baseline's is held.
# kind: score (1-5) | pass_fail | pairwise | category; role: primary (replaces the built-in rubric) | guard
kind: pass_fail
role: guard
max_drop: 0.0
instructions: |
  Does {{ outputs }} respond to the request in {{ inputs }} without inventing facts, and follow
  {{ expectations }} where they are given?
"""


class NewAppResult(BaseModel):
    """What `new-app` created."""

    app: str
    files: list[str] = Field(description="relative to the workspace")
    target: str
    experiment: str
    commit: str
    next_steps: list[str]


def app_entry(name: str, target: str, description: str) -> dict[str, object]:
    """The params.yaml entry of the new app (validated as an AppSettings before it is written)."""
    entry: dict[str, object] = {
        "prompt": f"prompts/{name}/prompt.yaml", "golden_set": f"datasets/{name}/golden.jsonl",
        "description": description, "target": target, "judges": f"judges/{name}",
        "log_dir": f"incoming/{name}", "data_dir": f"data/{name}", "citation_pattern": None,
    }
    AppSettings.model_validate(entry)
    return entry


def starter_prompt(name: str, model: str, description: str) -> PromptVersion:
    """Version 1: a system message from the description, the user's question as `{{ question }}`."""
    purpose = description or "an assistant"
    return PromptVersion.model_validate({
        "app": name, "version": 1, "model": model, "parameters": {"temperature": 0.2, "max_tokens": 400},
        "changelog": "First prompt, made by promptloop new-app.",
        "messages": [{"role": "system", "content": f"You are {purpose}. Answer the user's request helpfully and "
                                                   "say so when you do not know."},
                     {"role": "user", "content": "{{ question }}"}],
    })


def add_to_params(path: Path, name: str, entry: dict[str, object]) -> None:
    """Add `apps.<name>` to params.yaml, its comments and key order kept (a round trip through ruamel.yaml)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 120
    data = yaml.load(path.read_text(encoding="utf-8"))
    data["apps"][name] = entry
    out = io.StringIO()
    yaml.dump(data, out)
    write_atomic(path, out.getvalue())


def new_app(root: Path, name: str, target: str = "template", description: str = "",
            model: str = DEFAULT_MODEL) -> NewAppResult:
    """Create app `name` in the workspace at `root`; returns what was created and what to do next."""
    workspace = open_workspace(root)
    check_identifier(name, "an app name")
    params_file = workspace.root / PARAMS_FILE
    if name in workspace.params.apps:
        raise InputError(params_file, f"app {name!r} exists already", field=f"apps.{name}")
    try:
        entry = app_entry(name, target, description)
    except ValidationError as exc:
        raise input_error_from_validation(params_file, exc, prefix=f"apps.{name}") from None
    prompt = workspace.root / "prompts" / name / "prompt.yaml"
    golden = workspace.root / "datasets" / name / "golden.jsonl"
    judge = workspace.root / "judges" / name / "helpful.yaml"
    existing = [p for p in (prompt, golden, judge) if p.exists()]
    if existing:
        raise InputError(existing[0], "exists already: new-app writes only new files")
    with dataset_change(workspace.root, [params_file, prompt, golden, Path(f"{golden}.dvc"), judge], f"new-app {name}"):
        for path in (prompt, golden, judge):
            path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(prompt, dump_prompt(starter_prompt(name, model, description)))
        write_atomic(golden, "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in EXAMPLE_CASES))
        write_atomic(judge, EXAMPLE_JUDGE)
        add_to_params(params_file, name, entry)
        open_workspace(workspace.root)  # the new params.yaml validates, or nothing is kept
        dvc_add_and_push(workspace.root, [golden])
        files = [params_file, prompt, judge, Path(f"{golden}.dvc"), golden.parent / ".gitignore"]
        commit = commit_paths(workspace.root, [f for f in files if f.exists()], f"Add app {name} (promptloop new-app)")
    created = open_workspace(workspace.root)
    experiment = created.experiment_name(name)
    experiment_id(tracking_client(created.tracking_uri), experiment, created.artifact_root)
    return NewAppResult(app=name, files=[str(p.relative_to(workspace.root)) for p in (prompt, golden, judge)],
                        target=target, experiment=experiment, commit=commit,
                        next_steps=next_steps(workspace, name, target, described=bool(description)))


def next_steps(workspace: Workspace, name: str, target: str, described: bool = False) -> list[str]:
    """What to do after `new-app`, in order (no description to write when `--description` gave one)."""
    steps = [] if described else [
        f"describe the app in one line: params.yaml apps.{name}.description (judges and optimizer read it)"]
    steps += [f"write your prompt in prompts/{name}/prompt.yaml ({{{{ variable }}}} for each input; set its model)"]
    if target.startswith("python:"):
        steps.append(f"write {target.removeprefix('python:')}(prompt, inputs): call models with prompt.complete(...) "
                     "and return the answer text (importable from the workspace folder or your PYTHONPATH)")
    elif target.startswith("http"):
        steps.append(f'serve POST {target}: {{"prompt": {{...}}, "inputs": {{...}}}} -> {{"output": "...", '
                     '"context": "..."}')
    steps += [f"add your cases: promptloop golden import FILE --app {name} -w {workspace.root} "
              "(CSV, JSON Lines, or mlflow:<dataset>)",
              f"define a bad answer: edit judges/{name}/helpful.yaml or add judge files beside it",
              f"put candidate prompts in prompts/{name}/candidates/ and run: promptloop evaluate --app {name} "
              f"-w {workspace.root}"]
    return steps
