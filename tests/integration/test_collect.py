"""collect with real git, DVC, MLflow and Great Expectations in a temp workspace."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import git
import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from promptloop.collect.stage import collect
from promptloop.core.errors import InputError
from promptloop.ops.initialize import init_workspace
from promptloop.workspace.workspace import open_workspace

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def row(i: int, **changes: Any) -> dict[str, Any]:
    base = {
        "id": f"r{i}",
        "timestamp": (NOW - timedelta(hours=i)).isoformat(),
        "app": "support-bot",
        "prompt_version": "1",
        "model": "offline/support-bot",
        "input": f"question {i}",
        "output": f"answer {i}",
        "latency_ms": 420.5,
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "cost_usd": 100 * 0.15e-6 + 20 * 0.6e-6,
        "error": None,
        "feedback": None,
        "feedback_comment": None,
        "user_id": f"user-{i % 3}",
        "metadata": {"channel": "web"},
    }
    base.update(changes)
    return base


# Each malformed row and the expectation (or reader check) that must catch it.
MALFORMED: list[tuple[Any, str]] = [
    (row(101, id=None), "id_missing"),
    (row(102, id=102), "id_type"),
    (row(103, timestamp="yesterday"), "timestamp_not_iso_with_zone"),
    (row(104, timestamp="2026-11-20T10:00:00"), "timestamp_not_iso_with_zone"),
    (row(105, timestamp=(NOW + timedelta(days=3)).isoformat()), "timestamp_in_future"),
    (row(106, timestamp="2026-13-45T10:00:00+00:00"), "timestamp_unparseable"),
    (row(107, latency_ms=-5), "latency_negative"),
    (row(108, latency_ms="fast"), "latency_type"),
    (row(109, prompt_tokens=12.0), "prompt_tokens_not_integer"),
    (row(110, completion_tokens="12x"), "completion_tokens_not_integer"),
    (row(111, prompt_tokens=-3), "prompt_tokens_negative"),
    (row(112, feedback=5), "feedback_not_in_set"),
    (row(113, feedback=True), "feedback_type"),
    (row(114, output=None), "output_null_without_error"),
    (row(115, cost_usd=1.5), "cost_inconsistent_with_tokens"),
    (row(116, cost_usd=-0.01), "cost_negative"),
    (row(117, surprise="field"), "extra_fields"),
    (row(118, metadata=["not", "an", "object"]), "metadata_type"),
    (row(119, input=None), "input_missing"),
    (row(120, app=None, model=7), "app_missing"),
    (row(121, inputs="just the question"), "inputs_type"),
    ("{not json", "invalid_json"),
    ("[1, 2, 3]", "not_an_object"),
]
GOOD = [row(i) for i in range(1, 11)] + [
    row(11, output=None, error="RateLimitError: slow down", completion_tokens=0, cost_usd=0.0),
    row(12, cost_usd=None),  # cost computed from the price map
    row(13, feedback=-1, feedback_comment="wrong answer"),
    row(14, timestamp="2026-11-20T08:00:00Z"),
    row(15, inputs={"question": "question 15", "customer_tier": "gold",
                    "history": [{"role": "user", "content": "I am ann@example.com"}]}),
]


def write_jsonl(path: Path, rows: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for item in rows:
            handle.write((item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)) + "\n")


@pytest.fixture
def workspace(tmp_path: Path):
    init_workspace(tmp_path / "ws")
    return open_workspace(tmp_path / "ws")


def incoming(workspace) -> Path:
    return workspace.path(workspace.app_settings("support-bot").log_dir)


def test_every_malformed_kind_is_quarantined_and_counts_add_up(workspace) -> None:
    duplicates = [row(1), row(2, output="a different answer")]  # a re-delivery and a conflicting copy
    write_jsonl(incoming(workspace) / "a.jsonl", GOOD + [r for r, _ in MALFORMED] + duplicates + [""])
    result = collect(workspace, "support-bot", now=NOW)

    assert result.rows_in == len(GOOD) + len(MALFORMED) + len(duplicates)
    assert result.rows_in == result.rows_valid + result.rows_quarantined + result.rows_duplicate
    assert (result.rows_valid, result.rows_quarantined, result.rows_duplicate) == (len(GOOD), len(MALFORMED), 2)

    stored = pd.read_parquet(workspace.path("data/support-bot/logs"))
    assert sorted(stored["id"]) == sorted(r["id"] for r in GOOD)
    assert str(stored["timestamp"].dtype) == "datetime64[us, UTC]" and stored["prompt_tokens"].dtype == "int64"
    r12 = stored.set_index("id").loc["r12"]
    assert r12["cost_source"] == "price_map" and r12["cost_usd"] == pytest.approx(100 * 0.15e-6 + 20 * 0.6e-6)
    # The app's logged inputs are kept (for mined cases), redacted like every other text.
    inputs = json.loads(stored.set_index("id").loc["r15", "inputs"])
    assert inputs["customer_tier"] == "gold" and inputs["history"][0]["content"] == "I am <EMAIL>"
    assert pd.isna(stored.set_index("id").loc["r1", "inputs"])

    quarantine = pd.read_parquet(workspace.path("data/support-bot/quarantine"))
    pairs = zip(quarantine["origin"], quarantine["reasons"], strict=True)
    by_line = {int(o.rsplit(":", 1)[1]): set(r.split(",")) for o, r in pairs}
    for offset, (_, reason) in enumerate(MALFORMED, start=len(GOOD) + 1):
        assert reason in by_line[offset], (offset, reason, by_line[offset])
    assert set(quarantine.loc[quarantine["kind"] == "duplicate", "reasons"]) == {"duplicate_id"}


def test_second_run_adds_nothing_and_new_data_is_picked_up(workspace) -> None:
    source = incoming(workspace) / "a.jsonl"
    write_jsonl(source, GOOD[:5])
    first = collect(workspace, "support-bot", now=NOW)
    head = git.Repo(workspace.root).head.commit.hexsha
    assert first.rows_valid == 5 and first.git_commit == head

    again = collect(workspace, "support-bot", now=NOW)
    assert (again.rows_in, again.git_commit, again.dvc_md5) == (0, None, first.dvc_md5)
    assert git.Repo(workspace.root).head.commit.hexsha == head

    write_jsonl(source, GOOD[5:8])  # the same file grows
    pq.write_table(
        pa.Table.from_pylist([dict(r, metadata=None) for r in GOOD[8:10]]), incoming(workspace) / "b.parquet"
    )
    write_jsonl(incoming(workspace) / "c.jsonl", [GOOD[0]])  # an old row re-delivered in a new file
    third = collect(workspace, "support-bot", now=NOW)
    assert (third.rows_in, third.rows_valid, third.rows_duplicate) == (6, 5, 1)
    assert third.dvc_md5 != first.dvc_md5
    assert len(pd.read_parquet(workspace.path("data/support-bot/logs"))) == 10
    assert collect(workspace, "support-bot", now=NOW).rows_in == 0  # JSON Lines and Parquet alike
    repo = git.Repo(workspace.root)
    assert not repo.is_dirty() and repo.head.commit.message.startswith("collect support-bot: +5 rows")
    assert "data/support-bot/logs.dvc" in repo.git.show("--name-only", "HEAD")


def test_a_half_written_last_line_waits_for_the_next_run(workspace) -> None:
    source = incoming(workspace) / "a.jsonl"
    write_jsonl(source, GOOD[:2])
    with source.open("a") as handle:
        handle.write(json.dumps(GOOD[2])[:40])  # the app is still writing this line
    assert collect(workspace, "support-bot", now=NOW).rows_in == 2
    with source.open("a") as handle:
        handle.write(json.dumps(GOOD[2])[40:] + "\n")
    assert collect(workspace, "support-bot", now=NOW).rows_valid == 1


def test_versions_are_pushed_to_the_dvc_remote_and_logged_to_mlflow(workspace) -> None:
    write_jsonl(incoming(workspace) / "a.jsonl", GOOD + [MALFORMED[0][0]])
    result = collect(workspace, "support-bot", now=NOW)
    md5 = result.dvc_md5.removesuffix(".dir")
    assert (workspace.root / "dvc-remote/files/md5" / md5[:2] / (md5[2:] + ".dir")).is_file()

    client = mlflow.MlflowClient(tracking_uri=workspace.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["rows_valid"] == len(GOOD) and run.data.metrics["rows_quarantined"] == 1
    assert run.data.tags["dvc_md5"] == result.dvc_md5 and run.data.tags["git_commit"] == result.git_commit
    assert json.loads(run.data.params["sources"]) == ["files:incoming/support-bot"]
    report = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/quarantine_report.json")
    assert report["failures"] == {"id_missing": 1}
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(workspace.root)


# Values not used anywhere in the sample data, so finding one means collect leaked it.
PII = {
    "EMAIL": "dana.kim@example.org",
    "PHONE": "010-4321-8765",
    "PHONE_INTL": "+1 415 555 0199",
    "RRN": "850505-2345678",
    "CARD": "5555 5555 5555 4444",
    "IP": "198.51.100.23",
}


def readable_contents(root: Path, skip: Path) -> Iterator[tuple[Path, str]]:
    """Every file's content as text: Parquet decoded, git objects inflated, the rest as bytes."""
    for path in root.rglob("*"):
        if not path.is_file() or path.is_relative_to(skip):
            continue
        data = path.read_bytes()
        if data[:4] == b"PAR1":
            yield path, json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False)
        elif ".git" in path.parts and "objects" in path.parts and not path.suffix:
            yield path, zlib.decompress(data).decode("utf-8", "replace")
        else:
            yield path, data.decode("utf-8", "replace")


