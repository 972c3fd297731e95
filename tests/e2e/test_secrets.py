"""Secrets and privacy: the API key comes from the environment (or a Prefect Secret block) and is
really used, and neither it nor any planted PII value reaches a store of the workspace.

One fresh workspace, the sample logs plus rows holding a recognisable value of every PII kind the
redactor knows (and a user id), and `promptloop cycle` run three times as a subprocess of the CLI:
without the key's variable (fails naming it), with a wrong key (ends incomplete), then with the
key and every logger at DEBUG (promotes). Then every store is scanned by name: the captured
output, MLflow (database, params and tags through its client, artifacts), DVC (cache and remote,
Parquet read through pyarrow), git (every object of the workspace and of the bare remote, read
through git), the pull-request body, the LLM response cache and every other workspace file.
Only the raw input logs this test wrote are left out: they hold the PII by design.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from promptloop.core.config import LLMSettings
from promptloop.demo.run import write_sample_logs
from promptloop.ops.initialize import init_workspace
from promptloop.quality.redact import PLACEHOLDERS, build_redactor, luhn_valid
from promptloop.workspace.workspace import DVC_REMOTE_DIR, REMOTE_DIR, open_workspace

KEY_VAR = "PROMPTLOOP_TEST_API_KEY"
# Not "sk-...": litellm's log filter masks sk- keys wherever they appear, which would hide a leak
# of ours in the logs. A key of no known shape is only safe if promptloop itself keeps it out.
KEY = f"promptloop-FAKE-KEY-{uuid.uuid4().hex}"
WRONG_KEY = f"promptloop-WRONG-KEY-{uuid.uuid4().hex}"
EXTRA_KINDS = {"ORDER_ID": r"ORD-\d{8}"}
# One recognisable value per PII kind (kind -> values); none occurs in the sample data.
PLANTED: dict[str, list[str]] = {
    "EMAIL": ["canary.pii.7319@example.org"],
    "PHONE": ["+44 20 7946 0777", "010-7319-2468"],
    "RRN": ["880808-1357913"],
    "CARD": ["4000 0566 5566 5556"],
    "IP": ["203.0.113.77", "2001:db8:85a3::8a2e:370:7334"],
    "SSN": ["536-22-7319"],
    "IBAN": ["DE89 3704 0044 0532 0130 00"],
    "PASSPORT": ["912807319"],
    "ADDRESS": ["7319 Canary Street", "테헤란로 7319"],
    "ORDER_ID": ["ORD-73192468"],
}
# Passport numbers are taken only next to a context word (alone they are any 9-digit number).
CONTEXT = {"PASSPORT": "passport "}
USER_ID = "user-canary-7319"  # hashed by collect, never stored as is
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
# The real CLI entry point, with every logger (litellm's too) at DEBUG: more output that could leak.
DEBUG_CLI = ("import logging, litellm; logging.basicConfig(level=logging.DEBUG); litellm._turn_on_debug(); "
             "from promptloop.cli import main; main()")


# --- the scanner ------------------------------------------------------------------------------------

Texts = list[tuple[str, str]]  # (where, text) of one store


def needles() -> dict[str, str]:
    """What must appear nowhere: the keys, every planted value, digits-only forms of the numbers."""
    found = {"API key": KEY, "wrong API key": WRONG_KEY, "user id": USER_ID}
    for kind, values in PLANTED.items():
        for value in values:
            found[f"{kind} {value}"] = value
            digits = "".join(ch for ch in value if ch.isdigit())
            if kind in ("PHONE", "RRN", "CARD") and digits != value:
                found[f"{kind} {value} (digits only)"] = digits
    return found


def scan(stores: dict[str, Texts], wanted: dict[str, str]) -> list[str]:
    """'<store>: <where>: <name>' for every wanted value found in a store."""
    return [f"{store}: {where}: {name}" for store, texts in stores.items() for where, text in texts
            for name, value in wanted.items() if value in text]


def file_text(path: Path) -> str:
    """The text a file holds: Parquet through pyarrow, SQLite through a dump (and its raw bytes)."""
    data = path.read_bytes()
    if data[:4] == b"PAR1":
        return json.dumps(pq.read_table(path).to_pylist(), ensure_ascii=False, default=str)
    if data[:2] == b"\x1f\x8b" or data[:4] in (b"\x28\xb5\x2f\xfd", b"PK\x03\x04"):
        raise AssertionError(f"{path} is compressed: the scan cannot read it, so it must learn to")
    text = data.decode("utf-8", "replace")
    if data[:16] == b"SQLite format 3\x00":
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:  # the dump includes its WAL
            text += "\n".join(db.iterdump())
    return text


def files_texts(paths: Iterable[Path], root: Path) -> Texts:
    return [(str(p.relative_to(root)), file_text(p)) for p in sorted(paths) if p.is_file()]


def tree(folder: Path, skip: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Every file under `folder`, except under the `skip` paths."""
    for path in folder.rglob("*"):
        if path.is_file() and not any(path == s or s in path.parents for s in skip):
            yield path


