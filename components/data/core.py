"""Stage 1, data preparation: read (table_readers.py), find personal data (personal_data.py), validate (a gate,
validation.py), clean, balance, split and check for leakage (splitting.py), write the splits as Parquet and the
manifest."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

from components.config import DataConfig, PiiConfig
from components.data.personal_data import find_personal_data, pii_counts, redacted_rows
from components.data.splitting import PII, REDACTED, fingerprint, resolve_leakage, split_sources
from components.data.table_readers import (
    FEEDBACK,
    DataError,
    SkippedRecords,
    format_of,
    from_data_config,
    read_table,
    resolve_sources,
    table_format,
)
from components.data.validation import (
    CONTROL_CHARACTERS,
    DataValidationError,
    ValidationRules,
    validate_table,
    without_controls,
)
from components.handoff import (
    MANIFEST,
    REDACTED_TEXTS,
    VALIDATION_REPORT,
    Manifest,
    data_docs_path,
    split_path,
    write_json,
)
from components.pii import checked_entities
from components.storage import file_sha256

log = logging.getLogger(__name__)

# Every split's Parquet file: the text, its label, where it came from ("data" or "feedback") and, with
# data.group_column, the group it belongs to (for stage 5's slices).
SCHEMA = {"text": "string", "label": "string", "source": "string", "group": "string (with data.group_column)"}


def data(
    config: DataConfig, seed: int, cache_dir: str | Path, out_dir: str | Path, pii: PiiConfig | None = None
) -> Manifest:
    """Stage 1: read, find personal data (redact it or stop, as data.pii says), validate (a gate), clean, balance,
    split, check for leakage; writes the splits, the manifest, the validation report and the data docs to out_dir
    (components.handoff names them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = resolve_sources(config, cache_dir)
    frames, digests, skipped = read_sources(config, sources)
    # A label or text that is a JSON list or object is its text here, which the gate then judges like any other.
    frames = {name: frame.map(lambda v: str(v) if isinstance(v, (list, dict)) else v) for name, frame in frames.items()}
    frames, stripped = strip_control_characters(frames, config)
    pii = pii or PiiConfig()
    frames = find_personal_data(frames, config, pii, sources)
    reports = validate_sources(config, frames, sources, out_dir, skipped, stripped)
    labels = sorted(set().union(*(r.labels for r in reports.values())))
    duplicates = sum(r.duplicate_rows for r in reports.values())
    conflicts = sum(r.conflicting_texts for r in reports.values())
    splits = split_sources(config, frames, sources, labels, duplicates + conflicts, seed)
    splits, leaking = resolve_leakage(splits, sources, config.on_leakage)
    for name, rows in splits.items():
        rows.drop(columns=[PII, REDACTED], errors="ignore").to_parquet(split_path(out_dir, name), index=False)
    if config.pii == "report":
        write_json(out_dir, REDACTED_TEXTS, {name: redacted_rows(rows) for name, rows in splits.items()})
    manifest = Manifest(
        out_dir=str(out_dir),
        source=", ".join(sources.values()),
        source_sha256=", ".join(digests),
        labels=labels,
        counts={name: _class_counts(rows, labels) for name, rows in splits.items()},
        fingerprint=fingerprint(splits),
        dropped_duplicates=duplicates,
        dropped_conflicting_texts=conflicts,
        dropped_leaking_texts=leaking,
        skipped_records=sum(n.records for n in skipped.values()),
        skipped_files=sum(n.objects for n in skipped.values()),
        control_characters=config.control_characters,
        stripped_control_characters=sum(stripped.values()),
        pii=config.pii,
        pii_entities=checked_entities(pii) if config.pii != "off" else [],
        pii_found={name: pii_counts(rows) for name, rows in splits.items()},
        pii_texts={name: int(rows[PII].astype(bool).sum()) for name, rows in splits.items()},
        schema=SCHEMA,
    )
    write_json(out_dir, MANIFEST, manifest.to_dict())
    return manifest


def read_sources(
    config: DataConfig, sources: dict[str, str]
) -> tuple[dict[str, pd.DataFrame], list[str], dict[str, SkippedRecords]]:
    """Each source as a table (feedback files may also be JSONL or Parquet, whatever the data's format:
    monitoring writes JSONL), each file's sha256, and what each reading skipped as damaged. A feedback file that
    cannot be read at all, or holds no rows, is left out (a damaged one counted); the data's own files must hold
    rows."""
    import tempfile

    from components.storage import fetch_file

    frames, digests, skipped = {}, [], {name: SkippedRecords() for name in sources}
    with tempfile.TemporaryDirectory(prefix="lifecycle-data-") as scratch:  # copies of remote files
        for name, uri in sources.items():
            path = fetch_file(uri, Path(scratch) / name)
            digests.append(file_sha256(path))
            feedback = name.startswith(FEEDBACK)
            try:
                frame = read_table(
                    path,
                    format_of(uri, table_format(config)) if feedback else table_format(config),
                    name=uri,
                    skipped=skipped[name],
                )
            except DataError as err:
                if not feedback:
                    raise
                skipped[name].object(uri, str(err).removeprefix(f"{uri}: "))
                continue
            if frame.empty and not feedback:
                raise DataError(f"{uri}: no rows to read")
            if frame.empty:
                log.warning("%s: no rows; it adds nothing", uri)
                continue
            frames[name] = frame
    return frames, digests, skipped


def strip_control_characters(
    frames: dict[str, pd.DataFrame], config: DataConfig
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """With data.control_characters=strip, the texts without them (whitespace-like ones become a space, the rest
    go, as BERT's tokenizer does) and how many texts of each table changed; with refuse, the gate names them."""
    if config.control_characters != "strip":
        return frames, {}
    cleaned, stripped = {}, {}
    for name, frame in frames.items():
        if config.text_column not in frame:
            cleaned[name], stripped[name] = frame, 0  # the gate says the column is missing
            continue
        texts = frame[config.text_column]
        held = texts.map(lambda t: isinstance(t, str) and CONTROL_CHARACTERS.search(t) is not None).astype(bool)
        stripped[name] = int(held.sum())
        cleaned[name] = frame.assign(**{config.text_column: texts.mask(held, texts[held].map(without_controls))})
    return cleaned, stripped


def validate_sources(
    config: DataConfig,
    frames: dict[str, pd.DataFrame],
    sources: dict[str, str],
    out_dir: Path,
    skipped: dict[str, SkippedRecords],
    stripped: dict[str, int],
) -> dict:
    """The great-expectations gate on every table read (feedback needs no class sizes); the report (with what
    reading skipped and stripped) and one page of data docs per table are written before a failure stops the
    stage."""
    rules = from_data_config(ValidationRules, config)
    feedback_rules = replace(rules, min_rows_per_class=0, min_classes=1, group_column=None)
    reports = {}
    for name, frame in frames.items():
        reports[name], page = validate_table(
            frame, feedback_rules if name.startswith(FEEDBACK) else rules, source=str(sources[name])
        )
        reports[name].skipped_records = skipped[name].records
        reports[name].stripped_control_characters = stripped.get(name, 0)
        data_docs_path(out_dir, name).write_text(page)
    write_json(out_dir, VALIDATION_REPORT, {name: report.to_dict() for name, report in reports.items()})
    failed = [name for name, report in reports.items() if not report.success]
    if failed:
        raise DataValidationError(
            "\n".join(reports[name].failure_message() + _skipped_hint(skipped[name], config) for name in failed)
        )
    return reports


def _skipped_hint(skipped: SkippedRecords, config: DataConfig) -> str:
    """What reading skipped, for a failed gate: a file read with the wrong format loses rows as well."""
    if not skipped.records:
        return ""
    return (
        f"\n  - reading skipped {skipped.summary()}, e.g. {skipped.examples[0]}. Check data.separator (now "
        f"{config.separator!r}), data.header, data.column_names, data.quoting and data.encoding"
    )


def _class_counts(rows: pd.DataFrame, labels: list[str]) -> dict[str, int]:
    counts = rows["label"].value_counts()
    return {label: int(counts.get(label, 0)) for label in labels}
