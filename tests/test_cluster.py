"""The cluster path on one machine: an MLflow server on PostgreSQL whose artifact store is a bucket on a real S3
endpoint (moto's standalone server on loopback), s3fs and boto3 as a cluster has them, and every command in a pod
of its own: a fresh work directory deleted when the command ends. Nothing may pass from one pod to the next but the
server and the bucket. The serving pod runs throughout, and follows the registry."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from conftest import OTHER_WORDS, as_args, make_texts, serve_command, tiny_settings, wait_until_ready

from pipelines.cli import main
from pipelines.tracking_server import free_port

pytestmark = pytest.mark.slow  # real servers end to end

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sms_spam.yaml"
MODEL = "sms-spam-classifier"
BUCKET = "lifecycle"


def shifted_texts(n: int) -> list[str]:
    return [" ".join(OTHER_WORDS[(i + k) % 10] for k in range(20)) + f" {i}" for i in range(n)]


@pytest.fixture(scope="module")
def s3_tracking_server():
    """moto's S3 server on loopback with one bucket, and an MLflow server on PostgreSQL whose artifacts are in it.
    The credentials and the endpoint are in the environment, as a pod's Secret puts them (infra/README.md)."""
    import boto3
    from s3fs import S3FileSystem

    from pipelines.process_groups import start_group, stop_group
    from pipelines.tracking_server import start_tracking_server

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = start_group(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    environment = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(endpoint, timeout=1)
            break
        except (requests.ConnectionError, requests.Timeout):  # not yet listening, or listening but still starting
            assert time.monotonic() < deadline, "moto's S3 server did not start"
            time.sleep(0.3)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    # Under /tmp and readable by all: PostgreSQL runs as the postgres user, which must reach its folder.
    root = tempfile.mkdtemp(prefix="lifecycle-s3-tracking-", dir="/tmp")
    os.chmod(root, 0o755)
    server = start_tracking_server(root, artifacts=f"s3://{BUCKET}/mlflow")
    yield server, s3
    server.stop()
    stop_group(moto)
    shutil.rmtree(root, ignore_errors=True)
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    S3FileSystem.clear_instance_cache()  # fsspec keeps file systems, this one with moto's endpoint


class Pods:
    """Fresh work directories, one per command, deleted when it ends (a pod's disk)."""

    def __init__(self, root):
        self.root, self.used = root, []

    def __enter__(self):
        pod = self.root / f"pod-{len(self.used)}"
        pod.mkdir(parents=True)
        self.used.append(pod)
        return pod

    def __exit__(self, *exc):
        shutil.rmtree(self.used[-1])


def classify(port: int, texts: list[str]) -> set[str]:
    """A KServe V2 client sends `texts` ten at a time; the versions that answered."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    versions = set()
    for start in range(0, len(texts), 10):
        batch = texts[start : start + 10]
        tensor = httpclient.InferInput("text", [len(batch)], "BYTES")
        tensor.set_data_from_numpy(np.array(batch, dtype=object), binary_data=False)
        versions.add(client.infer(MODEL, [tensor]).get_response()["model_version"])
    return versions


def until_served(port: int, version: str, texts: list[str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while classify(port, texts[:10]) != {version}:
        assert time.monotonic() < deadline, f"the server did not serve version {version} within {seconds:g} s"
        time.sleep(0.5)


def until_candidate(port: int, version: str, seconds: float = 60) -> None:
    line = f'lifecycle_served_version{{model_name="{MODEL}",model_version="{version}",role="candidate"}} 1.0'
    deadline = time.monotonic() + seconds
    while line not in requests.get(f"http://127.0.0.1:{port + 2}/metrics", timeout=10).text:
        assert time.monotonic() < deadline, f"the server did not take up candidate {version} within {seconds:g} s"
        time.sleep(0.5)


def test_drift_retrains_and_a_shadow_rollout_promotes_on_a_server_never_restarted_across_pods_sharing_only_the_server_and_a_bucket(  # noqa: E501
    s3_tracking_server, tiny_bert, tmp_path, monkeypatch, capsys
):
    import mlflow

    from components import storage
    from monitoring.retraining import TRIGGER_TAG, retrainings

    tracking_server, s3 = s3_tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    bucket = f"s3://{BUCKET}"
    storage.write_bytes(f"{bucket}/data/texts.csv", make_texts(240).to_csv(index=False).encode())
    served = shifted_texts(50)  # another kind of text than the model was trained on

    def settings(pod, *more: str) -> list[str]:
        return tiny_settings(
            pod,
            f"{bucket}/data/texts.csv",
            tiny_bert,
            f"storage.checkpoints={bucket}/checkpoints",
            f"storage.predictions={bucket}/predictions",
            "serve.log_flush_texts=20",
            "serve.log_flush_seconds=1",
            "serve.follow_seconds=1",
            "gate.significance=0.001",
            "train.epochs=3",
            f"data.feedback_path={bucket}/feedback",
            "deploy.rollout.min_texts=20",
            "deploy.rollout.min_labelled=20",
            *more,
        )

    pods = Pods(tmp_path / "pods")
    client = mlflow.MlflowClient(tracking_server.uri)
    storage.write_bytes(f"{bucket}/feedback/.keep", b"")  # the folder exists before anyone labels anything

    with pods as pod:  # train, evaluate, deploy: the first champion goes direct
        assert main(["run", *as_args(settings(pod))]) == 0
    first_champion = str(client.get_model_version_by_alias(MODEL, "champion").version)

    # The serving pod: up from here to the end, never restarted.
    serving_pod = tmp_path / "serving-pod"
    serving_pod.mkdir()
    port = free_port(3)  # serve: HTTP, gRPC, metrics
    output = serving_pod / "server.out"
    with open(output, "w") as sink:
        server = subprocess.Popen(
            serve_command(CONFIG, port, *as_args(settings(serving_pod))),
            cwd=serving_pod,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", server, output=output)
        assert classify(port, served) == {first_champion}
        time.sleep(2)  # the last shard reaches the bucket
        # Someone labels some of the served texts; the retraining adds them to the data.
        feedback = pd.DataFrame({"text": served[:20], "label": "ham"}).to_json(orient="records", lines=True)
        storage.write_bytes(f"{bucket}/feedback/labelled.jsonl", feedback.encode())
        with pods as pod:  # the monitor pipeline: drift on the served window -> alert -> retraining -> candidate
            assert main(["watch", "--once", *as_args(settings(pod))]) == 0
        experiment = client.get_experiment_by_name("sms-spam")
        (check,) = client.search_runs(
            [experiment.experiment_id], "tags.`lifecycle.stage` = '7-monitor' and tags.mlflow.parentRunId IS NULL"
        )
        # The served predictions reached the monitor, through the bucket.
        assert check.data.metrics["current_size"] == len(served)
        assert f"{bucket}/predictions" in check.data.tags["current_source"]
        assert check.data.tags["drift_detected"] == "true"
        assert [a.path for a in client.list_artifacts(check.info.run_id, "alert")][0].endswith(".json")
        (retraining,) = retrainings(client, experiment.experiment_id)
        assert client.get_run(retraining.run_id).info.status == "FINISHED"
        assert len(client.search_runs([experiment.experiment_id], f"tags.`{TRIGGER_TAG}` = 'drift'")) == 1
        # The retraining went on trial, not to all traffic: the champion answers, the candidate shadows it.
        candidate = str(client.get_model_version_by_alias(MODEL, "candidate").version)
        assert int(candidate) > int(first_champion)
        assert str(client.get_model_version_by_alias(MODEL, "champion").version) == first_champion
        until_candidate(port, candidate)
        assert classify(port, served) == {first_champion}
        time.sleep(2)
        with pods as pod:  # the next scheduled check: enough labelled texts scored by both -> promote
            assert main(["watch", "--once", *as_args(settings(pod))]) == 0
        (decision,) = client.search_runs([experiment.experiment_id], "tags.`lifecycle.stage` = 'rollout'")
        assert decision.data.tags["decision"] == "promote", decision.data.tags["decision_reason"]
        assert decision.data.metrics["labelled"] >= 20 and decision.data.metrics["paired"] >= 20
        assert str(client.get_model_version_by_alias(MODEL, "champion").version) == candidate
        until_served(port, candidate, served)  # the same server process, no restart

        # Every artifact is in the bucket, behind the server's proxy; the pods are gone.
        assert experiment.artifact_location.startswith("mlflow-artifacts:")
        versions = client.search_model_versions(f"name = '{MODEL}'")
        assert len(versions) == 4  # PyTorch and ONNX, twice
        for version in versions:
            uri = client.get_model_version_download_uri(MODEL, version.version)
            assert uri.startswith("mlflow-artifacts:/"), uri
            s3.head_object(Bucket=BUCKET, Key=f"mlflow/{uri.removeprefix('mlflow-artifacts:/')}/MLmodel")
        assert not any(pod.exists() for pod in pods.used)
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
        assert model.predict(pd.DataFrame({"text": served[:2]}))["label"].tolist() == ["ham", "ham"]

        # The operator's commands against the same server, each in a pod of its own; the server follows.
        with pods as pod:
            assert main(["monitor", *as_args(settings(pod))]) == 0
        assert (
            len(
                client.search_runs(
                    [experiment.experiment_id],
                    "tags.`lifecycle.stage` = '7-monitor' and tags.mlflow.parentRunId IS NULL",
                )
            )
            == 3
        )
        with pods as pod:
            assert main(["rollback", *as_args(settings(pod))]) == 0
        assert str(client.get_model_version_by_alias(MODEL, "champion").version) == first_champion
        until_served(port, first_champion, served)
        with pods as pod:
            assert main(["ui", *as_args(settings(pod))]) == 0
        assert f"open {tracking_server.uri}" in capsys.readouterr().out
    finally:
        server.send_signal(signal.SIGTERM)  # the pod stops: the prediction log's last shard is written
        assert server.wait(timeout=60) == 0
