"""Stage 1, data preparation: load, validate (a gate), clean, balance, split, check for leakage, write Parquet."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import fields, replace
from pathlib import Path

import pandas as pd

from components.config import DataConfig, PiiConfig
from components.data.tables import DataError, SkippedRecords, TableFormat, fetch, file_sha256, format_of, read_table
from components.data.validation import (
    CONTROL_CHARACTERS,
    DataValidationError,
    ValidationRules,
    validate_table,
    without_controls,
)
from components.handoff import MANIFEST, SPLITS, VALIDATION_REPORT, Manifest, data_docs_path, split_path, write_json
from components.pii import KEEP, REDACT, PiiScanner, checked_entities

log = logging.getLogger(__name__)

FEEDBACK = "feedback"  # the source names of feedback files start with this
SOURCE = "_lifecycle_source"  # the column that stage 1 adds to each table read: "data" or "feedback"
PII = "_lifecycle_pii"  # the column of the kinds of personal data in each text (comma-separated), never written
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
        rows.drop(columns=PII).to_parquet(split_path(out_dir, name), index=False)
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
        pii_found={name: _pii_counts(rows) for name, rows in splits.items()},
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


def find_personal_data(
    frames: dict[str, pd.DataFrame], config: DataConfig, pii: PiiConfig, sources: dict[str, str]
) -> dict[str, pd.DataFrame]:
    """Each table with the kinds of personal data in each text (column PII, for the counts per split) and, with
    data.pii=redact, its texts redacted; with fail, the first texts holding any are named by row and kind (never
    by value: the message reaches logs)."""
    from components.console import Progress

    if config.pii == "off":
        return {name: frame.assign(**{PII: ""}) for name, frame in frames.items()}
    scanner = PiiScanner(pii)
    form = REDACT if config.pii == "redact" else KEEP
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
        marked[name] = frame.assign(**{config.text_column: texts, PII: kinds})
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


def _pii_counts(rows: pd.DataFrame) -> dict[str, int]:
    """Findings of each kind in a split (a text counts once per kind it holds)."""
    kinds = rows[PII].str.split(",").explode()
    return {kind: int(n) for kind, n in kinds[kinds.astype(bool)].value_counts().sort_index().items()}


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
    rules = _from_config(ValidationRules, config)
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


def split_sources(
    config: DataConfig,
    frames: dict[str, pd.DataFrame],
    sources: dict[str, str],
    labels: list[str],
    dropped: int,
    seed: int,
) -> dict[str, pd.DataFrame]:
    """Cleaned train/val/test: the whole data set balanced and split, or the given splits. Feedback joins the whole
    data set (then balanced and split like the rest), or the train split when the splits are given."""
    frames = {
        name: frame.assign(**{SOURCE: "feedback" if name.startswith(FEEDBACK) else "data"})
        for name, frame in frames.items()
    }
    feedback = [frames[name] for name in frames if name.startswith(FEEDBACK)]
    main = "all" if "all" in frames else "train"
    frames[main] = pd.concat([frames[main], *feedback])
    cleaned = {
        name: clean(frames[name], config.text_column, config.label_column, config.group_column)
        for name in (main, *SPLITS[1:])
        if name in frames
    }
    if "all" not in cleaned:
        if "val" not in cleaned:  # a published train/test pair: validation is held out of train
            train = cleaned["train"]
            cleaned["train"], cleaned["val"] = hold_out(
                train,
                round(len(train) * config.val_from_train),
                seed,
                f"{sources['train']}: validation",
                "Use more data, another data.val_from_train, or give data.val_path",
            )
        splits = {name: cleaned[name] for name in SPLITS}
        if config.balance == "undersample":
            splits["train"] = undersample(splits["train"], seed)
    else:
        rows = cleaned["all"]
        check_class_sizes(rows, labels, config.min_rows_per_class, dropped, sources["all"])
        if config.balance == "undersample":
            rows = undersample(rows, seed)
        splits = stratified_split(rows, config.split.train, config.split.val, seed, sources["all"])
    if config.balance == "oversample":  # after the split: a text drawn twice must not reach val or test
        splits["train"] = oversample(splits["train"], seed)
    return splits


def resolve_sources(data: DataConfig, cache_dir: str | Path) -> dict[str, str]:
    """The files to read, by name ("all", or "train", "val", "test", and "feedback-..."), as URIs or paths."""
    if data.train_path:
        sources = {"train": data.train_path, "test": data.test_path} | ({"val": data.val_path} if data.val_path else {})
    elif data.path:
        sources = {"all": data.path}
    else:
        sources = {"all": str(fetch(data.url, cache_dir, sha256=data.sha256, member=data.url_member))}
    return sources | {f"{FEEDBACK}-{Path(uri).stem}": uri for uri in feedback_files(data.feedback_path)}


def feedback_files(feedback_path: str | None) -> list[str]:
    """The feedback file, or the files in the feedback folder (sorted; hidden files skipped), as URIs."""
    from components import storage

    if not feedback_path:
        return []
    if storage.is_folder(feedback_path):
        return storage.list_files(feedback_path)
    if not storage.exists(feedback_path):
        raise DataError(f"data.feedback_path: {feedback_path} is neither a file nor a folder")
    return [feedback_path]


def table_format(data: DataConfig) -> TableFormat:
    return _from_config(TableFormat, data)


def _from_config(kind, config: DataConfig):
    """A dataclass of plain values from the data config's keys of the same names."""
    return kind(**{f.name: getattr(config, f.name) for f in fields(kind) if f.name in DataConfig.model_fields})


