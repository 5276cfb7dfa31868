"""Stage 1's rows made into splits: cleaned (stripped, duplicates and ambiguous texts dropped), balanced, split
stratified and seeded, and checked for texts that stand in two splits."""

from __future__ import annotations

import hashlib

import pandas as pd

from components.config import DataConfig
from components.data.table_readers import FEEDBACK
from components.data.validation import DataValidationError
from components.handoff import SPLITS

SOURCE = "_lifecycle_source"  # the column that stage 1 adds to each table read: "data" or "feedback"
PII = "_lifecycle_pii"  # the column of the kinds of personal data in each text (comma-separated), never written
# With data.pii=report, each text with its personal data redacted, never written: what the prediction log's
# redact form makes of it, which stages 6 and 7 read instead of scanning the texts again (handoff.REDACTED)
REDACTED = "_lifecycle_redacted"


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


def clean(frame: pd.DataFrame, text_column: str, label_column: str, group_column: str | None = None) -> pd.DataFrame:
    """Keep text and label (and the source, the personal data found and the group, when there), strip texts, drop
    exact duplicates (the first kept: the data's before feedback's) and texts seen with two labels (ambiguous)."""
    rows = pd.DataFrame({"text": frame[text_column].str.strip(), "label": frame[label_column]})
    for column, name in ((SOURCE, "source"), (PII, PII)):
        if column in frame:
            rows[name] = frame[column]
    if REDACTED in frame:
        rows[REDACTED] = frame[REDACTED].str.strip()
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


def fingerprint(splits: dict[str, pd.DataFrame], columns: tuple[str, ...] = ("label", "text")) -> str:
    """Of the prepared splits' `columns` (a generator's: prompt and response): same fingerprint, same data."""
    digest = hashlib.sha256()
    for name in SPLITS:
        for values in zip(*(splits[name][column] for column in columns)):
            digest.update("\t".join((name, *map(str, values))).encode() + b"\n")
    return digest.hexdigest()[:12]
