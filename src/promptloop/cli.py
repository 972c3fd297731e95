"""The `promptloop` command line. With --json each command prints exactly one JSON object on
stdout; logs and progress go to stderr. Exit codes: 0 success, 2 bad input or config, 75 the workspace
stayed busy with another promptloop process (try again later), 1 other (an incomplete run included)."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from promptloop import __version__
from promptloop.core.errors import InputError, WorkspaceBusy
from promptloop.core.progress import ProgressHooks
from promptloop.core.runtime import allow_helper_processes, exit_without_teardown, prepare_environment
from promptloop.core.secrets import redact_secrets

if TYPE_CHECKING:
    from promptloop.demo.run import DemoResult
    from promptloop.domain.evaluation import EvaluationResult
    from promptloop.domain.results import (
        AnalyzeResult,
        CheckResult,
        CollectResult,
        CycleResult,
        DeployResult,
        ImproveOutcome,
    )
    from promptloop.workspace.workspace import Workspace

app = typer.Typer(
    help="Keep an LLM app improving after launch: collect -> analyze -> improve -> deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True)

JsonOption = typer.Option(False, "--json", help="Print exactly one JSON object on stdout.")
WorkspaceOption = typer.Option(Path("."), "--workspace", "-w", help="The workspace folder (made by `init`).")
AppOption = typer.Option(..., "--app", help="The app, as named under `apps:` in params.yaml.")
ProbeOption = typer.Option(
    False, "--preflight",
    help="First send each model the run uses (the app's, the judge's, ...) a 1-token request. Keys, base URLs, "
         "prices and the app's data policy are checked before every run anyway.")


Result = TypeVar("Result", bound=BaseModel)


def run_command(as_json: bool, action: Callable[[], Result], render: Callable[[Result], None]) -> Result:
    """Run a command body: one JSON object or a readable report; errors become exit codes."""
    prepare_environment()
    try:
        result = action()
    except InputError as exc:
        _fail(as_json, str(exc), "input", 2)
    except WorkspaceBusy as exc:
        _fail(as_json, str(exc), "busy", 75)  # sysexits EX_TEMPFAIL: nothing is wrong, try later
    except KeyboardInterrupt:
        _fail(as_json, "interrupted", "interrupted", 1)
    except Exception as exc:  # the CLI's last line of defence: one line, exit 1
        if os.environ.get("PROMPTLOOP_DEBUG"):
            traceback.print_exc()
        _fail(as_json, f"{type(exc).__name__}: {exc}", "internal", 1)
    if as_json:
        sys.stdout.write(redact_secrets(json.dumps(result.model_dump(mode="json"), ensure_ascii=False)) + "\n")
    else:
        render(result)
    return result


def exit_if_incomplete(result: ImproveOutcome | CycleResult) -> None:
    """Exit 1 when the run ended `incomplete` (as `check` does): nothing was promoted, and a script
    or scheduler must not read that as success."""
    if result.decision == "incomplete":
        reason = (result.reasons or ["evaluation incomplete"])[0]
        stderr.print(f"[bold red]error:[/] incomplete: {escape(reason)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _fail(as_json: bool, message: str, kind: str, code: int) -> None:
    message = redact_secrets(message)  # an error may repeat what a provider was sent, its key included
    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps({"ok": False, "error": message, "kind": kind}, ensure_ascii=False) + "\n")
    raise typer.Exit(code)


def progress_bar() -> Progress:
    """A progress bar on stderr, so stdout stays machine-readable."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=stderr, transient=True)


