"""`promptloop serve`: a Prefect server, a process worker and the MLflow UI for one workspace, on loopback.

Every service is a child process in its own process group, with its own log file under
`.promptloop/serve/`; `serving()` stops them all (their flow-run subprocesses too) on the way out.
The Prefect server keeps its database in the workspace (`.promptloop/prefect/`), so deployments and
run history survive a restart and never mix with another workspace's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from promptloop.core.errors import InputError
from promptloop.core.runtime import OFFLINE_ENV
from promptloop.ops.mlflow_ui import ui_arguments, ui_environment
from promptloop.workspace.links import UI_URL_ENV
from promptloop.workspace.workspace import Workspace, open_workspace

WORK_POOL = "promptloop"
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


@dataclass
class Services:
    """The running services of one workspace, and how to reach them."""

    workspace: Path
    prefect_url: str
    mlflow_url: str | None
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return log_dir(self.workspace)


def state_dir(root: Path) -> Path:
    """Where serve keeps the Prefect home and the service logs (git-ignored with .promptloop/)."""
    return root / ".promptloop"


def log_dir(root: Path) -> Path:
    return state_dir(root) / "serve"


def free_port() -> int:
    """A TCP port nobody listens on right now, on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def bin_path(name: str) -> str:
    """A console script of this environment (prefect, mlflow), not whatever PATH finds first."""
    return str(Path(sys.executable).parent / name)


def prefect_env(root: Path, port: int, *, scheduler: bool = True) -> dict[str, str]:
    """The environment of every Prefect process of this workspace: its own home and database, the API on
    loopback, telemetry off, no interactive prompts."""
    home = state_dir(root) / "prefect"
    api = f"http://{HOST}:{port}/api"
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("PREFECT_PROFILE", None)  # a profile from the user's own home would point elsewhere
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": str(scheduler).lower(),
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "5",
    })
    return env


