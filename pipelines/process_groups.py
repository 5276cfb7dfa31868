"""Servers this project starts as child processes (the MLflow UI and tracking server): each in a process group of
its own, so that stopping it stops every process it started. MLflow's job runner outlives a SIGTERM to its parent
alone."""

from __future__ import annotations

import os
import signal
import subprocess
import threading


def start_group(command: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen(command, start_new_session=True, **popen)


def stop_group(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to the whole group, SIGKILL to whatever is left after `grace_s`."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def run_until_stopped(command: list[str]) -> int:
    """Run `command` in its own group until it ends, or until Ctrl-C or SIGTERM stops the whole group."""
    process = start_group(command)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while process.poll() is None and not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        stopping.set()
    stop_group(process)  # also the helpers of a server that ended on its own
    return 0 if stopping.is_set() else process.returncode


def wait_until_answers(url: str, process: subprocess.Popen, seconds: float = 120) -> bool:
    """Until GET `url` answers 200 (True); False when `process` ends first or `seconds` run out."""
    import time

    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return True
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    return False


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
