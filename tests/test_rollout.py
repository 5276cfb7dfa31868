"""From the registry to the traffic: a real MLServer (`lifecycle serve`) follows @champion and its rollouts while
several clients send requests; the rollout's decision on the prediction log and the feedback; the canary's share."""

import datetime as dt
import json
import shutil
import threading
import time
from pathlib import Path

import mlflow
import pytest
import requests
from conftest import as_args, make_texts, running_server, serve_command

from pipelines.cli import main
from pipelines.tracking_server import free_port

pytestmark = pytest.mark.slow  # real servers end to end

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sms_spam.yaml"
NAME = "followed-classifier"
FOLLOW_SECONDS = 0.5
SWAP_WITHIN_S = 15  # the follow interval, a download from the registry and a load and warm-up, on a busy 2-core CI


@pytest.fixture(scope="module")
def versions(tiny_bundle, tmp_path_factory):
    """Three registered ONNX versions on a SQLite registry: 1 and 2 the tiny model, 3 the same graph with its
    labels swapped (a deliberately worse candidate); champion 1."""
    from components.pyfunc_model import OnnxTextClassifier
    from components.registry import promote, register_model

    root = tmp_path_factory.mktemp("rollout")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    worse = root / "worse" / "bundle"  # the folder's name is the artifact's name: "bundle"
    shutil.copytree(tiny_bundle / "bundle", worse)
    (worse / "label_map.json").write_text(json.dumps({"0": "spam", "1": "ham"}))
    mlflow.set_experiment("rollout")
    for bundle in (tiny_bundle / "bundle", tiny_bundle / "bundle", worse):
        with mlflow.start_run():
            register_model(
                OnnxTextClassifier(), {"bundle": str(bundle)}, ["ham", "spam"], NAME, "# card", {}, ["see you at lunch"]
            )
    promote(NAME, "1")
    return root, uri


@pytest.fixture(scope="module")
def server(versions):
    root, uri = versions
    port = free_port(3)  # serve: HTTP, gRPC, metrics
    settings = settings_for(root)
    command = serve_command(CONFIG, port, "--model", f"models:/{NAME}@champion", *as_args(settings))
    with running_server(command, port, root, uri) as (url, _):
        yield url, settings, root


def settings_for(root: Path) -> list[str]:
    return [
        f"work_dir={root / 'work'}",
        f"tracking.registered_model={NAME}",
        f"serve.follow_seconds={FOLLOW_SECONDS}",
        "serve.log_flush_seconds=0.5",
        f"storage.predictions={root / 'predictions'}",
        f"data.feedback_path={root / 'feedback.jsonl'}",
        "deploy.rollout.min_texts=40",
        "deploy.rollout.min_labelled=40",
        "tracking.experiment=rollout",
    ]


