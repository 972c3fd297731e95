"""The CLI contract: --json prints one JSON object, exit 0 / 2 (bad input) / 1 (anything else)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from promptloop.core.runtime import OFFLINE_ENV

CLI = str(Path(sys.executable).parent / "promptloop")
CONTRACT = ("init", "demo", "collect", "analyze", "evaluate", "improve", "deploy", "cycle", "release", "serve")


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_help_lists_every_command_of_the_contract(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in CONTRACT:
        assert f" {command} " in result.stdout, command


def test_init_json_is_one_object_on_stdout(tmp_path: Path) -> None:
    result = run("init", "--dir", "ws", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    created = json.loads(result.stdout)
    assert created["workspace"] == str(tmp_path / "ws") and created["apps"] == ["support-bot", "triage-bot"]


def test_bad_input_exits_2_with_one_line_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "x").write_text("x")
    result = run("init", "--dir", "ws", "--json", cwd=tmp_path)
    assert result.returncode == 2
    assert json.loads(result.stdout) == {
        "ok": False,
        "error": f"{tmp_path / 'ws'}: target exists and is not an empty folder; choose another --dir",
        "kind": "input",
    }
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    assert run("init", "--dir", "ws", cwd=root).returncode == 0
    return root / "ws"


def test_config_errors_exit_2_naming_file_and_key(workspace: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    text = (workspace / "params.yaml").read_text().replace("  top_k: 3", "  top_k: three")
    (broken / "params.yaml").write_text(text)
    result = run("collect", "--app", "support-bot", "--workspace", str(broken), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{broken / 'params.yaml'}: apps.support-bot.top_k: Input should be a valid integer" in result.stderr
    unknown_app = run("analyze", "--app", "nope", "--workspace", str(workspace), "--json", cwd=tmp_path)
    assert unknown_app.returncode == 2 and "unknown app 'nope'" in json.loads(unknown_app.stdout)["error"]


def test_serve_outside_a_workspace_is_an_input_error_and_starts_nothing(tmp_path: Path) -> None:
    result = run("serve", "--workspace", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path / 'params.yaml'}: file not found" in " ".join(result.stderr.split())
    assert not (tmp_path / ".promptloop").exists()


NETWORK_GUARD = """
import socket, sys
attempts = []
def _local(host):
    return str(host) in {"localhost", "127.0.0.1", "::1", ""} or str(host).startswith(("127.", "/"))
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
def connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if not _local(host):
        attempts.append(str(host)); raise OSError("network blocked by test")
    return _connect(self, address)
def getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        attempts.append(str(host)); raise OSError("network blocked by test")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
import atexit
atexit.register(lambda: sys.stderr.write("NETWORK-ATTEMPTS:" + repr(sorted(set(attempts))) + "\\n"))
sys.argv = ["promptloop"] + sys.argv[1:]
from promptloop.cli import main
main()
"""


def test_demo_reaches_no_network_even_without_offline_env(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    result = subprocess.run(
        [sys.executable, "-c", NETWORK_GUARD, "demo", "--dir", "d", "--interactions", "20", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["logs"]["interactions"] == 20
    assert "NETWORK-ATTEMPTS:[]" in result.stderr
    # The demo's new MLflow store is made without MLflow's INFO lines about creating its tables.
    assert "MLflow database tables" not in result.stderr + result.stdout