def start(name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """A child in its own process group (so stopping it reaches its children), output to its log file."""
    log = log_dir(cwd) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_until_up(
    name: str, url: str, process: subprocess.Popen, cwd: Path, timeout_s: float = STARTUP_TIMEOUT_S
) -> None:
    """Poll `url` until it answers 200; a child that exits or a timeout is an error naming its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}; see {log_dir(cwd) / f'{name}.log'}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{name} did not answer {url} within {timeout_s:.0f}s; see {log_dir(cwd) / f'{name}.log'}")


def run_prefect(args: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 300) -> str:
    """A one-off Prefect CLI command (create the pool, deploy); its output, or an error with its tail."""
    done = subprocess.run([bin_path("prefect"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = " ".join((done.stdout + done.stderr).split()[-60:])
        raise RuntimeError(f"prefect {' '.join(args)} failed (exit {done.returncode}): {tail}")
    return done.stdout


def start_prefect_server(root: Path, env: dict[str, str]) -> subprocess.Popen:
    return start("prefect-server", [bin_path("prefect"), "server", "start", "--host", HOST,
                                    "--port", env["PREFECT_SERVER_API_PORT"]], env, root)


def create_work_pool(root: Path, env: dict[str, str], pool: str = WORK_POOL) -> None:
    """The process work pool the deployments of prefect.yaml name (kept if it exists)."""
    run_prefect(["work-pool", "create", pool, "--type", "process", "--overwrite"], env, root)


def deploy_all(root: Path, env: dict[str, str]) -> str:
    """`prefect deploy --all` in the workspace: every deployment of its prefect.yaml."""
    if not (root / "prefect.yaml").is_file():
        raise InputError(root / "prefect.yaml", "not found: the workspace has no Prefect deployments")
    return run_prefect(["deploy", "--all"], env, root)


def start_worker(root: Path, env: dict[str, str], pool: str = WORK_POOL) -> subprocess.Popen:
    return start("prefect-worker", [bin_path("prefect"), "worker", "start", "--pool", pool, "--type", "process",
                                    "--name", f"{pool}-{root.name}"], env, root)


def start_mlflow_ui(workspace: Workspace, port: int) -> subprocess.Popen:
    """The MLflow UI on the workspace's tracking store, on loopback, telemetry off (see `ops.mlflow_ui`)."""
    # One web worker: a UI for one person on a small machine.
    return start("mlflow-ui", ui_arguments(bin_path("mlflow"), workspace.tracking_uri, port, workers=1),
                 ui_environment(os.environ), workspace.root)


def process_tree(process: subprocess.Popen) -> list:
    """The child and everything it started (flow runs may sit in process groups of their own)."""
    import psutil

    try:
        parent = psutil.Process(process.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop(processes: list[subprocess.Popen], signum: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Ask each child to stop with `signum` (it stops its own children), wait, then SIGKILL its process group
    and every descendant still there (flow runs may sit in process groups of their own)."""
    import psutil

    tree = [p for process in processes for p in process_tree(process)]
    for process in processes:
        if process.poll() is None:
            # To the leader only: it stops its own children, and a second signal (a whole-group one)
            # makes the Prefect CLI escalate to SIGKILL at once.
            process.send_signal(signum)
    _, alive = psutil.wait_procs(tree, timeout=timeout_s)
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    for process in processes:
        try:
            process.wait(timeout=5)  # reap our direct children (no zombies)
        except subprocess.TimeoutExpired:
            pass


@contextmanager
def serving(root: Path | str, *, mlflow_ui: bool = True, scheduler: bool = True) -> Iterator[Services]:
    """Start the Prefect server, the work pool, the deployments, a worker and the MLflow UI; stop them on exit."""
    workspace = open_workspace(root)
    root = workspace.root
    prefect_port = free_port()
    env = prefect_env(root, prefect_port, scheduler=scheduler)
    services = Services(root, f"http://{HOST}:{prefect_port}", None, env)
    try:
        services.processes["prefect-server"] = start_prefect_server(root, env)
        if mlflow_ui:
            mlflow_port = free_port()
            services.processes["mlflow-ui"] = start_mlflow_ui(workspace, mlflow_port)
            services.mlflow_url = f"http://{HOST}:{mlflow_port}"
            env.setdefault(UI_URL_ENV, services.mlflow_url)  # the worker's flow runs link their MLflow runs here
        wait_until_up(
            "prefect-server", f"{services.prefect_url}/api/health", services.processes["prefect-server"], root
        )
        create_work_pool(root, env)
        deploy_all(root, env)
        services.processes["prefect-worker"] = start_worker(root, env)
        if mlflow_ui:
            wait_until_up("mlflow-ui", f"{services.mlflow_url}/health", services.processes["mlflow-ui"], root)
        yield services
    finally:
        # The worker first (SIGINT, as Ctrl-C: it then exits without waiting for its polling loop), while
        # the server it reports to is still up; then the server and the UI together.
        processes = dict(services.processes)
        worker = processes.pop("prefect-worker", None)
        if worker is not None:
            stop([worker], signal.SIGINT, timeout_s=10)
        stop(list(processes.values()))


def serve_forever(root: Path | str, announce: Callable[[str], None] = print) -> None:
    """`promptloop serve`: start everything, print the two URLs, run until Ctrl-C or SIGTERM, stop everything."""
    # SIGTERM takes the same way out as Ctrl-C, so the children are stopped either way; SIGINT is set
    # too because a shell starts background jobs with it ignored.
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with serving(root) as services:
            announce(f"Prefect UI: {services.prefect_url}")
            announce(f"MLflow UI:  {services.mlflow_url}")
            announce(f"logs: {services.logs}  (Ctrl-C stops everything)")
            while all(p.poll() is None for p in services.processes.values()):
                time.sleep(1)
            gone = [name for name, p in services.processes.items() if p.poll() is not None]
            raise RuntimeError(f"{', '.join(gone)} stopped; see {services.logs}")
    except KeyboardInterrupt:
        announce("stopped")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
