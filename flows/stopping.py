"""Ctrl-C and SIGTERM stop `curate` within seconds, with everything it started.

Python's default would raise KeyboardInterrupt in the main thread, where Prefect's engine waits
on task futures: the run went on for minutes (a download finishing) or to its end, and SIGTERM
left Prefect's temporary API server (a uvicorn child) running. Instead the handler ends every
child process (downloader, Prefect server, Dask workers), removes the temporary files this
process's writers left in the run directory, and exits with 128 + the signal's number (130,
143). Completion markers are written last, so rerunning the same command resumes the run.
"""

import os
import signal
import sys
import threading
from pathlib import Path

import psutil

from curation import io
from curation.rundir import RunDir

GRACE_SECONDS = 3  # for children to exit on SIGTERM before they are killed
_installed = []  # the handler `install` made, for `reclaim`


def install(run_dir: str | Path | None) -> None:
    """Handle SIGINT and SIGTERM for the rest of this process (main thread only)."""

    def stop(signum, _frame):
        end_children()
        if run_dir is not None and RunDir(run_dir).is_run():
            io.remove_partial_files(RunDir(run_dir).own_folders())
            RunDir(run_dir).lock_pid.unlink(missing_ok=True)
        name = signal.Signals(signum).name
        print(f"curate: stopped by {name}; rerun the same command to resume", file=sys.stderr)
        sys.stderr.flush()
        os._exit(128 + signum)  # no interpreter shutdown: it would wait on the engine's threads

    _installed[:] = [stop]
    reclaim()


def reclaim() -> None:
    """Put the handler back where Prefect's flow engine swapped in its own for SIGTERM (it
    raises in the engine, which then waits minutes for running tasks). Called at the start
    of each flow; a no-op outside `curate` (tests) or off the main thread."""
    if _installed and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _installed[0])


def end_children() -> None:
    """SIGTERM every descendant process, then SIGKILL those still there after the grace."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=GRACE_SECONDS)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
