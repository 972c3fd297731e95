"""The Prefect flows, run by a real (temporary) Prefect server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from promptloop.initialize import init_workspace

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

        yield SimpleNamespace(collect=flows.collect, analyze=flows.analyze)
    finally:
        sys.path.remove(str(REPO))


@pytest.mark.e2e
def test_collect_flow_runs_the_stage_and_publishes_its_table(prefect_server, flows, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    init_workspace(tmp_path / "ws")
    rows = [{"id": f"r{i}", "timestamp": "2026-11-20T10:00:00+00:00", "app": "support-bot", "prompt_version": "1",
             "model": "offline/support-bot", "input": f"q {i} mail me at kim@example.net", "output": "a", "latency_ms": 300,
             "prompt_tokens": 50, "completion_tokens": 10, "cost_usd": None, "error": None, "feedback": None,
             "feedback_comment": None, "user_id": "u1", "metadata": None} for i in range(5)]
    (tmp_path / "ws/incoming/support-bot").mkdir(parents=True)
    (tmp_path / "ws/incoming/support-bot/a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{bad\n")

    state = flows.collect.collect_flow(flows.collect.CollectParameters(workspace=str(tmp_path / "ws")), return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert (summary["rows_in"], summary["rows_valid"], summary["rows_quarantined"]) == (6, 5, 1)
    assert summary["pii_redactions"] == {"EMAIL": 5}

    async def artifacts() -> list:
        async with get_client() as client:
            return await client.read_artifacts()

    table = [a for a in asyncio.run(artifacts()) if a.key == "collect-support-bot"]
    assert table and "| rows_valid | 5 |" in table[0].data


@pytest.mark.e2e
def test_analyze_flow_publishes_headline_and_failed_checks(prefect_server, flows, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from promptloop.demo import run_demo

    demo = run_demo(tmp_path / "demo", interactions=300)
    state = flows.analyze.analyze_flow(flows.analyze.AnalyzeParameters(workspace=demo["workspace"]), return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["metrics"]["interactions"] > 0 and summary["mlflow_run_id"]

    async def artifacts() -> dict:
        async with get_client() as client:
            return {a.key: a.data for a in await client.read_artifacts()}

    published = asyncio.run(artifacts())
    assert "| thumbs_down_rate |" in published["analyze-support-bot"]
    checks = published["analyze-support-bot-alerts"]
    assert f"{len(summary['alerts'])} failed" in checks and checks.count("❌") == len(summary["alerts"])
