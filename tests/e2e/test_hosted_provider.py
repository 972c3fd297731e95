"""Conformance against an HTTP provider that behaves like hosted models (tests/e2e/hosted_provider.py).

The sample app, its judge and its optimizer are served over loopback HTTP and configured only
through `llm.models` (base URL, key source, prices). A cycle against the hosted-like server (45% of
verdicts fenced or wrapped in prose, 2% unreadable until repaired, 429 bursts with Retry-After,
500s) must reach the decision the same cycle reaches when every verdict is bare JSON, with no judge
failure. The ways a real set-up goes wrong (no key, no price under a budget, `api_base` in a prompt,
a hosted judge for a local-only app, a provider error that repeats the key) end before a single
request, or without the key anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import git
import pytest
import yaml
from hosted_provider import Behaviour, HostedProvider, Serving

from promptloop.demo.run import write_sample_logs
from promptloop.domain.results import CycleResult
from promptloop.loop.cycle import cycle
from promptloop.ops.initialize import init_workspace
from promptloop.workspace.workspace import open_workspace

pytestmark = pytest.mark.slow

APP = "support-bot"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
KEY_VAR = "SIM_PROVIDER_KEY"
KEY = "sk-sim-3f9c2a7e41b84d0c9e6a5b1d"
HOSTED = Behaviour(mangled_share=0.45, unreadable_share=0.02, rate_limited_share=0.03, server_error_share=0.01)


def hosted_workspace(root: Path, base_url: str, *, price: bool = True, locality: str = "local",
                     policy: str = "any", logs: int = 1000) -> Path:
    """A workspace with the sample logs whose app, judges and optimizer are served at `base_url`."""
    init_workspace(root)
    write_sample_logs(open_workspace(root), APP, logs, NOW)  # the production traffic, as the app logged it
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    entry: dict[str, Any] = {"api_base": base_url, "api_key": f"env:{KEY_VAR}", "license": "restrictive",
                             "locality": locality, "rpm": 60_000}
    if price:
        entry |= {"input_per_mtok": 0.15, "output_per_mtok": 0.60}
    params["llm"]["models"] = {"openai/sim-*": entry, **params["llm"]["models"]}
    params["apps"][APP].update(model="openai/sim-bot", data_policy=policy)
    params["evaluate"]["judge_model"] = params["analyze"]["judge_model"] = "openai/sim-judge"
    params["improve"]["optimizer_model"] = "openai/sim-optimizer"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    repo = git.Repo(root)
    repo.index.add(["params.yaml"])
    repo.index.commit("the app, its judges and its optimizer on the hosted provider")
    return root


def run_cycle(tmp_path: Path, name: str, behaviour: Behaviour) -> tuple[CycleResult, HostedProvider, Path]:
    provider = HostedProvider(KEY, behaviour)
    with Serving(provider) as serving:
        root = hosted_workspace(tmp_path / name, serving.base_url)
        result = cycle(open_workspace(root), APP, now=NOW)
    return result, provider, root


@pytest.fixture(scope="module")
def both_cycles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[CycleResult, HostedProvider, Path]]:
    tmp = tmp_path_factory.mktemp("hosted")
    os.environ[KEY_VAR] = KEY
    try:
        return {"bare": run_cycle(tmp, "bare", Behaviour()), "hosted": run_cycle(tmp, "hosted", HOSTED)}
    finally:
        del os.environ[KEY_VAR]


def decided(result: CycleResult) -> tuple[Any, ...]:
    assert result.improve is not None
    evaluation = result.improve.evaluation
    return (result.decision, result.improve.best and result.improve.best.name,
            [(c.name, c.mean_score, c.ci_low, c.decision, c.reasons) for c in evaluation.candidates],
            evaluation.baseline.mean_score)


def test_a_hosted_like_provider_gives_the_decision_of_bare_json_verdicts(both_cycles) -> None:
    bare, _, _ = both_cycles["bare"]
    hosted, provider, _ = both_cycles["hosted"]
    assert bare.decision == "promote" and bare.deploy is not None and bare.deploy.branch
    assert decided(hosted) == decided(bare)
    assert hosted.improve is not None
    evaluation = hosted.improve.evaluation
    assert evaluation.complete and evaluation.judge_failures == 0
    # The server really behaved like a hosted one, and the run coped with all of it.
    judged = evaluation.usage.by_purpose
    verdicts = sum(u.calls for purpose, u in judged.items() if purpose.startswith("judge:"))
    assert provider.mangled >= 0.3 * verdicts and provider.unreadable > 0 and provider.repairs > 0
    assert provider.refused["429"] > 0 and provider.refused["500"] > 0
    usage = evaluation.usage
    assert usage.repairs > 0 and usage.failures == 0
    assert {"RateLimitError", "InternalServerError"} <= set(usage.retry_causes)
    assert "invalid answer" not in usage.retry_causes  # repairs are counted apart from provider errors
    assert provider.keys_seen == {KEY}  # every request carried the configured key, and only it


def test_the_hosted_run_is_priced_from_llm_models_and_never_stores_the_key(both_cycles) -> None:
    hosted, _, root = both_cycles["hosted"]
    assert hosted.improve is not None and hosted.improve.evaluation.cost_usd > 0
    assert KEY not in json.dumps(hosted.model_dump(mode="json"))
    for path in root.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert KEY.encode() not in path.read_bytes(), path


def promptloop(root: Path, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != KEY_VAR} | ({KEY_VAR: key} if key else {})
    command = [str(Path(sys.executable).parent / "promptloop"), *args, "--app", APP, "--workspace", str(root), "--json"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def refused_before_any_request(tmp_path: Path, *args: str, key: str | None = KEY,
                               **setup: Any) -> tuple[str, HostedProvider]:
    provider = HostedProvider(KEY)
    with Serving(provider) as serving:
        root = hosted_workspace(tmp_path / "ws", serving.base_url, logs=50, **setup)
        done = promptloop(root, *args, key=key)
    assert done.returncode == 2, done.stderr[-2000:]
    assert provider.requests == 0
    assert KEY not in done.stdout + done.stderr
    return json.loads(done.stdout)["error"], provider


def test_a_missing_key_is_exit_2_before_any_request(tmp_path: Path) -> None:
    error, _ = refused_before_any_request(tmp_path, "cycle", key=None)
    assert f"environment variable {KEY_VAR} is not set" in error and "llm.models.openai/sim-*.api_key" in error


def test_a_model_without_a_price_under_a_budget_is_exit_2_before_any_request(tmp_path: Path) -> None:
    error, _ = refused_before_any_request(tmp_path, "evaluate", price=False)
    assert "'openai/sim-" in error and "has no price" in error and "input_per_mtok" in error


def test_a_hosted_judge_for_a_local_only_app_is_exit_2_before_any_request(tmp_path: Path) -> None:
    error, _ = refused_before_any_request(tmp_path, "cycle", locality="hosted", policy="local-only")
    assert "local-only" in error and "is hosted" in error


def test_a_prompt_that_sets_api_base_is_refused_and_the_key_goes_nowhere(tmp_path: Path) -> None:
    attacker = HostedProvider("anything")
    with Serving(attacker) as elsewhere:
        candidate = tmp_path / "evil.yaml"
        prompt = yaml.safe_load((Path(__file__).parents[1] / "data/candidates/better.yaml").read_text())
        prompt["parameters"]["api_base"] = elsewhere.base_url
        candidate.write_text(yaml.safe_dump(prompt), encoding="utf-8")
        error, provider = refused_before_any_request(tmp_path, "evaluate", "--candidate", str(candidate))
    assert "parameters" in error and "api_base not allowed" in error
    assert attacker.requests == 0 and provider.requests == 0


def test_a_provider_error_that_repeats_the_key_is_stored_and_printed_redacted(tmp_path: Path) -> None:
    provider = HostedProvider(KEY, Behaviour(echo_key=True))
    with Serving(provider) as serving:
        root = hosted_workspace(tmp_path / "ws", serving.base_url, logs=50)
        done = promptloop(root, "evaluate")
    assert done.returncode == 0 and provider.refused["400"] > 0  # evaluate reports incomplete, it does not fail
    report = json.loads(done.stdout)
    assert not report["complete"] and "<api-key>" in report["stopped"]
    assert KEY not in done.stdout + done.stderr
    for path in root.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert KEY.encode() not in path.read_bytes(), path
