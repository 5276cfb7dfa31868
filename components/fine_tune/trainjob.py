"""Stage 4 on several nodes: a Kubeflow Trainer TrainJob (a torch runtime) runs `train.nodes` pods of the project's
image, each torchrun with its ranks (components.fine_tune.torchrun). The pods share no disk with the fine-tune task
that submits the job: the task puts the splits, the stage 2 model and the job at a storage URI; every node fetches them;
the node of rank 0 puts the fine-tuned model back; the task follows the job to its end and takes the model.
Importable without MLflow or KFP: the module is also the node's entry point."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from components import storage
from components.config import LifecycleConfig
from components.errors import LifecycleError, RunFailure
from components.fine_tune.torchrun import run_ranks
from components.handoff import JOB, FineTuneJob, TrainResult, rehome_train_result
from components.tracking import is_tracking_server

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
# The Secret's keys (infra/README.md, step 5) as the variables s3fs and boto read.
STORAGE_SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID": "access-key-id",
    "AWS_SECRET_ACCESS_KEY": "secret-access-key",
    "AWS_ENDPOINT_URL": "endpoint-url",
}
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TrainJobError(RunFailure):
    """The TrainJob failed, or following it did: names the job, its namespace and the reason."""


class TrainJobRefused(LifecycleError):
    """No TrainJob can be submitted from here as configured: no Kubernetes API, no right to create one, no
    Trainer, or a tracking URI the job's pods cannot reach."""


def fine_tune_on_train_job(
    cfg: LifecycleConfig, parent_run_id: str, processes: int, job: FineTuneJob, api=None
) -> TrainResult:
    """`fine_tune` on `cfg.train.nodes` nodes of `processes` ranks each, in a TrainJob that `cfg.kfp` describes;
    `api`: a kubernetes CustomObjectsApi (default: the cluster this task runs in, else the kubeconfig's). Returns
    rank 0's result, the model in job.out_dir."""
    if job.mlflow_run and not is_tracking_server(job.mlflow_run[0]):
        raise TrainJobRefused(
            f"train.nodes={cfg.train.nodes}: rank 0 logs from a TrainJob pod to the stage's "
            f"MLflow run, which needs a tracking server (http://...), not {job.mlflow_run[0]}"
        )
    api = api or kubernetes_api()
    namespace = cfg.kfp.trainjob.namespace or current_namespace()
    job_uri = storage.join(cfg.checkpoints_uri(), "trainjobs", parent_run_id)
    # Each node counts its own threads.
    remote = replace(
        job,
        init_dir=storage.join(job_uri, "init"),
        data_dir=storage.join(job_uri, "data"),
        out_dir=storage.join(job_uri, "model"),
        threads=0,
    )
    try:
        storage.upload_folder(job.init_dir, remote.init_dir)
        storage.upload_folder(job.data_dir, remote.data_dir)
        storage.write_bytes(storage.join(job_uri, JOB), remote.to_json().encode())
        name = submit(api, namespace, train_job_manifest(cfg, job_uri, processes, parent_run_id))
        follow(api, namespace, name, cfg.kfp.trainjob.poll_seconds)
        storage.download_folder(remote.out_dir, job.out_dir)
    finally:
        storage.remove(job_uri)
    return rehome_train_result(job.out_dir)  # the node wrote its own scratch folder as the model's place


def train_job_manifest(cfg: LifecycleConfig, job_uri: str, processes: int, parent_run_id: str) -> dict:
    """The TrainJob (trainer.kubeflow.org/v1alpha1): the runtime, the image, the nodes, the ranks and GPUs of each,
    and the node's command with the job's URI."""
    settings = cfg.kfp.trainjob
    trainer = {
        "image": cfg.kfp.image,
        "command": ["python", "-m", "components.fine_tune.trainjob"],
        "args": [job_uri],
        "numNodes": cfg.train.nodes,
        "numProcPerNode": processes,
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
    }
    if settings.storage_secret:
        trainer["env"] += [
            {
                "name": variable,
                "valueFrom": {"secretKeyRef": {"name": settings.storage_secret, "key": key, "optional": True}},
            }
            for variable, key in STORAGE_SECRET_KEYS.items()
        ]
    if cfg.kfp.gpu.count:
        trainer["resourcesPerNode"] = {"limits": {cfg.kfp.gpu.accelerator: cfg.kfp.gpu.count}}
    spec = {"runtimeRef": {"name": settings.runtime}, "trainer": trainer}
    if settings.deadline_hours:
        spec["activeDeadlineSeconds"] = round(settings.deadline_hours * 3600)
    # A DNS label (ASCII letters, digits, '-') that starts with a letter; the API server appends 5 characters.
    prefix = re.sub(r"[^a-z0-9]+", "-", cfg.name.lower())[:40].strip("-")
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {
            "generateName": f"ft-{prefix}-" if prefix else "ft-",
            "labels": {"app.kubernetes.io/part-of": "llm-lifecycle", "lifecycle.mlflow/parent-run": parent_run_id},
        },
        "spec": spec,
    }


def kubernetes_api():
    """The custom-objects API of the cluster this task runs in, else of the kubeconfig's current context."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as err:
            raise TrainJobRefused(
                f"train.nodes > 1 submits a Kubeflow Trainer TrainJob, and there is no "
                f"Kubernetes API here: not in a pod with a service account, and no usable "
                f"kubeconfig ({err})"
            ) from None
    return client.CustomObjectsApi()


def current_namespace() -> str:
    """The namespace of this task's pod, else of the kubeconfig's current context, else Kubernetes' default."""
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    from kubernetes import config

    try:
        _, context = config.list_kube_config_contexts()
    except (config.ConfigException, OSError):
        return "default"
    return context["context"].get("namespace", "default")


