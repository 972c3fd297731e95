"""One writer per workspace at a time.

Every stage that writes the workspace (git commits, DVC versions, MLflow runs, the golden set)
runs under an exclusive lock on `.promptloop/workspace.lock`. A second writer waits for it, saying
whom it waits for, and gives up after `wait_s` with `WorkspaceBusy`. The lock is re-entrant within
a process (a cycle holds it while its stages take it again) and the OS drops it when the holder
dies, so a killed cycle never leaves the workspace locked.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from filelock import FileLock, Timeout

from promptloop.core.errors import WorkspaceBusy
from promptloop.core.files import write_atomic

LOCK_FILE = ".promptloop/workspace.lock"
HOLDER_FILE = ".promptloop/workspace.lock.json"
WAIT_ENV = "PROMPTLOOP_LOCK_WAIT_S"
DEFAULT_WAIT_S = 3600.0

F = TypeVar("F", bound=Callable[..., Any])

_locks: dict[Path, FileLock] = {}
_registry = threading.Lock()


def default_wait_s() -> float:
    """How long a writer waits for the workspace: $PROMPTLOOP_LOCK_WAIT_S, else an hour."""
    value = os.environ.get(WAIT_ENV)
    try:
        return max(0.0, float(value)) if value else DEFAULT_WAIT_S
    except ValueError:
        return DEFAULT_WAIT_S


def file_lock(root: Path) -> FileLock:
    """The process's one lock object per workspace (one object, so re-entry counts up, not deadlocks)."""
    path = (root / LOCK_FILE).resolve()
    with _registry:
        if path not in _locks:
            path.parent.mkdir(parents=True, exist_ok=True)
            # thread_local=False: Prefect runs tasks in worker threads of the process that holds the lock.
            _locks[path] = FileLock(path, thread_local=False)
        return _locks[path]


class Holder(TypedDict, total=False):
    """Who holds (or last held) the workspace, as its holder file says."""

    command: str
    pid: int
    host: str
    since: str


def holder(root: Path) -> Holder | None:
    """Who holds (or last held) the workspace: pid, host, command, since."""
    try:
        found = json.loads((root / HOLDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict):
        return None
    return Holder(**{k: v for k, v in found.items() if k in Holder.__annotations__})


def describe(info: Holder | None) -> str:
    """One line naming a holder, for the waiting and giving-up messages."""
    if not info:
        return "another promptloop process"
    command, pid, host, since = (info.get(key, "?") for key in ("command", "pid", "host", "since"))
    return f"`{command}` (pid {pid} on {host}, since {since})"


def write_holder(root: Path, command: str) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": datetime.now(UTC).isoformat(timespec="seconds")}
    write_atomic(root / HOLDER_FILE, json.dumps(info) + "\n")


@contextmanager
def workspace_lock(root: Path, command: str, wait_s: float | None = None) -> Iterator[bool]:
    """Hold the workspace for `command`; yields True for the outermost hold in this process.

    Waits up to `wait_s` (default: `default_wait_s()`), saying on stderr whom it waits for; then
    raises WorkspaceBusy naming the holder.
    """
    lock = file_lock(root)
    outermost = not lock.is_locked
    if outermost:
        acquire(lock, root, default_wait_s() if wait_s is None else wait_s)
    else:
        lock.acquire()  # already ours: only counts up
    try:
        if outermost:
            write_holder(root, command)
        yield outermost
    finally:
        lock.release()


def acquire(lock: FileLock, root: Path, wait_s: float) -> None:
    """Take the lock at once, else say (on stderr: stdout may carry JSON) whom we wait for and wait up to `wait_s`."""
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        pass
    if wait_s > 0:
        print(
            f"{root}: waiting for {describe(holder(root))} to finish (up to {wait_s:g} s)", file=sys.stderr, flush=True
        )
    started = time.monotonic()
    try:
        lock.acquire(timeout=wait_s)
    except Timeout:
        raise WorkspaceBusy(f"{root} is busy: {describe(holder(root))} holds it; gave up after "
                            f"{time.monotonic() - started:.0f} s (set --wait or ${WAIT_ENV} to wait longer)") from None


@contextmanager
def writing(root: Path, command: str, wait_s: float | None = None) -> Iterator[None]:
    """Hold the workspace for `command`; the first holder in a process first undoes what a killed
    writer left half done (see `versioning.dataset_change`)."""
    with workspace_lock(root, command, wait_s) as outermost:
        if outermost:
            from promptloop.workspace.versioning import roll_back_interrupted

            roll_back_interrupted(root)
        yield


def holds_workspace(stage: str) -> Callable[[F], F]:
    """Decorate a stage `fn(workspace, app, ...)` so it runs while `writing` the workspace."""
    def decorate(fn: F) -> F:
        @wraps(fn)
        def locked(workspace: Any, *args: Any, **kwargs: Any) -> Any:
            command = (
                f"promptloop {stage} --app {args[0]}" if args and isinstance(args[0], str) else f"promptloop {stage}"
            )
            with writing(workspace.root, command):
                return fn(workspace, *args, **kwargs)
        return locked  # type: ignore[return-value]
    return decorate
