"""`promptloop demo`: a scratch workspace, simulated production logs, and the loop run on them."""

from __future__ import annotations

import asyncio
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from promptloop.core.errors import InputError
from promptloop.core.jsonl import write_jsonl
from promptloop.core.progress import NO_PROGRESS, ProgressHooks
from promptloop.demo.simulated.tickets import (
    TicketTrafficSummary,
    generate_ticket_logs,
    has_ticket_bank,
    load_tickets,
    summarize_tickets,
)
from promptloop.demo.simulated.traffic import TrafficSummary, generate_logs, load_bank, summarize
from promptloop.domain.prompts import load_prompt
from promptloop.domain.results import AnalyzeResult, CollectResult, CycleResult
from promptloop.evaluate.targets import load_function
from promptloop.llm.client import ApiKeys, litellm_module_configured
from promptloop.loop.cycle import cycle
from promptloop.ops.initialize import InitResult, init_workspace
from promptloop.ops.mlflow_ui import ui_command
from promptloop.workspace.preflight import preflight
from promptloop.workspace.workspace import Workspace, open_workspace

DEMO_MARKER = Path(".promptloop") / "made-by-demo"


def prepare_demo_dir(dest: Path) -> None:
    """Start from a clean scratch folder; only a folder an earlier demo made may be wiped."""
    if dest.exists() and any(dest.iterdir()):
        if not (dest / DEMO_MARKER).is_file():
            raise InputError(dest, "folder is not empty and was not made by `promptloop demo`; choose another --dir")
        shutil.rmtree(dest)


class SampleLogs(TrafficSummary):
    """The simulated traffic written for collect, and what it holds."""

    log_file: str = Field(description="relative to the workspace")


class SampleTicketLogs(TicketTrafficSummary):
    """The simulated ticket traffic written for collect, and what it holds."""

    log_file: str = Field(description="relative to the workspace")


def write_sample_logs(workspace: Workspace, app_name: str, interactions: int, now: datetime,
                      progress: ProgressHooks = NO_PROGRESS) -> SampleLogs | SampleTicketLogs:
    """Run the simulated traffic through the app and write it where collect looks for logs.

    The app's traffic folder (next to its golden set) says which traffic: questions for a question-answering
    app (questions.jsonl), tickets for a ticket-triage app (tickets.jsonl).
    """
    settings = workspace.app_settings(app_name)
    traffic = workspace.path(settings.golden_set).parent / "traffic"
    if has_ticket_bank(traffic):
        return write_ticket_logs(workspace, app_name, interactions, now, progress)
    params = workspace.params
    app = workspace.load_app(app_name)
    bank, pii = load_bank(traffic)
    litellm = litellm_module_configured(params.llm, str(workspace.root / "params.yaml"))
    api_key = ApiKeys(params.llm, str(workspace.root / "params.yaml")).for_model(app.model)  # as llm.models says
    progress.start(interactions)
    rows, malformed, kinds = asyncio.run(
        generate_logs(litellm, app, bank, pii, params.demo, interactions, now, params.llm.max_concurrency,
                      params.llm.timeout_s, lambda: progress.advance(1), api_key)
    )
    path = workspace.path(settings.log_dir) / f"interactions-{now:%Y%m%dT%H%M%S}.jsonl"
    write_jsonl(path, rows)
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in malformed)
    return SampleLogs(log_file=str(path.relative_to(workspace.root)), **summarize(rows, kinds).model_dump())


