"""cycle: collect -> analyze -> improve -> deploy for one app, as one call (the flows wire the same steps)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from promptloop.workspace import Workspace


def llm_calls(analyzed: dict[str, Any], improved: dict[str, Any]) -> dict[str, int]:
    """LLM calls made and answered from the cache across the cycle's stages."""
    judge = analyzed.get("online_judge") or {}
    optimizer = improved["candidates"]["optimizer"] or {}
    evaluation = improved["evaluation"]
    return {"calls": judge.get("calls", 0) + optimizer.get("calls", 0) + evaluation["llm_calls"],
            "cache_hits": judge.get("cache_hits", 0) + optimizer.get("cache_hits", 0) + evaluation["cache_hits"]}


def nothing_new(workspace: Workspace, app: str, collected: dict[str, Any], force: bool = False) -> bool:
    """True when the turn should stop after collect: no new rows, and improve already ran on the old ones."""
    from promptloop.improve import outcome_path

    return collected["rows_in"] == 0 and outcome_path(workspace, app).is_file() and not force


def skipped(app: str, merged: str | None, collected: dict[str, Any]) -> dict[str, Any]:
    """The result of a turn that stopped after collect."""
    return {"app": app, "merged": merged, "collect": collected, "analyze": None, "improve": None, "deploy": None,
            "decision": "skipped", "reasons": ["no new logs since the last cycle (--force runs it anyway)"],
            "llm": {"calls": 0, "cache_hits": 0}}


def finished(app: str, merged: str | None, collected: dict[str, Any], analyzed: dict[str, Any],
             improved: dict[str, Any], deployed: dict[str, Any] | None) -> dict[str, Any]:
    """The result of a whole turn."""
    return {"app": app, "merged": merged, "collect": collected, "analyze": analyzed, "improve": improved, "deploy": deployed,
            "decision": improved["decision"], "reasons": improved["reasons"], "llm": llm_calls(analyzed, improved)}


def cycle(workspace: Workspace, app: str, *, force: bool = False, now: datetime | None = None,
          on_start: Callable[[int], None] | None = None, on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One turn of the loop; a candidate is proposed only when improve promotes one.

    First merges what people approved on the base branch, so the baseline is the prompt in
    production. With no new logs since the last improve, the turn stops after collect (no LLM
    call, no pull request) unless `force`.
    """
    from promptloop.analyze import analyze
    from promptloop.collect import collect
    from promptloop.deploy import deploy
    from promptloop.git_pr import merge_base_branch
    from promptloop.improve import improve

    merged = merge_base_branch(workspace)
    collected = collect(workspace, app, now=now)
    if nothing_new(workspace, app, collected, force):
        return skipped(app, merged, collected)
    analyzed = analyze(workspace, app)
    improved = improve(workspace, app, on_start=on_start, on_progress=on_progress)
    deployed = deploy(workspace, app) if improved["decision"] == "promote" else None
    return finished(app, merged, collected, analyzed, improved, deployed)