def render_mapping(title: str, rows: Mapping[str, object]) -> None:
    """A two-column table of a flat mapping on stdout."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows.items():
        table.add_row(
            escape(key),
            escape(json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)),
        )
    Console().print(table)


def render_collect(result: CollectResult) -> None:
    """The collect summary as a table."""
    keys = {"rows_in", "rows_valid", "rows_quarantined", "rows_duplicate", "feedback_updated", "pii_redactions",
            "failures", "snapshot", "dvc_md5", "git_commit", "mlflow_run_id"}
    # Only for logs in an app's own format (log_filter, log_feedback):
    keys |= {k for k in ("lines_skipped", "feedback_waiting", "feedback_expired", "feedback_unreadable")
             if getattr(result, k)}
    render_mapping(f"collect {result.app}", result.model_dump(include=keys))
    hint = quarantine_hint(result)
    if hint:
        Console().print(escape(hint), highlight=False)


def quarantine_hint(result: CollectResult) -> str | None:
    """Where the quarantined rows are and, when no row was stored, what a row must be (or where else logs come
    from): a team's own log format fails every check at once, and the counts alone do not say what to do."""
    if not result.rows_quarantined:
        return None
    hint = (f"{result.rows_quarantined} row(s) quarantined in {result.quarantine}, each with its file:line and the "
            "checks it failed.")
    if result.rows_valid == 0 and result.rows_duplicate == 0:
        hint += (" No row was stored: a log row is promptloop's log record (docs/concepts.md, \"The log record\"); "
                 f"logs in your own JSON format are read through apps.{result.app}.log_mapping and log_defaults, "
                 f"and an app traced with MLflow, Langfuse or OpenTelemetry is read from there (apps.{result.app}."
                 "sources; docs/cli.md, \"collect\").")
    lacking = [f"{reason.removesuffix('_missing')}{'_ms' if reason == 'latency_missing' else ''}"
               for reason, count in result.failures.items()
               if reason.endswith("_missing") and count == result.rows_quarantined]
    if lacking:  # a format that never logs a field: the same fix for every row
        hint += (f" Every one of them lacks {', '.join(lacking)}: map each to where your lines hold it "
                 f"(apps.{result.app}.log_mapping) or give it a constant (log_defaults)")
        hint += (", and a latency can come from when the call ended (log_mapping.end_timestamp)."
                 if "latency_ms" in lacking else ".")
    return hint


def render_analyze(result: AnalyzeResult) -> None:
    """Metrics (each detector rate with the LLM classifier's check of it), alerts and failure clusters."""
    from promptloop.analyze.classifier import classifier_summary, quality_notes

    notes = quality_notes(result.detector_quality)
    rows = {key: f"{value} · {notes[key]}" if key in notes else value for key, value in result.metrics.items()}
    render_mapping(f"analyze {result.app}: {result.window.start} -> {result.window.end}", rows)
    if result.detector_quality is not None:
        Console().print(escape(classifier_summary(result.detector_quality)), highlight=False)
    alerts = Table(title=f"alerts ({len(result.alerts)})", title_justify="left")
    for column in ("metric", "value", "threshold", "rule"):
        alerts.add_column(column)
    for alert in result.alerts:
        alerts.add_row(alert.metric, f"{alert.value:.4g}", f"{alert.threshold:.4g}", alert.rule)
    clusters = Table(title=f"failure clusters ({result.failures} failures)", title_justify="left")
    for column in ("id", "label", "size", "impact"):
        clusters.add_column(column, overflow="fold")
    for cluster in result.clusters:
        clusters.add_row(str(cluster.id), escape(cluster.label), str(cluster.size), f"{cluster.impact:.1f}")
    Console().print(alerts)
    Console().print(clusters)
    if result.kb_gaps:
        gaps = Table(title=f"knowledge-base gaps ({len(result.kb_gaps)}): asked, not in the documents",
                     title_justify="left")
        for column in ("id", "topic", "users", "nearest document", "example question"):
            gaps.add_column(column, overflow="fold")
        for gap in result.kb_gaps:
            nearest = f"{gap.best_document} ({gap.best_score:.1f})" if gap.best_document and gap.best_score else "none"
            gaps.add_row(str(gap.id), escape(gap.topic), str(gap.users), escape(nearest), escape(gap.examples[0]))
        Console().print(gaps)