class Load:
    """Clients on threads of their own, each sending one text at a time to /predict until stopped: what they got."""

    def __init__(self, url: str, texts: list[str], clients: int = 4):
        self.url, self.texts, self.answers, self.stopped = url, texts, [], threading.Event()
        self.threads = [threading.Thread(target=self._send, args=(i,)) for i in range(clients)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        for thread in self.threads:
            thread.join()

    def _send(self, client: int) -> None:
        session, i = requests.Session(), client
        while not self.stopped.is_set():
            text = self.texts[i % len(self.texts)]
            response = session.post(f"{self.url}/predict", json={"texts": [text]}, timeout=30)
            version = response.json().get("model_version") if response.status_code == 200 else None
            self.answers.append((time.monotonic(), response.status_code, version, text))
            i += len(self.threads)

    def until(self, version: str, since: float) -> float:
        """Seconds from `since` until every client answered with `version` (all answers after the first such)."""
        deadline = since + SWAP_WITHIN_S
        while time.monotonic() < deadline:
            recent = [a for a in self.answers[-8:] if a[0] > since]
            if len(recent) == 8 and all(a[2] == version for a in recent):
                first = next(a[0] for a in self.answers if a[0] > since and a[2] == version)
                return first - since
            time.sleep(0.05)
        pytest.fail(f"version {version} did not answer within {SWAP_WITHIN_S} s: {self.answers[-8:]}")


def logged(root: Path, role: str = "answer"):
    from monitoring.prediction_log import read_predictions

    frame = read_predictions(str(root / "predictions"))
    return frame[frame["role"] == role] if not frame.empty else frame


def wait_for_log(root: Path, role: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(logged(root, role)) < count:
        assert time.monotonic() < deadline, f"{len(logged(root, role))} {role} records logged, {count} expected"
        time.sleep(0.2)


def wait_for_shadow(root: Path, version: str, texts: set[str]) -> None:
    """Until `version` has shadow-scored each of `texts` (a busy shadow drops copies; the clients send again)."""
    deadline = time.monotonic() + 60
    while True:
        shadow = logged(root, "shadow")
        scored = set(shadow[shadow["model_version"] == version]["text"]) if not shadow.empty else set()
        if texts <= scored:
            return
        assert time.monotonic() < deadline, f"{len(texts - scored)} texts not shadow-scored by version {version}"
        time.sleep(0.2)


def test_promotion_and_rollback_reach_a_running_server_under_load_with_no_error_and_no_lost_line(server, capsys):
    from components.registry import promote

    url, settings, root = server
    texts = make_texts(200, seed=1)["text"].tolist()
    with Load(url, texts) as load:
        time.sleep(1)
        promoted = time.monotonic()
        promote(NAME, "2")
        to_new = load.until("2", promoted)
        rolled_back = time.monotonic()
        assert main(["rollback", "--config", str(CONFIG), *as_args(settings)]) == 0
        to_old = load.until("1", rolled_back)
        time.sleep(0.5)
    assert "champion is version 1 again" in capsys.readouterr().out
    statuses = [a[1] for a in load.answers]
    print(
        f"swap to 2 in {to_new:.2f} s, back to 1 in {to_old:.2f} s; {len(statuses)} requests: "
        f"{ {s: statuses.count(s) for s in set(statuses)} }"
    )
    assert set(statuses) == {200} and len(statuses) > 50
    answered = [a for a in load.answers if a[1] == 200]
    wait_for_log(root, "answer", len(answered))
    records = logged(root)
    assert len(records) == len(answered)  # every answer logged once, across both swaps
    assert sorted(records["model_version"].value_counts().index) == ["1", "2"]
    metrics = requests.get(f"{url.rsplit(':', 1)[0]}:{int(url.rsplit(':', 1)[1]) + 2}/metrics", timeout=10).text
    assert 'lifecycle_served_version{model_name="followed-classifier",model_version="1",role="champion"} 1.0' in metrics
    assert 'lifecycle_registry_reachable{model_name="followed-classifier"} 1.0' in metrics


def test_shadow_rolls_back_a_worse_candidate_and_promotes_a_good_one_while_the_champion_answers(server):
    from components.config import load_config
    from components.registry import CANDIDATE, alias_version, start_rollout
    from monitoring.rollout import check_rollout

    url, settings, root = server
    cfg = load_config(CONFIG, settings)
    client = mlflow.MlflowClient()
    labelled = make_texts(60, seed=2)
    labelled.to_json(root / "feedback.jsonl", orient="records", lines=True)
    for candidate, expected, texts in (("3", "rollback", labelled), ("2", "promote", labelled)):
        start_rollout(NAME, candidate, "shadow", 0)
        time.sleep(FOLLOW_SECONDS + 3)  # the follower loads the candidate beside the champion
        with Load(url, texts["text"].tolist(), clients=3) as load:  # until the shadow scored every text once
            wait_for_shadow(root, candidate, set(texts["text"]))
        assert {a[1] for a in load.answers} == {200} and {a[2] for a in load.answers} == {"1"}  # the champion
        check = check_rollout(cfg)
        e = check.evidence
        print(f"candidate {candidate}: {check.decision.value}: {check.decision.reason}")
        assert check.decision.value == expected, check.decision.reason
        assert e.paired >= 40 and e.labelled >= 40
        assert alias_version(client, NAME, CANDIDATE) is None
        run = client.get_run(check.run_id)
        assert run.data.tags["decision"] == expected and run.data.metrics["labelled"] == e.labelled
        if expected == "rollback":
            assert e.candidate_accuracy < 0.5 < e.champion_accuracy and e.p_value < 0.05
            assert alias_version(client, NAME, "champion") == "1" and check.alert.startswith("rollback-")
            assert (Path(cfg.work_dir) / "alerts" / f"{check.alert}.json").is_file()
    assert alias_version(client, NAME, "champion") == "2"
    with Load(url, labelled["text"].tolist(), clients=2) as load:
        load.until("2", time.monotonic())


def test_a_canary_answers_its_share_by_a_stable_key_and_abort_leaves_the_champion(server, capsys):
    from components.registry import CANDIDATE, alias_version, start_rollout

    url, settings, root = server
    champion = alias_version(mlflow.MlflowClient(), NAME, "champion")
    start_rollout(NAME, "1" if champion == "2" else "2", "canary", 30)
    time.sleep(FOLLOW_SECONDS + 3)
    texts = make_texts(400, seed=3)["text"].tolist()
    session = requests.Session()

    def version_of(text: str) -> str:
        response = session.post(f"{url}/predict", json={"texts": [text]}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["model_version"]

    first = [version_of(text) for text in texts]
    share = sum(v != champion for v in first) / len(first)
    with capsys.disabled():
        print(f"canary share {share:.3f} of {len(first)} requests (canary_percent 30)")
    assert abs(share - 0.30) < 0.08  # 3.5 standard deviations of a binomial share of 400
    assert [version_of(text) for text in texts[:60]] == first[:60]  # the same request, the same version
    capsys.readouterr()
    assert main(["rollout", "status", "--config", str(CONFIG), *as_args(settings)]) == 0
    status = capsys.readouterr().out
    assert "in canary beside champion" in status and "decision now  " in status, status
    assert alias_version(mlflow.MlflowClient(), NAME, CANDIDATE) is not None  # status changes nothing
    assert main(["rollout", "abort", "--config", str(CONFIG), *as_args(settings)]) == 0
    assert "rollback: aborted by hand" in capsys.readouterr().out
    assert alias_version(mlflow.MlflowClient(), NAME, CANDIDATE) is None
    assert alias_version(mlflow.MlflowClient(), NAME, "champion") == champion


def rollout_config(**changes):
    from components.config import GateConfig, RolloutConfig

    return RolloutConfig(min_texts=100, min_labelled=50, deadline_hours=24).model_copy(update=changes), GateConfig()


def evidence(**changes):
    from monitoring.rollout import RolloutEvidence

    base = dict(
        champion="1",
        candidate="2",
        mode="shadow",
        started=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        paired=500,
        agreement=0.95,
        labelled=200,
        champion_accuracy=0.9,
        candidate_accuracy=0.9,
        candidate_only_right=10,
        champion_only_right=10,
        p_value=1.0,
        champion_scored=500,
        candidate_scored=500,
        champion_failed=0,
        candidate_failed=0,
        champion_p99_ms=10.0,
        candidate_p99_ms=12.0,
    )
    return RolloutEvidence(**(base | changes))


@pytest.mark.parametrize(
    "changes, hours, expected, reason",
    [
        ({}, 1, "promote", "not worse than champion version 1"),
        ({"paired": 50}, 1, "wait", "50 texts scored by both versions of the 100 needed"),
        ({"paired": 50}, 25, "rollback", "the deadline 2026-01-02 00:00 UTC passed"),
        ({"labelled": 20}, 1, "wait", "20 labelled texts of the 50 needed"),
        ({"candidate_only_right": 2, "champion_only_right": 30, "p_value": 1e-6}, 1, "rollback", "worse than champion"),
        ({"candidate_failed": 20}, 1, "rollback", "failed on 20 of 500 texts"),
        ({"candidate_p99_ms": 30.0}, 1, "rollback", "p99 latency 30.0 ms is over 2x"),
    ],
    ids=["not-worse", "too-few-pairs", "deadline", "too-few-labels", "worse", "failures", "slower"],
)
def test_the_decision_promotes_rolls_back_or_waits_with_its_reason(changes, hours, expected, reason):
    from monitoring.rollout import decide_rollout

    e = evidence(**changes)
    decision = decide_rollout(e, *rollout_config(), e.started + dt.timedelta(hours=hours))
    assert decision.value == expected and reason in decision.reason, decision.reason


def test_under_the_rule_better_an_equal_candidate_waits_and_the_deadline_can_promote():
    from components.config import GateConfig
    from monitoring.rollout import decide_rollout

    e, (rollout, _) = evidence(), rollout_config(on_deadline="promote")
    better = GateConfig(champion_rule="better")
    assert decide_rollout(e, rollout, better, e.started + dt.timedelta(hours=1)).value == "wait"
    assert decide_rollout(e, rollout, better, e.started + dt.timedelta(hours=30)).value == "promote"


def test_the_canary_key_is_stable_and_its_share_near_the_percent():
    from components.deploy.registry_follower import in_canary

    keys = [f"request {i}" for i in range(20_000)]
    share = sum(in_canary(k, 10) for k in keys) / len(keys)
    assert abs(share - 0.10) < 0.01 and [in_canary(k, 10) for k in keys[:100]] == [in_canary(k, 10) for k in keys[:100]]
    assert not any(in_canary(k, 0.0) for k in keys[:1000])


def test_a_server_whose_registry_is_unreachable_keeps_serving_its_version_and_says_so(tiny_bundle, caplog):
    from prometheus_client import REGISTRY

    from components.deploy.onnx_classifier import OnnxClassifier
    from components.deploy.registry_follower import Follower, Loaded, Served

    served = Served(Loaded("7", OnnxClassifier(tiny_bundle / "bundle")))
    swaps = []
    follower = Follower(
        "unreachable-model", "champion", 1, tiny_bundle, lambda *a: pytest.fail("loaded"), served, swaps.append
    )
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")  # a tracking server that is down: nothing listens
    try:
        for _ in range(3):
            follower.poll()
    finally:
        mlflow.set_tracking_uri(before)
    assert swaps == [] and follower.served is served
    assert REGISTRY.get_sample_value("lifecycle_registry_reachable", {"model_name": "unreachable-model"}) == 0
    warnings = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(warnings) == 1 and "still serving version 7" in warnings[0]  # said once, not at every read
