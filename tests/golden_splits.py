"""Golden sets with an optimizer split, shared by the evaluation tests."""

from __future__ import annotations

import json

from promptloop.core.config import AppSettings
from promptloop.workspace.workspace import Workspace


def korean_optimizer_split(workspace: Workspace) -> Workspace:
    """The sample workspace with support-bot's Korean cases as the optimizer's split and the others held out."""
    source = workspace.path(workspace.app_settings("support-bot").golden_set)
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        row["split"] = "optimize" if row["lang"] == "ko" else "holdout"
    path = workspace.root / "datasets" / "support-bot" / "golden-split.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    app: AppSettings = workspace.app_settings("support-bot").model_copy(
        update={"golden_set": path.relative_to(workspace.root)})
    return Workspace(workspace.root, workspace.params.model_copy(update={"apps": {"support-bot": app}}))
