"""Stage 5 runs a test suite (test_cases.py) against a model: each template filled from its lists, every input the
model's to answer in one batch, each case judged by its kind (suite_case.py). A case passes when every filling (and
every edit) does; the pass rates are per category and per kind. An invariance case's fillings that got another
prediction than most of them are its flips, counted per list: the counterfactual flip share of each list of terms."""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.errors import LifecycleError
from components.evaluate.suite_case import BUILT_IN_PREFIX, TestCase, TestCaseError, fill

RESULT_COLUMNS = ["category", "kind", "id", "input", "output", "checked", "failed", "passed", "failures", "built_in"]
EXAMPLE_COLUMNS = ["category", "kind", "id", "filling", "input", "output", "passed"]
SHOWN_FAILURES = 3  # a case's failures written out in its row; the examples table has them all


@dataclass
class TestCaseResults:
    """One row per case (RESULT_COLUMNS), one per input the model answered (EXAMPLE_COLUMNS), and per list of
    terms its invariance cases' (flipped fillings, fillings)."""

    __test__ = False

    rows: pd.DataFrame
    examples: pd.DataFrame
    flips: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def pass_rate(self) -> float | None:
        """Of the file's cases (the built-in ones have their own categories)."""
        own = self.rows[~self.rows["built_in"]]
        return float(own["passed"].mean()) if len(own) else None

    @property
    def pass_rate_by_category(self) -> dict[str, float]:
        return {str(name): float(p.mean()) for name, p in self.rows.groupby("category", sort=False)["passed"]}

    @property
    def pass_rate_by_kind(self) -> dict[tuple[str, str], float]:
        grouped = self.rows.groupby(["category", "kind"], sort=False)["passed"]
        return {(str(category), str(kind)): float(p.mean()) for (category, kind), p in grouped}

    @property
    def flip_share_by_list(self) -> dict[str, float]:
        return {name: flipped / total for name, (flipped, total) in self.flips.items() if total}

    def built_in_categories(self) -> set[str]:
        return set(self.rows.loc[self.rows["built_in"], "category"])

    def failures(self) -> pd.DataFrame:
        """The failing rows, for an MLflow table a reader can go through."""
        return self.rows[~self.rows["passed"]].reset_index(drop=True)

    def scalars(self) -> dict[str, float]:
        """The MLflow metrics (names as written; the caller makes them MLflow's)."""
        found = {} if self.pass_rate is None else {"test_case_pass_rate": self.pass_rate}
        found |= {f"test_case_pass_rate.{c}": rate for c, rate in self.pass_rate_by_category.items()}
        found |= {f"test_case_pass_rate.{c}.{k}": rate for (c, k), rate in self.pass_rate_by_kind.items()}
        return found | {f"counterfactual_flip_share.{name}": s for name, s in self.flip_share_by_list.items()}


def fillings(case: TestCase, lists: dict, max_fillings: int, seed: int) -> list[dict[str, str]]:
    """Every combination of the template's lists' terms, or a seeded sample of `max_fillings` of them (drawn by
    index, so a template of many lists never builds its whole product); one empty filling for a case with no
    template."""
    names = case.placeholders()
    if not names:
        return [{}]
    terms = [lists[name] for name in names]
    total = math.prod(len(t) for t in terms)
    picked = range(total)
    if total > max_fillings:
        picked = sorted(random.Random(f"{seed}-{case.id}").sample(range(total), max_fillings))
    combinations = []
    for index in picked:  # the index in the product, read as a number whose digits index each list
        combination = []
        for options in reversed(terms):
            index, digit = divmod(index, len(options))
            combination.append(options[digit])
        combinations.append(dict(zip(names, reversed(combination))))
    return combinations


def inputs_of(case: TestCase, lists: dict, max_fillings: int, seed: int) -> list[tuple[dict, str]]:
    """(filling, input) of each text or prompt the case sends: its template's fillings, or a built-in case's given
    variants."""
    if case.variants:
        return [({}, variant) for variant in case.variants]
    return [(filling, fill(case.input, filling)) for filling in fillings(case, lists, max_fillings, seed)]


@dataclass
class _Judged:
    """One case's verdict: the inputs it sent and what each gave, the failures as lines, and per filling what a
    counterfactual flip compares (the label said, or whether the checks passed)."""

    output: str
    examples: list[tuple[dict, str, str, bool]]  # filling, input, output, passed
    failures: list[str]
    said: list = field(default_factory=list)


def _flips(case: TestCase, verdict: _Judged) -> dict[str, tuple[int, int]]:
    """Per list of an invariance case: (flipped, compared) fillings, varying that list alone. Fillings that agree
    on the other lists' terms are compared; a flip is one that got other than most of them."""
    found, names = {}, case.placeholders()
    for name in names:
        groups: dict[tuple, list] = {}
        for (filling, *_), said in zip(verdict.examples, verdict.said):
            groups.setdefault(tuple(filling[other] for other in names if other != name), []).append(said)
        compared = [group for group in groups.values() if len(group) > 1]
        flipped = sum(sum(s != Counter(group).most_common(1)[0][0] for s in group) for group in compared)
        found[name] = (flipped, sum(len(group) for group in compared))
    return found


