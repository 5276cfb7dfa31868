"""The prediction log: one JSON line per served text, in shards at a storage URI that the monitor reads.

Each serving replica writes its own shards, `predictions-YYYYMMDD-HHMMSS-<replica>-<n>.jsonl`, whole, because object
stores have no append and several replicas must never write one file.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable

SHARD_PREFIX = "predictions-"
# Of each record. role: "answer" (what the client received) or "shadow" (a rollout's second opinion, never sent);
# latency_ms: the scoring of the request the text came in; error: why that version could not score it (no label).
COLUMNS = ["timestamp", "model", "model_version", "text", "label", "probabilities", "role", "latency_ms", "error"]
# A generator's records add these (its `text` is the prompt: the user's turns joined by a blank line; no label):
# response_id: what feedback names the response by; ttft_ms: the time to its first token, when it streamed.
GENERATION_COLUMNS = ["response", "response_id", "prompt_tokens", "completion_tokens", "finish_reason", "ttft_ms"]
ANSWER, SHADOW = "answer", "shadow"


class PredictionLog:
    """Buffers records and writes them as one shard when `flush_texts` records wait, when the oldest has waited
    `flush_seconds` (a background thread), and on close. A crash loses at most the records still waiting.
    `text_form` puts each text in the form the log stores (components/pii.py: its personal data redacted or
    hashed) before it is buffered, so no other form is ever written."""

    def __init__(
        self,
        root: str,
        flush_texts: int = 100,
        flush_seconds: float = 30.0,
        replica: str | None = None,
        text_form: Callable[[list[str]], list[str]] = list,
    ):
        from components.storage import filesystem

        filesystem(root)  # a URI without a file system fails now, and fsspec is imported before any exit
        self.root = str(root)
        self.flush_texts, self.flush_seconds, self.text_form = flush_texts, flush_seconds, text_form
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._lock = threading.Lock()
        self._waiting: list[str] = []
        self._oldest = 0.0
        self._shards = 0
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_when_old, name="prediction-log", daemon=True)
        self._flusher.start()
        atexit.register(self.close)  # MLServer stops on SIGTERM without unloading its models

    def write(
        self,
        texts: Iterable[str],
        labels: Iterable[str | None],
        probabilities: Iterable[dict | None],
        model: str,
        version: str,
        role: str = ANSWER,
        latency_ms: float | None = None,
        error: str | None = None,
    ) -> None:
        stamp, latency = _now(), None if latency_ms is None else round(latency_ms, 3)
        texts = self.text_form(list(texts))
        self._buffer(
            dict(zip(COLUMNS, (stamp, model, version, text, label, probs, role, latency, error)))
            for text, label, probs in zip(texts, labels, probabilities)
        )

    def write_generation(
        self,
        prompt: str,
        response: str | None,
        model: str,
        version: str,
        *,
        response_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str,
        latency_ms: float,
        ttft_ms: float | None,
        role: str = ANSWER,
        error: str | None = None,
    ) -> None:
        """One generation's record: the prompt (as `text`) and the response in the log's form, with its counts.
        `response` is None when the generation failed (`error` says why)."""
        text, *answer = self.text_form([prompt] if response is None else [prompt, response])
        record = dict(zip(COLUMNS, (_now(), model, version, text, None, None, role, round(latency_ms, 3), error)))
        ttft = None if ttft_ms is None else round(ttft_ms, 3)
        figures = (answer[0] if answer else None, response_id, prompt_tokens, completion_tokens, finish_reason, ttft)
        self._buffer([record | dict(zip(GENERATION_COLUMNS, figures))])

    def _buffer(self, records: Iterable[dict]) -> None:
        lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
        with self._lock:
            if not self._waiting:
                self._oldest = time.monotonic()
            self._waiting += lines
            if len(self._waiting) >= self.flush_texts:
                self._flush()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def close(self) -> None:
        self._stop.set()
        if self._flusher.is_alive():
            self._flusher.join()
        self.flush()

    def _flush(self) -> None:
        from components.storage import join, write_bytes

        if not self._waiting:
            return
        self._shards += 1
        now = dt.datetime.now(dt.timezone.utc)
        name = f"{SHARD_PREFIX}{now:%Y%m%d-%H%M%S}-{self.replica}-{self._shards:06d}.jsonl"
        write_bytes(join(self.root, name), "".join(self._waiting).encode())
        self._waiting = []

    def _flush_when_old(self) -> None:
        while not self._stop.wait(min(1.0, self.flush_seconds)):
            with self._lock:
                if self._waiting and time.monotonic() - self._oldest >= self.flush_seconds:
                    self._flush()


def read_predictions(root: str, files: list[str] | None = None, skipped=None):
    """The logged predictions under root (or in `files`) as a DataFrame, oldest shard first, with timestamps as
    UTC datetimes. A record that is not a JSON object with a text and a timestamp, and a shard that cannot be read,
    are skipped with a warning and counted in `skipped` (a SkippedRecords)."""
    import pandas as pd

    from components.data.table_readers import jsonl_records
    from components.skipped_records import SkippedRecords
    from components.storage import exists, list_files, read_bytes

    skipped = skipped or SkippedRecords()
    if files is None:
        files = list_files(root, f"{SHARD_PREFIX}*.jsonl") if exists(root) else []
    rows = []
    for uri in files:
        try:
            text = read_bytes(uri).decode("utf-8", errors="surrogateescape")
        except OSError as err:
            skipped.object(uri, f"cannot be read: {err}")
            continue
        for line, record in jsonl_records(text, "utf-8", uri, skipped):
            stamp, why = _prediction_time(record)
            if why:
                skipped.record(uri, line, why)
            else:
                rows.append(record | {"timestamp": stamp})
    generated = any("response_id" in row for row in rows)  # a generator's log; a classifier's keeps its columns
    return pd.DataFrame(rows, columns=COLUMNS + GENERATION_COLUMNS if generated else COLUMNS)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _prediction_time(record: dict) -> tuple[dt.datetime | None, str]:
    """(the record's timestamp in UTC, '') for a usable record, else (None, why it is not)."""
    text, stamp = record.get("text"), record.get("timestamp")
    if not isinstance(text, str) or not text.strip():
        return None, "no text" if text is None else f"the text is not a non-empty string: {str(text)[:40]!r}"
    try:
        parsed = dt.datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return None, f"the timestamp {str(stamp)[:40]!r} is not an ISO 8601 time"
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc), ""


