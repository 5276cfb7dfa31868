"""Stage 7's parts: the drift verdict, the retraining rules, alerts, the prediction log window, schedules."""

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pytest

from components.config import ConfigError, MonitorConfig
from monitoring.alerts import new_alert, send_alert
from monitoring.drift import FeatureDrift, check_drift, decide_drift
from monitoring.retraining import Retraining, may_retrain
from pipelines.watch import kfp_cron, parse_interval

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)


def features(drifted: int, total: int = 7) -> list[FeatureDrift]:
    return [
        FeatureDrift(f"f{i}", "text descriptor", "ks", 0.05, 0.01 if i < drifted else 0.5, i < drifted)
        for i in range(total)
    ]


@pytest.mark.parametrize(
    "drifted, size, expected, reason",
    [
        (7, 50, False, "fewer than monitor.min_window=100"),  # too few texts: no verdict, whatever moved
        (0, 200, False, "0 of 7 features drifted"),
        (3, 200, False, "3 of 7"),  # a minority of features moves by chance: no alert
        (4, 200, True, "4 of 7 features drifted (57%; drift at 50%): f0, f1, f2, f3"),
    ],
)
def test_drift_is_a_share_of_drifted_features_over_a_large_enough_window(drifted, size, expected, reason):
    verdict, why = decide_drift(features(drifted), size, min_window=100, drift_share=0.5)
    assert verdict is expected and reason in why


def retraining(hours_ago: float, status: str = "FINISHED") -> Retraining:
    return Retraining("r1", NOW - dt.timedelta(hours=hours_ago), status)


@pytest.mark.parametrize(
    "earlier, allowed, reason",
    [
        ([], True, "none inside the cool-down"),
        ([retraining(2)], False, "inside the cool-down of 24 h"),
        ([retraining(30)], True, "none inside"),
        ([retraining(30, "RUNNING")], False, "still running"),  # longer than the cool-down, not yet timed out
        ([retraining(50, "RUNNING")], True, "none inside"),  # a holder that crashed: its claim has timed out
    ],
)
def test_retraining_waits_for_the_cool_down_and_for_a_live_retraining(earlier, allowed, reason):
    verdict, why = may_retrain(NOW, earlier, cooldown_hours=24, timeout_hours=48)
    assert verdict is allowed and reason in why


