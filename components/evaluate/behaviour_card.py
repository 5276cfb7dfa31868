"""The model card's sections on behaviour, for both tasks' cards: the test cases (pass rates per category and kind,
each list's counterfactual flip share, failures) and fairness between groups."""

from __future__ import annotations

import math

from components.evaluate.model_card_findings import cell

SHOWN = 5  # failing cases written out; MLflow's evaluation/test_case_failures.json has them all


def test_cases_section(results, path: str | None) -> str:
    """`results`: suite_runs.TestCaseResults; the built-in categories are left to the robustness section."""
    own = None if results is None else results.rows[~results.rows["built_in"]]
    if own is None or own.empty:
        return "Test cases\nNone were given (test_cases.path)."
    by_kind = results.pass_rate_by_kind
    table = "\n".join(
        f"| {cell(category)} | {kind} | {int((rows['kind'] == kind).sum())} | {by_kind[(category, kind)]:.0%} |"
        for category, rows in own.groupby("category", sort=False)
        for kind in rows["kind"].unique()
    )
    flips = "\n".join(f"| {name} | {share:.1%} |" for name, share in results.flip_share_by_list.items())
    counterfactual = (
        "\n\nCounterfactual flips: of the invariance cases' fillings from each list, the share whose prediction "
        f"differs from most fillings of the same template.\n\n| list | flip share |\n|---|---|\n{flips}"
        if flips
        else ""
    )
    failed = own[~own["passed"]].head(SHOWN)
    failures = "\n".join(f"- `{row.id}` ({row.kind}): {cell(row.failures, 200)}" for row in failed.itertuples())
    return (
        f"Test cases\n{len(own)} cases of `{path}`, {results.pass_rate:.0%} passed (MFT: minimum functionality, "
        f"INV: invariance, DIR: directional, as CheckList has them).\n\n| category | kind | cases | pass rate |\n"
        f"|---|---|---|---|\n{table}{counterfactual}" + (f"\n\nFailed, e.g.:\n{failures}" if failures else "")
    )


def fairness_section(report) -> str:
    """`report`: fairness.FairnessReport, or None without data.group_column."""
    if report is None:
        return ""
    if report.gaps.empty:
        return (
            f"Fairness\nBy `{report.group_column}`: fewer than two groups hold enough test texts to compare "
            f"(too small: {', '.join(report.left_out) or 'none'})."
        )
    groups = "\n".join(
        f"| {cell(str(row['group']))} | {row['size']} | "
        + " | ".join(_figure(row[m]) for m in report.gaps["metric"])
        + " |"
        for row in report.by_group.to_dict("records")
    )
    gaps = "\n".join(
        f"| {r.metric} | {_figure(r.gap)} ({_figure(r.gap_ci_low)}-{_figure(r.gap_ci_high)}) | {_figure(r.ratio)} | "
        + ("- | - |" if math.isnan(r.gap) else f"{cell(r.lowest)} | {cell(r.highest)} |")
        for r in report.gaps.itertuples()
    )
    left_out = f" Too small to judge: {', '.join(report.left_out)}." if report.left_out else ""
    return (
        f"Fairness\nBy `{report.group_column}` on the test split (Fairlearn's MetricFrame); the rates take "
        f"{', '.join(report.positive_labels)} as positive; `-`: a rate the group cannot have (no positives, or no "
        f"negatives), left out of its gap.{left_out}\n\n| group | texts | "
        + " | ".join(report.gaps["metric"])
        + " |\n|"
        + "---|" * (len(report.gaps) + 2)
        + f"\n{groups}\n\n| metric | largest gap (95% CI) | ratio | lowest | highest |\n|---|---|---|---|---|\n{gaps}"
    )


def _figure(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"  # NaN: undefined
