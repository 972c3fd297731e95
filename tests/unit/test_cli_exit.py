"""The console script ends without the interpreter's teardown, but only after everything a normal exit does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from promptloop import __version__
from promptloop.cli import exit_status

# A process that leaves work for the exit: a non-daemon thread still writing, an idle thread pool (only
# threading's exit hook stops its worker: joining it alone waits forever), an exit handler, buffered output.
SCRIPT = r"""
import atexit, sys, threading
from pathlib import Path
out = Path(sys.argv[1])
gate = threading.Event()
def late_writer():  # still busy when the command is done: a normal exit waits for it
    gate.wait()
    with (out / "thread.txt").open("w") as file:
        for line in range(200_000):
            file.write(f"{line}\n")
threading.Thread(target=late_writer).start()
from concurrent.futures import ThreadPoolExecutor
idle = ThreadPoolExecutor(1, thread_name_prefix="idle-pool")  # as MLflow's artifact copier: a worker left waiting
idle.submit(int).result()
atexit.register(lambda: (out / "atexit.txt").write_text("ran"))
sys.stdout.write("buffered, not flushed")
sys.argv = ["promptloop", *sys.argv[2:]]
from promptloop.cli import main
gate.set()
main()
"""


def run_main(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), *args], capture_output=True, text=True,
                          check=False, timeout=600)


def test_the_console_script_exits_with_its_status_after_threads_handlers_and_output(tmp_path: Path) -> None:
    done = run_main(tmp_path, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("buffered, not flushed") and __version__ in done.stdout
    assert (tmp_path / "thread.txt").read_text().splitlines()[-1] == "199999"
    assert (tmp_path / "atexit.txt").read_text() == "ran"


def test_a_usage_error_keeps_its_exit_status(tmp_path: Path) -> None:
    done = run_main(tmp_path, "evaluate", "--no-such-option")
    assert done.returncode == 2 and "No such option" in done.stderr
    assert (tmp_path / "atexit.txt").is_file()


# CPython 3.11's race, made certain: the exit hook's write to a shut-down process pool's wake-up pipe comes
# just after the pool's manager thread closed it (between the hook's check and its write).
RACE = r"""
import sys
import concurrent.futures.process as process
from concurrent.futures import ProcessPoolExecutor
pool = ProcessPoolExecutor(1)
pool.submit(int).result()
manager = pool._executor_manager_thread  # kept, so the exit hook still finds the pool's pipe
pool.shutdown(wait=False)  # as the recorder's pool: its manager thread closes the pipe on its own
hook = process._ThreadWakeup.wakeup
def closed_mid_write(wakeup):
    process._ThreadWakeup.wakeup = hook  # once: the race happens at one exit hook's call
    wakeup.close()
    wakeup._writer.send_bytes(b"")
process._ThreadWakeup.wakeup = closed_mid_write
sys.argv = ["promptloop", "evaluate", "--no-such-option"]
from promptloop.cli import main
main()
"""


def test_a_process_pools_wakeup_race_at_exit_keeps_the_exit_status() -> None:
    done = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 2 and "No such option" in done.stderr
    assert "Traceback" not in done.stderr


# A helper process (a spawned pool's worker, as the recorder's and the evaluation's workers): its exit
# handler must still run, and the interpreter's teardown (here: a global's finalizer) must not.
HELPER = r"""
import atexit, sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path


class Teardown:
    def __init__(self, folder):
        self.path, self.open = str(Path(folder) / "teardown.txt"), open  # kept: globals go first at teardown

    def __del__(self):  # runs when the interpreter frees the module's globals
        with self.open(self.path, "w") as file:
            file.write("ran")


def start(folder, fast):
    global kept
    if fast:
        from promptloop.core.runtime import end_helper_without_teardown
        end_helper_without_teardown()
    atexit.register(lambda: (Path(folder) / "atexit.txt").write_text("ran"))
    kept = Teardown(folder)


if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=start,
                               initargs=(sys.argv[1], sys.argv[2] == "fast"))
    assert pool.submit(abs, -3).result() == 3
    pool.shutdown(wait=True)
"""


@pytest.mark.parametrize("fast", [True, False])
def test_a_helper_process_ends_after_its_exit_handlers_without_the_teardown(tmp_path: Path, fast: bool) -> None:
    script = tmp_path / "helper.py"
    script.write_text(HELPER, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), str(tmp_path), "fast" if fast else "slow"],
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert (tmp_path / "teardown.txt").is_file() is not fast  # the control shows the teardown is seen


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (3, 3), ("a message", 1)])
def test_exit_status_is_what_sys_exit_gives(code: object, status: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(code) == status
    assert capsys.readouterr().err == ("a message\n" if isinstance(code, str) else "")