def submit(api, namespace: str, manifest: dict) -> str:
    """Create the TrainJob; returns the name the API server gave it."""
    from kubernetes.client.exceptions import ApiException

    try:
        created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    except ApiException as err:
        hint = {
            404: " (is Kubeflow Trainer installed? its TrainJob API was not found)",
            403: " (the task's service account may not create trainjobs: infra/README.md, step 4)",
        }
        raise TrainJobRefused(
            f"cannot create a TrainJob in namespace {namespace}: {err.status} "
            f"{_api_message(err)}{hint.get(err.status, '')}"
        ) from None
    name = created["metadata"]["name"]
    log.info(
        "TrainJob %s/%s: %d nodes x %d ranks; the pods' logs: kubectl -n %s logs -f -l "
        "jobset.sigs.k8s.io/jobset-name=%s",
        namespace,
        name,
        manifest["spec"]["trainer"]["numNodes"],
        manifest["spec"]["trainer"]["numProcPerNode"],
        namespace,
        name,
    )
    return name


def follow(api, namespace: str, name: str, poll_seconds: float, tolerated_errors: int = 5) -> dict:
    """Read the job's status until it completes (returned) or fails (TrainJobError), logging each change. Up to
    `tolerated_errors` API failures in a row are waited out (a job may run for hours; the API server may restart).
    When following stops for any other reason (the task is stopped, the API stays down), the job is deleted:
    nobody would take its model."""
    from kubernetes.client.exceptions import ApiException

    shown, ended, errors = None, False, 0
    try:
        with _sigterm_as_exit():
            while True:
                try:
                    job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
                    errors = 0
                except Exception as err:  # the API server or the network between; a deleted job ends here
                    errors += 1
                    if errors > tolerated_errors or (isinstance(err, ApiException) and err.status == 404):
                        raise TrainJobError(
                            f"TrainJob {namespace}/{name}: cannot read its status: {type(err).__name__}: {err}"
                        ) from None
                    log.warning("TrainJob %s: cannot read its status (%s); trying again", name, type(err).__name__)
                    time.sleep(poll_seconds)
                    continue
                state = describe(job)
                if state != shown:
                    log.info("TrainJob %s: %s", name, state)
                    shown = state
                condition = _ended(job)
                if condition is not None:
                    ended = True
                    if condition["type"] == "Failed":
                        raise TrainJobError(
                            f"TrainJob {namespace}/{name} failed: {condition.get('reason', '')}: "
                            f"{condition.get('message', '')}; its pods' logs: kubectl -n {namespace} "
                            f"logs -l jobset.sigs.k8s.io/jobset-name={name}"
                        )
                    return job
                time.sleep(poll_seconds)
    finally:
        if not ended:
            _delete(api, namespace, name)


def _delete(api, namespace: str, name: str) -> None:
    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        log.warning("TrainJob %s: deleted, as this task no longer follows it", name)
    except Exception as err:  # the error that stopped the following is the one to report
        log.warning(
            "TrainJob %s: this task no longer follows it and could not delete it (%s): delete it with "
            "kubectl -n %s delete trainjob %s",
            name,
            err,
            namespace,
            name,
        )


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (Kubeflow stopping the run ends the task's pod so) exits through `finally` blocks, as Ctrl-C does;
    Python's default would end the process at once and leave the job's GPUs busy."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe(job: dict) -> str:
    """One line: the newest condition that holds, the child jobs' pods, the trainer's progress if it reports it."""
    status = job.get("status") or {}
    holding = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    parts = [f"{holding[-1]['type']} ({holding[-1].get('reason', '')})" if holding else "created"]
    for child in status.get("jobsStatus") or []:
        counts = ", ".join(f"{child.get(k, 0)} {k}" for k in ("active", "ready", "succeeded", "failed"))
        parts.append(f"{child['name']}: {counts}")
    progress = (status.get("trainerStatus") or {}).get("progressPercentage")
    if progress is not None:
        parts.append(f"{progress}% done")
    return "; ".join(parts)


def _ended(job: dict) -> dict | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition
    return None


def _api_message(err) -> str:
    try:
        return json.loads(err.body)["message"]
    except (TypeError, ValueError, KeyError):
        return err.reason or ""


def run_node(job_uri: str) -> None:
    """One node of the TrainJob: fetch the job's files, run this node's ranks; the node of rank 0 puts the model
    at the job's output URI."""
    job = FineTuneJob.from_json(storage.read_bytes(storage.join(job_uri, JOB)).decode())
    ranks = int(os.environ.get("PET_NPROC_PER_NODE", "1"))
    with tempfile.TemporaryDirectory(prefix="lifecycle-node-") as scratch:
        local = replace(
            job,
            init_dir=str(storage.download_folder(job.init_dir, Path(scratch) / "init")),
            data_dir=str(storage.download_folder(job.data_dir, Path(scratch) / "data")),
            out_dir=str(Path(scratch) / "model"),
            threads=max(1, (job.train_cfg.threads or os.cpu_count() or 1) // ranks),
        )
        run_ranks(local)
        if os.environ.get("PET_NODE_RANK", "0") == "0":  # global rank 0 is local rank 0 of node 0
            storage.upload_folder(local.out_dir, job.out_dir)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_node(argv[0])
    except (LifecycleError, RunFailure) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