def version_callback(value: bool) -> None:
    if value:
        print(f"promptloop {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    """promptloop: collect -> analyze -> improve -> deploy, for the prompts of LLM applications."""


@app.command()
def init(
    dir: Path = typer.Option(..., "--dir", help="An empty or new folder for the workspace."),
    as_json: bool = JsonOption,
) -> None:
    """Create a workspace: git repo with a local bare origin, DVC (golden set tracked), an MLflow store."""
    from promptloop.ops.initialize import init_workspace

    run_command(as_json, lambda: init_workspace(dir), lambda r: render_mapping("workspace created", r.model_dump()))


@app.command("new-app")
def new_app(
    name: str = typer.Argument(..., help="The app's name (letters, digits, - and _), as it will appear under apps:."),
    workspace: Path = WorkspaceOption,
    target: str = typer.Option(
        "template", "--target",
        help="What answers a case: template (the prompt, one model call), python:package.module:function "
             "(your code, calling models through prompt.complete) or an http(s):// endpoint of your app."),
    description: str = typer.Option("", "--description", help="What the app is for, in one line (judges and "
                                                              "the optimizer are told)."),
    model: str = typer.Option("offline/support-bot", "--model",
                              help="The prompt's model [default: a simulated model, so the app runs offline]."),
    as_json: bool = JsonOption,
) -> None:
    """Scaffold an app: params.yaml entry, a prompt, a golden set with three example cases, a judge file.

    The golden set is tracked with DVC, everything is committed, and the app gets its MLflow
    experiment; the next steps are printed.
    """
    from promptloop.ops import new_app as scaffold

    def render(result: scaffold.NewAppResult) -> None:
        render_mapping(f"app {result.app} created", {"files": ", ".join(result.files), "target": result.target,
                                                    "experiment": result.experiment, "commit": result.commit[:12]})
        console = Console()
        console.print("Next steps:")
        for number, step in enumerate(result.next_steps, start=1):
            console.print(f"  {number}. {step}", markup=False)

    run_command(as_json, lambda: scaffold.new_app(workspace, name, target, description, model), render)


golden_app = typer.Typer(help="The golden set: import cases.", no_args_is_help=True)
app.add_typer(golden_app, name="golden")


@golden_app.command("import")
def golden_import(
    source: str = typer.Argument(..., help="A .csv or .jsonl file, or mlflow:<evaluation dataset name or id>."),
    app_name: str = AppOption,
    workspace: Path = WorkspaceOption,
    as_json: bool = JsonOption,
) -> None:
    """Add cases to the app's golden set: validated, deduplicated (same id or same inputs), one DVC version, one commit.

    CSV columns: one per input (question, or inputs.NAME), MLflow's expectation names (expected_response,
    expected_facts and guidelines separated by |, expected_behavior, or expectations.NAME), and
    optionally id, tags, slice, severity, split, lang.
    """
    from promptloop.ops.golden_import import import_golden
    from promptloop.workspace.workspace import open_workspace

    run_command(as_json, lambda: import_golden(open_workspace(workspace), app_name, source),
                lambda r: render_mapping("golden set updated", r.model_dump()))


@app.command()
def label(
    app_name: str = AppOption,
    workspace: Path = WorkspaceOption,
    from_file: Path | None = typer.Option(
        None, "--from-file", exists=True, dir_okay=False,
        help="CSV labels (case_id, rating up/down, answer, comment) instead of the prompts.",
    ),
    sample: int = typer.Option(10, "--sample", min=1, help="Answers of the last evaluation to show, at most."),
    as_json: bool = JsonOption,
) -> None:
    """Record a person's 👍/👎 on answers of the last evaluation as golden-case labels (one DVC version, one
    commit): the next evaluation calibrates the judges on them. Candidates' answers are shown first."""
    from promptloop.domain.golden import HumanLabel
    from promptloop.ops.label import answers_to_label, read_label_file, record_labels
    from promptloop.workspace.workspace import open_workspace

    def action() -> BaseModel:
        ws = open_workspace(workspace)
        if from_file is not None:
            return record_labels(ws, app_name, read_label_file(from_file), from_file.name)
        labels: dict[str, HumanLabel] = {}
        try:
            for item in answers_to_label(ws, app_name, sample):
                stderr.print(f"\n[bold]{escape(item.case_id)}[/] ({escape(item.prompt)}): {escape(item.question)}")
                stderr.print(escape(item.answer), highlight=False, soft_wrap=True)
                choice = typer.prompt("👍 (u), 👎 (d), skip (s) or stop (q)", default="s", err=True).strip().lower()
                if choice == "q":
                    break
                if choice in ("u", "d"):
                    comment = typer.prompt("comment (optional)", default="", show_default=False, err=True)
                    labels[item.case_id] = HumanLabel(answer=item.answer, rating="up" if choice == "u" else "down",
                                                      comment=comment)
        except typer.Abort:  # the end of the input (Ctrl-D, a piped file) or Ctrl-C: stop, as `q` does
            stderr.print(f"\nstopped: the {len(labels)} label(s) given are recorded")
        return record_labels(ws, app_name, labels, "promptloop label")

    run_command(as_json, action, lambda r: render_mapping("labels recorded", r.model_dump()))