def test_every_pii_kind_is_redacted_everywhere_it_is_stored(workspace) -> None:
    planted = [
        row(1, input=f"My email is {PII['EMAIL']} and my phone {PII['PHONE']}", output=f"Noted {PII['EMAIL']}."),
        row(
            2,
            input=f"주민등록번호 {PII['RRN']} 입니다",
            feedback=-1,
            feedback_comment=f"call me at {PII['PHONE_INTL']}",
        ),
        row(3, input=f"card {PII['CARD']} from {PII['IP']}", metadata={"note": PII["EMAIL"]}),
        row(4, input=f"ip {PII['IP']}", latency_ms=-1),  # quarantined rows are redacted too
        f'{{"id": "broken", "input": "{PII["EMAIL"]} {PII["CARD"]}"',  # and unreadable lines
    ]
    source = incoming(workspace) / "a.jsonl"
    write_jsonl(source, planted)
    result = collect(workspace, "support-bot", now=NOW)
    assert set(result.pii_redactions) == {"EMAIL", "PHONE", "RRN", "CARD", "IP"}

    stored = pd.read_parquet(workspace.path("data/support-bot/logs")).set_index("id")
    assert "<EMAIL>" in stored.loc["r1", "input"] and "<PHONE>" in stored.loc["r2", "feedback_comment"]
    assert "<CARD>" in stored.loc["r3", "input"] and "<EMAIL>" in stored.loc["r3", "metadata"]
    assert "user-1" not in set(stored["user_hash"])
    for path, text in readable_contents(workspace.root, skip=incoming(workspace)):
        for kind, value in PII.items():
            assert value not in text, f"{kind} found in {path}"
    assert PII["EMAIL"] in source.read_text()  # the source file is left untouched