def git_texts(repo: Path) -> Texts:
    """Every object of a repository (decompressed by git), the full patch history, and its other files."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True).stdout.decode(
            "utf-8", "replace"
        )

    git_dir = Path(git("rev-parse", "--absolute-git-dir").strip())
    return [("git log -p --all", git("log", "-p", "--all", "--binary")),
            ("git cat-file --batch-all-objects", git("cat-file", "--batch-all-objects", "--batch")),
            *files_texts(tree(git_dir, skip=(git_dir / "objects",)), git_dir)]


def mlflow_texts(tracking_uri: str) -> Texts:
    """Name, params and tags of every experiment and run, as MLflow's client reports them."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=tracking_uri)
    texts: Texts = []
    for experiment in client.search_experiments(view_type=ViewType.ALL):
        texts.append((f"experiment {experiment.name}", json.dumps({"name": experiment.name, "tags": experiment.tags})))
        for run in client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=5000):
            texts.append((f"run {run.info.run_name} ({run.info.run_id})",
                          json.dumps({"name": run.info.run_name, "params": run.data.params, "tags": run.data.tags})))
    return texts


# --- the workspace and the three cycles ------------------------------------------------------------


def log_row(row_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": row_id,
        "timestamp": (NOW - timedelta(hours=1)).isoformat(),
        "app": "support-bot",
        "prompt_version": "1",
        "model": "offline/support-bot",
        "input": "How do I export to PDF?",
        "output": "Use File > Export.",
        "latency_ms": 420.0,
        "prompt_tokens": 80,
        "completion_tokens": 20,
        "cost_usd": None,
        "error": None,
        "feedback": None,
        "feedback_comment": None,
        "user_id": USER_ID,
        "metadata": None,
    } | fields


def planted_lines() -> list[str]:
    """Rows with every planted value in every text field: valid ones, an error, invalid, duplicate, unreadable."""
    email, (phone, phone_kr), rrn, card = PLANTED["EMAIL"][0], PLANTED["PHONE"], PLANTED["RRN"][0], PLANTED["CARD"][0]
    ipv4, ipv6, order = *PLANTED["IP"], PLANTED["ORDER_ID"][0]
    ssn, iban, passport, (address, address_kr) = (PLANTED["SSN"][0], PLANTED["IBAN"][0], PLANTED["PASSPORT"][0],
                                                  PLANTED["ADDRESS"])
    everything = (
        f"mail {email}, call {phone} or {phone_kr}, RRN {rrn}, card {card}, from {ipv4} / {ipv6}, order {order}, "
        f"SSN {ssn}, IBAN {iban}, {CONTEXT['PASSPORT']}{passport}, I live at {address} / {address_kr}"
    )
    rows = [
        log_row("planted-1", input=f"My export to PDF fails. {everything}", feedback=-1,
                feedback_comment=f"wrong answer, reach me at {email} about {order}", metadata={"note": everything}),
        log_row("planted-2", input=f"제 주민등록번호는 {rrn}입니다. 연락처 {phone_kr}. PDF로 내보내려면?",
                output=f"I saw your address {ipv4} and card {card}.", feedback=-1),
        log_row("planted-3", output=None, error=f"upstream refused {everything}"),
        log_row("planted-4", input=f"invalid row: {everything}", latency_ms=-5.0),  # quarantined: negative latency
        log_row("planted-1", input=f"duplicate row: {everything}"),  # quarantined: duplicate id
    ]
    return [json.dumps(row, ensure_ascii=False) for row in rows] + [
        json.dumps(log_row("planted-5", input=everything))[:-40]
    ]


