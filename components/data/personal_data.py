"""Personal data in the tables stage 1 reads: each text's kinds found (Presidio, components/pii.py), redacted or
refused as data.pii says, and counted per split."""

from __future__ import annotations

import logging

import pandas as pd

from components.config import DataConfig, PiiConfig
from components.data.splitting import PII, REDACTED
from components.data.validation import DataValidationError
from components.pii import KEEP, REDACT, PiiScanner

log = logging.getLogger(__name__)


def find_personal_data(
    frames: dict[str, pd.DataFrame], config: DataConfig, pii: PiiConfig, sources: dict[str, str]
) -> dict[str, pd.DataFrame]:
    """Each table with the kinds of personal data in each text (column PII, for the counts per split) and, with
    data.pii=redact, its texts redacted (with report, the redacted texts beside them, column REDACTED); with fail,
    the first texts holding any are named by row and kind (never by value: the message reaches logs)."""
    from components.stage_output import Progress

    if config.pii == "off":
        return {name: frame.assign(**{PII: ""}) for name, frame in frames.items()}
    scanner = PiiScanner(pii, load=False)
    form = KEEP if config.pii == "fail" else REDACT
    found, marked = {}, {}
    progress = Progress(sum(map(len, frames.values())), "looking for personal data", log)
    for name, frame in frames.items():
        if config.text_column not in frame:
            marked[name] = frame.assign(**{PII: ""})  # the gate says the column is missing
            continue
        texts, kinds = [], []
        for text in frame[config.text_column]:
            changed, found_kinds = scanner.transform(text, form) if isinstance(text, str) else (text, [])
            texts.append(changed)
            kinds.append(",".join(sorted(set(found_kinds))))
            progress.update(1)
        kept = texts if config.pii == "redact" else frame[config.text_column]
        marked[name] = frame.assign(**{config.text_column: kept, PII: kinds})
        if config.pii == "report":
            marked[name][REDACTED] = texts
        found[name] = [(row, k) for row, k in zip(frame.index, kinds) if k]
    holding = {name: rows for name, rows in found.items() if rows}
    if config.pii == "fail" and holding:
        listed = "\n".join(
            f"  {sources[name]}: {len(rows)} texts, e.g. "
            + ", ".join(f"row {row} ({kinds})" for row, kinds in rows[:5])
            for name, rows in holding.items()
        )
        raise DataValidationError(
            f"personal data in the texts (data.pii=fail; rows are lines of the file read):\n"
            f"{listed}\nSet data.pii=redact to replace each finding with its type "
            f"(<PHONE_NUMBER>), or report to train on the texts as they are"
        )
    return marked


def pii_counts(rows: pd.DataFrame) -> dict[str, int]:
    """Findings of each kind in a split (a text counts once per kind it holds)."""
    kinds = rows[PII].str.split(",").explode()
    return {kind: int(n) for kind, n in kinds[kinds.astype(bool)].value_counts().sort_index().items()}


def redacted_rows(rows: pd.DataFrame) -> dict[str, str]:
    """{row: text redacted} of the rows of a split (as written) whose redacted text differs."""
    differs = (rows[REDACTED] != rows["text"]).to_numpy()
    return {str(i): text for i, (text, changed) in enumerate(zip(rows[REDACTED], differs)) if changed}


class ExamplesPersonalData:
    """data.pii for a generator's examples: each turn's content and the response scanned one by one (and, with
    redact, replaced), before the prompt is rendered, so the template is never scanned and what trains is what a
    served prompt will look like after the same redaction."""

    def __init__(self, policy: str, pii: PiiConfig, total: int):
        from components.stage_output import Progress

        self.policy, self.found = policy, []  # (row, kinds) of the examples holding any
        self.scanner = None if policy == "off" else PiiScanner(pii, load=False)
        self.progress = Progress(total, "looking for personal data", log) if self.scanner else None

    def scan(self, turns: list[dict], response: str, row) -> tuple[list[dict], str, str]:
        """(turns, response) as they train, and the kinds found (comma-separated)."""
        if self.scanner is None:
            return turns, response, ""
        form, kinds, scanned = REDACT if self.policy == "redact" else KEEP, set(), []
        for turn in turns:
            content, found = self.scanner.transform(turn["content"], form) if turn["content"] else ("", [])
            scanned.append({**turn, "content": content})
            kinds |= set(found)
        response, found = self.scanner.transform(response, form)
        kinds = ",".join(sorted(kinds | set(found)))
        if kinds:
            self.found.append((row, kinds))
        self.progress.update(1)
        return scanned, response, kinds

    def refuse_found(self) -> None:
        """data.pii=fail: the examples holding personal data, named by file and line and kind (never by value)."""
        if self.policy == "fail" and self.found:
            named = ", ".join(f"{row} ({kinds})" for row, kinds in self.found[:8])
            raise DataValidationError(
                f"personal data in {len(self.found)} examples (data.pii=fail): {named}. Set data.pii=redact to "
                "replace each finding with its type (<PHONE_NUMBER>), or report to train on them as they are"
            )
