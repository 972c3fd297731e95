"""improve on the demo's collected and analyzed logs: golden-set growth (DVC, git), optimizer
candidates, the held-out evaluation and the choice of the best candidate; and its pieces alone."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import git
import pytest

from promptloop.analyze.stage import analyze
from promptloop.collect.stage import collect
from promptloop.demo.run import write_sample_logs
from promptloop.domain.golden import GoldenCase, load_golden
from promptloop.domain.prompts import load_prompt
from promptloop.domain.results import ClusterResult, ImproveOutcome
from promptloop.improve.candidates import check_candidate, quoted_case
from promptloop.improve.growth import holdout_clusters, near_duplicate_mask, severity_of
from promptloop.improve.stage import improve
from promptloop.ops.initialize import init_workspace
from promptloop.quality.redact import build_redactor
from promptloop.workspace.tracking import tracking_client
from promptloop.workspace.workspace import open_workspace

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DVC = str(Path(sys.executable).parent / "dvc")


@pytest.fixture(scope="module")
def improved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, ImproveOutcome]:
    """A workspace whose sample logs were collected and analyzed (the demo would go on to improve)."""
    root = tmp_path_factory.mktemp("improve") / "ws"
    init_workspace(root)
    workspace = open_workspace(root)
    write_sample_logs(workspace, "support-bot", 1500, NOW)
    collect(workspace, "support-bot", now=NOW)
    analyze(workspace, "support-bot")
    before = load_golden(root / "datasets/support-bot/golden.jsonl")
    return root, {"cases": before}, improve(open_workspace(root), "support-bot")


def test_mined_failures_grow_the_golden_set_as_a_new_dvc_version(improved) -> None:
    root, before, outcome = improved
    grown = load_golden(root / "datasets/support-bot/golden.jsonl")
    mined = [c for c in grown if c.source.startswith("mined:")]
    assert outcome.golden.added == len(mined) == len(grown) - len(before["cases"]) > 0
    assert [c.id for c in grown[: len(before["cases"])]] == [c.id for c in before["cases"]]  # appended, nothing lost
    assert outcome.golden.duplicates > 0  # the same failing questions recur in the logs
    # DVC holds the new version and git the .dvc that names it; `dvc diff` shows what came in.
    repo = git.Repo(root)
    assert repo.head.commit.hexsha == outcome.golden.git_commit
    assert "datasets/support-bot/golden.jsonl.dvc" in repo.head.commit.stats.files
    diff = subprocess.run([DVC, "diff", "--json", "HEAD~1"], cwd=root, capture_output=True, text=True, check=True)
    assert [m["path"] for m in json.loads(diff.stdout)["modified"]] == ["datasets/support-bot/golden.jsonl"]


def test_mined_cases_are_pii_free_capped_per_cluster_labelled_and_split_by_cluster(improved) -> None:
    root, _, outcome = improved
    mined = [c for c in load_golden(root / "datasets/support-bot/golden.jsonl") if c.source.startswith("mined:")]
    redactor = build_redactor({})
    for case in mined:
        assert redactor.redact_text(case.input)[0] == case.input, case.input  # nothing left to redact
        if case.human_label:
            assert redactor.redact_text(case.human_label.answer)[0] == case.human_label.answer
    per_cluster = Counter(c.description for c in mined)
    assert max(per_cluster.values()) <= 5
    splits_of_cluster = {d: {c.split for c in mined if c.description == d} for d in per_cluster}
    assert all(len(s) == 1 for s in splits_of_cluster.values())  # a cluster is on one side of the split
    assert {c.split for c in mined} == {"optimize", "holdout"}
    assert any(c.human_label and c.human_label.rating == "down" for c in mined)  # 👎 kept for calibration
    assert any(c.expected_behavior == "refuse_injection" for c in mined)
    assert all(c.tags for c in mined)  # the failure kinds


def test_candidates_come_from_the_optimizer_and_the_best_is_promoted_on_held_out_cases(improved) -> None:
    root, _, outcome = improved
    made = outcome.candidates
    assert made.optimizer.calls == 3 and made.generated + len(made.rejected) == 3 and made.generated >= 1
    assert all(r.reason.startswith(("same as another candidate", "same as the current prompt")) for r in made.rejected)
    evaluation = outcome.evaluation
    assert evaluation.cases_optimize > 0 and evaluation.cases_decided == evaluation.cases - evaluation.cases_optimize
    assert outcome.decision == "promote", outcome.reasons
    promoted = [c for c in evaluation.candidates if c.decision == "promote"]
    assert outcome.best.ci_low == max(c.ci_low for c in promoted)
    best = next(c for c in evaluation.candidates if c.name == outcome.best.name)
    prompt = load_prompt(Path(best.source))
    assert (prompt.version, prompt.parent) == (2, 1) and prompt.changelog.startswith("addresses")
    assert outcome.best.prompt == Path(best.source).read_text(encoding="utf-8")
    assert json.loads((root / ".promptloop/improve/support-bot.json").read_text())["best"]["name"] == best.name
    # The registry: the app's latest prompt version is the winner; the other candidates are not versions of it.
    client = tracking_client(open_workspace(root).tracking_uri)
    versions = client.search_prompt_versions("support-bot")
    app_versions = {int(v.version): v.tags["promptloop.content_hash"] for v in versions}
    assert app_versions[max(app_versions)] == best.prompt_hash == outcome.best.prompt_hash
    assert set(app_versions.values()) == {evaluation.baseline.prompt_hash, best.prompt_hash}
    others = {c.prompt_hash for c in evaluation.candidates if c.name != best.name}
    held = {v.tags["promptloop.content_hash"] for v in client.search_prompt_versions("support-bot-candidates")}
    assert held == others


def test_a_second_improve_with_no_new_failures_adds_nothing_and_makes_no_call(improved) -> None:
    root, _, first = improved
    again = improve(open_workspace(root), "support-bot")
    assert again.golden.added == 0 and again.golden.git_commit is None
    assert again.candidates.optimizer.calls == 0, again.candidates
    assert again.evaluation.llm_calls == 0, again.evaluation.usage
    assert again.best.prompt_hash == first.best.prompt_hash


def case(id: str, text: str, split: str = "holdout") -> GoldenCase:
    return GoldenCase(id=id, description="d", input=text, reference="r", slice="s", split=split)


def test_a_candidate_quoting_a_held_out_case_verbatim_is_rejected(repo_workspace) -> None:
    current = load_prompt(repo_workspace.path("prompts/support-bot/prompt.yaml"))
    held_out = [case("g1", "Can I  get the 2FA codes by SMS?")]
    leaky = current.model_copy(
        update={"system": current.system + "\nIf asked 'can i get the 2fa codes by sms?' say no."}
    )
    assert quoted_case(leaky, held_out).id == "g1"  # case and spacing do not hide a quote
    assert check_candidate(current, leaky, held_out, set()) == "quotes held-out case g1 verbatim"
    assert check_candidate(current, current, held_out, set()) == "same as the current prompt"
    no_context = current.model_copy(update={"system": "Be nice."})
    assert check_candidate(current, no_context, held_out, set()) == "drops the {context} placeholder"


def test_near_duplicates_are_caught_against_the_set_and_within_the_batch() -> None:
    existing = ["How do I export a notebook to PDF?"]
    batch = [
        "how do I export a notebook to pdf",
        "How can I export my notebook to PDF?",
        "Is there a student discount?",
        "Is there a student discount for Plus?",
    ]
    mask = near_duplicate_mask(batch, existing, 0.8)
    assert mask.tolist()[:3] == [True, True, False]


def test_every_other_cluster_by_impact_is_held_out_never_the_top_one() -> None:
    clusters = [
        ClusterResult(
            id=i,
            label=f"cluster {i}",
            kinds=["refusal"],
            size=1,
            impact=100 - i,
            thumbs_down_share=0.0,
            mean_severity=1.0,
            example_ids=[],
        )
        for i in range(6)
    ]
    assert holdout_clusters(clusters, 0.5) == {1, 3, 5}
    assert holdout_clusters(clusters, 0.0) == set()
    assert (severity_of(5.0), severity_of(3.0), severity_of(1.5)) == ("high", "medium", "low")