def test_an_unreadable_parquet_file_is_quarantined_whole_and_the_other_files_still_collect(workspace) -> None:
    bad = incoming(workspace) / "broken.parquet"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"PAR1 this is not parquet")
    write_jsonl(incoming(workspace) / "a.jsonl", GOOD[:3])
    result = collect(workspace, "support-bot", now=NOW)
    assert (result.rows_in, result.rows_valid, result.rows_quarantined) == (4, 3, 1)
    assert result.failures == {"unreadable_parquet": 1}
    quarantine = pd.read_parquet(workspace.path("data/support-bot/quarantine"))
    assert quarantine[["origin", "kind", "reasons"]].values.tolist() == [
        ["incoming/support-bot/broken.parquet", "unreadable", "unreadable_parquet"]]
    assert collect(workspace, "support-bot", now=NOW).rows_in == 0  # quarantined once, not on every run
    pq.write_table(pa.Table.from_pylist([dict(r, metadata=None) for r in GOOD[3:5]]), bad)  # the file is fixed
    assert collect(workspace, "support-bot", now=NOW).rows_valid == 2


def test_parquet_with_wrong_types_is_quarantined_row_by_row(workspace) -> None:
    rows = [dict(row(1), prompt_tokens="100", metadata=None), dict(row(2), prompt_tokens="7", metadata=None)]
    incoming(workspace).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), incoming(workspace) / "typed.parquet")
    result = collect(workspace, "support-bot", now=NOW)
    assert (result.rows_quarantined, result.failures) == (2, {"prompt_tokens_not_integer": 2})


