"""`promptloop demo`: a scratch workspace, simulated production logs, and the loop run on them."""

from __future__ import annotations

import asyncio
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from promptloop.loop.cycle import cycle
from promptloop.core.errors import InputError
from promptloop.ops.initialize import init_workspace
from promptloop.core.jsonl import write_jsonl
from promptloop.llm.client import ApiKeys, litellm_module_configured
from promptloop.demo.simulated.traffic import generate_logs, load_bank, summarize
from promptloop.workspace.workspace import Workspace, open_workspace

DEMO_MARKER = Path(".promptloop") / "made-by-demo"


def prepare_demo_dir(dest: Path) -> None:
    """Start from a clean scratch folder; only a folder an earlier demo made may be wiped."""
    if dest.exists() and any(dest.iterdir()):
        if not (dest / DEMO_MARKER).is_file():
            raise InputError(dest, "folder is not empty and was not made by `promptloop demo`; choose another --dir")
        shutil.rmtree(dest)


def write_sample_logs(
    workspace: Workspace, app_name: str, interactions: int, now: datetime,
    on_start: Callable[[int], None] = lambda total: None, on_progress: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Run the simulated traffic through the app and write it where collect looks for logs."""
    params = workspace.params
    settings = workspace.app_settings(app_name)
    app = workspace.load_app(app_name)
    bank, pii = load_bank(workspace.path(settings.golden_set).parent / "traffic")
    litellm = litellm_module_configured(params.llm, str(workspace.root / "params.yaml"))
    api_key = ApiKeys(params.llm, str(workspace.root / "params.yaml")).for_model(app.model)  # as llm.api_keys says
    on_start(interactions)
    rows, malformed, kinds = asyncio.run(
        generate_logs(litellm, app, bank, pii, params.demo, interactions, now, params.llm.max_concurrency,
                      params.llm.timeout_s, on_progress, api_key)
    )
    path = workspace.path(settings.log_dir) / f"interactions-{now:%Y%m%dT%H%M%S}.jsonl"
    write_jsonl(path, rows)
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in malformed)
    return {"log_file": str(path.relative_to(workspace.root)), **summarize(rows, kinds)}


def run_demo(
    dest: Path, interactions: int | None = None, now: datetime | None = None,
    on_start: Callable[[int], None] = lambda total: None, on_progress: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """init, sample logs, then one cycle of the loop (collect, analyze, improve, deploy)."""
    dest = dest.resolve()
    now = now or datetime.now(timezone.utc)
    prepare_demo_dir(dest)
    created = init_workspace(dest)
    (dest / DEMO_MARKER).parent.mkdir(exist_ok=True)
    (dest / DEMO_MARKER).write_text("made by `promptloop demo`; safe to delete\n", encoding="utf-8")
    workspace = open_workspace(dest)
    app_name = workspace.params.demo.app
    logs = write_sample_logs(
        workspace, app_name, interactions or workspace.params.demo.interactions,
        now, on_start, on_progress,
    )
    turn = cycle(workspace, app_name, now=now)
    ui = f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {workspace.tracking_uri} --host 127.0.0.1 --port 5000"
    return {"workspace": created["workspace"], "app": app_name, "init": created, "logs": logs, "cycle": turn,
            "collect": turn["collect"], "analyze": turn["analyze"], "mlflow_ui": ui}
