"""What a shadow rollout costs the champion, in one run: the same MLServer (`serve`, following a scratch registry)
answers with no rollout, then with a candidate scoring a copy of every request off the answer path, in interleaved
rounds. Prints the champion's p50/p99 latency for one text and the throughput of concurrent clients; the medians
of the rounds are reported.

    python benchmarks/shadow.py                        # the newest `lifecycle run` under work/kfp
    python benchmarks/shadow.py --run-dir work/kfp/sms-spam-training-... --rounds 3
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from components.handoff import bundle_dir, read_split
from components.stages import DATA, DEPLOY

NAME = "shadow-benchmark"
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serving import newest_run, run_parser

    parser = run_parser("data/dataset and deploy/", single=200, rounds=2, per="mode and round")
    parser.description = __doc__
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients for the throughput")
    parser.add_argument("--seconds", type=float, default=10, help="throughput measured this long per mode and round")
    args = parser.parse_args()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    warnings.filterwarnings("ignore", message=".*Add type hints")  # MLflow on our pyfunc, at registering

    run = Path(args.run_dir) if args.run_dir else newest_run(ROOT / "work" / "kfp")
    texts = read_split(run / DATA.task_name / "dataset", "test")["text"].tolist()
    bundle = bundle_dir((run / DEPLOY.task_name / "onnx_model").resolve())
    print(f"run {run}\n{len(texts)} test texts, {os.cpu_count()} CPU threads, {args.clients} clients\n")
    with tempfile.TemporaryDirectory(prefix="shadow-benchmark-") as scratch:
        rows = measure(Path(scratch), bundle, texts, args)
    base = rows["no rollout"]
    print(
        "| serving | p50 latency, 1 text | p99 latency, 1 text | throughput, "
        f"{args.clients} clients | vs no rollout | shadow-scored: 1 client, {args.clients} clients |"
    )
    print("|---|---|---|---|---|---|")
    for mode, r in rows.items():
        scored = f"{r['scored_single']:.0%}, {r['scored_busy']:.0%}" if mode == "shadow" else "-"
        print(
            f"| {mode} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['requests_per_s']:.0f} requests/s | "
            f"{r['requests_per_s'] / base['requests_per_s']:.2f}x | {scored} |"
        )


def measure(scratch: Path, bundle: Path, texts: list[str], args) -> dict[str, dict[str, float]]:
    import mlflow

    from components.registry import end_rollout, promote, start_rollout
    from pipelines.process_groups import wait_until_answers
    from pipelines.tracking_server import free_port

    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    register_twice(bundle)
    promote(NAME, "1")
    port = free_port()
    code = (
        f"from components.deploy.server import Follow, Limits, serve; serve({str(bundle)!r}, {NAME!r}, '1', "
        f"{port}, {str(scratch / 'predictions')!r}, Limits(), host='127.0.0.1', "
        f"follow=Follow('champion', 0.5, {str(scratch / 'downloads')!r}))"
    )
    log = open(scratch / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_answers(f"{url}/v2/health/ready", server):
            raise SystemExit("the server was not ready in 120 s")
        figures = {"no rollout": [], "shadow": []}
        for _ in range(args.rounds):
            for mode in figures:
                if mode == "shadow":
                    start_rollout(NAME, "2", "shadow", 0)
                wait_for_mode(url, port, mode)
                figures[mode].append(timed(url, port, texts, args))
                if mode == "shadow":
                    end_rollout(NAME, "2", promoted=False, reason="benchmark round over")
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        mode: {key: float(np.median([r[key] for r in rounds])) for key in rounds[0]} for mode, rounds in figures.items()
    }


def register_twice(bundle: Path) -> None:
    import mlflow

    from components.handoff import read_labels
    from components.pyfunc_model import OnnxTextClassifier
    from components.registry import register_model

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # after MLflow's import, which sets its own level
    mlflow.set_experiment(NAME)
    for _ in range(2):  # MLflow prints what it registers
        with mlflow.start_run(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            register_model(OnnxTextClassifier(), {"bundle": str(bundle)}, read_labels(bundle), NAME, "", {}, ["a"])


def wait_for_mode(url: str, port: int, mode: str) -> None:
    """Until the server shows a candidate (shadow) or none (no rollout) on its metrics."""
    import requests

    line = f'lifecycle_served_version{{model_name="{NAME}",model_version="2",role="candidate"}} 1.0'
    deadline = time.monotonic() + 60
    while (line in requests.get(f"http://127.0.0.1:{port + 2}/metrics", timeout=10).text) != (mode == "shadow"):
        if time.monotonic() > deadline:
            raise SystemExit(f"the server did not switch to {mode} in 60 s")
        time.sleep(0.2)
    for text in ["warm up"] * 5:
        requests.post(f"{url}/predict", json={"texts": [text]}, timeout=30).raise_for_status()


def timed(url: str, port: int, texts: list[str], args) -> dict[str, float]:
    """p50/p99 of one client's one-text requests, then requests/s of `clients` concurrent clients; in each, the
    share of texts the shadow scored (it drops copies when it falls behind)."""
    import requests

    session, rng = requests.Session(), np.random.default_rng(0)
    latencies, dropped = [], shadow_dropped(port)
    for text in rng.choice(texts, args.single):
        start = time.perf_counter()
        session.post(f"{url}/predict", json={"texts": [str(text)]}, timeout=30).raise_for_status()
        latencies.append(time.perf_counter() - start)
    time.sleep(1)  # the last copies are scored
    scored_single, dropped = 1 - (shadow_dropped(port) - dropped) / len(latencies), shadow_dropped(port)
    done, stop = [0] * args.clients, threading.Event()

    def client(i: int) -> None:
        own = requests.Session()
        for text in np.random.default_rng(1 + i).choice(texts, 100_000):
            if stop.is_set():
                return
            own.post(f"{url}/predict", json={"texts": [str(text)]}, timeout=30).raise_for_status()
            done[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    time.sleep(args.seconds)
    stop.set()
    for thread in threads:
        thread.join()
    time.sleep(1)
    return {
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "requests_per_s": sum(done) / args.seconds,
        "scored_single": scored_single,
        "scored_busy": 1 - (shadow_dropped(port) - dropped) / max(sum(done), 1),
    }


def shadow_dropped(port: int) -> float:
    """Texts the shadow left unscored so far (it drops copies when it falls behind the answers)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    page = requests.get(f"http://127.0.0.1:{port + 2}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == "lifecycle_shadow_dropped_texts_total"
    )


if __name__ == "__main__":
    main()