def clean(frame: pd.DataFrame, text_column: str, label_column: str, group_column: str | None = None) -> pd.DataFrame:
    """Keep text and label (and the source, the personal data found and the group, when there), strip texts, drop
    exact duplicates (the first kept: the data's before feedback's) and texts seen with two labels (ambiguous)."""
    rows = pd.DataFrame({"text": frame[text_column].str.strip(), "label": frame[label_column]})
    for column, name in ((SOURCE, "source"), (PII, PII)):
        if column in frame:
            rows[name] = frame[column]
    if group_column:
        rows["group"] = frame[group_column].astype("string")
    rows = rows.drop_duplicates(subset=["text", "label"])
    ambiguous = rows.groupby("text")["label"].transform("nunique") > 1
    return rows[~ambiguous]


def undersample(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Undersample every class to the smallest class's size (the ch06 recipe)."""
    smallest = rows["label"].value_counts().min()
    parts = [group.sample(smallest, random_state=seed) for _, group in rows.groupby("label", sort=True)]
    return pd.concat(parts)


def oversample(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every class drawn up to the largest class's size: its own rows once, then as many more drawn from them
    with replacement (seeded), in a shuffled order."""
    largest = rows["label"].value_counts().max()
    parts = [
        pd.concat([group, group.sample(largest - len(group), replace=True, random_state=seed)])
        for _, group in rows.groupby("label", sort=True)
    ]
    return pd.concat(parts).sample(frac=1, random_state=seed)


def check_class_sizes(rows: pd.DataFrame, labels: list[str], min_rows: int, dropped: int, source: str) -> None:
    """Every class still has data.min_rows_per_class rows once duplicates and ambiguous texts are gone."""
    counts = rows["label"].value_counts()
    short = {label: int(counts.get(label, 0)) for label in labels if counts.get(label, 0) < min_rows}
    if short:
        listed = ", ".join(f"class {label!r} has {n} rows" for label, n in short.items())
        raise DataValidationError(
            f"{source}: after dropping {dropped} duplicate rows and ambiguous texts, {listed}; "
            f"data.min_rows_per_class needs {min_rows} of each"
        )


def stratified_split(
    rows: pd.DataFrame, train: float, val: float, seed: int, source: str = "the data"
) -> dict[str, pd.DataFrame]:
    # Whole row counts, rounded once: fractions like 0.7 + 0.1 are not exact in floating point.
    n_val = round(len(rows) * val)
    n_test = len(rows) - round(len(rows) * train) - n_val
    advice = "Use more data or other data.split fractions"
    rest, test = hold_out(rows, n_test, seed, f"{source}: test", advice)
    train_rows, val_rows = hold_out(rest, n_val, seed, f"{source}: validation", advice)
    return {"train": train_rows, "val": val_rows, "test": test}


def hold_out(rows: pd.DataFrame, count: int, seed: int, what: str, advice: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rest, `count` rows held out), stratified by label and seeded."""
    from sklearn.model_selection import train_test_split

    try:
        return tuple(train_test_split(rows, test_size=count, stratify=rows["label"], random_state=seed))
    except ValueError as err:  # too few rows of a class for both parts to hold one
        raise DataValidationError(
            f"{what}: cannot hold out {count} of {len(rows)} rows stratified by label: {err}. {advice}"
        ) from None


def resolve_leakage(
    splits: dict[str, pd.DataFrame], sources: dict[str, str], policy: str
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """No text may stand in two splits: with policy "fail" that stops stage 1, naming the rows; with "drop" the
    later split loses the text. Returns the splits and how many texts each split lost."""
    leaks = find_leaks(splits)
    if not leaks:
        return splits, {}
    if policy == "fail":
        where = ", ".join(sources.values())
        samples = "\n".join(f"    row {ra} of {a} and row {rb} of {b}: {t[:80]!r}" for a, ra, b, rb, t in leaks[:5])
        raise DataValidationError(
            f"leakage in {where}: {len(leaks)} texts stand in two splits (rows are lines of "
            f"the file read), e.g.\n{samples}\nSet data.on_leakage=drop to drop them from "
            f"val and test"
        )
    kept, held, lost = {"train": splits["train"]}, set(splits["train"]["text"]), {}
    for name in SPLITS[1:]:
        leaking = splits[name]["text"].isin(held)
        kept[name], lost[name] = splits[name][~leaking], int(leaking.sum())
        held |= set(kept[name]["text"])
    return kept, {name: n for name, n in lost.items() if n}


def find_leaks(splits: dict[str, pd.DataFrame]) -> list[tuple[str, object, str, object, str]]:
    """(first split, its row, later split, its row, text) for each text of a later split that an earlier holds."""
    first: dict[str, tuple[str, object]] = {}
    leaks = []
    for name in SPLITS:
        for row, text in splits[name]["text"].items():
            if text in first and first[text][0] != name:
                leaks.append((*first[text], name, row, text))
            first.setdefault(text, (name, row))
    return leaks


def fingerprint(splits: dict[str, pd.DataFrame]) -> str:
    digest = hashlib.sha256()
    for name in SPLITS:
        for text, label in zip(splits[name]["text"], splits[name]["label"]):
            digest.update(f"{name}\t{label}\t{text}\n".encode())
    return digest.hexdigest()[:12]


def _class_counts(rows: pd.DataFrame, labels: list[str]) -> dict[str, int]:
    counts = rows["label"].value_counts()
    return {label: int(counts.get(label, 0)) for label in labels}
