"""Orchestration: prefect.yaml, the flows' imports, and `serve` end to end (a real Prefect server,
process worker and MLflow UI; the `cycle` deployment triggered through the API as the UI does)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import git
import pytest
import yaml

from conftest import REPO

APP = "support-bot"
FLOWS = ("collect", "analyze", "improve", "deploy", "release", "cycle")
CYCLE_TIMEOUT_S = 600


def prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))


def test_prefect_yaml_has_one_deployment_per_flow_on_the_process_pool() -> None:
    deployments = {d["name"]: d for d in prefect_yaml()["deployments"]}
    assert sorted(deployments) == sorted(FLOWS)
    for name, deployment in deployments.items():
        assert deployment["entrypoint"] == f"flows/{name}.py:{name}_flow"
        assert deployment["work_pool"]["name"] == "promptloop"
        assert deployment["parameters"]["app"] == APP
        assert deployment["parameters"]["workspace"] == "."
    assert deployments["cycle"]["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert {n for n, d in deployments.items() if d.get("schedules")} == {"collect", "analyze", "cycle"}


def test_schedules_use_the_time_zone_of_params_yaml() -> None:
    from promptloop.core.config import load_params

    zone = load_params(REPO / "params.yaml").schedule.timezone
    schedules = [s for d in prefect_yaml()["deployments"] for s in d.get("schedules") or []]
    assert schedules and all(s["timezone"] == zone for s in schedules)


def test_flows_import_without_side_effects(tmp_path: Path) -> None:
    """Importing every flow module writes nothing: no file in the working folder, nothing in the Prefect home."""
    cwd, home = tmp_path / "cwd", tmp_path / "prefect-home"
    cwd.mkdir()
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); " + "; ".join(f"import flows.{name}" for name in FLOWS)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert list(cwd.iterdir()) == []
    # `import prefect` itself makes its home folder; it must stay empty (no database, no profile, no logs)
    assert not home.exists() or list(home.iterdir()) == []


def test_flow_parameters_override_params_yaml_for_one_run(initialized_workspace) -> None:
    from promptloop.core.errors import InputError
    from promptloop.workspace.workspace import open_workspace, with_overrides

    workspace = open_workspace(initialized_workspace[0])
    changed = with_overrides(workspace, {"improve": {"candidates": 5}, "evaluate": {"budget_usd": None}})
    assert changed.params.improve.candidates == 5
    assert changed.params.evaluate.budget_usd == workspace.params.evaluate.budget_usd
    with pytest.raises(InputError, match="improve.candidates"):
        with_overrides(workspace, {"improve": {"candidates": -1}})


# --- end to end -----------------------------------------------------------------------------------


async def wait_for_final(client: Any, flow_run_id: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        run = await client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"flow run {flow_run_id} still {run.state and run.state.name} after {timeout_s}s")
        await asyncio.sleep(2)


async def deploy_and_run_cycle() -> dict[str, Any]:
    """Read the deployments back, trigger `cycle` as the UI's Run button does, wait for it to end."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    async with get_client() as client:
        deployments = {d.name: d for d in await client.read_deployments()}
        pool = await client.read_work_pool("promptloop")
        started = await run_deployment("cycle/cycle", timeout=0)
        run = await wait_for_final(client, started.id, CYCLE_TIMEOUT_S)
        flows = {f.id: f.name for f in await client.read_flows()}
        runs = [(flows[r.flow_id], r.state.name) for r in await client.read_flow_runs()]
        artifacts = {a.key: a.data for a in await client.read_artifacts()}
    return {"deployments": deployments, "pool": pool, "run": run, "runs": runs, "artifacts": artifacts}


@pytest.mark.e2e
def test_serve_deploys_every_flow_and_runs_the_cycle_from_the_api(tmp_path: Path) -> None:
    import mlflow
    import psutil
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from promptloop.demo.run import write_sample_logs
    from promptloop.ops.initialize import init_workspace
    from promptloop.ops.serve import process_tree, serving
    from promptloop.workspace.workspace import open_workspace

    root = tmp_path / "ws"
    init_workspace(root)
    workspace = open_workspace(root)
    write_sample_logs(workspace, APP, 1000, datetime.now(UTC))
    golden_dvc = "datasets/support-bot/golden.jsonl.dvc"
    golden_commits = len(git.Repo(root).git.log("--format=%H", "--", golden_dvc).split())

    # The scheduler stays off: a scheduled collect starting mid-test would race the cycle's commits.
    with serving(root, scheduler=False) as services:
        tree = [p for process in services.processes.values() for p in process_tree(process)]
        import urllib.request

        with urllib.request.urlopen(f"{services.mlflow_url}/health", timeout=10) as response:
            assert response.status == 200
        with temporary_settings({PREFECT_API_URL: services.env["PREFECT_API_URL"]}):
            seen = asyncio.run(deploy_and_run_cycle())
        mlflow_url = services.mlflow_url
        tree += [p for process in services.processes.values() for p in process_tree(process)]

    # Every process serve started, and everything they started, is gone.
    assert [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []

    assert seen["pool"].type == "process"
    deployments = seen["deployments"]
    assert sorted(deployments) == sorted(FLOWS)
    declared = {d["name"]: d for d in prefect_yaml()["deployments"]}
    for name, deployment in deployments.items():
        crons = sorted((s.schedule.cron, s.schedule.timezone) for s in deployment.schedules)
        assert crons == sorted((s["cron"], s["timezone"]) for s in declared[name].get("schedules") or [])
        assert deployment.work_pool_name == "promptloop"
        assert deployment.parameters["app"] == APP
    cycle = deployments["cycle"]
    # The form of the Run button: flat fields, as tests/unit/test_flow_forms.py checks for every flow.
    form = cycle.parameter_openapi_schema["properties"]
    assert list(form)[:3] == ["app", "workspace", "force"] and all(f.get("description") for f in form.values())
    assert cycle.global_concurrency_limit is not None and cycle.global_concurrency_limit.limit == 1
    assert cycle.concurrency_options.collision_strategy.value == "ENQUEUE"

    assert seen["run"].state.is_completed(), seen["run"].state
    assert {"cycle", "collect", "analyze", "improve", "deploy"} <= {name for name, _ in seen["runs"]}
    table = seen["artifacts"][f"cycle-{APP}"]
    assert "**promote**" in table

    client = mlflow.MlflowClient(tracking_uri=workspace.tracking_uri)
    experiment = client.get_experiment_by_name(f"promptloop/{APP}")
    evaluations = client.search_runs([experiment.experiment_id], "tags.`promptloop.stage` = 'evaluate'")
    parents = [r for r in evaluations if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].info.run_id in table and parents[0].info.run_id in seen["artifacts"][f"improve-{APP}"]
    # serve told the worker where its MLflow UI is: the cycle's artifact links the evaluation run there
    assert f"({mlflow_url}/#/runs/{parents[0].info.run_id})" in table

    assert len(git.Repo(root).git.log("--format=%H", "--", golden_dvc).split()) > golden_commits
    branches = [h.name for h in git.Repo(root / "remote.git").heads]
    assert any(b.startswith(f"promptloop/{APP}/v2-") for b in branches), branches
