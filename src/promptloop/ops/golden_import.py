"""`promptloop golden import`: cases from a CSV, a JSON Lines file or an MLflow evaluation dataset.

Rows are read into golden cases (validated: an invalid row names its line and field and nothing is
written), deduplicated against the set and each other (same id, or the same inputs), checked against
the variables the app's prompt file uses (where promptloop renders it: a `python:` app is not checked),
appended, and the new version is tracked with DVC and committed.

- JSON Lines: one golden case per line, in either form (`inputs`/`expectations`, or `input`/`reference`).
- CSV: a column per input (`question`, or `inputs.<name>`), MLflow's expectation names as columns
  (`expected_response`, `expected_facts` and `guidelines` separated by `|`, `expected_behavior`, or
  `expectations.<name>`), and optionally `id`, `tags` (`|`), `slice`, `severity`, `split`, `lang`.
- `mlflow:<dataset name or id>`: the records of an MLflow GenAI evaluation dataset in the workspace's
  tracking store (their `inputs` and `expectations`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from promptloop.core.config import AppSettings
from promptloop.core.csvfile import read_csv_rows
from promptloop.core.errors import InputError, input_error_from_validation
from promptloop.core.jsonl import read_jsonl
from promptloop.domain.app import unfilled_variables
from promptloop.domain.golden import GoldenCase, load_golden
from promptloop.domain.prompts import load_prompt
from promptloop.improve.growth import append_cases
from promptloop.workspace.versioning import commit_dataset_edit
from promptloop.workspace.workspace import Workspace

LIST_COLUMNS = {"expected_facts", "guidelines", "expected_sources", "tags"}
CASE_COLUMNS = {"id", "description", "tags", "slice", "severity", "split", "lang", "source"}
EXPECTATION_COLUMNS = {"expected_response", "expected_facts", "guidelines", "expected_behavior", "expected_sources"}


class ImportResult(BaseModel):
    """What `golden import` added."""

    app: str
    source: str
    read: int
    added: int
    duplicates: int
    golden_set: str
    dvc_md5: str
    commit: str


def csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, case data) of each CSV row: inputs, expectations and case fields from the columns."""
    for number, row in read_csv_rows(path):
        case: dict[str, Any] = {"inputs": {}, "expectations": {}}
        for name, value in row.items():
            parsed: Any = [v.strip() for v in value.split("|") if v.strip()] if name.split(".")[-1] in \
                LIST_COLUMNS else value
            if name.startswith("inputs."):
                case["inputs"][name.removeprefix("inputs.")] = parsed
            elif name.startswith("expectations."):
                case["expectations"][name.removeprefix("expectations.")] = parsed
            elif name in EXPECTATION_COLUMNS:
                case["expectations"][name] = parsed
            elif name in CASE_COLUMNS:
                case[name] = parsed
            else:
                case["inputs"][name] = parsed
        yield number, case


def mlflow_rows(workspace: Workspace, reference: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(record number, case data) of an MLflow evaluation dataset (by name or id) in the workspace's store."""
    import mlflow
    from mlflow.genai.datasets import get_dataset, search_datasets

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(workspace.tracking_uri)  # the datasets API reads the process-wide store
    try:
        found = [d for d in search_datasets() if reference in (d.name, d.dataset_id)]
        if not found:
            raise InputError(workspace.root / "mlflow.db", f"no MLflow evaluation dataset named {reference!r}")
        records = get_dataset(dataset_id=found[0].dataset_id).to_df().to_dict("records")
    finally:
        mlflow.set_tracking_uri(previous)
    for number, record in enumerate(records, start=1):
        yield number, {"inputs": record.get("inputs") or {}, "expectations": record.get("expectations") or {},
                       "source": f"mlflow:{found[0].name}"}


def case_of(number: int, data: dict[str, Any], origin: str) -> GoldenCase:
    """A validated golden case (an id from its inputs when it has none)."""
    if "id" not in data:
        digest = hashlib.sha256(json.dumps(data.get("inputs", data.get("input")), sort_keys=True,
                                           ensure_ascii=False).encode()).hexdigest()
        data = {**data, "id": f"i-{digest[:10]}"}
    data.setdefault("source", origin)
    try:
        return GoldenCase.model_validate(data)
    except ValidationError as exc:
        raise input_error_from_validation(Path(origin), exc, prefix=f"line {number}") from None


def inputs_key(case: GoldenCase) -> str:
    """Cases with the same inputs (whitespace and case aside) are the same case."""
    return " ".join(json.dumps(case.inputs, sort_keys=True, ensure_ascii=False).lower().split())


def read_cases(workspace: Workspace, source: str) -> list[tuple[int, GoldenCase]]:
    """Every case of `source` with its line (record) number, validated; the first invalid row stops the import."""
    if source.startswith("mlflow:"):
        rows: Iterator[tuple[int, dict[str, Any]]] = mlflow_rows(workspace, source.removeprefix("mlflow:"))
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(path, "file not found")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            rows = csv_rows(path)
        elif suffix in (".jsonl", ".json", ".ndjson"):
            rows = ((n, dict(r)) for n, r in read_jsonl(path))
        else:
            raise InputError(path, "expected a .csv or .jsonl file, or mlflow:<dataset>")
    return [(number, case_of(number, data, source)) for number, data in rows]


def check_prompt_variables(workspace: Workspace, settings: AppSettings, source: str,
                           cases: list[tuple[int, GoldenCase]]) -> None:
    """Every case fills the variables the app's prompt file uses (where promptloop renders it), so a column
    named `Question` for `{{ question }}` is refused here, naming its line, not at the first evaluation."""
    prompt = load_prompt(workspace.path(settings.prompt))
    for number, case in cases:
        problem = unfilled_variables(prompt, str(settings.prompt), case.inputs, settings.target,
                                     settings.knowledge_base is not None)
        if problem:
            raise InputError(Path(source), problem, field=f"line {number}")


def import_golden(workspace: Workspace, app: str, source: str) -> ImportResult:
    """Add the new cases of `source` to the app's golden set, as one DVC version and one commit."""
    settings = workspace.app_settings(app)
    golden = workspace.path(settings.golden_set)
    incoming = read_cases(workspace, source)
    existing = load_golden(golden) if golden.is_file() and golden.stat().st_size else []
    ids, keys = {c.id for c in existing}, {inputs_key(c) for c in existing}
    added: list[tuple[int, GoldenCase]] = []
    for number, case in incoming:
        if case.id in ids or inputs_key(case) in keys:
            continue
        ids.add(case.id)
        keys.add(inputs_key(case))
        added.append((number, case))
    check_prompt_variables(workspace, settings, source, added)
    new_cases = [case for _, case in added]
    md5, commit = commit_dataset_edit(workspace.root, golden, lambda: append_cases(golden, new_cases),
                                      f"golden import into {app}", f"golden import: {len(added)} case(s) into {app} "
                                                                   f"from {Path(source).name}")
    return ImportResult(app=app, source=source, read=len(incoming), added=len(added),
                        duplicates=len(incoming) - len(added), golden_set=str(settings.golden_set), dvc_md5=md5,
                        commit=commit)