def test_two_claims_inside_the_cool_down_start_one_retraining(tmp_path, monkeypatch):
    import mlflow

    from components.config import LifecycleConfig
    from monitoring.retraining import ALERT_TAG, claim_retraining

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = LifecycleConfig.model_validate({"work_dir": str(tmp_path), "data": {"path": "x.csv"}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first, why_first = claim_retraining(cfg, uri, "alert-1")
    second, why_second = claim_retraining(cfg, uri, "alert-2")
    assert first and "retraining started" in why_first
    assert second is None and "still running" in why_second
    run = mlflow.MlflowClient().get_run(first)
    assert run.data.tags[ALERT_TAG] == "alert-1" and run.info.run_name.startswith("lifecycle-retrain-")


class Hook(BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_alert_is_logged_written_and_posted_and_a_dead_webhook_does_not_stop_it(tmp_path, caplog):
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    drifted = [{"feature": "length", "kind": "text descriptor", "method": "ks", "score": 0.001, "threshold": 0.05}]
    alert = new_alert("clf", "3", "4 of 7 features drifted", drifted, "report/", "run-1")
    path = send_alert(alert, tmp_path, f"http://127.0.0.1:{server.server_port}/hook")
    server.shutdown()
    server.server_close()  # refused from here on, at once
    assert alert.webhook == "sent" and json.loads(path.read_text())["id"] == alert.id
    assert "clf v3" in Hook.received[-1]["text"] and "length (ks 0.001)" in Hook.received[-1]["text"]
    assert "DRIFT ALERT" in caplog.text

    dead = new_alert("clf", "3", "drift", drifted, "report/", "run-2")
    path = send_alert(dead, tmp_path, f"http://127.0.0.1:{server.server_port}/hook")  # nothing listens now
    assert json.loads(path.read_text())["webhook"].startswith("failed: ")


def test_the_window_holds_only_the_last_hours_of_the_prediction_log(tmp_path):
    from monitoring.prediction_log import read_window

    rows = [
        {"timestamp": (NOW - dt.timedelta(hours=h)).isoformat(), "text": t, "label": "ham"}
        for h, t in ((30, "old"), (2, "recent"), (0.5, "123"))
    ]
    for day in ("20261122", "20261123"):
        (tmp_path / f"predictions-{day}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows if r["timestamp"].startswith(f"{day[:4]}-{day[4:6]}-{day[6:]}"))
        )
    window = read_window(tmp_path, hours=24, now=NOW)
    assert window["text"].tolist() == ["recent", "123"]  # and a text of digits stays text


def frame(texts: list[str], spam_share: float, shift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    spam = rng.random(len(texts)) < spam_share
    return pd.DataFrame(
        {
            "text": texts,
            "predicted_label": np.where(spam, "spam", "ham"),
            "probability_spam": np.clip(np.where(spam, 0.9, 0.1) + rng.normal(0, 0.05, len(texts)), 0, 1),
            "embedding": list(rng.normal(shift, 1, (len(texts), 8)).astype(np.float32)),
        }
    )


def test_evidently_finds_no_drift_in_the_same_distribution_and_drift_in_another_kind_of_text():
    from conftest import OTHER_WORDS, make_texts

    reference = frame(make_texts(400, seed=1)["text"].tolist(), 0.5, 0.0, 1)
    same = frame(make_texts(150, seed=2)["text"].tolist(), 0.5, 0.0, 2)
    rng = np.random.default_rng(3)
    other = frame([" ".join(rng.choice(OTHER_WORDS, 25)) for _ in range(150)], 0.1, 1.5, 3)
    cfg = MonitorConfig(min_window=100)
    calm, _ = check_drift(reference, same, cfg)
    shifted, snapshot = check_drift(reference, other, cfg)
    assert not calm.drift_detected, calm.reason
    assert shifted.drift_detected and {f.feature for f in shifted.drifted()} >= {"text", "embedding", "length"}
    assert {f.kind for f in shifted.features} == {"text descriptor", "text content", "prediction", "embedding"}
    assert snapshot is not None


@pytest.mark.parametrize("every, seconds", [("90s", 90), ("30m", 1800), ("1h", 3600), ("1.5h", 5400), ("1d", 86400)])
def test_watch_intervals(every, seconds):
    assert parse_interval(every) == seconds


@pytest.mark.parametrize("bad", ["", "1", "h", "0h", "-1h", "1w"])
def test_a_bad_interval_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="--every"):
        parse_interval(bad)


def test_cron_gets_kfp_seconds_field():
    assert kfp_cron("0 * * * *") == "0 0 * * * *"
    assert kfp_cron("30 0 6 * * *") == "30 0 6 * * *"
    with pytest.raises(ConfigError, match="5 fields"):
        kfp_cron("* * *")


@pytest.mark.slow
def test_the_text_drift_threshold_is_evidentlys_own_from_the_same_seeds():
    import importlib

    from evidently.legacy.utils import data_drift_utils

    from monitoring.drift import random_auc_percentile

    # Evidently's own, as it ships (check_drift puts random_auc_percentile in its place)
    evidently_percentile = importlib.reload(data_drift_utils).roc_auc_random_classifier_percentile
    assert evidently_percentile is not random_auc_percentile
    rng = np.random.default_rng(0)
    for size, p_value in ((40, 0.05), (377, 0.05), (120, 0.2)):
        y_test = rng.integers(0, 2, size)
        assert random_auc_percentile(y_test, p_value) == pytest.approx(evidently_percentile(y_test, p_value), abs=1e-12)
