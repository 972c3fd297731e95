"""What one stage leaves for the next: improve's outcome, read by deploy and by the cycle's skip check.

The outcome is a JSON file with a schema version. Reading it validates it, so a stale or hand-edited
file is an input error naming the file and the field, never a KeyError halfway through a deploy.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from promptloop.core.errors import InputError, input_error_from_validation
from promptloop.core.files import write_atomic
from promptloop.domain.results import IMPROVE_OUTCOME_SCHEMA, ImproveOutcome
from promptloop.workspace.workspace import Workspace


def outcome_path(workspace: Workspace, app: str) -> Path:
    """Where the last improve run of `app` leaves its outcome for deploy (git-ignored)."""
    return workspace.root / ".promptloop" / "improve" / f"{app}.json"


def save_outcome(workspace: Workspace, outcome: ImproveOutcome) -> Path:
    """Keep the outcome where `deploy` (and the cycle's skip check) find it."""
    path = outcome_path(workspace, outcome.app)
    write_atomic(path, outcome.model_dump_json(indent=2) + "\n")
    return path


def load_outcome(workspace: Workspace, app: str) -> ImproveOutcome:
    """What the last improve run of `app` decided, validated against the current schema."""
    path = outcome_path(workspace, app)
    if not path.is_file():
        raise InputError(path, f"no improve run yet: run `promptloop improve --app {app}` first")
    try:
        return ImproveOutcome.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        found = input_error_from_validation(path, exc)
        raise InputError(path, f"{str(found).removeprefix(str(path) + ': ')} -- not an improve outcome of schema "
                               f"{IMPROVE_OUTCOME_SCHEMA} (written by another promptloop version, or edited by hand); "
                               f"run `promptloop improve --app {app}` again") from None
