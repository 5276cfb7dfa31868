"""Behavioural test suites for a classifier (CheckList's MFT, INV and DIR, templates filled from lists), the
counterfactual flips, Fairlearn's group fairness against a computation by hand, and the gate holding both: a failing
category blocks it by name, and the same model passes without it. A generator's cases: test_test_cases.py and
test_generation_stages.py."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components.config import ConfigError, GateConfig, LifecycleConfig
from components.evaluate.fairness import gap_checks, group_fairness, positive_labels_of
from components.evaluate.suite_case import TestCaseError
from components.evaluate.suite_runs import gate_checks, read_suite, run_classifier_cases
from components.evaluate.test_cases import load_test_cases

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["ham", "spam"]
SPAMMY = {"prize", "win", "cash", "lagos"}  # the keyword model's spam words: one city among them, a planted bias


def keyword_model(texts: list[str]) -> np.ndarray:
    """P(spam) rises with each spam word: a model whose every answer can be worked out by hand."""
    spam = np.array([min(0.2 + 0.35 * sum(w.strip(".,!?").lower() in SPAMMY for w in t.split()), 0.95) for t in texts])
    return np.stack([1 - spam, spam], axis=1)


SUITE = {
    "lists": {"drink": ["tea", "coffee"]},
    "categories": {
        "offers": [
            {"text": "Win a cash prize now", "label": "spam"},
            {"text": "Claim your reward today", "label": "spam"},  # no spam word: fails
        ],
        "places": [
            {"kind": "INV", "template": "Landed in {city}, call you later", "label": "ham"},
            {"kind": "INV", "template": "Fancy {drink} with {first_name}?"},
        ],
        "signals": [
            {
                "kind": "DIR",
                "text": "See you at lunch",
                "append": ["win a prize", "cash"],
                "label": "spam",
                "direction": "up",
            },
            {
                "kind": "DIR",
                "text": "Win cash today",
                "replace": {"cash": "lunch"},
                "label": "spam",
                "direction": "down",
            },
            {
                "kind": "DIR",
                "text": "See you at lunch",
                "replace": {"dinner": "cash"},
                "label": "spam",
                "direction": "up",
            },  # the phrase is not in the text: the edit changes nothing, which fails
        ],
    },
}


def write_suite(tmp_path: Path, suite: dict, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    return path


def test_a_classifiers_suite_loads_its_kinds_templates_lists_and_edits(tmp_path):
    suite = load_test_cases(write_suite(tmp_path, SUITE), "classification")
    assert suite.categories() == ["offers", "places", "signals"]
    kinds = [(c.id, c.kind, c.template) for c in suite.cases]
    assert kinds[:4] == [
        ("offers-1", "MFT", False),
        ("offers-2", "MFT", False),
        ("places-1", "INV", True),
        ("places-2", "INV", True),
    ]
    assert suite.cases[3].placeholders() == ("drink", "first_name")
    assert set(suite.lists) == {"city", "drink", "first_name"}  # the lists used: built-in and the file's own
    edits = [str(e) for e in suite.cases[4].edits]
    assert edits == ["append 'win a prize'", "append 'cash'"] and suite.cases[5].direction == "down"
    jsonl = tmp_path / "suite.jsonl"
    jsonl.write_text('{"lists": {"pet": ["cat", "dog"]}}\n{"category": "a", "kind": "inv", "template": "My {pet}"}\n')
    assert load_test_cases(jsonl, "classification").lists == {"pet": ("cat", "dog")}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ({"text": "hi"}, "field 'label': a MFT case needs the label it expects"),
        ({"kind": "INV", "text": "hi"}, "field 'template': an INV case needs a template"),
        ({"kind": "DIR", "text": "hi", "label": "spam", "append": "x"}, "field 'direction': a DIR case needs"),
        ({"kind": "DIR", "text": "hi", "label": "spam", "direction": "up"}, "a DIR case needs an edit"),
        ({"kind": "DIR", "text": "hi", "label": "spam", "direction": "sideways", "append": "x"}, "expected up or down"),
        ({"text": "hi", "label": "ham", "append": "x"}, "field 'append': only a DIR case takes an edit"),
        ({"template": "Hi {pet}", "label": "ham"}, "{pet} names no list; the lists are city, country"),
        ({"template": "Hi there", "label": "ham"}, "expected at least one {list} placeholder"),
        ({"text": "hi", "template": "Hi {city}", "label": "ham"}, "expected exactly one of 'text' or 'template'"),
        ({"prompt": "hi", "label": "ham"}, "field 'prompt': unknown key for task=classification"),
        ({"kind": "XYZ", "text": "hi", "label": "ham"}, "field 'kind': expected one of MFT, INV, DIR"),
        (
            {"kind": "DIR", "text": "hi", "label": "spam", "direction": "up", "append": "x", "tolerance": 2},
            "field 'tolerance': expected a probability",
        ),
    ],
)
def test_a_bad_classifier_case_is_refused_naming_the_case_and_field(tmp_path, case, expected):
    path = write_suite(tmp_path, {"categories": {"a": [case]}})
    with pytest.raises(TestCaseError) as refused:
        load_test_cases(path, "classification")
    assert str(refused.value).startswith(f"{path}: category 'a', case 1 (line 3): ") and expected in str(refused.value)


def test_a_generator_takes_no_directional_case_and_lists_must_be_lists_of_terms(tmp_path):
    directional = {"categories": {"a": [{"kind": "DIR", "prompt": "hi", "max_words": 3}]}}
    with pytest.raises(TestCaseError, match="field 'kind': expected one of MFT, INV for task=generation"):
        load_test_cases(write_suite(tmp_path, directional), "generation")
    bad_list = {"lists": {"pet": "cat"}, "categories": {"a": [{"template": "My {pet}", "label": "ham"}]}}
    with pytest.raises(TestCaseError, match="list 'pet': expected a non-empty list of non-empty strings"):
        load_test_cases(write_suite(tmp_path, bad_list), "classification")


def test_each_kind_is_judged_and_an_identity_terms_flips_are_counted(tmp_path):
    suite = load_test_cases(write_suite(tmp_path, SUITE), "classification")
    calls = []

    def predict(texts):
        calls.append(texts)
        return keyword_model(texts)

    results = run_classifier_cases(suite.cases, suite.lists, predict, LABELS, max_fillings=20, seed=0)
    assert len(calls) == 1  # every input in one batch
    rows = results.rows.set_index("id")
    assert rows["passed"].to_dict() == {
        "offers-1": True,
        "offers-2": False,
        "places-1": False,
        "places-2": True,
        "signals-1": True,
        "signals-2": True,
        "signals-3": False,
    }
    assert rows.loc["offers-1", "output"] == "spam (0.950)"
    assert rows.loc["offers-2", "failures"] == "'Claim your reward today' -> ham (0.800) (expected spam)"
    # Lagos alone of the ten cities is a spam word: one filling of ten flips, and it is the failure named
    assert rows.loc["places-1", "checked"] == 10 and rows.loc["places-1", "failed"] == 1
    assert rows.loc["places-1", "failures"] == "'Landed in Lagos, call you later' -> spam (0.550) (expected ham)"
    assert results.flip_share_by_list == pytest.approx({"city": 0.1, "drink": 0.0, "first_name": 0.0})
    assert rows.loc["places-2", "checked"] == 20  # 2 drinks x 12 names, sampled down to max_fillings
    assert "leaves 'See you at lunch' unchanged" in rows.loc["signals-3", "failures"]
    assert results.pass_rate == pytest.approx(4 / 7)
    assert results.pass_rate_by_category == pytest.approx({"offers": 0.5, "places": 0.5, "signals": 2 / 3})
    assert results.pass_rate_by_kind[("signals", "DIR")] == pytest.approx(2 / 3)
    assert results.scalars()["counterfactual_flip_share.city"] == pytest.approx(0.1)
    again = run_classifier_cases(suite.cases, suite.lists, keyword_model, LABELS, max_fillings=20, seed=0)
    pd.testing.assert_frame_equal(again.examples, results.examples)  # the sample of fillings is seeded


def test_a_directional_case_has_a_tolerance():
    from components.evaluate.suite_case import Edit, TestCase

    # an edit that lowers P(spam) by 0.35 fails an "up" case, and passes it within a tolerance of 0.5
    lowered = TestCase(
        "d", "d1", "win now", "DIR", label="spam", direction="up", edits=(Edit("replace", "now", "win"),)
    )
    strict = run_classifier_cases([lowered], {}, keyword_model, LABELS, 20, 0)
    loose = run_classifier_cases([dataclasses.replace(lowered, tolerance=0.5)], {}, keyword_model, LABELS, 20, 0)
    assert strict.rows["failures"][0] == "'win now', replace 'win' with 'now': P(spam) 0.550 -> 0.200, expected up"
    assert not strict.rows["passed"][0] and loose.rows["passed"][0]


def config(tmp_path, **sections) -> LifecycleConfig:
    return LifecycleConfig(data={"path": str(tmp_path / "texts.csv")}, **sections)


def test_floors_must_name_categories_and_labels_must_be_the_datas(tmp_path):
    path = write_suite(tmp_path, SUITE)
    typo = config(tmp_path, test_cases={"path": str(path), "min_pass_rates": {"ofers": 1.0}})
    with pytest.raises(TestCaseError, match="'ofers' is no category of .*; the categories are offers, places, signals"):
        read_suite(typo)
    built_in = config(tmp_path, test_cases={"path": str(path), "min_pass_rates": {"robustness/typos": 0.9}})
    assert read_suite(built_in).categories() == ["offers", "places", "signals"]
    with pytest.raises(TestCaseError, match="case 'offers-1': field 'label': 'spam' is not a label of the data"):
        read_suite(built_in, ["negative", "positive"])
    with pytest.raises(ValueError, match="fairness.max_gap compares the groups of data.group_column"):
        config(tmp_path, fairness={"max_gap": {"accuracy": 0.1}})


def test_the_shared_sms_suite_loads_for_a_classifier():
    suite = load_test_cases(ROOT / "configs" / "test_cases" / "sms_spam.yaml", "classification")
    assert {c.kind for c in suite.cases} == {"MFT", "INV", "DIR"} and {c.label for c in suite.cases} <= set(LABELS)
    assert {"first_name", "nationality", "religion", "city"} <= set(suite.lists)


@pytest.fixture(scope="module")
def grouped_run(tiny_run, tmp_path_factory):
    """The tiny fine-tuned BERT's data with a group column (every third test text in group c)."""
    data_dir, model_dir = tiny_run
    copy = tmp_path_factory.mktemp("grouped") / "data"
    shutil.copytree(data_dir, copy)
    for split in ("train", "val", "test"):
        rows = pd.read_parquet(copy / f"{split}.parquet")
        rows["group"] = ["c" if i % 3 == 0 else "d" for i in range(len(rows))]
        rows.to_parquet(copy / f"{split}.parquet", index=False)
    return copy, model_dir