def write_ticket_logs(workspace: Workspace, app_name: str, interactions: int, now: datetime,
                      progress: ProgressHooks = NO_PROGRESS) -> SampleTicketLogs:
    """Tickets triaged by the app's own code (its `python:` target) with its current prompt, written for collect."""
    params = workspace.params
    settings = workspace.app_settings(app_name)
    prompt = load_prompt(workspace.path(settings.prompt))
    model = settings.model or prompt.model
    function = load_function(settings.target, workspace.root, f"apps.{app_name}.target")
    bank = load_tickets(workspace.path(settings.golden_set).parent / "traffic")
    litellm = litellm_module_configured(params.llm, str(workspace.root / "params.yaml"))
    api_key = ApiKeys(params.llm, str(workspace.root / "params.yaml")).for_model(model)
    progress.start(interactions)
    rows, malformed, kinds = asyncio.run(
        generate_ticket_logs(litellm, app_name, prompt, model, function, bank, params.demo, interactions, now,
                             params.llm.max_concurrency, params.llm.timeout_s, lambda: progress.advance(1), api_key)
    )
    path = workspace.path(settings.log_dir) / f"interactions-{now:%Y%m%dT%H%M%S}.jsonl"
    write_jsonl(path, rows)
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in malformed)
    summary = summarize_tickets(rows, kinds)
    return SampleTicketLogs(log_file=str(path.relative_to(workspace.root)), **summary.model_dump())


class AppDemo(BaseModel):
    """One more app of the demo: its simulated traffic and the cycle run on it."""

    app: str
    logs: SampleLogs | SampleTicketLogs
    cycle: CycleResult


class DemoResult(BaseModel):
    """`promptloop demo`: the scratch workspace, the traffic written, and the cycle run on it."""

    workspace: str
    app: str
    init: InitResult
    logs: SampleLogs | SampleTicketLogs
    cycle: CycleResult
    collect: CollectResult
    analyze: AnalyzeResult | None
    data_policy: str = Field(description="what a local-only app answers to a hosted judge (refused before any call)")
    mlflow_ui: str = Field(description="the command that opens the MLflow UI on the workspace")
    more: list[AppDemo] = Field(default_factory=list, description="the other apps of `demo.more_apps`, each "
                                "with its traffic and cycle")


def run_demo(dest: Path, interactions: int | None = None, now: datetime | None = None,
             progress: ProgressHooks = NO_PROGRESS) -> DemoResult:
    """init, sample logs, then one cycle of the loop (collect, analyze, improve, deploy)."""
    dest = dest.resolve()
    now = now or datetime.now(UTC)
    prepare_demo_dir(dest)
    created = init_workspace(dest)
    (dest / DEMO_MARKER).parent.mkdir(exist_ok=True)
    (dest / DEMO_MARKER).write_text("made by `promptloop demo`; safe to delete\n", encoding="utf-8")
    workspace = open_workspace(dest)
    app_name = workspace.params.demo.app
    logs = write_sample_logs(workspace, app_name, interactions or workspace.params.demo.interactions, now, progress)
    turn = cycle(workspace, app_name, now=now)
    more = [run_app_demo(workspace, other, interactions or workspace.params.demo.interactions, now)
            for other in workspace.params.demo.more_apps]
    ui = ui_command(str(Path(sys.executable).parent / "mlflow"), workspace.tracking_uri)
    return DemoResult(workspace=created.workspace, app=app_name, init=created, logs=logs, cycle=turn,
                      collect=turn.collect, analyze=turn.analyze, data_policy=local_only_refusal(workspace, app_name),
                      mlflow_ui=ui, more=more)


def run_app_demo(workspace: Workspace, app_name: str, interactions: int, now: datetime) -> AppDemo:
    """Simulated traffic for one more app, then a cycle on it."""
    logs = write_sample_logs(workspace, app_name, interactions, now)
    return AppDemo(app=app_name, logs=logs, cycle=cycle(workspace, app_name, now=now))


HOSTED_JUDGE = "openai/gpt-4o-mini"


def local_only_refusal(workspace: Workspace, app: str) -> str:
    """The refusal a local-only app gives a hosted judge, before any call (the demo shows it once)."""
    local_only = workspace.app_settings(app).model_copy(update={"data_policy": "local-only"})
    params = workspace.params.model_copy(update={"apps": {**workspace.params.apps, app: local_only}})
    try:
        preflight(Workspace(workspace.root, params), app, {"judge": HOSTED_JUDGE})
    except InputError as refused:
        return str(refused).removeprefix(f"{workspace.root / 'params.yaml'}: ")
    return f"{HOSTED_JUDGE} was accepted: llm.models marks it local"
