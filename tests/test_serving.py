"""The server as clients see it: KServe V2 through tritonclient, plain JSON, bad requests, the prediction log."""

import json
import random
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import requests
from conftest import wait_until_ready

from components.deploy.request_limits import BadRequest, Limits, check_texts
from monitoring.prediction_log import read_predictions
from pipelines.tracking_server import free_port

pytestmark = pytest.mark.slow  # real servers end to end

MODEL = "tiny-classifier"
SPAM, HAM = "win free prize cash claim now call", "see you at lunch tomorrow thanks love"


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("predictions")
    port = free_port(3)
    code = (
        f"from components.stage_output import mark_project_logs; mark_project_logs(); "
        f"from components.deploy.server import Limits, serve; "
        f"serve({str(tiny_bundle / 'bundle')!r}, {MODEL!r}, '3', {port}, {str(log_dir)!r}, "
        f"Limits(max_batch=8, max_text_chars=200, max_request_bytes=4096))"
    )
    output = log_dir.parent / "server.out"
    with open(output, "w") as sink:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, process, output=output)
    yield url, process, log_dir
    process.kill()


def metrics(url: str) -> dict[str, float]:
    """The Prometheus samples on the metrics port (HTTP + 2) as {'name{labels}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    host, port = url.rsplit(":", 1)
    page = requests.get(f"{host}:{int(port) + 2}/metrics", timeout=10).text
    return {
        f"{s.name}{dict(sorted(s.labels.items()))}": s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }


def test_kserve_v2_clients_get_the_right_labels(server):
    import tritonclient.http as httpclient

    url, _, _ = server
    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready(MODEL)
    metadata = client.get_model_metadata(MODEL)
    assert metadata["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}
    texts = httpclient.InferInput("text", [3], "BYTES")
    # JSON tensors: the binary tensor extension is Triton's, not part of the V2 protocol MLServer speaks.
    texts.set_data_from_numpy(np.array([SPAM, HAM, SPAM + " again"], dtype=object), binary_data=False)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in ("label", "probabilities")]
    result = client.infer(MODEL, [texts], outputs=outputs)
    assert [str(label) for label in result.as_numpy("label").ravel()] == ["spam", "ham", "spam"]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 2) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert result.get_response()["model_version"] == "3"


def test_plain_json_endpoint(server):
    url, _, _ = server
    answer = requests.post(f"{url}/predict", json={"texts": [HAM, SPAM]}, timeout=10).json()
    assert [p["label"] for p in answer["predictions"]] == ["ham", "spam"]
    assert answer["model_version"] == "3"


def malformed(i: int):
    """A bad request of one of several kinds: (kind, request kwargs)."""
    infer = lambda tensor: {"json": {"inputs": [tensor]}}  # noqa: E731
    kinds = [
        ("not json", {"data": "{not json", "headers": {"content-type": "application/json"}}),
        ("wrong datatype", infer({"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]})),
        ("wrong shape", infer({"name": "text", "shape": [2, 2], "datatype": "BYTES", "data": ["a", "b", "c", "d"]})),
        ("shape and data disagree", infer({"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]})),
        ("empty input", infer({"name": "text", "shape": [0], "datatype": "BYTES", "data": []})),
        ("empty text", infer({"name": "text", "shape": [1], "datatype": "BYTES", "data": ["  "]})),
        ("text too long", infer({"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x" * 201]})),
        ("batch too large", infer({"name": "text", "shape": [9], "datatype": "BYTES", "data": [HAM] * 9})),
        ("no inputs", {"json": {"inputs": []}}),
        ("inputs not a list", {"json": {"inputs": "text"}}),
        ("input misnamed", infer({"name": "texts", "shape": [1], "datatype": "BYTES", "data": [HAM]})),
        ("body too large", infer({"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x" * 5000]})),
    ]
    return kinds[i % len(kinds)]


def test_a_thousand_requests_with_ten_percent_malformed_get_no_5xx(server):
    url, _, _ = server
    session, rng = requests.Session(), random.Random(0)
    statuses = {"good": [], "bad": []}
    for i in range(1000):
        if i % 10 == 9:
            kind, request = malformed(i // 10)
            response = session.post(f"{url}/v2/models/{MODEL}/infer", timeout=10, **request)
            assert 400 <= response.status_code < 500, (kind, response.status_code, response.text)
            assert response.text, kind
            statuses["bad"].append(response.status_code)
        else:
            text = rng.choice([SPAM, HAM])
            body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
            statuses["good"].append(session.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=10).status_code)
    assert set(statuses["good"]) == {200} and len(statuses["bad"]) == 100


def test_bad_requests_say_what_was_expected(server):
    url, _, _ = server
    for kind, status, message in (
        ("input misnamed", 400, "expected the input named 'text'"),
        ("body too large", 413, "request body over 4096 bytes"),
    ):
        request = next(request for name, request in map(malformed, range(12)) if name == kind)
        response = requests.post(f"{url}/v2/models/{MODEL}/infer", timeout=10, **request)
        assert response.status_code == status and message in response.json()["error"], response.text


def test_metrics_count_requests_and_the_texts_classified_per_label_and_version(server):
    url, _, _ = server
    before = metrics(url)
    requests.post(f"{url}/predict", json={"texts": [SPAM, SPAM, HAM]}, timeout=10).raise_for_status()
    after = metrics(url)
    spam = (
        f"lifecycle_texts_classified_total{{'label': 'spam', 'model_name': '{MODEL}', 'model_version': '3', "
        "'role': 'answer'}"
    )
    ham = spam.replace("'spam'", "'ham'")
    assert after[spam] - before.get(spam, 0) == 2 and after[ham] - before.get(ham, 0) == 1
    assert any(name.startswith("rest_server_requests_total") and "/predict" in name for name in after)


def test_gzip_bodies_count_inflated_and_other_encodings_are_refused(server):
    import gzip

    import tritonclient.http as httpclient

    url, _, _ = server
    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    texts = httpclient.InferInput("text", [2], "BYTES")
    texts.set_data_from_numpy(np.array([SPAM, HAM], dtype=object), binary_data=False)
    result = client.infer(
        MODEL,
        [texts],
        request_compression_algorithm="gzip",
        outputs=[httpclient.InferRequestedOutput("label", binary_data=False)],
    )
    assert [str(label) for label in result.as_numpy("label").ravel()] == ["spam", "ham"]

    before = metrics(url)
    bomb = json.dumps({"texts": ["x" * 100_000]}).encode()  # 100 kB of text, 0.2 kB gzipped, a 4 kB limit
    cut = gzip.compress(HAM.encode())[:-8]
    for body, encoding, status, message in (
        (gzip.compress(bomb), "gzip", 413, "over 4096 bytes inflated"),
        (cut, "gzip", 400, "ends before its gzip stream"),
        (b"not gzip", "gzip", 400, "cannot be inflated"),
        (bomb[:200], "br", 415, "Content-Encoding 'br'"),
    ):
        response = requests.post(
            f"{url}/predict",
            data=body,
            timeout=10,
            headers={"content-type": "application/json", "content-encoding": encoding},
        )
        assert response.status_code == status and message in response.json()["error"], response.text
    assert classified(metrics(url)) == classified(before)


def classified(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("lifecycle_texts_classified_total"))


def test_a_request_whose_body_never_completes_is_neither_classified_nor_logged(server):
    url, _, _ = server
    before = metrics(url)
    body = json.dumps({"texts": [f"{SPAM} (never answered)"]}).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % (len(body) + 10) + body
        )  # 10 bytes short; then gone
    requests.post(f"{url}/predict", json={"texts": [HAM]}, timeout=10).raise_for_status()  # served after it
    assert classified(metrics(url)) == classified(before) + 1


GRPC_CLIENT = f"""
import sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