def test_on_a_tiny_model_a_failing_category_blocks_the_gate_and_passes_without_it(grouped_run, tmp_path):
    from components.evaluate.behaviour_card import fairness_section, test_cases_section
    from components.evaluate.core import Behaviour, decide_gate, evaluate

    data_dir, model_dir = grouped_run
    suite = {
        "categories": {
            "spam_words": [
                {"text": "win free prize cash claim now", "label": "spam"},
                {"template": "{first_name} win free prize cash claim now", "label": "spam"},
            ],
            "names": [{"kind": "INV", "template": "{first_name} see you lunch tomorrow", "label": "ham"}],
            "signals": [
                {
                    "kind": "DIR",
                    "text": "see you lunch tomorrow",
                    "append": "win free prize cash claim",
                    "label": "spam",
                    "direction": "up",
                }
            ],
            "deliberately_wrong": [{"text": "see you lunch tomorrow thanks love", "label": "spam"}],
        }
    }

    def judged(suite_dict):
        cfg = config(
            tmp_path,
            test_cases={"path": str(write_suite(tmp_path, suite_dict)), "min_pass_rate": 1.0},
            fairness={"resamples": 20},
        )
        behaviour = Behaviour(read_suite(cfg), cfg.test_cases, cfg.fairness, "channel")
        found = evaluate(str(model_dir), str(data_dir), 32, 16, "cpu", "fp32", 0, 5, behaviour=behaviour)
        checks = gate_checks(cfg, found.test_cases, found.fairness)
        return found, decide_gate(found.metrics, GateConfig(min_accuracy=0.5), more=checks)

    found, gate = judged(suite)
    assert not gate.passed
    assert gate.reasons == ["test cases 'deliberately_wrong': pass rate 0% (0 of 1) vs minimum 100%"]
    rates = found.test_cases.pass_rate_by_category
    assert rates["spam_words"] == rates["names"] == rates["signals"] == 1.0
    assert any(name.startswith("robustness/") for name in rates)  # the perturbations, as built-in INV cases
    assert found.scalars()["test_case_pass_rate.deliberately_wrong"] == 0.0
    assert "| deliberately_wrong | MFT | 1 | 0% |" in test_cases_section(found.test_cases, "suite.yaml")
    assert "| first_name | " in test_cases_section(found.test_cases, "suite.yaml")  # the counterfactual flips

    del suite["categories"]["deliberately_wrong"]
    found, gate = judged(suite)
    assert gate.passed and any("test cases 'names': pass rate 100% (1 of 1)" in r for r in gate.reasons)
    # Fairness by the group column, through the same stage: the groups' accuracies and the gap between them
    by_group = found.fairness.by_group.set_index("group")
    test = pd.read_parquet(data_dir / "test.parquet")
    assert by_group["size"].to_dict() == test["group"].value_counts().to_dict()
    assert found.scalars()["fairness.accuracy.gap"] == pytest.approx(abs(by_group["accuracy"].diff().iloc[-1]))
    assert "By `channel` on the test split" in fairness_section(found.fairness)


