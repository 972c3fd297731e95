"""The processes an evaluation's calls run on: `llm.processes` of them, the calling process being one.

One Python process is CPU-bound in litellm long before a provider's limits (about 7 ms of CPU per call),
so a second core shortens the calls. The extra processes are spawned when the evaluation starts, before
it plans, so that their imports (litellm alone takes seconds) overlap the caller's own start instead of
following it; the same processes then serve every look of a race.
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType

from promptloop.evaluate.plan import EvalPlan
from promptloop.evaluate.run import EvalRun, Progress, Stopwatch, evaluate_batch, warm_worker
from promptloop.llm.client import litellm_module_configured
from promptloop.llm.runner import ResponseCache
from promptloop.workspace.workspace import Workspace


class Workers:
    """`processes - 1` spawned worker processes plus the caller; `run` spreads a plan's case batches over them."""

    def __init__(self, workspace: Workspace, processes: int) -> None:
        self.workspace = workspace
        self.processes = max(1, processes)
        self.pool: ProcessPoolExecutor | None = None
        self.warming: list[Future[float]] = []
        if self.processes > 1:
            if workspace.params.llm.cache:  # created here once, not raced by the workers
                ResponseCache(workspace.path(workspace.params.llm.cache)).close()
            # spawn: no forked copies of the caller's threads, event loops or open databases.
            self.pool = ProcessPoolExecutor(self.processes - 1, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=warm_worker, initargs=(workspace,))
            # A task per worker starts them all now (the pool spawns a process per waiting task).
            self.warming = [self.pool.submit(math.sqrt, i) for i in range(self.processes - 1)]

    def ready_here(self, clock: Stopwatch | None = None) -> None:
        """litellm imported and configured in the caller (seconds of imports: set-up, not the calls' time)."""
        litellm_module_configured(self.workspace.params.llm)
        if clock is not None and "setup_s" not in clock.laps:
            clock.lap("setup_s")

    def run(self, plan: EvalPlan, chunks: list[list[str]], on_progress: Progress | None = None) -> list[EvalRun]:
        """Every batch of `chunks` answered and scored: the first here (its progress shown as it goes), the
        others on the worker processes (each one's progress when it is done), at once."""
        share = 1 / len(chunks)
        running = min(self.processes, len(chunks))  # each runs with its part of the concurrency and rate limits
        elsewhere = chunks[1:] if self.pool is not None else []
        futures = [self.pool.submit(evaluate_batch, self.workspace, plan, ids, share, None, running)
                   for ids in elsewhere] if self.pool is not None else []
        here = chunks[: len(chunks) - len(elsewhere)]
        runs = [evaluate_batch(self.workspace, plan, ids, share, on_progress, running) for ids in here]
        for future, ids in zip(futures, elsewhere, strict=True):
            runs.append(future.result())
            if on_progress:
                on_progress(len(ids) * len(plan.runnable))
        return runs

    def close(self) -> None:
        """The worker processes stopped (not waited for when they are still importing: nothing is lost)."""
        if self.pool is not None:
            self.pool.shutdown(wait=all(f.done() for f in self.warming), cancel_futures=True)
            self.pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
