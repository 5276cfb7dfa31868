"""The stage 1 gate: great-expectations checks on a raw table, plus the duplicate and conflict report."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import pandas as pd

from components.errors import LifecycleError

SAMPLE_ROWS = 5  # rows quoted per failed check
# NUL and the other C0 control characters but tab and newline: no text means them, and pandas' parser cut texts
# at a NUL. Of these, Python counts \r, \v, \f and \x1c-\x1f as whitespace.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f]")


class DataValidationError(LifecycleError):
    """The data failed the gate; the message names each failed expectation with sample rows."""


@dataclass(frozen=True)
class ValidationRules:
    text_column: str
    label_column: str
    labels: list[str] | None  # None: inferred and reported
    min_rows_per_class: int
    min_text_chars: int
    max_text_chars: int
    min_classes: int = 2  # 1 for feedback files, which may add examples of one class only
    group_column: str | None = None  # must exist when set (feedback files need not have it)
    control_characters: str = "strip"  # refuse: a text holding one fails the gate


@dataclass
class CheckResult:
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int = 0
    samples: list[dict] = field(default_factory=list)  # {"row": file row, "value": the offending value}
    detail: str = ""


@dataclass
class ValidationReport:
    source: str
    rows: int
    columns: list[str]
    success: bool
    labels: list[str]
    labels_inferred: bool
    class_counts: dict[str, int]
    checks: list[CheckResult]
    duplicate_rows: int
    duplicate_samples: list[dict]
    conflicting_texts: int
    conflict_samples: list[dict]
    skipped_records: int = 0  # damaged records that reading left out
    stripped_control_characters: int = 0  # texts that held control characters (data.control_characters=strip)

    def to_dict(self) -> dict:
        return asdict(self)

    def failure_message(self) -> str:
        lines = [f"data validation failed for {self.source} ({self.rows} rows, columns {self.columns}):"]
        for check in self.checks:
            if check.success:
                continue
            where = f"({check.column})" if check.column else ""
            lines.append(f"  - {check.expectation}{where}: {check.detail or f'{check.unexpected_count} rows'}")
            lines += [f"      row {s['row']}: {s['value']!r}" for s in check.samples]
        return "\n".join(lines)


def without_controls(text: str) -> str:
    """The text with each whitespace-like control character as a space and the others removed."""
    return CONTROL_CHARACTERS.sub(lambda m: " " if m.group().isspace() else "", text)


def validate_table(frame: pd.DataFrame, rules: ValidationRules, source: str) -> tuple[ValidationReport, str]:
    """Run the gate on one raw table; returns the report and the great-expectations data docs page (HTML)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("stage1")
        .add_dataframe_asset("raw")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suite = context.suites.add(gx.ExpectationSuite(name="text_classification_input"))
    for expectation in _expectations(gx.expectations, rules, frame.columns):
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=source, data=batch, suite=suite))
    result = definition.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")

    checks = [_check_from_result(r, frame, rules) for r in result.results]
    has_labels = rules.label_column in frame.columns
    counts = frame[rules.label_column].value_counts(dropna=True) if has_labels else pd.Series(dtype=int)
    checks.append(_min_rows_check(counts, rules))
    has_both = has_labels and rules.text_column in frame.columns  # else ExpectColumnToExist says which is missing
    duplicates, conflicts = _duplicates_and_conflicts(frame, rules) if has_both else (pd.DataFrame(), pd.DataFrame())
    labels = rules.labels or sorted(counts.index.tolist())
    report = ValidationReport(
        source=source,
        rows=len(frame),
        columns=[str(c) for c in frame.columns],
        success=all(c.success for c in checks),
        labels=labels,
        labels_inferred=rules.labels is None,
        class_counts={str(k): int(v) for k, v in counts.items()},
        checks=checks,
        duplicate_rows=len(duplicates),
        duplicate_samples=_samples(duplicates, rules.text_column),
        conflicting_texts=int(conflicts[rules.text_column].nunique()) if len(conflicts) else 0,
        conflict_samples=_samples(conflicts, rules.text_column, rules.label_column),
    )
    html = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))
    return report, html


