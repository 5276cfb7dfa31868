"""Stage 4 on several nodes: the TrainJob the fine-tune task submits, checked against Kubeflow Trainer's own CRD, and
run to its end by a stand-in for Trainer's controller whose pods are local processes sharing no disk.

The CRD is data/trainer.kubeflow.org_trainjobs-v2.3.0.yaml.gz: github.com/kubeflow/trainer at tag v2.3.0,
manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml, gzipped (sha256 of the YAML: a742cafc5b55826...)."""

import gzip
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from conftest import job_for, make_texts, predict_test_split, write_splits

from components.config import validate_config
from components.model import core as model_stage
from components.scoring import score
from pipelines.tracking_server import free_port

ROOT = Path(__file__).resolve().parents[1]
CRD = Path(__file__).parent / "data" / "trainer.kubeflow.org_trainjobs-v2.3.0.yaml.gz"
LABELS = ["ham", "spam"]


@cache
def trainjob_schema() -> dict:
    """The CRD's schema with unknown fields refused, as `kubectl apply --validate=strict` does (the API server
    would drop them silently: a misspelt field would be lost, not reported)."""
    crd = yaml.safe_load(gzip.decompress(CRD.read_bytes()))
    assert crd["spec"]["names"]["kind"] == "TrainJob"
    (version,) = [v for v in crd["spec"]["versions"] if v["served"]]
    assert version["name"] == "v1alpha1"

    def strict(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)
        return node

    return strict(version["schema"]["openAPIV3Schema"])


def problems_with(manifest: dict) -> list[str]:
    from jsonschema import Draft4Validator  # OpenAPI 3.0 schemas are JSON Schema draft 4 with extensions

    errors = Draft4Validator(trainjob_schema()).iter_errors(manifest)
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def lifecycle_config(tmp_path, base, **train):
    return validate_config(
        {
            "name": "sms_spam",
            "seed": 0,
            "data": {"path": "texts.csv"},
            "model": {"base": str(base), "strategy": "full", "max_length": 32},
            "train": {
                "epochs": 4,
                "batch_size": 16,
                "learning_rate": 3e-3,
                "early_stopping_patience": 4,
                "threads": 1,
                "nodes": 2,
                "processes": 1,
                **train,
            },
            "storage": {"checkpoints": f"file://{tmp_path / 'bucket' / 'checkpoints'}"},
            "kfp": {
                "image": "registry.example.com/llm-lifecycle:0.2.0-gpu",
                "gpu": {"count": 0},
                "trainjob": {"poll_seconds": 0.2},
            },
        }
    )


