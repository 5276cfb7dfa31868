"""An MLflow tracking server on PostgreSQL on this machine, as a cluster runs one: `mlflow server` with a
PostgreSQL backend store and a proxied artifact store (`--artifacts-destination`), so clients only ever talk HTTP.
`lifecycle tracking-server` runs it until Ctrl-C; the cluster-faithful tests start it the same way."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from components.errors import LifecycleError
from pipelines.process_groups import start_group, stop_group, wait_until_answers

log = logging.getLogger(__name__)

DATABASE = "mlflow"
USER = "mlflow"
# MLflow's server-side jobs (GenAI judges and scorers, trace roll-ups) start a job runner and six huey consumers with
# each server; the lifecycle uses none of them. Off: the server starts in about half the time here and fits its pod.
NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class ServerError(LifecycleError):
    """PostgreSQL or the MLflow server could not start; the message says what to install or where to look."""


@dataclass
class TrackingServer:
    uri: str  # http://127.0.0.1:PORT
    backend_uri: str  # postgresql://...
    artifacts: str  # the artifact store: a folder, or an object-store URI (s3://...)
    postgres_dir: Path
    process: subprocess.Popen

    def stop(self) -> None:
        """Stop the MLflow server's whole process group, then PostgreSQL."""
        stop_group(self.process)
        _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.postgres_dir / "data"), "-m", "fast", "-w", "stop"])


def start_tracking_server(
    root: str | Path, port: int = 0, db_port: int = 0, artifacts: str | None = None
) -> TrackingServer:
    """PostgreSQL in root/postgres and `mlflow server` on it with its artifacts in `artifacts` (an object-store URI
    such as s3://bucket/mlflow, reached with the usual credentials and MLFLOW_S3_ENDPOINT_URL), by default in
    root/artifacts; ready on return."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    backend = start_postgres(root / "postgres", db_port or free_port())
    if artifacts is None:
        artifacts = str(root / "artifacts")
        Path(artifacts).mkdir(exist_ok=True)
    port = port or free_port()
    log = open(root / "mlflow-server.log", "ab")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        artifacts,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    process = start_group(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | NO_JOBS)
    server = TrackingServer(f"http://127.0.0.1:{port}", backend, artifacts, root / "postgres", process)
    _wait_until_healthy(server, root / "mlflow-server.log")
    return server


def start_postgres(folder: Path, port: int) -> str:
    """initdb (once) and start PostgreSQL on 127.0.0.1:port with its socket in `folder`; returns the backend URI."""
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: the folder belongs to the postgres user
        shutil.chown(folder, "postgres", "postgres")
    if not (data / "PG_VERSION").is_file():
        _as_postgres([_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8"])
    _as_postgres(
        [
            _pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "postgres.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
            "start",
        ]
    )
    created = subprocess.run(
        [
            _pg_bin("psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            USER,
            "-d",
            "postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not created:
        subprocess.run([_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE], check=True)
    return f"postgresql://{USER}@127.0.0.1:{port}/{DATABASE}"


def free_port(count: int = 1) -> int:
    """A free port whose next `count - 1` ports are free too (MLServer takes three in a row)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            if all(_bindable(port + offset) for offset in range(1, count)):
                return port


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def run_tracking_server(root: str | Path, port: int, artifacts: str | None = None) -> None:
    """Start the server, print how to use it, serve until Ctrl-C or SIGTERM, then stop both processes."""
    server = start_tracking_server(root, port, artifacts=artifacts)
    log.info(
        "MLflow server %s (backend %s, artifacts %s)\n  export MLFLOW_TRACKING_URI=%s\nCtrl-C stops it.",
        server.uri,
        server.backend_uri,
        server.artifacts,
        server.uri,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _pg_bin(name: str) -> str:
    """Debian keeps PostgreSQL's server programs off the PATH; pg_config names their folder."""
    found = shutil.which("pg_config")
    if found:
        candidate = Path(subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip()) / name
        if candidate.is_file():
            return str(candidate)
    on_path = shutil.which(name)
    if not on_path:
        raise ServerError(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql)")
    return on_path


def _as_postgres(command: list[str]) -> None:
    if os.geteuid() == 0:
        command = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise ServerError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def _wait_until_healthy(server: TrackingServer, log: Path, timeout_s: float = 120) -> None:
    if wait_until_answers(f"{server.uri}/health", server.process, timeout_s):
        return
    server.stop()
    raise ServerError(f"the MLflow server did not become healthy; its log: {log}")