def test_fairlearns_gaps_match_a_computation_by_hand():
    # group a: 4 texts, b: 4, tiny: 1 (below the size floor of 2, so left out)
    truth = ["spam", "spam", "ham", "ham", "spam", "ham", "ham", "ham", "spam"]
    predicted = ["spam", "ham", "ham", "spam", "spam", "spam", "spam", "ham", "ham"]
    groups = ["a", "a", "a", "a", "b", "b", "b", "b", "tiny"]
    report = group_fairness(truth, predicted, groups, "region", ["spam"], 2, 200, 0)
    assert report.left_out == ["tiny"]
    by_hand = {  # accuracy, selection rate, false positive rate, false negative rate of spam
        "a": (2 / 4, 2 / 4, 1 / 2, 1 / 2),
        "b": (2 / 4, 3 / 4, 2 / 3, 0 / 1),
    }
    rows = report.by_group.set_index("group")
    metrics = ["accuracy", "selection_rate[spam]", "false_positive_rate[spam]", "false_negative_rate[spam]"]
    for group, values in by_hand.items():
        assert rows.loc[group, metrics].tolist() == pytest.approx(list(values))
    gaps = report.gaps.set_index("metric")
    for i, metric in enumerate(metrics):
        a, b = by_hand["a"][i], by_hand["b"][i]
        assert gaps.loc[metric, "gap"] == pytest.approx(abs(a - b))
        assert gaps.loc[metric, "ratio"] == pytest.approx(min(a, b) / max(a, b) if max(a, b) else 1.0)
        low, high = gaps.loc[metric, ["gap_ci_low", "gap_ci_high"]]
        assert not low > high  # NaN where resamples of one positive text leave the rate undefined
    assert (gaps.loc["false_negative_rate[spam]", "lowest"], gaps.loc["false_negative_rate[spam]", "highest"]) == (
        "b",
        "a",
    )


