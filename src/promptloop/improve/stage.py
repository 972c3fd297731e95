"""improve: mined failures -> a bigger golden set -> prompt candidates -> evaluation -> the best promotable one.

Reads what analyze stored (`data/<app>/failures`), grows the golden set (new DVC version, .dvc
committed), asks the optimizer for candidates from the optimisation split, evaluates them with the
hand-written ones against the baseline (decided on held-out cases), and keeps the outcome in
`.promptloop/improve/<app>.json` for `deploy`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import git
import pandas as pd
from pydantic import TypeAdapter, ValidationError

from promptloop.core.errors import InputError, input_error_from_validation
from promptloop.core.progress import NO_PROGRESS, ProgressHooks
from promptloop.domain.evaluation import CandidateResult, Decision, EvaluationResult, best_candidate
from promptloop.domain.golden import load_golden
from promptloop.domain.kb import Retriever, load_kb
from promptloop.domain.prompts import load_prompt
from promptloop.domain.results import (
    BestCandidate,
    CandidatesResult,
    ClusterResult,
    GrowthResult,
    ImproveOutcome,
    KbDraftsResult,
    KbGapResult,
    OptimizerUsage,
    RejectedRevision,
)
from promptloop.evaluate.plan import hand_written_candidates
from promptloop.evaluate.stage import evaluate
from promptloop.improve.candidates import failure_digest, generate, write_candidates
from promptloop.improve.growth import append_cases, grow, holdout_clusters
from promptloop.improve.kb_drafts import PURPOSE, draft_articles
from promptloop.quality.detectors import load_detector
from promptloop.quality.redact import build_redactor
from promptloop.workspace.handoff import save_outcome
from promptloop.workspace.locking import holds_workspace
from promptloop.workspace.preflight import app_models, preflight
from promptloop.workspace.versioning import commit_paths, dataset_change, dvc_add_and_push
from promptloop.workspace.workspace import FAILURES, Workspace

CLUSTERS = TypeAdapter(list[ClusterResult])
GAPS = TypeAdapter(list[KbGapResult])


def load_failures(workspace: Workspace, app: str) -> tuple[pd.DataFrame, list[ClusterResult]]:
    """The failures and clusters of the last analyze run."""
    folder = workspace.path(workspace.app_settings(app).data_dir) / FAILURES
    if not (folder / "failures.parquet").is_file():
        raise InputError(folder, f"no mined failures yet: run `promptloop analyze --app {app}` first")
    path = folder / "clusters.json"
    try:
        clusters = CLUSTERS.validate_python(json.loads(path.read_text(encoding="utf-8"))["clusters"])
    except ValidationError as exc:  # before ValueError: it is one
        raise input_error_from_validation(path, exc, prefix="clusters") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            path, f"not the clusters analyze writes ({exc}); run `promptloop analyze --app {app}` again"
        ) from None
    return pd.read_parquet(folder / "failures.parquet"), clusters


def load_gaps(workspace: Workspace, app: str) -> list[KbGapResult]:
    """The knowledge-base gaps of the last analyze run (none when it predates gap detection)."""
    path = workspace.path(workspace.app_settings(app).data_dir) / FAILURES / "clusters.json"
    try:
        return GAPS.validate_python(json.loads(path.read_text(encoding="utf-8")).get("kb_gaps") or [])
    except ValidationError as exc:
        raise input_error_from_validation(path, exc, prefix="kb_gaps") from None


def draft_kb_articles(workspace: Workspace, app: str, gaps: list[KbGapResult]) -> KbDraftsResult | None:
    """Draft an article for each top gap through the optimizer model; None when there is nothing to draft."""
    settings, improve = workspace.app_settings(app), workspace.params.improve
    options = improve.kb_drafts
    if not settings.knowledge_base or options.max_drafts == 0 or not any(g.users >= options.min_users for g in gaps):
        return None
    folder = workspace.path(settings.knowledge_base)
    retriever = Retriever(load_kb(folder))
    golden_path = workspace.path(settings.golden_set)
    golden = load_golden(golden_path) if golden_path.is_file() else []
    redactor = build_redactor(workspace.params.collect.extra_pii_patterns)
    runner = workspace.open_runner()
    try:
        drafted = asyncio.run(draft_articles(runner, improve.optimizer_model, gaps, retriever, golden, improve,
                                             settings.knowledge_base.as_posix(),
                                             lambda text: redactor.redact_text(text)[0] or "", settings.description,
                                             {path.stem for path in folder.glob("*.md")}))
    finally:
        runner.cache.close()
    usage = runner.usage[PURPOSE]
    return KbDraftsResult(drafts=drafted.drafts, rejected=drafted.rejected,
                          optimizer=OptimizerUsage(calls=usage.calls, cache_hits=usage.cache_hits,
                                                   cost_usd=round(usage.cost_usd, 6)))


def grow_golden_set(
    workspace: Workspace, app: str, failures: pd.DataFrame, clusters: list[ClusterResult]
) -> GrowthResult:
    """Add mined cases to the golden set; a new DVC version and a commit of its .dvc when any came in."""
    settings = workspace.app_settings(app)
    path = workspace.path(settings.golden_set)
    redactor = build_redactor(workspace.params.collect.extra_pii_patterns)
    injection = load_detector(workspace.params.analyze.detectors["injection"], "injection", workspace.root)
    retriever = Retriever(load_kb(workspace.path(settings.knowledge_base))) if settings.knowledge_base else None
    growth = grow(failures, clusters, load_golden(path), retriever, workspace.params.improve,
                  lambda text: redactor.redact_text(text)[0] or "",
                  lambda text: bool(injection.flags(pd.Series([text])).iloc[0]))
    result = growth.result(str(settings.golden_set))
    if growth.proposed:
        with dataset_change(workspace.root, [path, path.parent / ".gitignore"], f"golden-set growth of {app}"):
            append_cases(path, growth.proposed)
            load_golden(path)  # what was written must read back as a valid golden set
            result.dvc_md5 = dvc_add_and_push(workspace.root, [path])[str(settings.golden_set)]
            result.git_commit = commit_paths(workspace.root, [Path(f"{path}.dvc")],
                                             f"improve {app}: {len(growth.proposed)} mined cases into the golden set")
    return result


@dataclass
class Proposed:
    """The optimizer's candidates as files, the revisions it rejected, and its calls (None: not asked)."""

    paths: list[Path] = field(default_factory=list)
    rejected: list[RejectedRevision] = field(default_factory=list)
    usage: OptimizerUsage | None = None


