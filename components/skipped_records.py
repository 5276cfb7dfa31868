"""What a reader of data left out as damaged, counted and named: stage 1's readers, the prediction log's and a
rollout's."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class SkippedRecords:
    """What readers of data this process did not write left out as damaged: records (a line, a row) and whole
    objects (files, shards), counted; the first few are named in a warning, each with its object and line."""

    SHOWN = 5

    def __init__(self):
        self.records, self.objects = 0, 0
        self.examples: list[str] = []  # the first few, as warned

    def record(self, where, line: int, why: str) -> None:
        self.records += 1
        self._warn(f"{where}: line {line}: {why}", "skipped")

    def object(self, where, why: str) -> None:
        self.objects += 1
        self._warn(f"{where}: {why}", "skipped the whole file")

    def summary(self) -> str:
        """'' when nothing was skipped, else e.g. '3 damaged records and 1 damaged file'."""
        parts = [
            f"{n} damaged {kind}{'s' if n != 1 else ''}"
            for n, kind in ((self.records, "record"), (self.objects, "file"))
            if n
        ]
        return " and ".join(parts)

    def metrics(self) -> dict[str, float]:
        return {"skipped_records": float(self.records), "skipped_files": float(self.objects)}

    def _warn(self, text: str, done: str) -> None:
        shown = self.records + self.objects
        if shown <= self.SHOWN:
            self.examples.append(text)
            log.warning("%s; %s", text, done)
        elif shown == self.SHOWN + 1:
            log.warning("further damaged input is skipped and counted, not listed")
