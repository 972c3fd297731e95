"""Crash and resume, and two writers at once, with real processes, git, DVC and MLflow.

A cycle is killed with SIGKILL in the middle of its evaluation and started again: it completes with
the decision of an uninterrupted run, pays for no call twice, and the kill leaves no half-written
golden set, snapshot, branch or finished MLflow run. Two cycles started on one workspace: one runs,
the other waits (or, with --wait 0, exits 75 naming the holder), and git and DVC stay consistent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import git
import pytest

from promptloop.demo.run import write_sample_logs
from promptloop.domain.golden import load_golden
from promptloop.ops.initialize import init_workspace
from promptloop.workspace.workspace import open_workspace

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
PROMPTLOOP = str(Path(sys.executable).parent / "promptloop")
CACHE = ".promptloop/llm-cache.sqlite"
GOLDEN = "datasets/support-bot/golden.jsonl"
# Slow calls stretch the evaluation over seconds, so the kill lands inside it; a fixed PII key
# makes two workspaces hash user ids alike.
ENV = {"PROMPTLOOP_SIMULATION": json.dumps({"latency_ms": 8}), "PROMPTLOOP_PII_KEY": "crash-test-key"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file of simulated production logs, copied into every workspace of this module."""
    root = tmp_path_factory.mktemp("logs") / "ws"
    init_workspace(root)
    workspace = open_workspace(root)
    return root / write_sample_logs(workspace, "support-bot", 1200, NOW).log_file


def new_workspace(root: Path, logs: Path) -> Path:
    init_workspace(root)
    folder = root / open_workspace(root).app_settings("support-bot").log_dir
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(logs, folder / logs.name)
    return root


