"""Long-running commands as users stop them: Ctrl-C or SIGTERM leaves no process behind."""

import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests

from pipelines.tracking_server import free_port


@pytest.mark.slow
def test_lifecycle_ui_stops_with_every_process_it_started_on_sigterm(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port()
    ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "ui",
            "--port",
            str(port),
            "--set",
            f"work_dir={tmp_path}",
            "--set",
            "data.path=x.csv",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert ui.poll() is None, "lifecycle ui ended by itself"
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.5)
    time.sleep(3)  # MLflow's job runner starts its workers after the server answers
    started = psutil.Process(ui.pid).children(recursive=True)
    assert len(started) >= 2  # the server and its helpers: what a SIGTERM to the server alone left running

    ui.send_signal(signal.SIGTERM)
    assert ui.wait(timeout=60) == 0
    time.sleep(1)
    left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], [p.cmdline() for p in left]