def test_unknown_source_and_broken_suite_are_input_errors(workspace) -> None:
    with pytest.raises(InputError, match="source not found"):
        collect(workspace, "support-bot", source_uri="nowhere/logs.jsonl", now=NOW)
    write_jsonl(incoming(workspace) / "a.jsonl", GOOD[:1])
    workspace.path("expectations/log_record.json").write_text("{broken")
    with pytest.raises(InputError, match="log_record.json: line 1: invalid JSON"):
        collect(workspace, "support-bot", now=NOW)


def test_small_batches_give_the_same_result_as_one(tmp_path: Path) -> None:
    """Batches bound memory on big inputs; duplicates across batch boundaries are still caught."""
    rows = GOOD + [r for r, _ in MALFORMED] + [row(1), row(3)]
    results = []
    for batch_rows in (4, 100_000):
        init_workspace(tmp_path / f"ws{batch_rows}")
        params = tmp_path / f"ws{batch_rows}" / "params.yaml"
        params.write_text(params.read_text().replace("batch_rows: 200000", f"batch_rows: {batch_rows}"))
        workspace = open_workspace(tmp_path / f"ws{batch_rows}")
        assert workspace.params.collect.batch_rows == batch_rows
        write_jsonl(incoming(workspace) / "a.jsonl", rows)
        result = collect(workspace, "support-bot", now=NOW)
        stored = pd.read_parquet(workspace.path("data/support-bot/logs")).drop(columns=["collect_run"])
        counts = {"rows_in", "rows_valid", "rows_quarantined", "rows_duplicate", "failures"}
        results.append((result.model_dump(include=counts),
                        stored.sort_values("id").reset_index(drop=True)))
    assert results[0][0] == results[1][0]
    assert results[0][0]["rows_duplicate"] == 2
    pd.testing.assert_frame_equal(results[0][1].drop(columns=["user_hash"]), results[1][1].drop(columns=["user_hash"]))


def rewrite_in_place(path: Path, rows: list[Any]) -> None:
    """Truncate the file and write it again, same inode: `> app.jsonl`, or logrotate's copytruncate."""
    inode = path.stat().st_ino
    path.open("w").close()
    write_jsonl(path, rows)
    assert path.stat().st_ino == inode