def test_the_gates_fairness_limit_holds_both_ways():
    truth = ["spam", "ham"] * 10
    predicted = ["spam", "ham"] * 5 + ["ham", "ham"] * 5  # group y misses every spam: a false negative rate gap of 1
    groups = ["x"] * 10 + ["y"] * 10
    report = group_fairness(truth, predicted, groups, "region", ["spam"], 5, 50, 0)
    [(passed, line)] = gap_checks(report, {"false_negative_rate": 0.2})
    assert not passed and line.startswith("fairness false_negative_rate[spam] by region: gap 1.000 between x and y")
    [(passed, _)] = gap_checks(report, {"false_negative_rate": 1.0})
    assert passed
    assert list(gap_checks(report, {})) == []
    alone = group_fairness(truth, predicted, groups, "region", ["spam"], 11, 50, 0)  # both groups below the floor
    [(passed, line)] = gap_checks(alone, {"accuracy": 0.5})
    assert not passed and "fairness.max_gap cannot be judged" in line


def test_positive_labels_default_to_the_rarer_of_two_or_every_label():
    assert positive_labels_of(["ham", "spam"], {"ham": 600, "spam": 300}, []) == ["spam"]
    assert positive_labels_of(["a", "b", "c"], {}, []) == ["a", "b", "c"]
    assert positive_labels_of(["ham", "spam"], {}, ["ham"]) == ["ham"]


def test_positive_labels_must_be_the_datas():
    from components.evaluate.fairness import check_positive_labels

    with pytest.raises(ConfigError, match="fairness.positive_labels: 'spma' is not a label of the data"):
        check_positive_labels(["spma"], LABELS)


