"""cycle: collect -> analyze -> improve -> deploy for one app, as one call (the flows wire the same steps)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from promptloop.analyze.stage import analyze
from promptloop.collect.stage import collect
from promptloop.core.files import write_atomic
from promptloop.core.progress import NO_PROGRESS, ProgressHooks
from promptloop.deploy.stage import deploy
from promptloop.domain.results import AnalyzeResult, CollectResult, CycleResult, DeployResult, ImproveOutcome, LLMCalls
from promptloop.improve.stage import improve
from promptloop.workspace.handoff import outcome_path
from promptloop.workspace.locking import holds_workspace
from promptloop.workspace.preflight import app_models, preflight
from promptloop.workspace.repository import merge_base_branch
from promptloop.workspace.workspace import Workspace

# A turn that ends with one of these is done; any other end (a crash, an incomplete evaluation)
# leaves its mark, and the next turn runs in full even with no new logs.
SETTLED = ("promote", "hold", "skipped")


def llm_calls(analyzed: AnalyzeResult, improved: ImproveOutcome) -> LLMCalls:
    """LLM calls made and answered from the cache across the cycle's stages."""
    parts = [analyzed.online_judge, analyzed.detector_quality, analyzed.cluster_labels, improved.candidates.optimizer,
             improved.kb_drafts.optimizer if improved.kb_drafts else None]
    spent = [p for p in parts if p is not None]
    evaluation = improved.evaluation
    return LLMCalls(calls=sum(p.calls for p in spent) + evaluation.llm_calls,
                    cache_hits=sum(p.cache_hits for p in spent) + evaluation.cache_hits)


def pending_path(workspace: Workspace, app: str) -> Path:
    """The mark of a turn of `app` that started and has not settled (git-ignored)."""
    return workspace.root / ".promptloop" / "cycle" / f"{app}.json"


def begin_turn(workspace: Workspace, app: str) -> str | None:
    """Mark a turn as started; returns when the earlier unsettled turn started, if one was left."""
    path = pending_path(workspace, app)
    earlier = unsettled_since(path)
    started = earlier or datetime.now(UTC).isoformat(timespec="seconds")
    write_atomic(path, json.dumps({"started": started, "pid": os.getpid()}) + "\n")
    return earlier


def unsettled_since(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["started"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown time"  # a damaged mark still means the last turn did not settle


def end_turn(workspace: Workspace, app: str, result: CycleResult) -> CycleResult:
    """Clear the mark when the turn settled; an incomplete one stays marked, to be run again."""
    if result.decision in SETTLED:
        pending_path(workspace, app).unlink(missing_ok=True)
    return result


def nothing_new(workspace: Workspace, app: str, collected: CollectResult, force: bool = False,
                resumed: str | None = None) -> bool:
    """True when the turn should stop after collect: no new rows, improve already ran on the old
    ones, and the last turn settled (a turn that was killed or ended incomplete is run again)."""
    return collected.rows_in == 0 and outcome_path(workspace, app).is_file() and not force and resumed is None


def skipped(app: str, merged: str | None, collected: CollectResult) -> CycleResult:
    """The result of a turn that stopped after collect."""
    return CycleResult(app=app, merged=merged, resumed=None, collect=collected, analyze=None, improve=None, deploy=None,
                       decision="skipped", reasons=["no new logs since the last cycle (--force runs it anyway)"],
                       llm=LLMCalls())


def finished(merged: str | None, collected: CollectResult, analyzed: AnalyzeResult, improved: ImproveOutcome,
             deployed: DeployResult | None, resumed: str | None = None) -> CycleResult:
    """The result of a whole turn; `resumed` is when the unsettled turn it ran again had started."""
    return CycleResult(app=improved.app, merged=merged, resumed=resumed, collect=collected, analyze=analyzed,
                       improve=improved, deploy=deployed, decision=improved.decision, reasons=improved.reasons,
                       llm=llm_calls(analyzed, improved))


@holds_workspace("cycle")
def cycle(workspace: Workspace, app: str, *, force: bool = False, now: datetime | None = None,
          progress: ProgressHooks = NO_PROGRESS) -> CycleResult:
    """One turn of the loop; a candidate is proposed only when improve promotes one.

    First merges what people approved on the base branch, so the baseline is the prompt in
    production. With no new logs since the last improve, the turn stops after collect (no LLM
    call, no pull request) unless `force`, or unless the last turn never settled (killed, or
    incomplete): that one is run again, answering the calls it made from the cache.
    """
    preflight(workspace, app, app_models(workspace, app, optimizer=True, online_judge=True),
              budget_usd=workspace.params.evaluate.budget_usd, may_deploy=True)
    resumed = begin_turn(workspace, app)
    merged = merge_base_branch(workspace)
    collected = collect(workspace, app, now=now)
    if nothing_new(workspace, app, collected, force, resumed):
        return end_turn(workspace, app, skipped(app, merged, collected))
    analyzed = analyze(workspace, app)
    improved = improve(workspace, app, progress=progress)
    deployed = deploy(workspace, app) if improved.decision == "promote" else None
    return end_turn(workspace, app, finished(merged, collected, analyzed, improved, deployed, resumed))