def propose_candidates(
    workspace: Workspace, app: str, failures: pd.DataFrame, clusters: list[ClusterResult]
) -> Proposed:
    """Optimizer revisions of the current prompt from the clusters it may see, written as candidate files."""
    settings, improve = workspace.app_settings(app), workspace.params.improve
    current = load_prompt(workspace.path(settings.prompt))
    shown = {c.id for c in clusters} - holdout_clusters(clusters, improve.holdout_share)
    digest = failure_digest(failures, clusters, shown, improve.examples_per_cluster)
    held_out = [c for c in load_golden(workspace.path(settings.golden_set)) if c.split == "holdout"]
    folder = workspace.root / ".promptloop" / "candidates" / app
    if not digest or improve.candidates == 0:
        return Proposed(write_candidates(folder, []))
    runner = workspace.open_runner()
    try:
        accepted, rejected = asyncio.run(generate(runner, improve.optimizer_model, current, digest, improve.candidates,
                                                  improve.seed, improve.optimizer_temperature, held_out,
                                                  settings.description))
    finally:
        runner.cache.close()
    usage = runner.usage["optimizer"]
    return Proposed(
        write_candidates(folder, accepted),
        [RejectedRevision(seed=r.seed, reason=r.reason) for r in rejected],
        OptimizerUsage(calls=usage.calls, cache_hits=usage.cache_hits, cost_usd=round(usage.cost_usd, 6)),
    )


