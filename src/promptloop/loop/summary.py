"""A cycle's result where a person looks first: one line for the log, one markdown page for the run.

The cycle flow logs `result_line` and publishes `cycle_report` as the artifact of its own run, so
the decision, the pull request and the way to the MLflow runs are on the page of the run somebody
clicked, not on a subflow's.
"""

from __future__ import annotations

from promptloop.deploy.body import code, cut, escape_inline
from promptloop.domain.results import CycleResult, DeployResult
from promptloop.evaluate.report import decision_table
from promptloop.workspace.links import run_link

# What `force` changes (loop.cycle.nothing_new): with no new rows the turn stops after collect,
# because improve already ran on the rows collected before; force runs analyze, improve and deploy
# on them anyway (the evaluation is answered from its cache when nothing it reads changed).
FORCE_HINT = ("Collect found no new logs, and improve already ran on the ones collected before, so this cycle "
              "stopped after collect: no LLM call, no pull request. To analyze and improve them anyway, run the "
              "`cycle` deployment again with **force** ticked (`force: true`).")


def pull_request(deploy: DeployResult | None) -> str | None:
    """The pull request's URL, else where to see the proposed change (compare command, body file)."""
    if deploy is None or not deploy.branch:
        return None
    if deploy.pull_request:
        return deploy.pull_request.url
    return "; ".join(f"{what} {where}" for what, where in (("compare:", deploy.compare), ("body:", deploy.body_path))
                     if where) or None


def result_line(result: CycleResult) -> str:
    """The cycle's result in one line, for the end of the flow run's log."""
    app, deployed = result.app, result.deploy
    if result.decision == "skipped":
        return f"{app}: skipped: no new logs since the last cycle; run it with force to analyze and improve anyway"
    if result.decision == "promote":
        best = result.improve.best.name if result.improve and result.improve.best else "a candidate"
        if deployed is not None and deployed.branch:
            where = (f"PR {deployed.pull_request.url}" if deployed.pull_request
                     else f"no PR opened ({pull_request(deployed) or 'nothing to compare'})")
            return f"{app}: promote {best} -> branch {deployed.branch}, {where}"
        why = "; ".join(deployed.reasons) if deployed else "deploy did not run"
        return f"{app}: promote {best}, no branch: {why or 'no reason given'}"
    return f"{app}: {result.decision}: {'; '.join(result.reasons) or 'no reason given'}"


def gap_lines(result: CycleResult) -> list[str]:
    """The knowledge-base gaps analyze found, with the draft improve wrote for each (questions escaped: they
    come from the logs)."""
    gaps = result.analyze.kb_gaps if result.analyze else []
    if not gaps:
        return []
    drafts = {d.gap: d for d in result.improve.kb_drafts.drafts} if result.improve and result.improve.kb_drafts \
        else {}
    lines = [f"Knowledge-base gaps: {len(gaps)} (questions the documents do not answer; a prompt change cannot "
             "fix them)", "", "| gap | users | asked, for example | nearest document | draft |",
             "|---|---|---|---|---|"]
    for gap in gaps:
        nearest = f"{code(gap.best_document)} ({gap.best_score:.1f})" if gap.best_document and gap.best_score \
            is not None else "none"
        draft = f"{code(drafts[gap.id].path)} (draft: true)" if gap.id in drafts else "not drafted"
        example = escape_inline(cut(gap.examples[0], 120)) if gap.examples else ""  # escapes | too
        lines.append(f"| {escape_inline(gap.topic)} | {gap.users} | {example} | {nearest} | {draft} |")
    return lines + [""]


def cycle_report(result: CycleResult, ui_url: str | None) -> str:
    """The markdown artifact of a cycle run: decision, pull request, decision table, stage runs."""
    best = result.improve.best.name if result.improve and result.improve.best else ""
    lines = [f"### cycle {result.app}: **{result.decision}** {best}".rstrip(), ""]
    if result.resumed:
        lines += [f"Ran again the cycle that started at {result.resumed} and did not finish.", ""]
    if result.merged:
        lines += [f"Merged approved promotions from the base branch: `{result.merged}`.", ""]
    if result.decision == "skipped":
        lines += [FORCE_HINT, ""]
    else:
        lines += [f"- {reason}" for reason in result.reasons] + ([""] if result.reasons else [])
    if result.deploy is not None and result.deploy.branch:
        link = result.deploy.pull_request.url if result.deploy.pull_request else None
        where = f"[{link}]({link})" if link else f"none opened ({pull_request(result.deploy)})"
        lines += [f"Pull request: {where}, branch `{result.deploy.branch}`", ""]
    if result.improve is not None:
        lines += decision_table(result.improve.evaluation) + [""]
    lines += gap_lines(result)
    lines += ["| this cycle | |", "|---|---|",
              f"| new rows | {result.collect.rows_valid} of {result.collect.rows_in} read |",
              f"| LLM calls | {result.llm.calls} (cache: {result.llm.cache_hits}) |", ""]
    runs = {"collect": result.collect.mlflow_run_id,
            "analyze": result.analyze.mlflow_run_id if result.analyze else None,
            "improve (evaluation)": result.improve.evaluation.mlflow_run_id if result.improve else None}
    lines += ["| stage | MLflow run |", "|---|---|"]
    lines += [f"| {stage} | {run_link(run_id, ui_url) or 'not run'} |" for stage, run_id in runs.items()]
    return "\n".join(lines) + "\n"