def test_a_log_truncated_and_rewritten_between_two_collects_loses_no_row(workspace) -> None:
    """Issue 16's case: 19 rows collected, the file truncated and rewritten longer; none may be skipped."""
    source = incoming(workspace) / "a.jsonl"
    first_rows = [row(i) for i in range(1, 20)] + ["{not json"]
    write_jsonl(source, first_rows)
    first = collect(workspace, "support-bot", now=NOW)
    assert (first.rows_in, first.rows_valid, first.rows_quarantined) == (20, 19, 1)

    second_rows = [row(i) for i in range(1, 6)] + [row(i) for i in range(20, 45)]  # 5 re-delivered, 25 new
    rewrite_in_place(source, second_rows)
    assert source.stat().st_size > first_offset(workspace, "incoming/support-bot/a.jsonl")
    second = collect(workspace, "support-bot", now=NOW)
    assert (second.rows_in, second.rows_valid, second.rows_quarantined, second.rows_duplicate) == (30, 25, 0, 5)

    runs = (first, second)
    rows_in = sum(r.rows_in for r in runs)
    assert rows_in == len(first_rows) + len(second_rows)  # every line of both versions read: nothing skipped
    assert rows_in == sum(r.rows_valid + r.rows_quarantined + r.rows_duplicate for r in runs)
    stored = pd.read_parquet(workspace.path("data/support-bot/logs"))
    assert sorted(stored["id"]) == sorted(f"r{i}" for i in range(1, 45))
    assert collect(workspace, "support-bot", now=NOW).rows_in == 0


def first_offset(workspace, name: str) -> int:
    state = json.loads(workspace.path("data/support-bot/collect-state.json").read_text())
    [files] = [w["files"] for w in state["watermarks"].values()]
    return int(files[name]["offset"])


def test_rotation_copytruncate_and_rewrites_between_two_collects_lose_no_row(workspace) -> None:
    """Every way a log file changes under collect, at once: each row is read once, or again as a duplicate."""
    folder = incoming(workspace)
    for name, first in (("renamed", range(1, 6)), ("copied", range(6, 11)), ("same_size", range(11, 16)),
                        ("unchanged", range(16, 21))):
        write_jsonl(folder / f"{name}.jsonl", [row(i) for i in first])
    assert collect(workspace, "support-bot", now=NOW).rows_valid == 20

    # rotation by rename: two rows written after the collect stay in renamed.jsonl.1; a new file starts
    write_jsonl(folder / "renamed.jsonl", [row(21), row(22)])
    (folder / "renamed.jsonl").rename(folder / "renamed.jsonl.1")
    write_jsonl(folder / "renamed.jsonl", [row(23)])
    # copytruncate: copied with two rows written after the collect, then truncated and regrown shorter
    write_jsonl(folder / "copied.jsonl", [row(24), row(25)])
    (folder / "copied.jsonl.1").write_bytes((folder / "copied.jsonl").read_bytes())
    rewrite_in_place(folder / "copied.jsonl", [row(26)])
    # rewritten with other rows of exactly the same size (ids r11..r15 become r31..r35)
    size = (folder / "same_size.jsonl").stat().st_size
    rewrite_in_place(folder / "same_size.jsonl", [row(i, input=f"question {i - 20}") for i in range(31, 36)])
    assert (folder / "same_size.jsonl").stat().st_size == size

    second = collect(workspace, "support-bot", now=NOW)
    # renamed: 2 + 1 new; copied: the copy's 5 collected rows again as duplicates, 2 + 1 new; same_size:
    # 5 new; unchanged: nothing
    assert (second.rows_in, second.rows_valid, second.rows_quarantined, second.rows_duplicate) == (16, 11, 0, 5)
    duplicates = pd.read_parquet(workspace.path("data/support-bot/quarantine")).query("kind == 'duplicate'")
    assert sorted(duplicates["id"]) == sorted(f"r{i}" for i in range(6, 11))
    stored = pd.read_parquet(workspace.path("data/support-bot/logs"))
    expected = [*range(1, 27), *range(31, 36)]
    assert sorted(stored["id"]) == sorted(f"r{i}" for i in expected)
    assert stored.set_index("id").loc["r21", "source"] == "incoming/support-bot/renamed.jsonl.1:6"
    assert collect(workspace, "support-bot", now=NOW).rows_in == 0
