"""The prediction log: one JSON line per served text, in daily files the monitoring stage reads."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path
from typing import Iterable


class PredictionLog:
    """Appends records to <root>/predictions-YYYYMMDD.jsonl.

    Line-buffered appends: each record reaches the file when it is written (a few microseconds beside a
    model call of milliseconds), so a clean shutdown, or even a crash of the server, loses none.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._day = None
        self._file = None

    def write(self, texts: Iterable[str], labels: Iterable[str], probabilities: Iterable[dict], model: str,
              version: str) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        stamp = now.isoformat(timespec="milliseconds")
        lines = "".join(
            json.dumps({"timestamp": stamp, "model": model, "model_version": version, "text": text,
                        "label": label, "probabilities": probs}, ensure_ascii=False) + "\n"
            for text, label, probs in zip(texts, labels, probabilities)
        )
        with self._lock:
            self._file_for(now.date()).write(lines)

    def close(self) -> None:
        with self._lock:
            if self._file:
                self._file.close()
                self._file = None

    def _file_for(self, day: dt.date):
        if day != self._day:
            if self._file:
                self._file.close()
            self._file = open(self.root / f"predictions-{day:%Y%m%d}.jsonl", "a", encoding="utf-8", buffering=1)
            self._day = day
        return self._file


def read_predictions(root: str | Path, files: list[Path] | None = None):
    """The logged predictions under root (or in `files`) as a DataFrame, oldest file first."""
    import pandas as pd

    files = sorted(Path(root).glob("predictions-*.jsonl")) if files is None else files
    frames = [pd.read_json(f, lines=True, dtype=False) for f in files if f.stat().st_size]  # texts stay text
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["timestamp", "model", "model_version", "text", "label", "probabilities"])


def read_window(root: str | Path, hours: float, now: dt.datetime | None = None):
    """The predictions logged in the last `hours` (only the daily files that can hold them are read)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    since = now - dt.timedelta(hours=hours)
    files = [f for f in sorted(Path(root).glob("predictions-*.jsonl"))
             if f.stem.removeprefix("predictions-") >= f"{since:%Y%m%d}"]
    frame = read_predictions(root, files)
    if frame.empty:
        return frame
    import pandas as pd

    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    return frame[(stamps >= since) & (stamps <= now)].reset_index(drop=True)
