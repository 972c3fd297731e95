"""`init` and `demo` make real git, DVC and MLflow state; the demo's logs follow the contract."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import git
import mlflow
import pytest
from pydantic import ValidationError

from promptloop.core.errors import InputError
from promptloop.demo.run import DEMO_MARKER, DemoResult, run_demo
from promptloop.domain.golden import load_golden
from promptloop.domain.logs import LogRecord
from promptloop.ops.initialize import init_workspace

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_init_makes_git_origin_dvc_and_mlflow(initialized_workspace) -> None:
    root, created = initialized_workspace
    repo = git.Repo(root)
    assert repo.active_branch.name == "main" and not repo.is_dirty(untracked_files=True)
    tracked = set(repo.git.ls_files().splitlines())
    assert {"params.yaml", "dvc.yaml", "prefect.yaml", "prompts/support-bot/prompt.yaml",
            "datasets/support-bot/golden.jsonl.dvc", ".dvc/config"} <= tracked
    assert "datasets/support-bot/golden.jsonl" not in tracked  # DVC owns it, git holds its .dvc
    origin = git.Repo(root / "remote.git")
    assert origin.bare and origin.commit("main").hexsha == created.commit == repo.head.commit.hexsha
    md5 = (root / "datasets/support-bot/golden.jsonl.dvc").read_text().split("md5: ")[1].split()[0]
    assert (root / "dvc-remote/files/md5" / md5[:2] / md5[2:]).is_file()
    client = mlflow.MlflowClient(tracking_uri=created.tracking_uri)
    assert (
        client.get_experiment_by_name("promptloop/support-bot").experiment_id
        == created.experiments["promptloop/support-bot"]
    )
    assert (root / "mlflow.db").is_file()


def test_init_refuses_a_folder_that_holds_something(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty folder"):
        init_workspace(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoResult]:
    dest = tmp_path_factory.mktemp("demo") / "demo"
    return dest, run_demo(dest, interactions=400, now=NOW)


def read_lines(dest: Path, log_file: str) -> list[str]:
    return (dest / log_file).read_text(encoding="utf-8").splitlines()


def test_demo_logs_follow_the_log_record_contract(demo_run) -> None:
    dest, result = demo_run
    lines = read_lines(dest, result.logs.log_file)
    logs = result.logs
    assert len(lines) == logs.interactions + logs.malformed_rows == 400 + 8
    valid = [LogRecord.model_validate_json(line) for line in lines[:400]]
    assert len({r.id for r in valid}) == 400
    assert all(r.app == "support-bot" and r.prompt_version == "1" for r in valid)
    assert all(r.timestamp <= NOW for r in valid)
    errors = [r for r in valid if r.error]
    assert all(r.output is None for r in errors)


def test_demo_malformed_rows_break_the_contract(demo_run) -> None:
    dest, result = demo_run
    ids = [json.loads(line).get("id") for line in read_lines(dest, result.logs.log_file)[:400]]
    broken = 0
    for line in read_lines(dest, result.logs.log_file)[400:]:
        try:
            row = LogRecord.model_validate_json(line)
        except ValidationError:
            broken += 1
            continue
        # what a row-level schema cannot see: a duplicate id or a timestamp in the future
        assert row.id in ids or row.timestamp > NOW
    assert broken >= 4


def test_demo_traffic_has_the_configured_mix(demo_run) -> None:
    _, result = demo_run
    logs = result.logs
    assert 0.2 <= logs.korean_share <= 0.4
    assert 0.22 <= logs.feedback_rate <= 0.38
    # v1 is weak: users press 👎 often, and mostly on bad answers
    assert 0.25 <= logs.thumbs_down_rate <= 0.75


def test_thumbs_down_mostly_marks_bad_answers(demo_run) -> None:
    dest, result = demo_run
    rows = [json.loads(line) for line in read_lines(dest, result.logs.log_file)[:400]]
    rated = [r for r in rows if r["feedback"] in (-1, 1)]
    korean_down = Counter(r["feedback"] for r in rated if any("\uac00" <= c <= "\ud7a3" for c in r["input"]))
    # v1 answers Korean questions in English: most Korean ratings are 👎
    assert korean_down[-1] > korean_down[1]


def test_demo_is_deterministic_under_its_seed(tmp_path: Path, demo_run) -> None:
    """A fresh process (the CLI) reproduces the questions and answers of the in-process run."""
    dest, result = demo_run
    completed = subprocess.run(
        [
            str(Path(sys.executable).parent / "promptloop"),
            "demo",
            "--dir",
            str(tmp_path / "again"),
            "--interactions",
            "60",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    again = json.loads(completed.stdout)
    pick = lambda lines: [(r["id"], r["input"], r["output"], r["feedback"]) for r in map(json.loads, lines[:60])]  # noqa: E731
    again_lines = read_lines(tmp_path / "again", again["logs"]["log_file"])
    assert pick(again_lines) == pick(read_lines(dest, result.logs.log_file))


def test_demo_rewrites_only_its_own_scratch_folder(tmp_path: Path, demo_run) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not made by `promptloop demo`"):
        run_demo(mine, interactions=5, now=NOW)
    assert (mine / "keep.txt").read_text() == "x"
    dest, _ = demo_run
    assert (dest / DEMO_MARKER).is_file()


def test_demo_runs_a_cycle_for_triage_bot_to_a_pull_request(demo_run) -> None:
    """The second sample app, of another shape: tickets in Japanese and English, JSON answers, two calls each."""
    dest, result = demo_run
    [triage] = result.more
    assert triage.app == "triage-bot"
    lines = read_lines(dest, triage.logs.log_file)
    assert len(lines) == triage.logs.interactions + triage.logs.malformed_rows == 400 + 8
    valid = [LogRecord.model_validate_json(line) for line in lines[:400]]
    assert all(r.app == "triage-bot" and r.prompt_version == "1" for r in valid)
    assert 0.25 <= triage.logs.japanese_share <= 0.45
    assert 0.4 <= triage.logs.thumbs_down_rate <= 0.9  # v1 misroutes, underrates outages, answers in English
    turn = triage.cycle
    assert turn.decision == "promote", turn.reasons
    assert turn.improve.golden.added > 0
    # A case mined from the logs keeps what the app logged: the tier and product besides the ticket.
    mined = [c for c in load_golden(dest / "datasets/triage-bot/golden.jsonl") if c.source.startswith("mined:")]
    assert len(mined) == turn.improve.golden.added
    assert all({"ticket", "customer_tier", "product"} <= set(c.inputs) for c in mined)
    branch = turn.deploy.branch
    assert branch.startswith("promptloop/triage-bot/v2-")
    remote = git.Repo(dest / "remote.git")
    assert [h.name for h in remote.heads if h.name.startswith("promptloop/triage-bot/")] == [branch]
    changed = remote.git.diff("--name-only", "main", branch).splitlines()
    assert sorted(changed) == ["datasets/triage-bot/golden.jsonl.dvc", "prompts/triage-bot/prompt.yaml",
                               "reports/triage-bot/v2.md"]
    # The optimizer read the agents' comments and added instructions the v1 prompt lacked.
    proposed = remote.git.show(f"{branch}:prompts/triage-bot/prompt.yaml")
    assert "version: 2" in proposed and "{{ ticket }}" in proposed


def rendered_text(markdown: str) -> str:
    """The text a reader sees in the rendered markdown (escapes resolved, line breaks kept)."""
    from markdown_it import MarkdownIt

    parts = []
    for token in MarkdownIt("commonmark").enable("table").parse(markdown):
        for child in token.children or []:
            parts.append("\n" if child.type in ("softbreak", "hardbreak") else child.content)
        parts.append("\n")
    return "".join(parts)


def test_demo_pull_request_shows_a_fixed_case_with_both_answers_and_the_mlflow_run(demo_run) -> None:
    """A person can decide from the body: a fixed case's question and both answers, and where the run is."""
    from promptloop.deploy.evidence import evaluation_rows
    from promptloop.workspace.workspace import open_workspace

    dest, result = demo_run
    turn = result.cycle
    assert turn.decision == "promote", turn.reasons
    evaluation = turn.improve.evaluation
    best = next(c for c in evaluation.candidates if c.name == turn.improve.best.name)
    rows, _ = evaluation_rows(open_workspace(dest).tracking_uri, evaluation.mlflow_run_id)
    shown = rendered_text(Path(turn.deploy.body_path).read_text(encoding="utf-8"))
    fixed = [case_id for case_id in best.flips.fixed
             if str(rows[best.name, case_id]["input"]).splitlines()[0] in shown]
    assert fixed, "no fixed case's question is in the pull request"
    for prompt in (evaluation.baseline.name, best.name):
        assert str(rows[prompt, fixed[0]]["answer"]).strip().splitlines()[0][:100] in shown
    assert evaluation.mlflow_run_id in shown and "mlflow ui --backend-store-uri" in shown
    assert ".promptloop/candidates" not in shown
    # The prompt file on the branch keeps the base file's formatting: only what changed is in the diff.
    remote = git.Repo(dest / "remote.git")
    diff = remote.git.diff("main", turn.deploy.branch, "--", "prompts/support-bot/prompt.yaml").splitlines()
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    assert removed and all(line.split(":")[0] in ("version", "parent", "changelog", "system") for line in removed)