def _results(cases: Sequence[TestCase], judged: list[_Judged]) -> TestCaseResults:
    """The rows, the examples (a built-in case's only where it failed: they are every test text) and the flips."""
    rows, examples, flips = [], [], {}
    for case, verdict in zip(cases, judged):
        lines = verdict.failures[:SHOWN_FAILURES] + (
            [f"and {len(verdict.failures) - SHOWN_FAILURES} more"] if len(verdict.failures) > SHOWN_FAILURES else []
        )
        rows.append(
            [case.category, case.kind, case.id, case.input, verdict.output, len(verdict.examples)]
            + [len(verdict.failures), not verdict.failures, "; ".join(lines), bool(case.variants)]
        )
        if not case.variants or verdict.failures:
            for filling, text, output, passed in verdict.examples:
                filled = json.dumps(filling, ensure_ascii=False) if filling else ""
                examples.append([case.category, case.kind, case.id, filled, text, output, passed])
        if case.kind == "INV":
            for name, (flipped, compared) in _flips(case, verdict).items():
                before = flips.get(name, (0, 0))
                flips[name] = (before[0] + flipped, before[1] + compared)
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS).astype({"passed": bool, "built_in": bool})
    return TestCaseResults(frame, pd.DataFrame(examples, columns=EXAMPLE_COLUMNS), flips)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def run_classifier_cases(
    cases: Sequence[TestCase],
    lists: dict,
    predict: Callable[[list[str]], np.ndarray],
    labels: list[str],
    max_fillings: int,
    seed: int,
) -> TestCaseResults:
    """`predict` gives class probabilities (columns in the order of `labels`) for texts; it is called once."""
    cases = _some(cases)
    filled = [inputs_of(case, lists, max_fillings, seed) for case in cases]
    texts = {text for inputs in filled for _, text in inputs}
    texts |= {
        edit.filled(filling).apply(text)
        for case, inputs in zip(cases, filled)
        for filling, text in inputs
        for edit in case.edits
    }
    texts = sorted(texts)
    probabilities = dict(zip(texts, predict(texts))) if texts else {}
    answer = _Classifier(probabilities, labels)
    judge = {"MFT": answer.functionality, "INV": answer.invariance, "DIR": answer.directional}
    return _results(cases, [judge[case.kind](case, inputs) for case, inputs in zip(cases, filled)])


@dataclass
class _Classifier:
    probabilities: dict[str, np.ndarray]
    labels: list[str]

    def said(self, text: str) -> str:
        return self.labels[int(np.argmax(self.probabilities[text]))]

    def _answer(self, text: str) -> str:
        label = self.said(text)
        return f"{label} ({self.probabilities[text][self.labels.index(label)]:.3f})"

    def functionality(self, case: TestCase, inputs) -> _Judged:
        examples = [(f, text, self._answer(text), self.said(text) == case.label) for f, text in inputs]
        failures = [f"{_short(t)} -> {out} (expected {case.label})" for _, t, out, ok in examples if not ok]
        return _Judged(examples[0][2] if len(examples) == 1 else "", examples, failures)

    def invariance(self, case: TestCase, inputs) -> _Judged:
        said = [self.said(text) for _, text in inputs]
        most = Counter(said).most_common(1)[0][0]
        expected = case.label or most
        examples = [(f, text, self._answer(text), s == expected) for (f, text), s in zip(inputs, said)]
        failures = [f"{_short(t)} -> {out} (expected {expected})" for _, t, out, ok in examples if not ok]
        return _Judged("", examples, failures, said)

    def directional(self, case: TestCase, inputs) -> _Judged:
        column, examples, failures = self.labels.index(case.label), [], []
        for (filling, text), edit in itertools.product(inputs, case.edits):
            edit = edit.filled(filling)
            edited = edit.apply(text)
            before, after = self.probabilities[text][column], self.probabilities[edited][column]
            moved = after - before if case.direction == "up" else before - after
            passed = edited != text and moved >= -case.tolerance
            output = f"P({case.label}) {before:.3f} -> {after:.3f}"
            examples.append((filling, edited, output, passed))
            if edited == text:
                failures.append(f"{edit} leaves {_short(text)} unchanged")
            elif not passed:
                failures.append(f"{_short(text)}, {edit}: {output}, expected {case.direction}")
        return _Judged("", examples, failures)


def run_generator_cases(
    cases: Sequence[TestCase], lists: dict, generate: Callable[[list[str]], list[str]], max_fillings: int, seed: int
) -> TestCaseResults:
    """`generate` is called once with every distinct prompt (one batch, as stage 5 generates greedily); each
    generation is checked with the case's words filled as its prompt was."""
    cases = _some(cases)
    filled = [inputs_of(case, lists, max_fillings, seed) for case in cases]
    prompts = list(dict.fromkeys(prompt for inputs in filled for _, prompt in inputs))
    generations = list(generate(prompts))
    if len(generations) != len(prompts):
        raise ValueError(f"generate returned {len(generations)} generations for {len(prompts)} prompts")
    answers = {prompt: "" if text is None else str(text) for prompt, text in zip(prompts, generations)}
    judged = []
    for case, inputs in zip(cases, filled):
        examples, failures = [], []
        for filling, prompt in inputs:
            failed = check_case(case, answers[prompt], filling)
            examples.append((filling, prompt, answers[prompt], not failed))
            if failed:
                failures.append("; ".join(failed) if len(inputs) == 1 else f"{_short(prompt)}: {'; '.join(failed)}")
        output = examples[0][2] if len(examples) == 1 else ""
        judged.append(_Judged(output, examples, failures, [passed for *_, passed in examples]))
    return _results(cases, judged)


