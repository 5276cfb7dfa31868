"""infra/ for a real cluster: every manifest parses as the kind it claims, with no field that kind lacks."""

import json
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra"
MANIFESTS = sorted(INFRA.glob("*.yaml"))
# The fields KServe's ComponentExtensionSpec adds to a predictor's pod spec, of those the manifests use.
KSERVE_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}


def documents() -> list[tuple[str, dict]]:
    return [
        (f"{path.name}#{i}", doc)
        for path in MANIFESTS
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if doc
    ]


def as_kubernetes_model(document: dict, model: str):
    """The kubernetes client's model of `document`, or a failure naming the fields the model does not know."""
    from kubernetes.client import ApiClient

    class Response:
        data = json.dumps(document)

    client = ApiClient()
    parsed = client.deserialize(Response(), model)
    assert client.sanitize_for_serialization(parsed) == document, f"fields {model} does not have, or misspelled"
    return parsed


def test_the_manifests_are_there():
    assert {p.name for p in MANIFESTS} == {
        "mlflow-server.yaml",
        "kserve-inferenceservice.yaml",
        "kserve-inferenceservice-generator.yaml",
        "monitor-recurring-run.yaml",
    }


@pytest.mark.parametrize("name, document", documents(), ids=[name for name, _ in documents()])
def test_every_manifest_is_the_kind_it_claims(name, document):
    kind, api = document["kind"], document["apiVersion"]
    if api == "serving.kserve.io/v1beta1":  # a CRD: its predictor is a pod spec plus KServe's own fields
        assert kind == "InferenceService"
        predictor = document["spec"]["predictor"]
        spec = as_kubernetes_model({k: v for k, v in predictor.items() if k not in KSERVE_FIELDS}, "V1PodSpec")
        assert predictor.get("scaleMetric", "concurrency") in ("concurrency", "rps", "cpu", "memory")  # its enum
        assert spec.containers[0].name == "kserve-container"
        return
    version = api.split("/")[-1].capitalize()
    model = as_kubernetes_model(document, f"{version}{kind}")
    assert model.metadata.name


def test_every_secret_is_a_reference_and_every_image_is_the_projects():
    for name, document in documents():
        text = json.dumps(document)
        assert "password" not in text.lower() or "secretKeyRef" in text, name
        for image in _images(document):
            assert "llm-lifecycle:" in image, (name, image)


def test_the_serving_replicas_and_the_schedule_write_to_and_read_from_the_bucket():
    isvc = yaml.safe_load((INFRA / "kserve-inferenceservice.yaml").read_text())
    serve = isvc["spec"]["predictor"]["containers"][0]["command"]
    assert "storage.predictions=s3://BUCKET/predictions" in serve
    (job,) = yaml.safe_load_all((INFRA / "monitor-recurring-run.yaml").read_text())
    schedule = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert schedule[:2] == ["lifecycle", "schedule"] and "storage.predictions=s3://BUCKET/predictions" in schedule
    assert any(part.startswith("tracking.uri=http://mlflow.") for part in schedule)


def _images(document):
    if isinstance(document, dict):
        for key, value in document.items():
            if key == "image":
                yield value
            else:
                yield from _images(value)
    elif isinstance(document, list):
        for item in document:
            yield from _images(item)


def test_the_generator_is_served_by_the_classifiers_image_and_command_on_its_own_model_and_log():
    classifier, generator = (
        yaml.safe_load((INFRA / name).read_text())["spec"]["predictor"]["containers"][0]
        for name in ("kserve-inferenceservice.yaml", "kserve-inferenceservice-generator.yaml")
    )
    assert generator["image"] == classifier["image"] and generator["command"][:2] == ["lifecycle", "serve"]
    serve = generator["command"]
    assert serve[serve.index("--config") + 1] == "/opt/lifecycle/configs/instructions.yaml"
    config = yaml.safe_load((INFRA.parent / "configs" / "instructions.yaml").read_text())
    assert serve[serve.index("--model") + 1] == f"models:/{config['tracking']['registered_model']}@champion"
    logs = [part for part in serve + classifier["command"] if part.startswith("storage.predictions=")]
    assert len(set(logs)) == 2  # the monitors read each their own traffic
    assert generator["readinessProbe"] == classifier["readinessProbe"]
