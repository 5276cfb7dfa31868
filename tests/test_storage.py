"""Storage URIs through fsspec's own file systems: local, in-memory (the code path of an object store) and an HTTP
server started here. Every read goes through the code a bucket would."""

import functools
import threading
from http.server import HTTPServer, SimpleHTTPRequestHandler

import pytest
from conftest import make_texts

from components import storage
from components.config import DataConfig
from components.data import core as data_stage

LABELS = ["ham", "spam"]


@pytest.fixture
def http_folder(tmp_path):
    """(folder, its URL): a plain HTTP file server on loopback, as a user's https:// data would be."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def put_memory(uri: str, text: str) -> str:
    storage.write_bytes(uri, text.encode())
    return uri


def test_stage_1_reads_the_data_and_a_feedback_folder_at_memory_uris(tmp_path):
    root = f"memory://bucket-{tmp_path.name}"
    data = put_memory(f"{root}/data/texts.csv", make_texts(240).to_csv(index=False))
    feedback = make_texts(40, seed=5).assign(label="ham")
    put_memory(f"{root}/feedback/batch-1.jsonl", feedback.to_json(orient="records", lines=True))
    put_memory(f"{root}/feedback/.hidden", "not data")
    config = DataConfig(path=data, feedback_path=f"{root}/feedback", labels=LABELS, min_rows_per_class=5)
    prepared = data_stage.data(config, 1, tmp_path / "cache", tmp_path / "out")
    assert sum(counts["ham"] for counts in prepared.counts.values()) == 120 + 40
    assert prepared.source == f"{data}, {root}/feedback/batch-1.jsonl"  # the URIs, not the scratch copies


def test_stage_1_reads_the_three_splits_over_http(http_folder, tmp_path):
    folder, url = http_folder
    rows = make_texts(300)
    for name, part in (("train", rows[:200]), ("val", rows[200:250]), ("test", rows[250:])):
        part.to_csv(folder / f"{name}.csv", index=False)
    config = DataConfig(
        train_path=f"{url}/train.csv",
        val_path=f"{url}/val.csv",
        test_path=f"{url}/test.csv",
        labels=LABELS,
        min_rows_per_class=5,
    )
    prepared = data_stage.data(config, 1, tmp_path / "cache", tmp_path / "out")
    assert {split: sum(c.values()) for split, c in prepared.counts.items()} == {"train": 200, "val": 50, "test": 50}


@pytest.mark.parametrize(
    "uri, message",
    [
        ("memory://bucket/no/such.csv", "memory://bucket/no/such.csv: no such file"),
        ("gs://bucket/texts.csv", 'pip install "llm-lifecycle[gcs]"'),
        ("nosuchprotocol://bucket/texts.csv", "nosuchprotocol://bucket/texts.csv"),
    ],
)
def test_a_missing_object_or_file_system_is_an_error_that_names_the_uri(uri, message, tmp_path):
    with pytest.raises(storage.StorageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        data_stage.data(DataConfig(path=uri, labels=LABELS), 1, tmp_path / "cache", tmp_path / "out")


def test_a_missing_object_over_http_names_the_url(http_folder, tmp_path):
    _, url = http_folder
    with pytest.raises(storage.StorageError, match=f"{url}/absent.csv: no such file"):
        data_stage.data(DataConfig(path=f"{url}/absent.csv", labels=LABELS), 1, tmp_path / "cache", tmp_path / "out")


def test_replicas_write_their_own_shards_and_the_monitor_reads_them_all(tmp_path):
    from monitoring.prediction_log import PredictionLog, read_window

    root = f"memory://predictions-{tmp_path.name}"
    replicas = [PredictionLog(root, flush_texts=3, flush_seconds=3600, replica=f"pod-{i}") for i in range(2)]
    for i in range(4):
        for replica in replicas:
            replica.write([f"{replica.replica} text {i}"], ["ham"], [{"ham": 0.9, "spam": 0.1}], "clf", "2")
    shards = storage.list_files(root)
    assert len(shards) == 2  # one full shard per replica; one text each still waits
    assert all(s.rsplit("/", 1)[1].startswith("predictions-") for s in shards)
    for replica in replicas:
        replica.close()
    shards = storage.list_files(root)
    assert len(shards) == 4 and len({s.split("-pod-")[1].split("-")[0] for s in shards}) == 2
    window = read_window(root, hours=1)
    assert sorted(window["text"]) == sorted(f"pod-{r} text {i}" for r in range(2) for i in range(4))


def test_waiting_texts_are_written_after_flush_seconds_without_more_traffic(tmp_path):
    import time

    from monitoring.prediction_log import PredictionLog, read_predictions

    root = f"memory://idle-{tmp_path.name}"
    log = PredictionLog(root, flush_texts=100, flush_seconds=0.2)
    log.write(["one quiet text"], ["ham"], [{"ham": 1.0}], "clf", "1")
    for _ in range(50):
        if storage.exists(root) and storage.list_files(root):
            break
        time.sleep(0.1)
    assert read_predictions(root)["text"].tolist() == ["one quiet text"]
    log.close()