def _some(cases: Sequence[TestCase]) -> list[TestCase]:
    if not cases:
        raise LifecycleError("no test cases to run: expected at least one (load_test_cases refuses an empty file)")
    return list(cases)


@functools.lru_cache(maxsize=1024)
def word_pattern(word: str) -> re.Pattern[str]:
    """A word or phrase as a whole: case-insensitive, not inside a longer word ('cat' is not in 'category'), its
    spaces matching any whitespace. Lookarounds rather than \\b, so a word ending in '+' or '.' still matches."""
    body = r"\s+".join(re.escape(part) for part in word.split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def check_case(case: TestCase, generation: str, filling: dict[str, str] | None = None) -> list[str]:
    """Each check the generation fails, as a line a reader understands; empty when it passes. The words are filled
    as the prompt was ({first_name} in a required word is the name the prompt got)."""
    filling = filling or {}
    required = [fill(word, filling) for word in case.required_words]
    forbidden = [fill(word, filling) for word in case.forbidden_words]
    failures = [f"missing required word '{w}'" for w in required if not word_pattern(w).search(generation)]
    failures += [f"holds forbidden word '{w}'" for w in forbidden if word_pattern(w).search(generation)]
    if case.regex is not None and not case.regex.search(generation):
        failures.append(f"does not match regex '{case.regex.pattern}'")
    words = len(generation.split())
    if case.max_words is not None and words > case.max_words:
        failures.append(f"{words} words, more than max_words {case.max_words}")
    return failures


def floor_checks(results: TestCaseResults, min_pass_rate: float | None, min_pass_rates: dict[str, float]):
    """The gate's lines on the pass rates, as (passed, line): each category of the file at `min_pass_rate`, and
    any category (the built-in ones too) named in `min_pass_rates` at its own floor."""
    built_in, counts = results.built_in_categories(), results.rows.groupby("category", sort=False)["passed"]
    for category, passed in counts:
        floor = min_pass_rates.get(category, None if category in built_in else min_pass_rate)
        if floor is not None:
            rate = float(passed.mean())
            yield (
                rate >= floor,
                f"test cases '{category}': pass rate {rate:.0%} ({int(passed.sum())} of {len(passed)}) vs minimum "
                f"{floor:.0%}",
            )


def check_floor_names(names: Sequence[str], suite_categories: Sequence[str], built_in: Sequence[str], path) -> None:
    """A floor on a category the suite does not have would never be judged: refused, naming the categories."""
    unknown = [name for name in names if name not in suite_categories and name not in built_in]
    if unknown:
        raise TestCaseError(
            f"test_cases.min_pass_rates: '{unknown[0]}' is no category of {path or 'the built-in tests'}; the "
            f"categories are {', '.join([*suite_categories, *built_in])}"
        )


def read_suite(cfg, labels: list[str] | None = None):
    """The config's test-case file (None without one), checked against the run: the floors of
    test_cases.min_pass_rates name its categories or the built-in ones, and a classifier's expected labels are the
    data's. Stage 1 calls it, so a mistake stops the run before training."""
    from components.evaluate.robustness import PERTURBATIONS
    from components.evaluate.test_cases import load_test_cases

    path = cfg.test_cases.path
    suite = load_test_cases(path, cfg.task) if path else None
    built_in = [f"{BUILT_IN_PREFIX}{name}" for name in PERTURBATIONS] if cfg.task == "classification" else []
    check_floor_names(list(cfg.test_cases.min_pass_rates), suite.categories() if suite else [], built_in, path)
    for case in suite.cases if suite and labels is not None else ():
        if case.label is not None and case.label not in labels:
            raise TestCaseError(
                f"{path}: case '{case.id}': field 'label': {case.label!r} is not a label of the data; expected one "
                f"of {', '.join(labels)}"
            )
    return suite


def gate_checks(cfg, test_cases, fairness=None) -> list[tuple[bool, str]]:
    """The gate's lines, as (passed, line), on the test cases' pass rates and fairness's gaps (both tasks')."""
    from components.evaluate.fairness import gap_checks

    checks = []
    if test_cases is not None:
        checks += floor_checks(test_cases, cfg.test_cases.min_pass_rate, cfg.test_cases.min_pass_rates)
    if fairness is not None:
        checks += gap_checks(fairness, cfg.fairness.max_gap)
    elif cfg.fairness.max_gap:  # a limit that cannot be judged lets nothing through
        checks.append((False, f"fairness: the test split holds no group column ({cfg.data.group_column})"))
    return checks