def configure(root: Path) -> None:
    """Every offline model's key from $KEY_VAR, an extra PII kind; committed like a person would."""
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    for model, entry in params["llm"]["models"].items():
        if model.startswith("offline/"):
            entry["api_key"] = f"env:{KEY_VAR}"
    params["collect"]["extra_pii_patterns"] = EXTRA_KINDS
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    subprocess.run(["git", "commit", "-qam", "API keys from the environment"], cwd=root, check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"})


@dataclass
class Cycle:
    returncode: int
    output: str
    result: dict[str, Any]


def run_cycle(root: Path, key: str | None, *args: str, debug: bool = False) -> Cycle:
    """`promptloop cycle --json` in a subprocess; the provider accepts only KEY."""
    env = {k: v for k, v in os.environ.items() if k not in (KEY_VAR, "PROMPTLOOP_SIMULATION")}
    env["PROMPTLOOP_SIMULATION"] = json.dumps({"api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()})
    if key is not None:
        env[KEY_VAR] = key
    entry = [sys.executable, "-c", DEBUG_CLI] if debug else [str(Path(sys.executable).parent / "promptloop")]
    done = subprocess.run([*entry, "cycle", "--app", "support-bot", "--workspace", str(root), "--json", *args],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert results, f"no JSON result from the CLI:\n{(done.stdout + done.stderr)[-3000:]}"
    return Cycle(done.returncode, done.stdout + done.stderr, results[-1])


@dataclass
class Leaks:
    root: Path
    raw_inputs: list[Path]
    no_key: Cycle
    wrong_key: Cycle
    cycle: Cycle
    stores: dict[str, Texts]


@pytest.fixture(scope="module")
def leaks(tmp_path_factory: pytest.TempPathFactory) -> Leaks:
    root = tmp_path_factory.mktemp("secrets") / "ws"
    init_workspace(root)
    configure(root)
    workspace = open_workspace(root)
    # The sample traffic reads the llm.models keys too (it calls the app directly, not through the runner).
    os.environ[KEY_VAR] = KEY
    try:
        sample = root / write_sample_logs(workspace, "support-bot", 1500, NOW).log_file
    finally:
        del os.environ[KEY_VAR]
    planted = sample.with_name("planted-pii.jsonl")
    planted.write_text("\n".join(planted_lines()) + "\n", encoding="utf-8")

    no_key = run_cycle(root, None)
    wrong_key = run_cycle(root, WRONG_KEY)
    cycle = run_cycle(root, KEY, "--force", debug=True)

    body = Path(cycle.result["deploy"]["body_path"]) if cycle.result.get("deploy") else root / "missing-pr-body"
    cache = root / ".promptloop" / "llm-cache.sqlite"
    named = {
        "captured CLI output": [("no key", no_key.output), ("wrong key", wrong_key.output), ("cycle", cycle.output)],
        "MLflow database": files_texts(root.glob("mlflow.db*"), root),
        "MLflow params and tags": mlflow_texts(workspace.tracking_uri),
        "MLflow artifacts": files_texts(tree(workspace.artifact_root), root),
        "DVC cache": files_texts(tree(root / ".dvc" / "cache"), root),
        "DVC remote": files_texts(tree(root / DVC_REMOTE_DIR), root),
        "git history of the workspace": git_texts(root),
        "git history of the remote": git_texts(root / REMOTE_DIR),
        "pull-request body": files_texts([body], root) if body.is_file() else [],
        "LLM response cache": files_texts(cache.parent.glob(f"{cache.name}*"), root),
    }
    # Everything else in the workspace; the raw inputs hold the PII by design, the rest has a store above.
    covered = (
        root / ".git",
        root / REMOTE_DIR,
        root / DVC_REMOTE_DIR,
        root / ".dvc" / "cache",
        workspace.artifact_root,
        sample,
        planted,
        body,
        *root.glob("mlflow.db*"),
        *cache.parent.glob(f"{cache.name}*"),
    )
    named["every other workspace file"] = files_texts(tree(root, skip=covered), root)
    return Leaks(root, [sample, planted], no_key, wrong_key, cycle, named)


# --- the tests ---------------------------------------------------------------------------------------


def test_the_planted_values_cover_every_pii_kind_the_redactor_knows() -> None:
    redactor = build_redactor(EXTRA_KINDS)
    assert set(PLANTED) == set(redactor.placeholders) == set(PLACEHOLDERS) | set(EXTRA_KINDS)
    for kind, values in PLANTED.items():
        for value in values:  # each is redacted whole when it stands alone (after its context word)
            context = CONTEXT.get(kind, "")
            assert redactor.redact_text(f"value: {context}{value}.")[0] == f"value: {context}<{kind}>.", value
    assert luhn_valid(PLANTED["CARD"][0].replace(" ", ""))


def test_without_the_key_variable_the_cycle_fails_with_an_error_naming_it(leaks: Leaks) -> None:
    failed = leaks.no_key
    assert failed.returncode == 2, failed.output[-2000:]
    assert failed.result["kind"] == "input"
    assert f"environment variable {KEY_VAR} is not set" in failed.result["error"]
    assert "llm.models.offline/" in failed.result["error"] and "params.yaml" in failed.result["error"]


def test_with_a_wrong_key_the_cycle_ends_incomplete_without_a_pull_request(leaks: Leaks) -> None:
    result = leaks.wrong_key.result
    assert leaks.wrong_key.returncode == 1, leaks.wrong_key.output[-2000:]  # incomplete is not a success
    assert result["decision"] == "incomplete" and result["deploy"] is None
    assert any("AuthenticationError after 1 attempt(s)" in reason for reason in result["reasons"]), result["reasons"]
    assert result["analyze"]["online_judge"]["failures"] > 0  # every judge call was refused: the key was checked


def test_with_the_key_the_cycle_calls_the_provider_and_promotes(leaks: Leaks) -> None:
    result = leaks.cycle.result
    assert leaks.cycle.returncode == 0, leaks.cycle.output[-2000:]
    assert result["decision"] == "promote", result["reasons"]
    assert result["llm"]["calls"] > 0 and result["analyze"]["online_judge"]["failures"] == 0
    assert "LiteLLM:DEBUG" in leaks.cycle.output  # the logs really were at DEBUG


def test_the_scan_reads_every_store_and_finds_what_is_there(leaks: Leaks, tmp_path: Path) -> None:
    markers = {  # a value each store must hold, read through its decoding (Parquet, git objects, SQLite)
        "captured CLI output": "support-bot",
        "MLflow database": "promptloop/support-bot",
        "MLflow params and tags": "promptloop.stage",
        "MLflow artifacts": "rows_quarantined",
        "DVC cache": "<EMAIL>",
        "DVC remote": "<EMAIL>",
        "git history of the workspace": f"env:{KEY_VAR}",
        "git history of the remote": "parent: 1",  # the proposed prompt, only on the pull-request branch
        "pull-request body": "## Prompt diff",
        "LLM response cache": "offline/support-bot",
        "every other workspace file": "<EMAIL>",
    }
    assert set(markers) == set(leaks.stores)
    for store, texts in leaks.stores.items():
        assert texts and sum(len(text) for _, text in texts) > 0, f"{store} is empty: the scan would prove nothing"
        assert any(markers[store] in text for _, text in texts), f"{store}: its marker was not found"
    # Positive controls: the scanner finds every planted value where it is, in text and in zstd Parquet.
    planted = {name: value for name, value in needles().items() if "KEY" not in value and "digits" not in name}
    raw = {"raw input": files_texts(leaks.raw_inputs, leaks.root)}
    assert {hit.rsplit(": ", 1)[1] for hit in scan(raw, planted)} == set(planted)
    table = tmp_path / "planted.parquet"
    pq.write_table(pa.Table.from_pylist([json.loads(line) for line in planted_lines()[:4]]), table, compression="zstd")
    assert {hit.rsplit(": ", 1)[1] for hit in scan({"parquet": files_texts([table], tmp_path)}, planted)} == set(
        planted
    )
    assert scan({"control": [("text", f"Bearer {KEY}")]}, needles()) == ["control: text: API key"]


def test_neither_the_key_nor_any_planted_pii_value_is_in_any_store(leaks: Leaks) -> None:
    wanted = {name: value for name, value in needles().items() if value != USER_ID}
    assert scan(leaks.stores, wanted) == []


def test_no_raw_user_id_is_in_any_store(leaks: Leaks) -> None:
    """User ids are hashed with the workspace's key, in stored rows and quarantined ones alike."""
    assert scan(leaks.stores, {"user id": USER_ID}) == []


# --- a key from a Prefect Secret block ---------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_a_prefect_secret_block_supplies_the_key_a_call_uses(prefect_server, tmp_path: Path) -> None:
    from prefect.blocks.system import Secret

    from promptloop.core.errors import InputError
    from promptloop.llm.client import ApiKeys, litellm_module_configured
    from promptloop.llm.runner import ResponseCache, Runner

    Secret(value=KEY).save("promptloop-test-key", overwrite=True)
    settings = LLMSettings(providers={"offline": "promptloop.demo.simulated.provider:handler"},
                           models={"offline/support-bot": {"api_key": "prefect-secret:promptloop-test-key"},
                                   "offline/*": {"api_key": "prefect-secret:no-such-block"}})
    runner = Runner(litellm_module_configured(settings), ResponseCache(tmp_path / "c.db"), api_keys=ApiKeys(settings))
    requires_key = {"api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}
    messages = [{"role": "user", "content": "How do I export to PDF?"}]

    completion = asyncio.run(runner.complete("app", "offline/support-bot", messages, simulation=requires_key, seed=0))
    assert completion.text and runner.usage["app"].calls == 1 and runner.usage["app"].failures == 0
    with pytest.raises(InputError, match="no Prefect Secret block named 'no-such-block'") as missing:
        asyncio.run(runner.complete("judge", "offline/judge", messages, simulation=requires_key))
    assert missing.value.field == "llm.models.offline/*.api_key"