def start_cycle(root: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PROMPTLOOP, "cycle", "--app", "support-bot", "-w", str(root), "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})


def finish(process: subprocess.Popen[str], timeout: float = 600) -> tuple[int, dict[str, Any], str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, json.loads(out.strip().splitlines()[-1]) if out.strip() else {}, err


def cached_calls(root: Path) -> tuple[int, float]:
    """Rows in the response cache (one per paid call) and the cost they were paid."""
    if not (root / CACHE).is_file():
        return 0, 0.0
    with sqlite3.connect(root / CACHE) as db:
        try:
            rows = [json.loads(text) for (text,) in db.execute("SELECT completion FROM responses")]
        except sqlite3.OperationalError:  # the file exists, its table not yet
            return 0, 0.0
    return len(rows), sum(r["cost_usd"] or 0.0 for r in rows)


def mlflow_runs(root: Path) -> list[Any]:
    from promptloop.workspace.tracking import tracking_client

    workspace = open_workspace(root)
    client = tracking_client(workspace.tracking_uri)
    experiment = client.get_experiment_by_name(workspace.experiment_name("support-bot"))
    return client.search_runs([experiment.experiment_id]) if experiment else []


def dvc_status(root: Path, cloud: bool = False) -> dict[str, Any]:
    """`dvc status` of every dataset (.dvc file); the dvc.yaml stage is re-run by `dvc repro`, not here."""
    from dvc.repo import Repo

    targets = [str(p) for p in root.rglob("*.dvc") if p.is_file() and not {".dvc", "dvc-remote"} & set(p.parts)]
    assert targets
    with Repo(str(root)) as repo:
        return repo.status(targets=targets, cloud=cloud)


def assert_consistent(root: Path) -> None:
    """git holds no half commit, every DVC output matches its committed .dvc, the remote has it all."""
    repo = git.Repo(root)
    assert not repo.is_dirty(untracked_files=True), repo.git.status()
    repo.git.fsck("--strict")
    assert dvc_status(root) == {}
    assert dvc_status(root, cloud=True) == {}
    load_golden(root / GOLDEN)  # parses, line by line
    assert not (root / ".promptloop" / "journal.json").exists()


def kill_mid_evaluation(process: subprocess.Popen[str], root: Path, before: int, evaluation_calls: int) -> int:
    """SIGKILL `process` once half of its evaluation's calls are in the cache; returns the rows by then."""
    target = before + evaluation_calls // 2
    deadline = time.monotonic() + 300
    while cached_calls(root)[0] < target:
        assert process.poll() is None, f"the cycle ended before the kill: {process.communicate()}"
        assert time.monotonic() < deadline, "the evaluation never got half way"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return cached_calls(root)[0]


def test_a_cycle_killed_mid_evaluation_resumes_from_the_cache_and_leaves_nothing_half_written(
        sample_logs: Path, tmp_path: Path) -> None:
    reference_root = new_workspace(tmp_path / "reference", sample_logs)
    code, reference, err = finish(start_cycle(reference_root))
    assert code == 0, err
    assert reference["decision"] == "promote", reference["reasons"]
    paid, paid_usd = cached_calls(reference_root)
    assert paid == reference["llm"]["calls"]  # one cache row per paid call (no faults here)
    evaluation = reference["improve"]["evaluation"]["llm_calls"]
    before_evaluation = paid - evaluation

    root = new_workspace(tmp_path / "crashed", sample_logs)
    remote_main = git.Repo(root / "remote.git").heads.main.commit.hexsha
    rows_at_kill = kill_mid_evaluation(start_cycle(root), root, before_evaluation, evaluation)
    assert before_evaluation < rows_at_kill < paid

    # What the kill left: the grown golden set committed whole, no branch, no finished evaluation run.
    assert_consistent(root)
    assert (root / GOLDEN).read_bytes() == (reference_root / GOLDEN).read_bytes()
    assert [h.name for h in git.Repo(root / "remote.git").heads] == ["main"]
    assert git.Repo(root / "remote.git").heads.main.commit.hexsha == remote_main
    evaluations = [r for r in mlflow_runs(root) if r.data.tags.get("promptloop.stage") == "evaluate"]
    assert all(r.info.status != "FINISHED" for r in evaluations), [r.info.status for r in evaluations]
    assert (root / ".promptloop" / "cycle" / "support-bot.json").is_file()  # the turn is marked unsettled

    code, resumed, err = finish(start_cycle(root))
    assert code == 0, err
    assert resumed["resumed"] and resumed["collect"]["rows_in"] == 0  # no new logs, run again all the same
    assert (resumed["decision"], resumed["deploy"]["branch"]) == (reference["decision"], reference["deploy"]["branch"])
    scores = {
        c["name"]: (c["mean_score"], c["ci_low"], c["decision"]) for c in resumed["improve"]["evaluation"]["candidates"]
    }
    assert scores == {c["name"]: (c["mean_score"], c["ci_low"], c["decision"])
                      for c in reference["improve"]["evaluation"]["candidates"]}
    # Every call the killed run paid for is answered from the cache: together they paid what one run pays.
    assert resumed["llm"]["calls"] == paid - rows_at_kill
    assert resumed["llm"]["cache_hits"] >= rows_at_kill
    assert cached_calls(root)[0] == paid
    assert cached_calls(root)[1] == pytest.approx(paid_usd)
    assert_consistent(root)
    assert not (root / ".promptloop" / "cycle" / "support-bot.json").exists()
    assert {r.info.status for r in mlflow_runs(root)} <= {"FINISHED", "KILLED"}  # nothing left RUNNING


def test_a_kill_inside_a_dataset_change_is_rolled_back_by_the_next_writer(workspace, tmp_path: Path) -> None:
    """The golden set half rewritten and `dvc add`ed but not committed: the next stage puts it back."""
    root = workspace.root
    golden = root / GOLDEN
    committed = golden.read_bytes()
    script = f"""
import os, signal
from pathlib import Path
from promptloop.workspace.versioning import dataset_change, dvc_add_and_push
root = Path({str(root)!r}); golden = root / {GOLDEN!r}
with dataset_change(root, [golden, golden.parent / ".gitignore"], "test"):
    golden.write_text(golden.read_text() + '{{"id": "half', encoding="utf-8")
    dvc_add_and_push(root, [golden])
    os.kill(os.getpid(), signal.SIGKILL)
"""
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert golden.read_bytes() != committed and (root / ".promptloop" / "journal.json").is_file()

    from promptloop.workspace.locking import writing

    with writing(root, "test"):
        pass
    assert golden.read_bytes() == committed
    assert_consistent(root)


def test_a_run_a_killed_process_left_running_is_marked_killed_by_the_next_run(workspace) -> None:
    """A process SIGKILLed while its MLflow run is open leaves it RUNNING; the next run closes it."""
    script = f"""
import os, signal
from pathlib import Path
from promptloop.workspace.tracking import experiment_id, tracking_client
from promptloop.workspace.workspace import open_workspace
workspace = open_workspace(Path({str(workspace.root)!r}))
client = tracking_client(workspace.tracking_uri)
experiment = experiment_id(client, workspace.experiment_name("support-bot"), workspace.artifact_root)
print(client.create_run(experiment, run_name="killed").info.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    stale = killed.stdout.split()[-1]

    from promptloop.workspace.tracking import log_run, tracking_client

    client = tracking_client(workspace.tracking_uri)
    assert client.get_run(stale).info.status == "RUNNING"
    log_run(
        workspace.tracking_uri,
        workspace.artifact_root,
        workspace.experiment_name("support-bot"),
        "next",
        {},
        {},
        {},
        {},
    )
    left = client.get_run(stale)
    assert (left.info.status, left.data.tags.get("promptloop.interrupted")) == ("KILLED", "true")


def test_two_cycles_at_once_one_runs_the_others_wait_or_exit_naming_it(sample_logs: Path, tmp_path: Path) -> None:
    root = new_workspace(tmp_path / "ws", sample_logs)
    first = start_cycle(root)
    deadline = time.monotonic() + 120
    while not holder_is(root, first.pid):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    impatient = finish(start_cycle(root, "--wait", "0"))
    patient = start_cycle(root)  # waits for the first, then finds nothing new

    code, result, _ = finish(first)
    assert code == 0 and result["decision"] == "promote"
    code, busy, err = impatient
    assert code == 75 and busy["kind"] == "busy"
    assert f"`promptloop cycle --app support-bot` (pid {first.pid}" in busy["error"] and "--wait" in busy["error"]
    code, second, err = finish(patient)
    assert code == 0 and second["decision"] == "skipped", second
    assert f"waiting for `promptloop cycle --app support-bot` (pid {first.pid}" in err

    assert_consistent(root)
    remote = git.Repo(root / "remote.git")
    assert sorted(h.name for h in remote.heads) == sorted(["main", result["deploy"]["branch"]])
    log = git.Repo(root).git.log("--format=%s").splitlines()
    assert sum(line.startswith("collect support-bot: +") for line in log) == 1
    assert sum("mined cases into the golden set" in line for line in log) == 1


def holder_is(root: Path, pid: int) -> bool:
    from promptloop.workspace.locking import holder

    return (holder(root) or {}).get("pid") == pid