def read_window(root: str, hours: float, now: dt.datetime | None = None, skipped=None):
    """The predictions logged in the last `hours` (only the shards of the days that can hold them are read)."""
    from components.storage import exists, list_files

    now = now or dt.datetime.now(dt.timezone.utc)
    since = now - dt.timedelta(hours=hours)
    shards = list_files(root, f"{SHARD_PREFIX}*.jsonl") if exists(root) else []
    frame = read_predictions(root, [f for f in shards if shard_day(f) >= f"{since:%Y%m%d}"], skipped)
    if frame.empty:
        return frame
    stamps = frame["timestamp"]
    return frame[(stamps >= since) & (stamps <= now)].reset_index(drop=True)


def answered(frame):
    """The records of what clients received (records of earlier versions have no role: all were answers)."""
    import pandas as pd

    role = frame["role"].fillna(ANSWER) if "role" in frame.columns else pd.Series(ANSWER, index=frame.index)
    failed = frame["error"].notna() if "error" in frame.columns else pd.Series(False, index=frame.index)
    return frame[role.eq(ANSWER) & ~failed].reset_index(drop=True)


def shard_day(uri: str) -> str:
    """YYYYMMDD of a shard (or of a daily file of earlier versions), from its name."""
    return uri.rsplit("/", 1)[-1].removeprefix(SHARD_PREFIX)[:8]