def overall_decision(result: EvaluationResult, best: CandidateResult | None) -> tuple[Decision, list[str]]:
    """promote (with the best), incomplete (the run did not finish), or hold with every candidate's reasons."""
    if best is not None:
        return "promote", []
    if not result.complete:
        reasons = result.baseline.incomplete + [
            r for c in result.candidates if c.decision == "incomplete" for r in c.reasons]
        return "incomplete", list(dict.fromkeys(reasons)) or ["evaluation incomplete"]
    if not result.candidates:
        return "hold", ["no candidate to evaluate (no failures to learn from and no hand-written candidates)"]
    return "hold", [f"{c.name}: {'; '.join(c.reasons)}" for c in result.candidates]


def evaluation_fingerprint(workspace: Workspace, app: str, candidate_paths: list[Path]) -> str | None:
    """What an evaluation depends on, hashed: the git commit (prompt, params.yaml, knowledge base, the golden
    set's .dvc), the golden set's bytes, the candidates' bytes and the params as loaded (with any overrides).

    None when the working tree has uncommitted changes: the commit would not describe the inputs then,
    so a cached evaluation could be stale.
    """
    repo = git.Repo(workspace.root)
    if repo.is_dirty(untracked_files=True):
        return None
    digest = hashlib.sha256(f"{app}\0{repo.head.commit.hexsha}\0".encode())
    digest.update(workspace.params.model_dump_json().encode())
    for path in [workspace.path(workspace.app_settings(app).golden_set), *candidate_paths]:
        digest.update(f"\0{Path(path).name}\0".encode() + Path(path).read_bytes())
    return digest.hexdigest()


def improve_outcome(app: str, growth: GrowthResult, proposed: Proposed, hand_written: list[Path],
                    result: EvaluationResult, kb_drafts: KbDraftsResult | None = None) -> ImproveOutcome:
    """The decision of an improve run from its parts: golden-set growth, candidates, evaluation."""
    best = best_candidate(result)
    decision, reasons = overall_decision(result, best)
    best_path = next((Path(p) for p in hand_written + proposed.paths if best and str(p) == best.source), None)
    return ImproveOutcome(
        app=app, decision=decision, reasons=reasons, golden=growth,
        candidates=CandidatesResult(generated=len(proposed.paths), hand_written=len(hand_written),
                                    rejected=proposed.rejected, optimizer=proposed.usage),
        best=None if best is None else BestCandidate(
            name=best.name, prompt_hash=best.prompt_hash, ci_low=best.ci_low, diff=best.diff,
            prompt=best_path.read_text(encoding="utf-8") if best_path else None),
        evaluation=result, kb_drafts=kb_drafts,
    )


@holds_workspace("improve")
def improve(workspace: Workspace, app: str, *, progress: ProgressHooks = NO_PROGRESS) -> ImproveOutcome:
    """Grow the golden set, generate candidates, evaluate, and pick the best promotable candidate."""
    budget = workspace.params.evaluate.budget_usd
    preflight(workspace, app, app_models(workspace, app, optimizer=True), budget_usd=budget)
    failures, clusters = load_failures(workspace, app)
    growth = grow_golden_set(workspace, app, failures, clusters)
    # After growth: the drafts name the golden cases (new ones too) that would change once merged.
    drafts = draft_kb_articles(workspace, app, load_gaps(workspace, app))
    proposed = propose_candidates(workspace, app, failures, clusters)
    hand_written = hand_written_candidates(workspace, app)
    result = evaluate(workspace, app, hand_written + proposed.paths, progress=progress)
    outcome = improve_outcome(app, growth, proposed, hand_written, result, drafts)
    save_outcome(workspace, outcome)
    return outcome
