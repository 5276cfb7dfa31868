"""What stage 5 holds a model to beyond its metrics, for both tasks: the behavioural test cases (`test_cases`) and
fairness between the groups of data.group_column (`fairness`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from components.config.section import Section

Share = Annotated[float, Field(ge=0, le=1)]
FairnessMetric = Literal["accuracy", "selection_rate", "false_positive_rate", "false_negative_rate"]


class TestCasesConfig(Section):
    """A file of behavioural test cases (CheckList's three kinds: MFT, INV, DIR; docs/test-cases.md) that stage 5
    runs, reports per category and kind, and holds the gate to."""

    __test__ = False

    path: str | None = None
    """A YAML or JSONL file of test cases in categories (components/evaluate/test_cases.py). None: only the built-in
    cases (a classifier's robustness perturbations)."""
    min_pass_rate: float | None = Field(None, ge=0, le=1)
    """The gate: the lowest pass rate (0..1) of each category of the file. None: reported, not judged."""
    min_pass_rates: dict[str, Share] = {}
    """The gate: a floor (0..1) per category by name, over min_pass_rate; a built-in category
    (robustness/typos, ...) is judged only when named here."""
    max_fillings: int = Field(20, ge=1)
    """The most fillings of one template: beyond it, a seeded sample of the combinations of its lists' terms."""


class FairnessConfig(Section):
    """task=classification with data.group_column: per group, accuracy, selection rate and false positive and
    negative rates (Fairlearn's MetricFrame), the largest gap between groups with bootstrap intervals."""

    positive_labels: list[str] = []
    """The labels whose selection and error rates are compared. Empty: of two labels the rarer in training (spam,
    fraud: what a detector looks for); of more, each label against the rest."""
    max_gap: dict[FairnessMetric, Share] = {}
    """The gate: the largest gap (0..1) allowed between two groups' values of a metric, e.g. {false_negative_rate:
    0.1}. Empty: reported, not judged."""
    resamples: int = Field(200, ge=10)
    """Bootstrap resamples of the test split for the gaps' 95% intervals."""
