"""Screenshots of the Prefect and MLflow UIs for the README: `make screenshots`.

On a workspace with a cycle already logged (`make demo` makes one in .demo/), this starts the services of
`promptloop serve` (Prefect server, process worker, deployments of prefect.yaml, MLflow UI; loopback only),
triggers the `cycle` deployment through the Prefect API as the UI's Run button does, waits for it to
complete, and saves PNGs of

- the cycle flow run in the Prefect UI (its graph of tasks and subflows, and its logs),
- the markdown artifact of the cycle run (decision, pull request, decision table, MLflow runs),
- the pull request's text the deploy stage wrote (`.promptloop/pull-requests/*.md`), rendered as
  GitHub-flavoured markdown (tables, no raw HTML) the way a reviewer reads it,
- the per-case table (`eval_cases.json`, logged with `mlflow.log_table`) of the promoted prompt's child
  run of the newest `evaluate <app>` run, in the MLflow UI (the run's Artifacts tab, "View as table"),
- that run on MLflow's "Evaluation runs" page compared with the baseline's run: one trace per golden case
  and prompt, both answers and the judges' Feedback side by side.

The browser is the Debian `chromium` package driven by Playwright (`pip install 'playwright>=1.50'`;
never `playwright install`, which downloads browsers). Everything started here is stopped on the way out.

    python docs/screenshots.py --workspace .demo --out docs/images
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

    from promptloop.ops.serve import Services

APP = "support-bot"
CHROMIUM = "/usr/bin/chromium"
# No sandbox (we may run as root), no GPU, and nothing that reaches the internet on its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CYCLE_TIMEOUT_S = 600.0
BODY_VIEWPORT = {"width": 1012, "height": 1000}  # the width of a pull request's description on GitHub
BODY_MAX_HEIGHT = 2600
# A few rules of GitHub's markdown style: enough for headings, tables, code and quotes to read as there.
BODY_CSS = """
body { margin: 0; background: #fff; }
.markdown-body { font: 14px/1.5 -apple-system, 'Segoe UI', 'Noto Sans', Helvetica, Arial, 'Noto Sans CJK KR',
  sans-serif; color: #1f2328; padding: 16px 24px; max-width: 964px; word-wrap: break-word; }
.markdown-body h1, .markdown-body h2 { border-bottom: 1px solid #d1d9e0; padding-bottom: .3em; }
.markdown-body h1 { font-size: 2em; } .markdown-body h2 { font-size: 1.5em; } .markdown-body h3 { font-size: 1.25em; }
.markdown-body table { border-collapse: collapse; display: block; overflow: auto; margin: 0 0 16px; }
.markdown-body th, .markdown-body td { border: 1px solid #d1d9e0; padding: 6px 13px; }
.markdown-body th { font-weight: 600; } .markdown-body tr:nth-child(2n) { background: #f6f8fa; }
.markdown-body code { background: #eff1f3; border-radius: 6px; padding: .2em .4em; font-size: 85%; }
.markdown-body pre { background: #f6f8fa; border-radius: 6px; padding: 16px; overflow: auto; }
.markdown-body pre code { background: none; padding: 0; }
.markdown-body blockquote { border-left: .25em solid #d1d9e0; color: #59636e; margin: 0; padding: 0 1em; }
.markdown-body a { color: #0969da; }
"""
PAGE_TIMEOUT_MS = 60_000
SETTLE_MS = 1_500  # after the content is there: fonts, transitions, the graph's layout animation
PREFECT_VIEWPORT = {"width": 1600, "height": 1000}
WIDE_VIEWPORT = {"width": 1920, "height": 1080}  # the decision table and the per-case table need the width
# Columns of eval_cases.json the MLflow picture shows: the case, what went in and out, and its scores.
HIDDEN_CASE_COLUMNS = ("split", "slice", "severity", "lang", "pairwise_consistent", "language_match", "cites",
                       "citation_valid", "refused", "toxic", "format_valid", "retrieved", "judge_failure")
# Pixels added to (taken from) MLflow's 150 px default column width, so that every column fits in 1920 px.
CASE_COLUMN_RESIZE = {"case_id": -50, "rubric_score": -40, "rubric_passed": -40, "pairwise_score": -40,
                      "facts_found": -40, "latency_ms": -40, "cost_usd": -40, "answer": 170, "input": 160}


class ScreenshotError(RuntimeError):
    """A step of taking the screenshots failed; the message says which and where to look."""


@dataclass(frozen=True)
class Picture:
    """One saved screenshot: its file and what it shows."""

    path: Path
    shows: str


@dataclass(frozen=True)
class CasesRun:
    """The MLflow run whose per-case table the picture shows."""

    experiment_id: str
    run_id: str
    run_name: str
    parent_run_id: str
    baseline_run_id: str


# --- checks ---------------------------------------------------------------------------------------


def require_playwright() -> None:
    """Playwright for Python must be importable (the `screenshots` extra); its browsers are not needed."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        raise ScreenshotError("Playwright is not installed: pip install 'playwright>=1.50' "
                              "(or `make screenshots`, which installs it; never `playwright install`)") from error


def require_chromium(path: str) -> str:
    """The Chromium binary to drive; a clear error when it is missing."""
    found = shutil.which(path)
    if found is None:
        raise ScreenshotError(f"no Chromium at {path}: apt-get install -y chromium (or pass --chromium)")
    return found


def require_workspace(root: Path) -> Path:
    """A promptloop workspace with prefect.yaml and an MLflow store (as `make demo` leaves .demo/)."""
    root = root.resolve()
    for needed in ("params.yaml", "prefect.yaml"):
        if not (root / needed).is_file():
            raise ScreenshotError(f"{root} is not a promptloop workspace ({needed} missing): run `make demo` first")
    return root


# --- Prefect and MLflow ---------------------------------------------------------------------------


def run_cycle(services: Services, app: str, timeout_s: float = CYCLE_TIMEOUT_S) -> str:
    """Trigger the `cycle` deployment through the Prefect API (forced, so every stage runs), wait for it
    to end, and return the flow run id; an error unless it completed."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def trigger_and_wait() -> Any:
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        parameters = {"app": app, "workspace": ".", "force": True}
        started = await run_deployment("cycle/cycle", parameters=parameters, timeout=0)
        deadline = time.monotonic() + timeout_s
        async with get_client() as client:
            while True:
                run = await client.read_flow_run(started.id)
                if run.state is not None and run.state.is_final():
                    return run
                if time.monotonic() > deadline:
                    state = run.state.name if run.state else "not started"
                    raise ScreenshotError(f"cycle flow run {run.id} still {state} after {timeout_s:.0f}s; "
                                          f"see {services.logs / 'prefect-worker.log'}")
                await asyncio.sleep(2)

    with temporary_settings({PREFECT_API_URL: services.env["PREFECT_API_URL"]}):
        run = asyncio.run(trigger_and_wait())
    if not run.state.is_completed():
        raise ScreenshotError(f"cycle flow run {run.id} ended {run.state.name}: {run.state.message}; "
                              f"see {services.prefect_url}/runs/flow-run/{run.id}")
    return str(run.id)


def latest_artifact_id(services: Services, key: str) -> str:
    """The id of the newest Prefect artifact with `key` (e.g. cycle-support-bot)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read() -> list[Any]:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                               sort=ArtifactSort.CREATED_DESC, limit=1)

    with temporary_settings({PREFECT_API_URL: services.env["PREFECT_API_URL"]}):
        artifacts = asyncio.run(read())
    if not artifacts:
        raise ScreenshotError(f"no Prefect artifact {key!r}: did the cycle run finish?")
    return str(artifacts[0].id)


def cases_run(root: Path, app: str) -> CasesRun:
    """The child run of the newest `evaluate <app>` run that holds the promoted prompt's per-case table
    (the baseline's when nothing was promoted)."""
    from promptloop.domain.evaluation import CandidateResult, EvaluationResult
    from promptloop.improve.stage import best_candidate
    from promptloop.workspace.tracking import tracking_client
    from promptloop.workspace.workspace import open_workspace

    workspace = open_workspace(root)
    client = tracking_client(workspace.tracking_uri)
    experiment = client.get_experiment_by_name(workspace.experiment_name(app))
    if experiment is None:
        raise ScreenshotError(f"no MLflow experiment {workspace.experiment_name(app)!r} in {workspace.tracking_uri}")
    runs = client.search_runs([experiment.experiment_id], "tags.`promptloop.stage` = 'evaluate'",
                              order_by=["attributes.start_time DESC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.info.run_name == f"evaluate {app}"]
    if not parents:
        raise ScreenshotError(f"no MLflow run named 'evaluate {app}' in {workspace.tracking_uri}")
    parent = parents[0]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    with tempfile.TemporaryDirectory() as scratch:
        decision = json.loads(Path(client.download_artifacts(parent.info.run_id, "decision.json", scratch)).read_text())
    # decision.json holds the prompts' part of the evaluation: its candidates are all best_candidate reads.
    candidates = [CandidateResult.model_validate(c) for c in decision["candidates"]]
    best = best_candidate(EvaluationResult.model_construct(candidates=candidates))
    name = best.name if best is not None else "baseline"
    if name not in children:
        raise ScreenshotError(f"run 'evaluate {app}' ({parent.info.run_id}) has no child run {name!r}")
    child = children[name]
    if "eval_cases.json" not in child.data.tags.get("mlflow.loggedArtifacts", ""):
        raise ScreenshotError(f"child run {child.info.run_id} ({name}) logged no eval_cases.json table")
    if "baseline" not in children:
        raise ScreenshotError(f"run 'evaluate {app}' ({parent.info.run_id}) has no child run 'baseline'")
    return CasesRun(experiment.experiment_id, child.info.run_id, name, parent.info.run_id,
                    children["baseline"].info.run_id)


# --- the browser ----------------------------------------------------------------------------------


@contextmanager
def browser(chromium: str) -> Iterator[BrowserContext]:
    """Headless Chromium with a fresh profile, driven by Playwright; closed (and its profile removed) on exit."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="promptloop-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, args=CHROMIUM_ARGS, headless=True,
            viewport=PREFECT_VIEWPORT, device_scale_factor=1, color_scheme="light", locale="en-US",
            timezone_id="UTC",
        )
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@contextmanager
def page_for(context: BrowserContext, what: str, debug_dir: Path) -> Iterator[Page]:
    """A new page; when a step on it fails, the error names `what` and a screenshot of the page as it was."""
    page = context.new_page()
    try:
        yield page
    except Exception as error:
        debug_dir.mkdir(parents=True, exist_ok=True)
        shot = debug_dir / f"screenshot-failed-{what.replace(' ', '-')}.png"
        try:
            page.screenshot(path=str(shot))
        except Exception:  # the page may be gone; the original error matters
            shot = None
        where = f"; the page as it was: {shot}" if shot else ""
        raise ScreenshotError(f"{what} at {page.url}: {error}{where}") from error
    finally:
        page.close()


def settle(page: Page) -> None:
    """Move the pointer out of the way (no hover highlight or tooltip) and let rendering finish."""
    page.mouse.move(1, page.viewport_size["height"] - 1 if page.viewport_size else 1)
    page.wait_for_timeout(SETTLE_MS)


def shoot_prefect_run(
    context: BrowserContext, prefect_url: str, flow_run_id: str, out: Path, debug_dir: Path
) -> Picture:
    """The cycle flow run page: state, timeline graph of its tasks and subflows, and the first log lines."""
    with page_for(context, "Prefect flow run page", debug_dir) as page:
        page.set_viewport_size(PREFECT_VIEWPORT)
        page.goto(f"{prefect_url}/runs/flow-run/{flow_run_id}")
        page.locator(".flow-run-graph canvas").first.wait_for(state="visible")
        page.get_by_text("Completed", exact=True).first.wait_for(state="visible")
        # The logs are the last part to arrive; the graph lays itself out meanwhile.
        page.get_by_text("submitting flow run").first.wait_for(state="visible")
        settle(page)
        page.screenshot(path=str(out))
    return Picture(
        out, "Prefect UI: the `cycle` flow run (tasks and the collect/analyze/improve/deploy subflows, logs)"
    )


def shoot_prefect_artifact(context: BrowserContext, prefect_url: str, artifact_id: str, app: str, out: Path,
                           debug_dir: Path) -> Picture:
    """The markdown artifact of the cycle run: its decision, pull request, decision table and MLflow runs."""
    with page_for(context, "Prefect artifact page", debug_dir) as page:
        page.set_viewport_size(WIDE_VIEWPORT)
        page.goto(f"{prefect_url}/artifacts/artifact/{artifact_id}")
        page.get_by_text(f"cycle {app}:").first.wait_for(state="visible")
        page.locator("table").nth(1).wait_for(state="visible")
        settle(page)
        # Down to just below the artifact (with its "Show raw data" button): the rest of the page is empty.
        raw = page.get_by_role("button", name="Show raw data").bounding_box()
        height = (
            WIDE_VIEWPORT["height"] if raw is None else min(WIDE_VIEWPORT["height"], int(raw["y"] + raw["height"] + 48))
        )
        page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": WIDE_VIEWPORT["width"], "height": height})
    return Picture(out, "Prefect UI: the cycle run's artifact (decision, pull request, decision table, MLflow runs)")


def resize_column(page: Page, column: str, by_px: int) -> None:
    """Drag the resize handle of a column header of MLflow's table view by `by_px` (negative: narrower)."""
    header = page.get_by_role("columnheader").filter(has=page.locator(f"span[title='{column}']"))
    box = header.get_by_role("button", name="Resize Column").bounding_box()
    if box is None:
        raise ScreenshotError(f"no resize handle on column {column!r}")
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + by_px / 2, y, steps=5)
    page.mouse.move(x + by_px, y, steps=5)
    page.mouse.up()


def shoot_mlflow_cases(context: BrowserContext, mlflow_url: str, run: CasesRun, out: Path, debug_dir: Path) -> Picture:
    """The run's Artifacts tab on eval_cases.json, viewed as a table: one row per golden case."""
    with page_for(context, "MLflow artifacts page", debug_dir) as page:
        page.set_viewport_size(WIDE_VIEWPORT)
        # The assistant panel opens by itself on a first visit and covers a third of the page.
        page.add_init_script("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                             "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")
        page.goto(f"{mlflow_url}/#/experiments/{run.experiment_id}/runs/{run.run_id}/artifacts/eval_cases.json")
        settings = page.get_by_role("button", name="Table settings")
        settings.wait_for(state="visible")
        page.get_by_role("row").nth(2).wait_for(state="visible")
        page.get_by_role("button", name="Toggle sidebar").click()
        settings.click()
        for column in HIDDEN_CASE_COLUMNS:
            item = page.get_by_role("menuitemcheckbox", name=column, exact=True)
            if item.count():
                item.click()
        page.keyboard.press("Escape")
        for column, by_px in CASE_COLUMN_RESIZE.items():
            resize_column(page, column, by_px)
        settle(page)
        page.screenshot(path=str(out))
    return Picture(out, f"MLflow UI: eval_cases.json of run {run.run_name!r} ({run.run_id}), "
                        f"a child of 'evaluate' run {run.parent_run_id}, as a table")


def newest_pull_request_body(root: Path, app: str) -> Path:
    """The pull request text of the app's newest proposal (branch promptloop/<app>/v<N>-<hash>)."""
    from promptloop.deploy.pull_request import PR_DIR

    bodies = sorted((root / PR_DIR).glob(f"*-{app}-v*.md"), key=lambda path: path.stat().st_mtime_ns)
    if not bodies:
        raise ScreenshotError(f"no pull request text in {root / PR_DIR}: did a cycle of {app} promote a candidate?")
    return bodies[-1]


def body_html(markdown: str) -> str:
    """The pull request text as GitHub shows it: GFM tables and strikethrough, raw HTML not rendered."""
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"]).render(markdown)
    return ("<!doctype html><html><head><meta charset='utf-8'><style>" + BODY_CSS + "</style></head>"
            f"<body><article class='markdown-body'>{rendered}</article></body></html>")


def shoot_pull_request_body(context: BrowserContext, body: Path, out: Path, debug_dir: Path) -> Picture:
    """The pull request's text rendered, from its top down to at most BODY_MAX_HEIGHT pixels."""
    with page_for(context, "pull request body", debug_dir) as page:
        page.set_viewport_size(BODY_VIEWPORT)
        page.set_content(body_html(body.read_text(encoding="utf-8")))
        height = min(BODY_MAX_HEIGHT, int(page.evaluate("document.documentElement.scrollHeight")))
        page.screenshot(path=str(out), full_page=True,
                        clip={"x": 0, "y": 0, "width": BODY_VIEWPORT["width"], "height": height})
    return Picture(out, f"the pull request's text ({body.name}) rendered as GitHub-flavoured markdown")


def show_assessments(page: Page) -> None:
    """In the traces table's column picker: the judges' Feedback in, the golden case's Expectations out
    (they are one click away in each trace; the verdicts are what a reviewer compares)."""
    page.get_by_role("button", name="Columns").filter(has_text="/").click()
    page.get_by_role("checkbox", name="All Expectations").click(force=True)
    page.get_by_role("checkbox", name="All Assessments").click(force=True)
    page.keyboard.press("Escape")


def shoot_mlflow_comparison(context: BrowserContext, mlflow_url: str, run: CasesRun, out: Path,
                            debug_dir: Path) -> Picture:
    """MLflow's Evaluation runs page comparing the promoted prompt's run with the baseline's: per golden case,
    both traces (question, answers) with the judges' Feedback and the score distributions above."""
    with page_for(context, "MLflow evaluation comparison", debug_dir) as page:
        page.set_viewport_size(WIDE_VIEWPORT)
        page.add_init_script("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                             "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")
        query = f"selectedRunUuid={run.run_id}&compareToRunUuid={run.baseline_run_id}"
        page.goto(f"{mlflow_url}/#/experiments/{run.experiment_id}/evaluation-runs?{query}")
        page.get_by_text("tr-").first.wait_for(state="visible")
        page.get_by_role("button", name="Toggle sidebar").click()
        show_assessments(page)
        settle(page)
        page.screenshot(path=str(out))
    return Picture(out, f"MLflow UI, Evaluation runs: {run.run_name!r} compared with the baseline, case by case")


# --- the whole thing ------------------------------------------------------------------------------


def take_screenshots(workspace: Path, out_dir: Path, app: str = APP, chromium: str = CHROMIUM,
                     announce: Callable[[str], None] = print) -> list[Picture]:
    """Start the services, run a cycle through Prefect, save the PNGs in `out_dir`, stop everything."""
    from promptloop.ops.serve import serving

    require_playwright()
    chromium = require_chromium(chromium)
    root = require_workspace(workspace)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The scheduler stays off: a scheduled run starting meanwhile would add to (or race) the picture.
    with serving(root, scheduler=False) as services:
        announce(f"Prefect UI {services.prefect_url}, MLflow UI {services.mlflow_url}; running the cycle deployment")
        flow_run_id = run_cycle(services, app)
        artifact_id = latest_artifact_id(services, f"cycle-{app}")
        body = newest_pull_request_body(root, app)
        cases = cases_run(root, app)
        if services.mlflow_url is None:
            raise ScreenshotError("the MLflow UI did not start")
        announce(f"cycle flow run {flow_run_id} completed; taking the screenshots")
        with browser(chromium) as context:
            return [
                shoot_prefect_run(
                    context, services.prefect_url, flow_run_id, out_dir / "prefect-cycle-run.png", services.logs
                ),
                shoot_prefect_artifact(
                    context,
                    services.prefect_url,
                    artifact_id,
                    app,
                    out_dir / "prefect-cycle-artifact.png",
                    services.logs,
                ),
                shoot_pull_request_body(context, body, out_dir / "pull-request-body.png", services.logs),
                shoot_mlflow_cases(
                    context, services.mlflow_url, cases, out_dir / "mlflow-eval-cases.png", services.logs
                ),
                shoot_mlflow_comparison(context, services.mlflow_url, cases,
                                        out_dir / "mlflow-evaluation-compare.png", services.logs),
            ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path(".demo"), help="workspace folder [.demo]")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="where the PNGs go [docs/images]")
    parser.add_argument("--app", default=APP, help=f"app name under apps: in params.yaml [{APP}]")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"Chromium binary [{CHROMIUM}]")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from promptloop.core.errors import InputError

    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one artifact: no progress bar
    started = time.monotonic()
    try:
        pictures = take_screenshots(args.workspace, args.out, args.app, args.chromium)
    except (RuntimeError, InputError) as error:  # ScreenshotError, and serve's errors naming their log
        print(f"screenshots: {error}", file=sys.stderr)
        return 1
    for picture in pictures:
        print(f"{picture.path}: {picture.shows}")
    print(f"done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