@pytest.mark.parametrize(
    "settings",
    [
        {
            "kfp": {"gpu": {"count": 4, "accelerator": "amd.com/gpu"}, "trainjob": {"deadline_hours": 1.5}},
            "train": {"nodes": 3},
        },
        {
            "kfp": {"gpu": {"count": 0}, "trainjob": {"storage_secret": None, "namespace": "team-a"}},
            "train": {"nodes": 2, "processes": 2},
        },
    ],
    ids=["gpus", "cpu"],
)
def test_the_train_job_is_a_valid_trainjob_of_trainer_v2_3(settings):
    from kubernetes.client import ApiClient

    from components.fine_tune.trainjob import train_job_manifest

    cfg = validate_config(
        {"name": "sms_spam", "data": {"path": "x.csv"}, "storage": {"checkpoints": "s3://b/c"}, **settings}
    )
    processes = cfg.train.processes or cfg.kfp.gpu.count
    manifest = train_job_manifest(cfg, "s3://b/c/trainjobs/run1", processes, "0123abcd" * 4)
    assert problems_with(manifest) == []
    meta = manifest["metadata"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?-", meta["generateName"]) and len(meta["generateName"]) <= 58
    assert all(re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", v) for v in meta["labels"].values())
    metadata = ApiClient().deserialize(type("Response", (), {"data": json.dumps(meta)})(), "V1ObjectMeta")
    assert metadata.generate_name == meta["generateName"]
    trainer = manifest["spec"]["trainer"]
    assert manifest["spec"]["runtimeRef"] == {"name": "torch-distributed"}
    assert trainer["image"] == "llm-lifecycle:0.2.0" and trainer["args"] == ["s3://b/c/trainjobs/run1"]
    assert trainer["numNodes"] == cfg.train.nodes and trainer["numProcPerNode"] == processes
    if cfg.kfp.gpu.count:
        assert trainer["resourcesPerNode"] == {"limits": {"amd.com/gpu": 4}}
        assert manifest["spec"]["activeDeadlineSeconds"] == 5400
        secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in trainer["env"] if "valueFrom" in e}
        assert secrets == {"lifecycle-s3"}
    else:
        assert "resourcesPerNode" not in trainer and all("valueFrom" not in e for e in trainer["env"])


@pytest.mark.parametrize("name", ["SMS_Spam", "modèle-é", "x" * 80])
def test_any_pipeline_name_gives_a_valid_job_name_prefix(name):
    from components.fine_tune.trainjob import train_job_manifest

    cfg = validate_config(
        {"name": name, "data": {"path": "x.csv"}, "storage": {"checkpoints": "s3://b/c"}, "train": {"nodes": 2}}
    )
    prefix = train_job_manifest(cfg, "s3://b/c/trainjobs/r", 1, "r")["metadata"]["generateName"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?-", prefix) and len(prefix) + 5 <= 63, prefix


def test_the_schema_check_refuses_a_misspelt_field_and_a_wrong_type():
    manifest = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "a"},
        "spec": {"runtimeRef": {"name": "torch-distributed"}, "trainer": {"numProcsPerNode": 2, "numNodes": "2"}},
    }
    found = problems_with(manifest)
    assert any("numProcsPerNode" in p for p in found) and any(p.startswith("spec.trainer.numNodes") for p in found)


def test_train_nodes_need_storage_that_every_pod_reaches():
    from components.config import ConfigError

    with pytest.raises(ConfigError, match="storage.checkpoints.*not work/checkpoints"):
        validate_config({"data": {"path": "x.csv"}, "train": {"nodes": 2}})