def _expectations(ge, rules: ValidationRules, columns) -> list:
    text, label = rules.text_column, rules.label_column
    found = [ge.ExpectColumnToExist(column=text), ge.ExpectColumnToExist(column=label)]
    if rules.group_column:
        found.append(ge.ExpectColumnToExist(column=rules.group_column))
    if text in columns:  # column-map expectations skip nulls, hence the not-null check beside them
        found += [
            ge.ExpectColumnValuesToNotBeNull(column=text),
            ge.ExpectColumnValuesToNotMatchRegex(column=text, regex=r"^\s*$"),
            ge.ExpectColumnValueLengthsToBeBetween(
                column=text, min_value=rules.min_text_chars, max_value=rules.max_text_chars
            ),
        ]
        if rules.control_characters == "refuse":
            found.append(ge.ExpectColumnValuesToNotMatchRegex(column=text, regex=CONTROL_CHARACTERS.pattern))
    if label in columns:
        found += [
            ge.ExpectColumnValuesToNotBeNull(column=label),
            ge.ExpectColumnUniqueValueCountToBeBetween(
                column=label, min_value=rules.min_classes, max_value=len(rules.labels) if rules.labels else None
            ),
        ]
        if rules.labels:
            found.append(ge.ExpectColumnValuesToBeInSet(column=label, value_set=rules.labels))
    return found


def _check_from_result(result, frame: pd.DataFrame, rules: ValidationRules) -> CheckResult:
    config, outcome = result.expectation_config, result.result or {}
    column = config.kwargs.get("column")
    check = CheckResult(expectation=config.type, column=column, success=bool(result.success))
    if check.success:
        return check
    check.unexpected_count = int(outcome.get("unexpected_count") or 0)
    # Index entries are plain values, or {index name: value, column: value} when the index is named.
    rows = [
        r[frame.index.name] if isinstance(r, dict) else r
        for r in (outcome.get("unexpected_index_list") or [])[:SAMPLE_ROWS]
    ]
    check.samples = [{"row": int(r), "value": _plain(frame.at[r, column])} for r in rows if column in frame.columns]
    if config.type == "expect_column_to_exist":
        check.detail = f"column {column!r} is missing; found {list(frame.columns)} (is data.separator right?)"
    elif config.type == "expect_column_unique_value_count_to_be_between":
        check.detail = _label_count_detail(frame[column], config.kwargs["min_value"], rules.labels)
    elif check.unexpected_count:
        share = check.unexpected_count / max(len(frame), 1)
        check.detail = f"{check.unexpected_count} of {len(frame)} rows ({share:.1%})"
        if config.type == "expect_column_values_to_be_in_set":
            check.detail += f" not in {config.kwargs['value_set']}"
        elif config.kwargs.get("regex") == CONTROL_CHARACTERS.pattern:
            check.detail += (
                " hold control characters (NUL or another C0 control but tab and newline); "
                "data.control_characters=strip strips them"
            )
    return check


def _label_count_detail(labels: pd.Series, least: int, configured: list[str] | None) -> str:
    found = sorted(str(v) for v in labels.dropna().unique())
    if configured and len(found) > len(configured):
        others = [label for label in found if label not in configured]
        return (
            f"found {len(found)} distinct labels, more than the {len(configured)} of data.labels; not among "
            f"them: {others[:20]} (labels are compared exactly: a header line, or another case or spelling?)"
        )
    return f"found {len(found)} distinct labels {found}; expected at least {least}" + (
        " (a classifier needs 2)" if least > 1 else ""
    )


def _min_rows_check(counts: pd.Series, rules: ValidationRules) -> CheckResult:
    # great-expectations has no per-class count expectation; this one is checked here, in the same report.
    expected = rules.labels or counts.index.tolist()
    short = {str(k): int(counts.get(k, 0)) for k in expected if counts.get(k, 0) < rules.min_rows_per_class}
    return CheckResult(
        expectation="expect_min_rows_per_class",
        column=rules.label_column,
        success=not short and len(counts) > 0,
        detail=f"classes below {rules.min_rows_per_class} rows: {short}" if short else "",
    )


def _duplicates_and_conflicts(frame: pd.DataFrame, rules: ValidationRules) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = frame[[rules.text_column, rules.label_column]].dropna()
    rows = rows.assign(**{rules.text_column: rows[rules.text_column].str.strip()})
    duplicates = rows[rows.duplicated(keep="first")]
    label_count = rows.groupby(rules.text_column)[rules.label_column].transform("nunique")
    return duplicates, rows[label_count > 1]


def _samples(rows: pd.DataFrame, *columns: str) -> list[dict]:
    return [{"row": int(i), **{c: _plain(r[c]) for c in columns}} for i, r in rows.head(SAMPLE_ROWS).iterrows()]


def _plain(value):
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value
