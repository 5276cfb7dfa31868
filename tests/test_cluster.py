"""The cluster path on one machine: an MLflow server on PostgreSQL with its own artifact store, a "bucket" reached
only through storage URIs, and every command in a pod of its own: a fresh work directory deleted when the command
ends. Nothing may pass from one pod to the next but the server and the bucket."""

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import as_args, make_texts, tiny_settings, wait_until_ready
from pipelines.cli import main
from pipelines.tracking_server import free_port

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sms_spam.yaml"
MODEL = "sms-spam-classifier"
OTHER_WORDS = "invoice quarterly revenue forecast budget market analysis report board growth".split()


def shifted_texts(n: int) -> list[str]:
    return [" ".join(OTHER_WORDS[(i + k) % 10] for k in range(20)) + f" {i}" for i in range(n)]


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


def serve_in_a_pod(pod, settings: list[str], texts: list[str]) -> None:
    """`lifecycle serve` in its own process and pod; a KServe V2 client sends `texts`, then the pod is stopped."""
    import numpy as np
    import tritonclient.http as httpclient

    port = free_port()
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--config", str(CONFIG), "--port", str(port),
               *as_args(settings)]
    server = subprocess.Popen(command, cwd=pod, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", server)
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
        for start in range(0, len(texts), 10):
            batch = texts[start:start + 10]
            tensor = httpclient.InferInput("text", [len(batch)], "BYTES")
            tensor.set_data_from_numpy(np.array(batch, dtype=object), binary_data=False)
            client.infer(MODEL, [tensor])
    finally:
        server.send_signal(signal.SIGTERM)  # the pod stops: the prediction log's last shard is written
        assert server.wait(timeout=60) == 0


def test_train_deploy_serve_monitor_retrain_across_pods_that_share_only_the_server_and_a_bucket(
        tracking_server, tiny_bert, tmp_path, monkeypatch, capsys):
    import mlflow

    from components import storage
    from monitoring.retraining import TRIGGER_TAG, retrainings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    bucket = (tmp_path / "bucket").as_uri()  # reached only through storage URIs, as s3://... would be
    storage.write_bytes(f"{bucket}/data/texts.csv", make_texts(240).to_csv(index=False).encode())
    served = shifted_texts(50)  # another kind of text than the model was trained on
    def settings(pod, *more: str) -> list[str]:
        return tiny_settings(pod, f"{bucket}/data/texts.csv", tiny_bert, f"storage.checkpoints={bucket}/checkpoints",
                             f"storage.predictions={bucket}/predictions", "serve.log_flush_texts=20",
                             "gate.significance=0.001", "train.epochs=3", *more)

    pods = Pods(tmp_path / "pods")
    client = mlflow.MlflowClient(tracking_server.uri)

    with pods as pod:  # train, evaluate, deploy: the champion
        assert main(["run", *as_args(settings(pod))]) == 0
    first_champion = client.get_model_version_by_alias(MODEL, "champion").version
    with pods as pod:  # serve the champion; its pod keeps nothing
        serve_in_a_pod(pod, settings(pod), served)
    # Someone labels some of the served texts; the retraining adds them to the data.
    feedback = pd.DataFrame({"text": served[:20], "label": "ham"}).to_json(orient="records", lines=True)
    storage.write_bytes(f"{bucket}/feedback/labelled.jsonl", feedback.encode())
    with pods as pod:  # the monitor pipeline: drift on the served window -> alert -> retraining
        assert main(["watch", "--once", *as_args(settings(pod, f"data.feedback_path={bucket}/feedback"))]) == 0

    experiment = client.get_experiment_by_name("sms-spam")
    (check,) = client.search_runs([experiment.experiment_id], "tags.`lifecycle.stage` = '7-monitor' and "
                                                              "tags.mlflow.parentRunId IS NULL")
    # The served predictions reached the monitor, through the bucket.
    assert check.data.metrics["current_size"] == len(served)
    assert f"{bucket}/predictions" in check.data.tags["current_source"]
    assert check.data.tags["drift_detected"] == "true"
    assert [a.path for a in client.list_artifacts(check.info.run_id, "alert")][0].endswith(".json")
    # Exactly one retraining, and it moved the champion.
    (retraining,) = retrainings(client, experiment.experiment_id)
    assert client.get_run(retraining.run_id).info.status == "FINISHED"
    assert len(client.search_runs([experiment.experiment_id], f"tags.`{TRIGGER_TAG}` = 'drift'")) == 1
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert int(champion.version) > int(first_champion)

    # Every artifact is in the server's store; the pods are gone, and the champion still loads and predicts.
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 4  # PyTorch and ONNX, twice
    for version in versions:  # where the registry points: the server's store, which holds the files
        uri = client.get_model_version_download_uri(MODEL, version.version)
        assert uri.startswith("mlflow-artifacts:/"), uri
        assert (tracking_server.artifacts / uri.removeprefix("mlflow-artifacts:/") / "MLmodel").is_file()
    assert not any(pod.exists() for pod in pods.used)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert model.predict(pd.DataFrame({"text": served[:2]}))["label"].tolist() == ["ham", "ham"]

    # The operator's commands against the same server, each in a pod of its own.
    with pods as pod:
        assert main(["monitor", *as_args(settings(pod))]) == 0
    assert len(client.search_runs([experiment.experiment_id], "tags.`lifecycle.stage` = '7-monitor' and "
                                                              "tags.mlflow.parentRunId IS NULL")) == 2
    with pods as pod:
        assert main(["rollback", *as_args(settings(pod))]) == 0
    assert client.get_model_version_by_alias(MODEL, "champion").version == first_champion
    with pods as pod:
        assert main(["ui", *as_args(settings(pod))]) == 0
    assert f"open {tracking_server.uri}" in capsys.readouterr().out