class LocalTrainer:
    """A stand-in for Kubeflow Trainer's controller as the fine-tune task sees it through the Kubernetes API: it
    checks each TrainJob against the CRD, runs the job's command as its nodes (local processes, each in a folder of
    its own: they share no disk, only the bucket) with the PET_* variables Trainer's torch runtime sets, and
    reports their state as the TrainJob's status."""

    def __init__(self, root: Path):
        self.root, self.nodes, self.deleted, self.given = root, {}, [], []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        assert problems_with(body) == []
        name = f"{body['metadata']['generateName']}{len(self.nodes):05d}"
        trainer = body["spec"]["trainer"]
        port = free_port()
        env = (
            os.environ
            | {e["name"]: e["value"] for e in trainer["env"] if "value" in e}
            | {
                "PYTHONPATH": str(ROOT),
                "PET_NNODES": str(trainer["numNodes"]),
                "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
                "PET_MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_PORT": str(port),
            }
        )
        command = [sys.executable if part == "python" else part for part in trainer["command"]] + trainer["args"]
        self.given.append(json.dumps(body) + Path(trainer["args"][0].removeprefix("file://"), "job.json").read_text())
        self.nodes[name] = []
        for rank in range(trainer["numNodes"]):
            pod = self.root / name / f"node-{rank}"
            pod.mkdir(parents=True)
            with open(pod / "log.txt", "w") as log:
                self.nodes[name].append(
                    subprocess.Popen(
                        command,
                        cwd=pod,
                        env=env | {"PET_NODE_RANK": str(rank), "TMPDIR": str(pod)},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        return {**body, "metadata": {**body["metadata"], "name": name}}

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        codes = [node.poll() for node in self.nodes[name]]
        counts = {"active": codes.count(None), "ready": codes.count(None), "succeeded": codes.count(0)}
        counts["failed"] = len(codes) - counts["active"] - counts["succeeded"]
        status = {"jobsStatus": [{"name": "node", **counts}]}
        if counts["failed"]:
            self.stop(name)  # JobSet's default failure policy: one failed node fails the whole set
            status["conditions"] = [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "JobsFailed",
                    "message": f"{counts['failed']} of {len(codes)} nodes failed",
                }
            ]
        elif counts["succeeded"] == len(codes):
            status["conditions"] = [
                {"type": "Complete", "status": "True", "reason": "JobsCompleted", "message": "TrainJob is completed"}
            ]
        return {"metadata": {"name": name}, "status": status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.stop(name)
        self.deleted.append(name)

    def stop(self, name):
        for node in self.nodes[name]:
            if node.poll() is None:
                node.kill()
            node.wait()

    def logs(self, name) -> str:
        return "\n".join((pod / "log.txt").read_text() for pod in sorted((self.root / name).iterdir()))


@pytest.fixture
def trainer(tmp_path):
    local = LocalTrainer(tmp_path / "cluster")
    yield local
    for name in local.nodes:
        local.stop(name)


def task_inputs(tmp_path, base, train_rows=None):
    """What the fine-tune task's pod has: stage 1's splits and stage 2's model, in its own folders."""
    data = write_splits(tmp_path / "task" / "data", LABELS, train_rows)
    init = tmp_path / "task" / "init"
    cfg = lifecycle_config(tmp_path, base)
    model_stage.model(cfg.model.model_copy(update={"base": str(base)}), LABELS, 0, init)
    return cfg, job_for(init, data, tmp_path / "task" / "model", f"{cfg.checkpoints_uri()}/run1", cfg.model, cfg.train)


@pytest.mark.slow
def test_two_nodes_sharing_only_the_bucket_fine_tune_and_hand_back_the_model(tiny_bert, trainer, tmp_path, caplog):
    import logging

    from components.fine_tune.trainjob import fine_tune_on_train_job

    cfg, job = task_inputs(tmp_path, tiny_bert)
    with caplog.at_level(logging.INFO, logger="components.fine_tune.trainjob"):
        result = fine_tune_on_train_job(cfg, "run1", 1, job, api=trainer)
    (name,) = trainer.nodes
    assert result.model_dir == job.out_dir
    assert json.loads(Path(job.out_dir, "train_result.json").read_text())["model_dir"] == result.model_dir
    assert name.startswith("ft-sms-spam-") and trainer.deleted == []
    assert "2 nodes x 1 ranks" in caplog.text and "Complete (JobsCompleted)" in caplog.text
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0] and result.best_val_accuracy >= 0.9, trainer.logs(name)
    probabilities, targets, labels = predict_test_split(job.out_dir, job.data_dir)
    assert score(probabilities, targets, labels).test_accuracy >= 0.85
    bucket = tmp_path / "bucket" / "checkpoints"
    assert (bucket / "run1" / "state.json").is_file()  # rank 0's checkpoint (file://: written in place), for --resume
    assert not (bucket / "trainjobs" / "run1").exists()  # the job's copies of the inputs are gone
    # The nodes were given URIs only, never a path of the task's disk; each cleaned its scratch space.
    assert str(tmp_path / "bucket") in trainer.given[0] and str(tmp_path / "task") not in trainer.given[0]
    assert not any((tmp_path / "cluster" / name).glob("*/lifecycle-*"))


@pytest.mark.slow
def test_a_failed_train_job_fails_the_stage_naming_the_job_and_leaves_no_model(tiny_bert, trainer, tmp_path):
    from components.fine_tune.trainjob import TrainJobError, fine_tune_on_train_job

    unlabelled = make_texts(168).drop(columns="label")
    cfg, job = task_inputs(tmp_path, tiny_bert, train_rows=unlabelled)
    with pytest.raises(
        TrainJobError,
        match=r"TrainJob default/ft-sms-spam-00000 failed: JobsFailed: [12] of 2 nodes"
        r".*kubectl -n default logs",
    ):
        fine_tune_on_train_job(cfg, "run1", 1, job, api=trainer)
    assert "label" in trainer.logs("ft-sms-spam-00000")  # the node's own error is in its log
    assert not Path(job.out_dir).exists() and trainer.deleted == []  # kept for kubectl describe
    assert not (tmp_path / "bucket" / "checkpoints" / "trainjobs" / "run1").exists()


def test_a_train_job_needs_an_mlflow_server_its_pods_reach(tmp_path):
    from components.fine_tune.trainjob import TrainJobRefused, fine_tune_on_train_job

    cfg = lifecycle_config(tmp_path, "unused")
    with pytest.raises(TrainJobRefused, match="needs a tracking server .*not sqlite:///work/mlflow.db"):
        fine_tune_on_train_job(
            cfg,
            "run1",
            1,
            job_for(
                "init", "data", "out", "ckpt", cfg.model, cfg.train, mlflow_run=("sqlite:///work/mlflow.db", "abc")
            ),
            api=RefusingCluster(),
        )


class RefusingCluster:
    def create_namespaced_custom_object(self, *args):
        from kubernetes.client.exceptions import ApiException

        error = ApiException(status=403, reason="Forbidden")
        error.body = json.dumps(
            {
                "message": 'trainjobs.trainer.kubeflow.org is forbidden: User "system:'
                'serviceaccount:team-a:default-editor" cannot create resource'
            }
        )
        raise error


def test_a_refused_train_job_names_the_namespace_and_what_to_grant(tiny_bert, tmp_path):
    from components.fine_tune.trainjob import TrainJobRefused, fine_tune_on_train_job

    cfg, job = task_inputs(tmp_path, tiny_bert)
    cfg.kfp.trainjob.namespace = "team-a"
    with pytest.raises(TrainJobRefused, match="namespace team-a: 403 .*cannot create resource.*service account"):
        fine_tune_on_train_job(cfg, "run1", 1, job, api=RefusingCluster())
    assert not (tmp_path / "bucket" / "checkpoints" / "trainjobs" / "run1").exists()


class RestartingApiServer:
    """Answers `failures` reads with 503, then with the job complete."""

    def __init__(self, failures):
        self.failures, self.deleted = failures, []

    def get_namespaced_custom_object(self, *args):
        from kubernetes.client.exceptions import ApiException

        if self.failures:
            self.failures -= 1
            raise ApiException(status=503, reason="Service Unavailable")
        return {"status": {"conditions": [{"type": "Complete", "status": "True", "reason": "JobsCompleted"}]}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)


def test_following_waits_out_a_restarting_api_server_but_not_one_that_stays_down():
    from components.fine_tune.trainjob import TrainJobError, follow

    restarting = RestartingApiServer(failures=3)
    assert follow(restarting, "team-a", "ft-x-abcde", 0.01)["status"]["conditions"][0]["type"] == "Complete"
    assert restarting.deleted == []
    down = RestartingApiServer(failures=100)
    with pytest.raises(TrainJobError, match="team-a/ft-x-abcde: cannot read its status: ApiException"):
        follow(down, "team-a", "ft-x-abcde", 0.01)
    assert down.failures == 100 - 6 and down.deleted == ["ft-x-abcde"]


STOPPED_TASK = """
import sys
from pathlib import Path
from components.fine_tune.trainjob import follow

class RunningJob:
    def get_namespaced_custom_object(self, *args):
        Path(sys.argv[1]).touch()  # following
        return {"status": {"jobsStatus": [{"name": "node", "active": 2}]}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        Path(sys.argv[1]).write_text(f"deleted {namespace}/{name}")

follow(RunningJob(), "team-a", "ft-x-abcde", 0.05)
"""


def test_a_stopped_task_deletes_the_train_job_it_follows(tmp_path):
    """Kubeflow stops a run's pods with SIGTERM: the task deletes its job rather than leave its nodes training."""
    import signal
    import time

    record = tmp_path / "record"
    task = subprocess.Popen(
        [sys.executable, "-c", STOPPED_TASK, str(record)], env=os.environ | {"PYTHONPATH": str(ROOT)}
    )
    deadline = time.monotonic() + 60
    while not record.exists() and task.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    task.send_signal(signal.SIGTERM)
    assert task.wait(timeout=30) == 143
    assert record.read_text() == "deleted team-a/ft-x-abcde"
