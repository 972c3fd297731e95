"""MLflow's telemetry is off for the UI server `serve` starts and for the `mlflow ui` command we print.

MLflow also turns telemetry off by itself under pytest or CI (`PYTEST_CURRENT_TEST`, `CI`, ...), which
would let these tests pass with no setting of ours: each test removes those variables first, and the
first one shows that, without our variables, MLflow would call telemetry on.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import urllib.request

import psutil
import pytest

from promptloop.ops import serve
from promptloop.ops.mlflow_ui import TELEMETRY_OFF, UI_TELEMETRY_PATH, ui_command, ui_environment
from promptloop.workspace.workspace import Workspace

# What makes MLflow (mlflow.telemetry.utils._is_ci_env_or_testing) call telemetry off on its own.
TESTING_SIGNALS = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
                   "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
                   "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID")


def plain_environment() -> dict[str, str]:
    """This process's environment as a person's shell would have it: no CI signal, no telemetry setting."""
    return {k: v for k, v in os.environ.items() if k not in (*TESTING_SIGNALS, *TELEMETRY_OFF)}


def mlflow_says_telemetry_is_off(env: dict[str, str]) -> bool:
    """What MLflow itself decides in a process with `env` (its server asks the same function)."""
    code = "from mlflow.telemetry.utils import is_telemetry_disabled as off; print(off())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=True)
    return done.stdout.strip().splitlines()[-1] == "True"


def test_mlflow_calls_the_ui_server_environment_telemetry_off_and_a_plain_one_on() -> None:
    plain = plain_environment()
    assert not mlflow_says_telemetry_is_off(plain)  # the control: this check can fail
    assert mlflow_says_telemetry_is_off(ui_environment(plain))
    # DO_NOT_TRACK=1, the common spelling, is not enough for MLflow: it wants "true"
    assert not mlflow_says_telemetry_is_off({**plain, "DO_NOT_TRACK": "1"})
    assert mlflow_says_telemetry_is_off({**plain, "DO_NOT_TRACK": TELEMETRY_OFF["DO_NOT_TRACK"]})


def test_the_printed_mlflow_ui_command_turns_telemetry_off() -> None:
    words = shlex.split(ui_command("/venv/bin/mlflow", "sqlite:////tmp/a b/mlflow.db"))
    assert words[:2] == ["MLFLOW_DISABLE_TELEMETRY=true", "DO_NOT_TRACK=true"]
    assert words[2:] == ["/venv/bin/mlflow", "ui", "--backend-store-uri", "sqlite:////tmp/a b/mlflow.db",
                         "--host", "127.0.0.1", "--port", "5000"]
    assert mlflow_says_telemetry_is_off({**plain_environment(), **dict(w.split("=", 1) for w in words[:2])})


def test_the_ui_server_serve_starts_tells_its_ui_that_telemetry_is_off(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (*TESTING_SIGNALS, *TELEMETRY_OFF):
        monkeypatch.delenv(name, raising=False)  # serve passes its own environment on: make it a person's
    port = serve.free_port()
    process = serve.start_mlflow_ui(workspace, port)
    try:
        url = f"http://{serve.HOST}:{port}"
        serve.wait_until_up("mlflow-ui", f"{url}/health", process, workspace.root, timeout_s=240)
        # The endpoint the UI's telemetry worker reads before it sends anything.
        with urllib.request.urlopen(url + UI_TELEMETRY_PATH, timeout=30) as response:
            config = json.loads(response.read())
        assert config["disable_ui_telemetry"] is True
        environment = psutil.Process(process.pid).environ()
        assert {k: environment.get(k) for k in TELEMETRY_OFF} == TELEMETRY_OFF
        assert not set(TESTING_SIGNALS) & set(environment)  # so the answer above is our setting's doing
    finally:
        serve.stop([process])
