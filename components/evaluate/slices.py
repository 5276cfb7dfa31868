"""Stage 5's slices: metrics per text-length bucket, per source (the data or monitoring's feedback) and per the
group the user names (data.group_column), so the card can say where the model fails."""

from __future__ import annotations

import numpy as np
import pandas as pd


def length_buckets(texts: pd.Series) -> tuple[pd.Series, dict[str, str]]:
    """Short, medium and long by the test texts' own length tertiles, and each bucket's range in characters."""
    lengths = texts.str.len()
    low, high = (int(v) for v in np.quantile(lengths, [1 / 3, 2 / 3]))
    buckets = np.where(lengths <= low, "short", np.where(lengths <= high, "medium", "long"))
    ranges = {"short": f"<= {low} chars", "medium": f"{low + 1}-{high} chars", "long": f"> {high} chars"}
    return pd.Series(buckets, index=texts.index), ranges


def slice_metrics(test: pd.DataFrame, targets: np.ndarray, predicted: np.ndarray) -> list[dict]:
    """One row per slice: slicing, slice, size, accuracy, macro_f1 (and a length bucket's range). `test` has text
    and, when stage 1 kept them, source and group columns; each slicing's sizes sum to the test size."""
    from sklearn.metrics import f1_score

    lengths, ranges = length_buckets(test["text"])
    slicings = {"length": lengths}
    for column in ("source", "group"):
        if column in test:
            slicings[column] = test[column].fillna("(none)").astype(str)
    rows = []
    for slicing, values in slicings.items():
        for value in list(ranges) if slicing == "length" else sorted(values.unique()):
            inside = (values == value).to_numpy()
            if not inside.any():  # a length bucket that ties left empty
                continue
            rows.append(
                {
                    "slicing": slicing,
                    "slice": value,
                    "size": int(inside.sum()),
                    "range": ranges[value] if slicing == "length" else "",
                    "accuracy": float((predicted[inside] == targets[inside]).mean()),
                    "macro_f1": float(f1_score(targets[inside], predicted[inside], average="macro", zero_division=0)),
                }
            )
    return rows


def worst_slice(rows: list[dict], min_size: int) -> dict | None:
    """The slice of lowest accuracy among those of at least `min_size` texts (smaller ones are noise)."""
    sizable = [row for row in rows if row["size"] >= min_size]
    return min(sizable, key=lambda row: row["accuracy"]) if sizable else None