def test_demo_analyze_names_a_real_knowledge_base_gap_and_the_pull_request_carries_a_draft(demo_run) -> None:
    """The sample KB has no article on some questions the traffic asks; analyze says which, improve drafts an
    article for the top ones, and the pull request carries them as drafts in their own section."""
    from promptloop.domain.kb import PLACEHOLDER, document_from_text, load_kb

    dest, result = demo_run
    bank = [json.loads(line) for line in
            (dest / "datasets/support-bot/traffic/questions.jsonl").read_text(encoding="utf-8").splitlines()]
    unanswerable = {q["text"] for q in bank if q["kind"] == "unanswerable"}
    gaps = result.analyze.kb_gaps
    assert gaps, "analyze found no knowledge-base gap"
    real = [g for g in gaps if set(g.asked) & unanswerable]
    assert real, [g.examples for g in gaps]  # a gap of the sample KB: questions it holds no answer to
    assert all(g.users >= 2 and g.best_score is not None and g.best_score < 7.0 for g in real)
    summary = json.loads((dest / "data/support-bot/failures/clusters.json").read_text(encoding="utf-8"))
    assert [g["topic"] for g in summary["kb_gaps"]] == [g.topic for g in gaps]  # what improve drafts from

    turn = result.cycle
    assert turn.decision == "promote", turn.reasons
    drafts = turn.improve.kb_drafts.drafts
    assert drafts and {d.gap for d in drafts} <= {g.id for g in gaps}
    remote = git.Repo(dest / "remote.git")
    body = Path(turn.deploy.body_path).read_text(encoding="utf-8")
    section = body.split("## Knowledge-base drafts (need a person)\n")[1].split("\n## ")[0]
    live = {d.id for d in load_kb(dest / "datasets/support-bot/kb")}
    for draft in drafts:
        text = remote.git.show(f"{turn.deploy.branch}:{draft.path}")
        doc = document_from_text(text, Path(draft.path))
        assert doc.draft and PLACEHOLDER.search(doc.body), text  # marked a draft; unknown facts left to a person
        assert draft.id not in live and f"`{draft.path}` (draft)" in section
        assert rendered_text(draft.examples[0]).strip() in rendered_text(section)


def test_demo_evaluation_run_has_one_trace_per_case_and_prompt(demo_run) -> None:
    """The done-when of the GenAI pages: search_traces on the evaluation run finds every (prompt, case)."""
    from promptloop.deploy.evidence import evaluation_rows
    from promptloop.workspace.workspace import open_workspace

    dest, result = demo_run
    evaluation = result.cycle.improve.evaluation
    tracking_uri = open_workspace(dest).tracking_uri
    rows, _ = evaluation_rows(tracking_uri, evaluation.mlflow_run_id)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_run(evaluation.mlflow_run_id).info.experiment_id
    traces = client.search_traces(locations=[experiment], run_id=evaluation.mlflow_run_id, max_results=10_000)
    found = [(t.info.tags["promptloop.prompt"], t.info.tags["promptloop.case_id"]) for t in traces]
    assert len(found) == len(set(found)) and set(found) == set(rows)
    assert all(any(a.name == "rubric" for a in t.info.assessments) for t in traces)
