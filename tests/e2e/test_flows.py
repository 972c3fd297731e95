"""The Prefect flows, run by a real (temporary) Prefect server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from promptloop.ops.initialize import init_workspace

from conftest import REPO


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):
    import os

    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def flows():
    """The flow modules of the checkout's flows/ folder."""
    sys.path.insert(0, str(REPO))
    try:
        import flows.analyze
        import flows.collect
        import flows.cycle

        yield SimpleNamespace(collect=flows.collect, analyze=flows.analyze, cycle=flows.cycle)
    finally:
        sys.path.remove(str(REPO))


@pytest.mark.e2e
def test_collect_flow_runs_the_stage_and_publishes_its_table(prefect_server, flows, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    init_workspace(tmp_path / "ws")
    rows = [
        {
            "id": f"r{i}",
            "timestamp": "2026-11-20T10:00:00+00:00",
            "app": "support-bot",
            "prompt_version": "1",
            "model": "offline/support-bot",
            "input": f"q {i} mail me at kim@example.net",
            "output": "a",
            "latency_ms": 300,
            "prompt_tokens": 50,
            "completion_tokens": 10,
            "cost_usd": None,
            "error": None,
            "feedback": None,
            "feedback_comment": None,
            "user_id": "u1",
            "metadata": None,
        }
        for i in range(5)
    ]
    (tmp_path / "ws/incoming/support-bot").mkdir(parents=True)
    (tmp_path / "ws/incoming/support-bot/a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{bad\n")

    state = flows.collect.collect_flow(workspace=str(tmp_path / "ws"), return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert (summary.rows_in, summary.rows_valid, summary.rows_quarantined) == (6, 5, 1)
    assert summary.pii_redactions == {"EMAIL": 5}

    async def artifacts() -> list:
        async with get_client() as client:
            return await client.read_artifacts()

    table = [a for a in asyncio.run(artifacts()) if a.key == "collect-support-bot"]
    assert table and "| rows_valid | 5 |" in table[0].data


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A demo workspace after its cycle (run by the library): improve ran, no new logs since."""
    from promptloop.demo.run import run_demo

    return run_demo(tmp_path_factory.mktemp("demo") / "demo", interactions=300)


async def flow_run_artifacts(flow_run_id: Any) -> dict[str, str]:
    """The artifacts on one flow run itself (not on its subflows' runs), by key."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {a.key: a.data for a in await client.read_artifacts() if a.flow_run_id == flow_run_id}


async def flow_run_log(flow_run_id: Any) -> list[str]:
    """The messages the flow run logged, once the log handler sent them to the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    async with get_client() as client:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


@pytest.mark.e2e
def test_analyze_flow_publishes_headline_and_failed_checks(prefect_server, flows, demo) -> None:
    from prefect.client.orchestration import get_client

    state = flows.analyze.analyze_flow(workspace=demo.workspace, return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary.metrics["interactions"] > 0 and summary.mlflow_run_id

    async def artifacts() -> dict:
        async with get_client() as client:
            return {a.key: a.data for a in await client.read_artifacts()}

    published = asyncio.run(artifacts())
    assert "| thumbs_down_rate |" in published["analyze-support-bot"]
    checks = published["analyze-support-bot-alerts"]
    assert f"{len(summary.alerts)} failed" in checks and checks.count("❌") == len(summary.alerts)


@pytest.mark.e2e
def test_a_cycle_with_no_new_logs_says_it_stopped_after_collect_and_how_to_force_it(prefect_server, flows,
                                                                                      demo) -> None:
    from promptloop.loop.summary import FORCE_HINT

    state = flows.cycle.cycle_flow(workspace=demo.workspace, return_state=True)
    assert state.is_completed()
    result = state.result()
    assert result.decision == "skipped" and result.analyze is None and result.collect.rows_in == 0
    run_id = state.state_details.flow_run_id
    assert FORCE_HINT in asyncio.run(flow_run_artifacts(run_id))["cycle-support-bot"]
    assert "support-bot: skipped: no new logs since the last cycle; run it with force to analyze and improve anyway" \
        in asyncio.run(flow_run_log(run_id))


@pytest.mark.e2e
def test_a_forced_cycle_publishes_its_decision_and_pull_request_on_its_own_run(
    prefect_server, flows, demo, monkeypatch: pytest.MonkeyPatch
) -> None:
    from promptloop.loop.summary import FORCE_HINT, result_line
    from promptloop.workspace.links import UI_URL_ENV

    monkeypatch.setenv(UI_URL_ENV, "http://127.0.0.1:5999")  # as `promptloop serve` tells its worker
    state = flows.cycle.cycle_flow(workspace=demo.workspace, force=True, return_state=True)
    assert state.is_completed()
    result = state.result()
    # The demo's candidate again: the same decision, on the branch its first cycle opened.
    assert result.decision == "promote" and result.deploy and result.deploy.branch and not result.deploy.created
    run_id = state.state_details.flow_run_id
    page = asyncio.run(flow_run_artifacts(run_id))["cycle-support-bot"]
    assert page.startswith(f"### cycle support-bot: **promote** {result.improve.best.name}")
    assert "| prompt | model |" in page and f"| {result.improve.best.name} (v" in page  # the decision table
    assert f"branch `{result.deploy.branch}`" in page and FORCE_HINT not in page
    evaluation = result.improve.evaluation.mlflow_run_id
    assert f"[{evaluation}](http://127.0.0.1:5999/#/runs/{evaluation})" in page
    line = result_line(result)
    assert line.startswith(f"support-bot: promote {result.improve.best.name} -> branch {result.deploy.branch}, ")
    assert line in asyncio.run(flow_run_log(run_id))


@pytest.mark.e2e
def test_evaluate_on_a_local_dask_cluster_gives_the_results_of_the_default_runner(tmp_path: Path) -> None:
    """The Dask run is its own process (a flow run on Prefect's ephemeral API, a local cluster of two
    worker processes): its batches are computed there, not replayed from a cache."""
    import os
    import subprocess

    import yaml

    from promptloop.evaluate.stage import evaluate
    from promptloop.workspace.workspace import open_workspace

    root = tmp_path / "ws"
    init_workspace(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["llm"]["cache"] = None  # both runs make every call: the Dask run must compute, not replay
    params["evaluate"]["sequential"] = {"enabled": False}  # the Dask flow evaluates every case: so must the default
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    candidates = [REPO / "tests/data/candidates/better.yaml", REPO / "tests/data/candidates/terse.yaml"]

    default = evaluate(open_workspace(root), "support-bot", candidates)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, str(REPO / "flows/evaluate.py"), "--workspace", str(root), "--batches", "3", "--dask"]
    for path in candidates:
        args += ["--candidate", str(path)]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    on_dask = json.loads(done.stdout.strip().splitlines()[-1])

    # No cache between runs: every request is asked, or shared with an identical one in flight in the same batch.
    asked = {"dask": on_dask["usage"]["calls"] + on_dask["usage"]["cache_hits"],
             "default": default.usage.calls + default.usage.cache_hits}
    assert asked["dask"] == asked["default"] and on_dask["usage"]["calls"] >= default.usage.calls > 0
    fields = (
        "name",
        "mean_score",
        "diff",
        "ci_low",
        "ci_high",
        "p_adjusted",
        "wins",
        "ties",
        "losses",
        "decision",
        "reasons",
    )
    assert ([{k: c[k] for k in fields} for c in on_dask["candidates"]]
            == [{k: getattr(c, k) for k in fields} for c in default.candidates])
    assert on_dask["baseline"]["mean_score"] == default.baseline.mean_score
