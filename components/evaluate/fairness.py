"""Stage 5's group fairness, through Fairlearn's MetricFrame: on the test split, per group of data.group_column, the
accuracy, and for each positive label the selection rate and the false positive and false negative rates; per
metric the largest gap (difference between groups) and ratio (smallest over largest) with bootstrap intervals.
Groups of fewer than gate.min_slice_size texts are left out of the gaps (their rates are noise) and named; a rate a
group cannot have (a false negative rate where it holds no positive) is undefined there, not 0, and left out of
that metric's gap."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

FAIRNESS_METRICS = ("accuracy", "selection_rate", "false_positive_rate", "false_negative_rate")


@dataclass
class FairnessReport:
    group_column: str
    positive_labels: list[str]
    by_group: pd.DataFrame  # group, size and a column per metric
    gaps: pd.DataFrame  # metric, gap, gap_ci_low, gap_ci_high, ratio, ratio_ci_low, ratio_ci_high, lowest, highest
    left_out: list[str]  # groups too small to judge

    def scalars(self) -> dict[str, float]:
        """fairness.<metric>.<figure>, a rate's metric as <rate>.<label> (false_negative_rate.spam); undefined
        figures are left out."""
        found = {}
        for row in self.gaps.to_dict("records"):
            metric = row["metric"].replace("[", ".").rstrip("]")
            found |= {
                f"fairness.{metric}.{name}": float(row[name])
                for name in ("gap", "gap_ci_low", "gap_ci_high", "ratio")
                if not np.isnan(row[name])
            }
        return found

    def records(self) -> list[dict]:
        """The gaps as JSON can hold them (an undefined figure as null)."""
        return self.gaps.astype(object).where(self.gaps.notna(), None).to_dict("records")


def positive_labels_of(labels: list[str], train_counts: dict[str, int], configured: list[str]) -> list[str]:
    """The configured positive labels; else, of two labels, the rarer in training (spam, fraud, toxic: what a
    detector looks for), and of more, every label one against the rest."""
    if configured:
        return configured
    if len(labels) == 2:
        return [min(labels, key=lambda label: (train_counts.get(label, 0), label))]
    return list(labels)


def check_positive_labels(configured: list[str], labels: list[str]) -> None:
    from components.config import ConfigError

    unknown = [label for label in configured if label not in labels]
    if unknown:
        raise ConfigError(
            f"fairness.positive_labels: {unknown[0]!r} is not a label of the data; expected some of {', '.join(labels)}"
        )


def _rate(name: str, positive: str, y_true, y_pred) -> float:
    """A rate of the label `positive` against the rest; NaN where the group has none to count it over (Fairlearn's
    own rates give 0 there, which would make a gap of a group with no positives)."""
    truth, said = np.asarray(y_true) == positive, np.asarray(y_pred) == positive
    over = {"selection_rate": np.ones_like(truth), "false_positive_rate": ~truth, "false_negative_rate": truth}[name]
    counted = said if name != "false_negative_rate" else ~said
    return float(counted[over].mean()) if over.any() else float("nan")


def group_fairness(
    truth: list[str],
    predicted: list[str],
    groups: list[str],
    group_column: str,
    positive_labels: list[str],
    min_size: int,
    resamples: int,
    seed: int,
) -> FairnessReport:
    """The report over the test split's true and predicted labels and each text's group."""
    import warnings

    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import accuracy_score

    frame = pd.DataFrame({"truth": truth, "predicted": predicted, "group": groups})
    sizes = frame["group"].value_counts()
    left_out = sorted(str(g) for g, n in sizes.items() if n < min_size)
    judged = frame[~frame["group"].isin(left_out)]
    metrics = {"accuracy": accuracy_score}
    for positive in positive_labels:
        for name in FAIRNESS_METRICS[1:]:
            metrics[f"{name}[{positive}]"] = functools.partial(_rate, name, positive)
    by_group = pd.DataFrame(columns=["group", "size", *metrics])
    gaps = pd.DataFrame(
        columns=["metric", "gap", "gap_ci_low", "gap_ci_high", "ratio", "ratio_ci_low", "ratio_ci_high"]
    )
    if judged["group"].nunique() >= 2:
        with warnings.catch_warnings():  # an undefined rate (NaN) in a resample is expected, not news
            warnings.simplefilter("ignore")
            found = MetricFrame(
                metrics=metrics,
                y_true=judged["truth"].to_numpy(),
                y_pred=judged["predicted"].to_numpy(),
                sensitive_features=judged["group"].rename(group_column),
                n_boot=resamples,
                ci_quantiles=[0.025, 0.975],
                random_state=seed,
            )
            gap_ci, ratio_ci = found.difference_ci(), found.ratio_ci()
            by_group = found.by_group.rename_axis("group").reset_index()
            by_group.insert(1, "size", by_group["group"].map(sizes).astype(int))
            gaps = pd.DataFrame(
                {
                    "metric": list(metrics),
                    "gap": found.difference().to_numpy(),
                    "gap_ci_low": gap_ci[0].to_numpy(),
                    "gap_ci_high": gap_ci[1].to_numpy(),
                    # all groups at 0: no gap, a ratio of 1 (0/0 otherwise)
                    "ratio": found.ratio().where(found.group_max() != 0, 1.0).to_numpy(),
                    "ratio_ci_low": ratio_ci[0].to_numpy(),
                    "ratio_ci_high": ratio_ci[1].to_numpy(),
                    "lowest": [str(found.by_group[m].idxmin()) for m in metrics],
                    "highest": [str(found.by_group[m].idxmax()) for m in metrics],
                }
            )
        figures = ["gap", "gap_ci_low", "gap_ci_high", "ratio", "ratio_ci_low", "ratio_ci_high"]
        gaps.loc[(found.by_group.notna().sum() < 2).to_numpy(), figures] = np.nan  # one group: no gap to measure
    return FairnessReport(group_column, positive_labels, by_group, gaps, left_out)


def gap_checks(report: FairnessReport, max_gap: dict[str, float]):
    """The gate's lines, as (passed, line): each metric named in max_gap (for every positive label of a rate) at
    most that far apart between the groups. Asked for with fewer than two groups to compare, it fails: a floor
    that cannot be judged does not let a model through."""
    if max_gap and report.gaps.empty:
        yield (
            False,
            f"fairness by {report.group_column}: fewer than two groups of enough test texts to compare (too small: "
            f"{', '.join(report.left_out) or 'none'}), so fairness.max_gap cannot be judged",
        )
    for row in report.gaps.itertuples():
        limit = max_gap.get(row.metric.split("[")[0])
        if limit is not None and np.isnan(row.gap):
            yield (
                False,
                f"fairness {row.metric} by {report.group_column}: defined in fewer than two groups, so its "
                "gap cannot be judged",
            )
        elif limit is not None:
            yield (
                row.gap <= limit,
                f"fairness {row.metric} by {report.group_column}: gap {row.gap:.3f} between {row.lowest} and "
                f"{row.highest} (95% CI {row.gap_ci_low:.3f}-{row.gap_ci_high:.3f}) vs maximum {limit:.3f}",
            )
