"""`promptloop label`: a person's 👍/👎 on the last evaluation's answers, recorded on golden cases
(one DVC version, one commit), and read by the next evaluation's calibration."""

from __future__ import annotations

import json
from pathlib import Path

import git
import pytest
from typer.testing import CliRunner

from promptloop.cli import app
from promptloop.deploy.evidence import evaluation_rows
from promptloop.evaluate.stage import evaluate
from promptloop.ops.label import last_evaluation_run
from promptloop.workspace.workspace import Workspace, open_workspace

CANDIDATES = Path(__file__).parents[1] / "data" / "candidates"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A fresh workspace with one evaluation of a candidate against the baseline."""
    from promptloop.ops.initialize import init_workspace

    root = tmp_path_factory.mktemp("label") / "ws"
    init_workspace(root)
    found = open_workspace(root)
    evaluate(found, "support-bot", [CANDIDATES / "better.yaml"])
    return found


def golden_lines(workspace: Workspace) -> dict[str, str]:
    path = workspace.path(workspace.app_settings("support-bot").golden_set)
    return {json.loads(line)["id"]: line for line in path.read_text(encoding="utf-8").splitlines()}


def test_labels_given_at_the_prompt_land_on_the_shown_cases_and_nothing_else(workspace: Workspace) -> None:
    before = golden_lines(workspace)
    labelled_before = sum('"human_label"' in line for line in before.values())
    result = CliRunner().invoke(app, ["label", "--app", "support-bot", "-w", str(workspace.root), "--sample", "3",
                                      "--json"], input="d\nmisses the point\nu\n\nq\n")
    assert result.exit_code == 0, result.output
    recorded = json.loads(result.stdout.strip().splitlines()[-1])
    assert (recorded["labelled"], recorded["up"], recorded["down"]) == (2, 1, 1)
    after = golden_lines(workspace)
    changed = sorted(i for i in after if after[i] != before[i])
    assert len(changed) == 2 and sum('"human_label"' in line for line in after.values()) == labelled_before + 2
    labels = {i: json.loads(after[i])["human_label"] for i in changed}
    assert sorted(label["rating"] for label in labels.values()) == ["down", "up"]
    assert any(label.get("comment") == "misses the point" for label in labels.values())
    # The shown answers are the evaluation's, the candidate's first (it answered every labelled case).
    rows, _ = evaluation_rows(workspace.tracking_uri, last_evaluation_run(workspace, "support-bot"))
    assert all(label["answer"] == rows["better", case_id]["answer"] for case_id, label in labels.items())
    head = git.Repo(workspace.root).head.commit
    assert head.message.startswith("label: 1 👍 and 1 👎") and recorded["commit"] == head.hexsha


def test_the_end_of_the_input_stops_labelling_and_keeps_the_labels_given(workspace: Workspace) -> None:
    before = golden_lines(workspace)
    # One 👍 with its comment, then the input ends (a piped file, Ctrl-D) at the next answer's prompt.
    result = CliRunner().invoke(app, ["label", "--app", "support-bot", "-w", str(workspace.root), "--sample", "3",
                                      "--json"], input="u\nclear and right\n")
    assert result.exit_code == 0, result.output
    recorded = json.loads(result.stdout.strip().splitlines()[-1])
    assert (recorded["labelled"], recorded["up"]) == (1, 1)
    changed = [i for i, line in golden_lines(workspace).items() if line != before[i]]
    assert len(changed) == 1 and '"clear and right"' in golden_lines(workspace)[changed[0]]


def test_a_labels_file_records_without_prompts_and_the_next_evaluation_calibrates_on_it(
        workspace: Workspace, tmp_path: Path) -> None:
    before = open_workspace(workspace.root)
    unlabelled = [i for i, line in golden_lines(before).items() if '"human_label"' not in line][:2]
    labels = tmp_path / "labels.csv"
    labels.write_text("case_id,rating,answer,comment\n"
                      f"{unlabelled[0]},👎,Please contact our support team for help with this.,deflects\n"
                      f"{unlabelled[1]},down,I am not sure.,\n", encoding="utf-8")
    judged_before = evaluate(before, "support-bot", [CANDIDATES / "better.yaml"]).judge.calibration.down
    result = CliRunner().invoke(app, ["label", "--app", "support-bot", "-w", str(workspace.root),
                                      "--from-file", str(labels), "--json"])
    assert result.exit_code == 0, result.output
    after = evaluate(open_workspace(workspace.root), "support-bot", [CANDIDATES / "better.yaml"])
    assert after.judge.calibration.down == judged_before + 2


def test_a_label_for_a_case_that_does_not_exist_writes_nothing(workspace: Workspace, tmp_path: Path) -> None:
    before = golden_lines(workspace)
    labels = tmp_path / "labels.csv"
    labels.write_text("case_id,rating,answer\nno-such-case,up,fine\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["label", "--app", "support-bot", "-w", str(workspace.root),
                                      "--from-file", str(labels)])
    assert result.exit_code == 2 and "no-such-case" in result.output
    assert golden_lines(workspace) == before