@app.command()
def demo(
    dir: Path = typer.Option(Path(".demo"), "--dir", help="Scratch folder (wiped if an earlier demo made it)."),
    interactions: int | None = typer.Option(
        None, "--interactions", min=1, help="Simulated interactions [default: params.yaml demo.interactions, 2000]."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Run the loop offline on the sample app: init a scratch workspace, generate logs, run the stages."""
    from promptloop.demo.run import run_demo

    def action() -> DemoResult:
        with progress_bar() as bar:
            return run_demo(dir, interactions, progress=progress_hooks(bar, "simulating traffic"))

    def render(result: DemoResult) -> None:
        logs = {"log_file": result.logs.log_file, **result.logs.model_dump(exclude={"log_file"})}
        render_mapping(f"demo workspace: {result.workspace}", {"app": result.app, **logs})
        render_cycle(result.cycle)
        for other in result.more:
            other_logs = {"log_file": other.logs.log_file, **other.logs.model_dump(exclude={"log_file"})}
            render_mapping(f"\nthen {other.app}", {"app": other.app, **other_logs})
            render_cycle(other.cycle)
        Console().print(f"\nData policy: were {result.app} local-only, a hosted judge would be refused before any "
                        f"call: {escape(result.data_policy)}", highlight=False, soft_wrap=True)
        Console().print(f"\nOpen the MLflow UI on it: {escape(result.mlflow_ui)}", highlight=False, soft_wrap=True)

    run_command(as_json, action, render)


@app.command()
def collect(
    app_name: str = AppOption,
    workspace: Path = WorkspaceOption,
    source: str | None = typer.Option(
        None,
        "--source",
        help="Read this instead of the app's configured sources: a file, folder or glob of .jsonl/.parquet, "
        "mlflow:<experiment>[@<tracking uri>], langfuse-export:<path>, langfuse:[<host>] or otel:<path>. "
        "Files (and a Langfuse host other than collect.langfuse.host) need --allow-outside.",
    ),
    allow_outside: bool = typer.Option(
        False, "--allow-outside", help="Let --source read files outside the workspace (a path you typed yourself)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Ingest new production logs: validate (Great Expectations), quarantine, redact PII, version (DVC), log
    (MLflow)."""
    from promptloop.collect.stage import collect as run_collect
    from promptloop.workspace.workspace import open_workspace

    def action() -> CollectResult:
        with progress_bar() as bar:
            task = bar.add_task("collecting rows", total=None)
            return run_collect(open_workspace(workspace), app_name, source, on_batch=lambda n: bar.advance(task, n),
                               allow_outside=allow_outside)

    run_command(as_json, action, render_collect)


@app.command()
def analyze(
    app_name: str = AppOption,
    workspace: Path = WorkspaceOption,
    window: str | None = typer.Option(
        None, "--window", help="Window length, e.g. 7d or 36h [default: params.yaml analyze.window_days]."
    ),
    until: str | None = typer.Option(
        None, "--until", help="Window end (ISO-8601) [default: just after the newest collected row]."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Monitoring metrics, alerts and failure clusters over a window of collected logs."""
    from promptloop.analyze.stage import analyze as run_analyze
    from promptloop.workspace.workspace import open_workspace

    run_command(as_json, lambda: run_analyze(open_workspace(workspace), app_name, window, until), render_analyze)


def probe_models(workspace: Workspace, app: str, *, optimizer: bool = False, online_judge: bool = False) -> None:
    """`--preflight`: every model of the run answers a 1-token request, or exit 2 naming it."""
    from promptloop.workspace.preflight import app_models, preflight

    preflight(workspace, app, app_models(workspace, app, optimizer=optimizer, online_judge=online_judge), probe=True)


def render_report(result: EvaluationResult | CheckResult) -> None:
    """The evaluation's markdown report, as plain markdown (ready to paste into a pull request)."""
    sys.stdout.write(result.report)


def progress_hooks(bar: Progress, description: str) -> ProgressHooks:
    """Hooks that drive one task of `bar`."""
    task = bar.add_task(description, total=None)
    return ProgressHooks(start=lambda total: bar.update(task, total=total), advance=lambda n: bar.advance(task, n))


@app.command()
def evaluate(
    app_name: str = AppOption,
    workspace: Path = WorkspaceOption,
    candidate: list[Path] = typer.Option(
        None, "--candidate", "-c", help="A candidate prompt YAML (repeatable) [default: prompts/APP/candidates/*.yaml]."
    ),
    baseline_only: bool = typer.Option(
        False, "--baseline-only", help="Score the app's prompt alone (no candidates), e.g. for the DVC stage."
    ),
    metrics_file: Path | None = typer.Option(
        None,
        "--metrics-file",
        help="Also write the baseline's metrics here, relative to the workspace (the DVC stage uses it).",
    ),
    probe: bool = ProbeOption,
    as_json: bool = JsonOption,
) -> None:
    """Evaluate the app's prompt and each candidate on the golden set; promote / hold / incomplete per candidate.

    Every call goes through the cached, retried, budgeted runner: re-running an unchanged evaluation
    makes no LLM call. The decision is paired statistics (bootstrap CI of the score difference, Holm
    across candidates), high-severity regressions, guard metrics and judge calibration.
    """
    from promptloop.evaluate.stage import evaluate as run_evaluate
    from promptloop.workspace.workspace import open_workspace

    def action() -> EvaluationResult:
        if baseline_only and candidate:
            raise InputError("--baseline-only", "cannot be combined with --candidate")
        opened = open_workspace(workspace)
        if probe:
            probe_models(opened, app_name)
        with progress_bar() as bar:
            candidates = [] if baseline_only else (candidate or None)
            return run_evaluate(opened, app_name, candidates, metrics_file=metrics_file,
                                progress=progress_hooks(bar, "evaluating"))

    run_command(as_json, action, render_report)


@app.command()
def check(
    app_name: str = AppOption,
    workspace: Path = WorkspaceOption,
    base: str | None = typer.Option(
        None, "--base", help="Branch holding the reviewed prompt [default: params.yaml deploy.base_branch]."
    ),
    probe: bool = ProbeOption,
    as_json: bool = JsonOption,
) -> None:
    """For CI on a pull request that edits a prompt by hand: the working tree's prompt against the one on main.

    Prints the report; exits 3 on a significant regression (the score CI lies below zero, or a
    high-severity case that passed now fails), 1 if the evaluation could not complete, else 0.
    """
    from promptloop.evaluate.check import check as run_check
    from promptloop.workspace.workspace import open_workspace

    def action() -> CheckResult:
        with progress_bar() as bar:
            return run_check(open_workspace(workspace), app_name, base, progress_hooks(bar, "checking"), probe)

    outcome = run_command(as_json, action, render_report)
    if not outcome.complete:
        stderr.print("[bold red]error:[/] the evaluation did not complete; see the report", highlight=False)
        raise typer.Exit(1)
    if outcome.regressions:
        stderr.print(f"[bold red]regression:[/] {escape('; '.join(outcome.regressions))}", highlight=False)
        raise typer.Exit(3)


def render_improve(result: ImproveOutcome) -> None:
    """Golden-set growth, candidates, the decision table and the outcome."""
    from promptloop.evaluate.report import decision_table

    keys = ("added", "duplicates", "near_duplicates", "capped", "optimize", "holdout", "dvc_md5")
    render_mapping(f"golden set of {result.app}", {k: getattr(result.golden, k) for k in keys})
    made = result.candidates
    render_mapping("candidates", {"generated": made.generated, "hand-written": made.hand_written,
                                  "rejected": [f"seed {r.seed}: {r.reason}" for r in made.rejected]})
    Console().print(escape("\n".join(decision_table(result.evaluation))), highlight=False, soft_wrap=True)
    render_outcome(result.decision, result.reasons, result.best.name if result.best else None)


def render_outcome(decision: str, reasons: list[str], best: str | None) -> None:
    colour = {"promote": "green", "hold": "yellow", "incomplete": "red"}.get(decision, "white")
    Console().print(f"[bold {colour}]{decision}[/]" + (f": {escape(best)}" if best else ""), highlight=False)
    for reason in reasons:
        Console().print(f"  - {escape(reason)}", highlight=False, soft_wrap=True)


def render_deploy(result: DeployResult | None) -> None:
    """The pull request (or why there is none)."""
    if not result or not result.branch:
        render_outcome(result.decision if result else "hold", result.reasons if result else [], None)
        Console().print("no pull request opened", highlight=False)
        return
    url = result.pull_request.url if result.pull_request else result.compare
    render_mapping("pull request", {"branch": result.branch, "created": result.created, "version": result.version,
                                    "url": url, "body": result.body_path,
                                    "challenger": None if result.challenger_version is None
                                    else f"{result.app} registry version {result.challenger_version}"})


@app.command()
def improve(app_name: str = AppOption, workspace: Path = WorkspaceOption, probe: bool = ProbeOption,
            as_json: bool = JsonOption) -> None:
    """Grow the golden set from mined failures, generate candidates, evaluate them on held-out cases, pick the best.

    Needs an analyze run (its failures and clusters). The outcome is kept for `deploy`. Exits 1
    when the evaluation ended incomplete (a provider failed past its retries, the budget ran out).
    """
    from promptloop.improve.stage import improve as run_improve
    from promptloop.workspace.workspace import open_workspace

    def action() -> ImproveOutcome:
        opened = open_workspace(workspace)
        if probe:
            probe_models(opened, app_name, optimizer=True)
        with progress_bar() as bar:
            return run_improve(opened, app_name, progress=progress_hooks(bar, "evaluating candidates"))

    exit_if_incomplete(run_command(as_json, action, render_improve))


@app.command()
def deploy(app_name: str = AppOption, workspace: Path = WorkspaceOption, as_json: bool = JsonOption) -> None:
    """Open a pull request for the candidate the last improve run promoted (a branch from main; never main itself).

    Idempotent: the same candidate never opens a second branch. Refuses a dirty working tree. On a
    GitHub remote with $GITHUB_TOKEN set the pull request is opened through the API; otherwise its
    body is written under .promptloop/pull-requests/ and the compare command is printed.
    """
    from promptloop.deploy.stage import deploy as run_deploy
    from promptloop.workspace.workspace import open_workspace

    run_command(as_json, lambda: run_deploy(open_workspace(workspace), app_name), render_deploy)


@app.command()
def cycle(
    app_name: str = AppOption,
    workspace: Path = WorkspaceOption,
    force: bool = typer.Option(False, "--force", help="Analyze and improve even when collect found no new logs."),
    wait: float | None = typer.Option(None, "--wait", min=0, show_default=False,
                               help="Seconds to wait while another promptloop process writes the workspace, then "
                                    "exit 75 [default: $PROMPTLOOP_LOCK_WAIT_S, else 3600]."),
    probe: bool = ProbeOption,
    as_json: bool = JsonOption,
) -> None:
    """Merge approved promotions from main, then collect -> analyze -> improve -> deploy, once.

    With no new logs since the last improve it stops after collect: no LLM call, no new branch.
    A cycle that was killed or ended incomplete (exit 1: nothing promoted) is run again in full by
    the next one, its LLM calls answered from the cache. One writer per workspace: a second cycle
    waits (see --wait).
    """
    from promptloop.loop.cycle import cycle as run_cycle
    from promptloop.workspace.locking import writing
    from promptloop.workspace.workspace import open_workspace

    def action() -> CycleResult:
        opened = open_workspace(workspace)
        if probe:
            probe_models(opened, app_name, optimizer=True, online_judge=True)
        with writing(opened.root, f"promptloop cycle --app {app_name}", wait), progress_bar() as bar:
            return run_cycle(opened, app_name, force=force, progress=progress_hooks(bar, "evaluating candidates"))

    exit_if_incomplete(run_command(as_json, action, render_cycle))


def render_cycle(result: CycleResult) -> None:
    """Every stage's headline, then the decision and the pull request."""
    if result.resumed:
        Console().print(f"Ran again the cycle that started at {result.resumed} and did not finish.", highlight=False)
    render_collect(result.collect)
    if result.analyze is None or result.improve is None:
        render_outcome(result.decision, result.reasons, None)
        return
    render_analyze(result.analyze)
    render_improve(result.improve)
    render_deploy(result.deploy)
    Console().print(
        f"LLM calls: {result.llm.calls} (answered from the cache: {result.llm.cache_hits})", highlight=False
    )


@app.command()
def release(
    app_name: str = AppOption,
    workspace: Path = WorkspaceOption,
    rollback: bool = typer.Option(False, "--rollback", help="Point production back at the previous release."),
    as_json: bool = JsonOption,
) -> None:
    """After a person merged the pull request: make the prompt on main production.

    Points the MLflow prompt alias `champion` at it, tags git `<app>@v<N>` (pushed) and records
    the release in MLflow. The app loads its prompt by that alias.
    """
    from promptloop.deploy.release import release as run_release
    from promptloop.workspace.workspace import open_workspace

    run_command(as_json, lambda: run_release(open_workspace(workspace), app_name, rollback=rollback),
                lambda r: render_mapping(f"release {r.app}", r.model_dump()))


@app.command()
def serve(workspace: Path = WorkspaceOption) -> None:
    """Prefect server, a process worker (after `prefect deploy --all`) and the MLflow UI on loopback.

    Prints the two URLs and runs until Ctrl-C (or SIGTERM), which stops every service it started.
    State and logs stay in the workspace's .promptloop/ folder.
    """
    from promptloop.ops.serve import serve_forever

    def action() -> BaseModel:
        stderr.print("starting the Prefect server, deploying prefect.yaml, starting a worker and the MLflow UI ...",
                     highlight=False)
        serve_forever(workspace, announce=lambda line: Console().print(escape(line), highlight=False, soft_wrap=True))
        return BaseModel()  # nothing to report: it ran until stopped

    run_command(False, action, lambda r: None)


def main() -> None:
    """Console-script entry point; offline defaults are set before any library is imported."""
    prepare_environment()
    allow_helper_processes()  # this entry point is guarded: a spawned process never runs it again
    try:
        app()
    except SystemExit as done:
        exit_without_teardown(exit_status(done.code))
        raise  # not reached


def exit_status(code: object) -> int:
    """The process exit status `sys.exit(code)` gives (None: 0; a message: 1, printed first)."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1