client = grpcclient.InferenceServerClient(url=sys.argv[1])
for text in sys.argv[2:]:
    texts = grpcclient.InferInput("text", [1], "BYTES")
    texts.set_data_from_numpy(np.array([text], dtype=object))
    try:
        answer = client.infer("{MODEL}", [texts], compression_algorithm="gzip")
        print("label", answer.as_numpy("label").ravel()[0].decode())
    except InferenceServerException as err:
        print("refused", err.status())
"""


def test_grpc_bodies_count_inflated_too(server):
    """tritonclient's gRPC client in a process of its own: its protos and MLServer's cannot share one."""
    url, _, _ = server
    host, port = url.removeprefix("http://").split(":")
    answers = subprocess.run(
        [sys.executable, "-c", GRPC_CLIENT, f"{host}:{int(port) + 1}", HAM, "x" * 100_000],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split("\n")
    assert answers[:2] == ["label ham", "refused StatusCode.RESOURCE_EXHAUSTED"]  # 0.2 kB gzipped, 100 kB inflated


def test_every_served_text_is_logged_and_nothing_is_lost_on_shutdown(server, tiny_bundle):
    """A text with personal data is answered as sent and logged redacted (serve.log_pii's default)."""
    from components.deploy.onnx_classifier import OnnxClassifier

    url, process, log_dir = server
    personal = f"{SPAM} on 07700 900123 or jane.doe@example.com"
    answered = requests.post(f"{url}/predict", json={"texts": [personal]}, timeout=10).json()["predictions"][0]
    classifier = OnnxClassifier(tiny_bundle / "bundle")
    expected = classifier.probabilities([personal])[0]
    assert answered["probabilities"] == pytest.approx(dict(zip(classifier.labels, expected.tolist())), abs=1e-6)
    texts = [f"{SPAM} (logged)", f"{HAM} (logged)"]
    for _ in range(20):
        answer = requests.post(f"{url}/predict", json={"texts": texts}, timeout=10).json()
    process.send_signal(signal.SIGTERM)  # texts still waiting in the log's buffer are written as the server stops
    assert process.wait(timeout=30) == 0
    logged = read_predictions(log_dir)
    assert logged["text"].value_counts()[texts[0]] == 20 and logged["text"].value_counts()[texts[1]] == 20
    assert not logged["text"].str.contains("never answered").any()
    assert f"{SPAM} on <PHONE_NUMBER> or <EMAIL_ADDRESS>" in set(logged["text"])
    assert not any("07700" in p.read_text() or "jane.doe" in p.read_text() for p in log_dir.iterdir())
    last = logged.iloc[-1]
    assert last["text"] == texts[1] and last["label"] == answer["predictions"][1]["label"]
    assert last["model_version"] == "3" and set(json.loads(json.dumps(last["probabilities"]))) == {"ham", "spam"}
    output = (log_dir.parent / "server.out").read_text()
    assert output.count("stopped") == 1 and f"server of {MODEL} stopped (SIGTERM)" in output, output
    assert "gRPC server shutdown" not in output and "Shutting down" not in output


@pytest.mark.parametrize(
    "texts, message",
    [([], "no texts"), (["a"] * 9, "at most 8"), (["x" * 201], "at most 200"), ([3], "expected a string")],
)
def test_bad_text_lists_are_bad_requests(texts, message):
    with pytest.raises(BadRequest, match=message):
        check_texts(texts, Limits(max_batch=8, max_text_chars=200))
