"""`promptloop label`: a person's 👍/👎 on answers of the last evaluation, kept as golden-case labels.

The judges are calibrated on labelled cases (`human_label`); mined labels are mostly 👎 and never on
the kind of answer a new candidate gives. This command shows sampled answers from the app's last
evaluation (candidates' answers first: they are the kind being promoted), records the verdicts on
the cases through the golden set's one writer (`improve.growth.label_cases`), and versions the set
(DVC, one commit), so the next evaluation calibrates on them. A labels file does the same without
prompts: CSV columns `case_id`, `rating` (up/down, 👍/👎, 1/-1), `answer`, optionally `comment`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from promptloop.core.csvfile import read_csv_rows
from promptloop.core.errors import InputError
from promptloop.deploy.evidence import evaluation_rows
from promptloop.domain.golden import GoldenCase, HumanLabel, load_golden
from promptloop.improve.growth import label_cases
from promptloop.workspace.tracking import tracking_client
from promptloop.workspace.versioning import commit_dataset_edit
from promptloop.workspace.workspace import Workspace

RATINGS = {"up": "up", "👍": "up", "1": "up", "+1": "up", "down": "down", "👎": "down", "-1": "down"}


class LabelItem(BaseModel):
    """One answer shown to a person: which case, which prompt gave it, the question and the answer."""

    case_id: str
    prompt: str
    question: str
    answer: str


class LabelResult(BaseModel):
    """What `label` recorded."""

    app: str
    labelled: int
    up: int
    down: int
    golden_set: str
    dvc_md5: str | None
    commit: str | None


def last_evaluation_run(workspace: Workspace, app: str) -> str:
    """The id of the app's latest evaluation (the parent run, which holds every prompt's per-case table)."""
    client = tracking_client(workspace.tracking_uri)
    experiment = client.get_experiment_by_name(workspace.experiment_name(app))
    runs = client.search_runs([experiment.experiment_id], "tags.`promptloop.stage` = 'evaluate'",
                              order_by=["attributes.start_time DESC"], max_results=50) if experiment else []
    parent = next((run for run in runs if "mlflow.parentRunId" not in run.data.tags), None)
    if parent is None:
        raise InputError(workspace.root / "params.yaml", f"no evaluation of {app!r} to label: run `promptloop "
                         f"evaluate --app {app}` first, or give --from-file", field=f"apps.{app}")
    return str(parent.info.run_id)


def sampled_answers(rows: dict[tuple[str, str], Any], golden: list[GoldenCase], count: int,
                    seed: int) -> list[LabelItem]:
    """Up to `count` answers of unlabelled cases, one per case, candidates' answers before the baseline's,
    in a seeded order (the same evaluation and seed show the same answers)."""
    unlabelled = {case.id: case for case in golden if case.human_label is None}
    found: dict[str, LabelItem] = {}
    for baseline_last in (False, True):
        keys = sorted(k for k in rows if (k[0] == "baseline") == baseline_last and k[1] in unlabelled)
        for index in np.random.default_rng(seed).permutation(len(keys)):
            prompt, case_id = keys[index]
            answer = str(rows[prompt, case_id].get("answer") or "")
            if case_id not in found and answer.strip():
                found[case_id] = LabelItem(case_id=case_id, prompt=prompt, question=unlabelled[case_id].input,
                                           answer=answer)
    return list(found.values())[:count]


def answers_to_label(workspace: Workspace, app: str, count: int) -> list[LabelItem]:
    """Sampled answers of the app's last evaluation, on cases nobody labelled yet."""
    rows, _ = evaluation_rows(workspace.tracking_uri, last_evaluation_run(workspace, app))
    golden = load_golden(workspace.path(workspace.app_settings(app).golden_set))
    return sampled_answers(rows, golden, count, workspace.params.evaluate.seed)


def read_label_file(path: Path) -> dict[str, HumanLabel]:
    """Labels from a CSV file (`case_id`, `rating`, `answer`, optional `comment`); a bad row names its line."""
    labels: dict[str, HumanLabel] = {}
    for line, row in read_csv_rows(path):
        rating = RATINGS.get(str(row.get("rating") or "").strip().lower())
        case_id = str(row.get("case_id") or "").strip()
        if not case_id or rating is None:
            raise InputError(path, f"line {line}: needs a case_id and a rating (up/down, 👍/👎, 1/-1)")
        try:
            labels[case_id] = HumanLabel(answer=str(row.get("answer") or ""), rating=rating,  # type: ignore[arg-type]
                                         comment=str(row.get("comment") or ""))
        except ValidationError as exc:
            raise InputError(path, f"line {line}: {exc.errors()[0]['msg']}") from None
    return labels


def record_labels(workspace: Workspace, app: str, labels: dict[str, HumanLabel], source: str) -> LabelResult:
    """Set the labels on the app's golden cases, as one DVC version and one commit (nothing when empty)."""
    settings = workspace.app_settings(app)
    golden = workspace.path(settings.golden_set)
    up = sum(label.rating == "up" for label in labels.values())
    result = LabelResult(app=app, labelled=len(labels), up=up, down=len(labels) - up,
                         golden_set=str(settings.golden_set), dvc_md5=None, commit=None)
    if not labels:
        return result
    known = {case.id for case in load_golden(golden)}
    unknown = sorted(set(labels) - known)
    if unknown:
        raise InputError(Path(source), f"no golden case of {app!r} with id {', '.join(unknown)}")
    md5, commit = commit_dataset_edit(workspace.root, golden, lambda: label_cases(golden, labels),
                                      f"labels for {app}", f"label: {result.up} 👍 and {result.down} 👎 on {app}'s "
                                                           f"golden cases, from {source}")
    return result.model_copy(update={"dvc_md5": md5, "commit": commit})