def test_a_list_is_charged_only_with_the_flips_its_own_terms_make(tmp_path):
    two_lists = {"categories": {"c": [{"kind": "INV", "template": "Flying from {city} with {first_name}"}]}}
    suite = load_test_cases(write_suite(tmp_path, two_lists), "classification")
    results = run_classifier_cases(suite.cases, suite.lists, keyword_model, LABELS, max_fillings=200, seed=0)
    # Lagos flips the label for each of the 12 names; no name flips it for any city
    assert results.flip_share_by_list == pytest.approx({"city": 12 / 120, "first_name": 0.0})


def test_fillings_are_the_whole_product_or_a_seeded_sample_of_it():
    from components.evaluate.suite_case import TestCase
    from components.evaluate.suite_runs import fillings

    lists = {"a": ("1", "2", "3"), "b": ("x", "y")}
    case = TestCase("c", "c1", "{a}{b}", "INV", template=True)
    every = fillings(case, lists, max_fillings=6, seed=0)
    assert [f["a"] + f["b"] for f in every] == ["1x", "1y", "2x", "2y", "3x", "3y"]
    sample = fillings(case, lists, max_fillings=4, seed=0)
    assert len({f["a"] + f["b"] for f in sample}) == 4 and all(f in every for f in sample)
    assert sample == fillings(case, lists, max_fillings=4, seed=0)


def test_a_directional_templates_edits_are_filled_as_its_text():
    from components.evaluate.suite_case import Edit, TestCase

    case = TestCase(
        "d",
        "d1",
        "{city} calling",
        "DIR",
        template=True,
        label="spam",
        direction="up",
        edits=(Edit("replace", "win cash in {city}", "{city}"),),
    )
    results = run_classifier_cases([case], {"city": ("Paris", "Oslo")}, keyword_model, LABELS, 20, 0)
    assert results.examples["input"].tolist() == ["win cash in Paris calling", "win cash in Oslo calling"]
    assert results.rows["passed"][0]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ({"prompt": "Greet Ann.", "required_words": ["{first_name}"]}, "field 'required_words': {first_name} is not a"),
        ({"template": "Greet {first_name}.", "forbidden_words": ["{city}"]}, "it fills {first_name}"),
    ],
)
def test_a_placeholder_no_template_fills_is_refused(tmp_path, case, expected):
    with pytest.raises(TestCaseError, match=expected):
        load_test_cases(write_suite(tmp_path, {"categories": {"a": [case]}}), "generation")


def test_the_built_in_categories_names_are_kept_for_them(tmp_path):
    reserved = {"categories": {"robustness/typos": [{"text": "hi", "label": "ham"}]}}
    with pytest.raises(TestCaseError, match="'robustness/typos': a name starting robustness/ is a built-in"):
        load_test_cases(write_suite(tmp_path, reserved), "classification")


def test_the_configs_floors_are_shares_and_need_what_they_hold(tmp_path):
    with pytest.raises(ValueError, match="less than or equal to 1"):
        config(tmp_path, test_cases={"path": "x.yaml", "min_pass_rates": {"a": 80}})
    with pytest.raises(ValueError, match="test_cases.min_pass_rate holds the categories of test_cases.path"):
        config(tmp_path, test_cases={"min_pass_rate": 0.9})
    with pytest.raises(ValueError, match="generation.test_cases is now test_cases.path"):
        config(tmp_path, task="generation", generation={"test_cases": "x.yaml"})


def test_a_rate_a_group_cannot_have_is_undefined_not_zero():
    # group b holds no spam: its false negative rate is undefined, and a's alone is no gap to judge
    truth = ["spam"] * 4 + ["ham"] * 4 + ["ham"] * 4
    predicted = ["spam", "spam", "ham", "ham"] + ["ham"] * 4 + ["spam"] + ["ham"] * 3
    groups = ["a"] * 8 + ["b"] * 4
    report = group_fairness(truth, predicted, groups, "region", ["spam"], 2, 50, 0)
    rows = report.by_group.set_index("group")
    assert rows.loc["a", "false_negative_rate[spam]"] == 0.5 and np.isnan(rows.loc["b", "false_negative_rate[spam]"])
    gaps = report.gaps.set_index("metric")
    assert np.isnan(gaps.loc["false_negative_rate[spam]", "gap"])
    assert gaps.loc["false_positive_rate[spam]", "gap"] == pytest.approx(0.25)  # a 0 of 4, b 1 of 4
    assert "fairness.false_negative_rate.spam.gap" not in report.scalars()
    assert report.scalars()["fairness.false_positive_rate.spam.gap"] == pytest.approx(0.25)
    [(passed, line)] = gap_checks(report, {"false_negative_rate": 0.5})
    assert not passed and "defined in fewer than two groups" in line
