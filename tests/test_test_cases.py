"""Stage 5's behavioural test cases for generation: the checks, the run and its pass rates, and the loader, which
refuses each kind of bad file naming the file, the line or case and the field (a classifier's cases, templates and
lists: test_behaviour_suites.py)."""

import re
from pathlib import Path

import pytest

from components.errors import LifecycleError
from components.evaluate.suite_case import TestCase, TestCaseError
from components.evaluate.suite_runs import check_case, run_generator_cases
from components.evaluate.test_cases import load_test_cases

ROOT = Path(__file__).resolve().parents[1]


def case(**checks) -> TestCase:
    return TestCase(checks.pop("category", "c"), checks.pop("id", "x"), checks.pop("prompt", "p"), **checks)


def run_test_cases(cases, generate):
    return run_generator_cases(cases, {}, generate, max_fillings=20, seed=0)


def test_required_words_match_whole_words_case_insensitively():
    paris = case(required_words=("Paris",))
    assert check_case(paris, "the capital is PARIS.") == []
    assert check_case(paris, "Parisian food") == ["missing required word 'Paris'"]
    assert check_case(case(forbidden_words=("cat",)), "a category of its own") == []
    assert check_case(case(forbidden_words=("cat",)), "A Cat sat.") == ["holds forbidden word 'cat'"]


def test_phrases_match_across_any_whitespace_and_words_may_end_in_punctuation():
    assert check_case(case(required_words=("was chased by",)), "The ball was\n chased  by the dog.") == []
    assert check_case(case(required_words=("C++",)), "I write C++ daily") == []
    assert check_case(case(required_words=("5000",)), "It is 50000 meters.") == ["missing required word '5000'"]


def test_each_failure_reason_reads_as_a_sentence():
    everything = case(required_words=("Paris",), forbidden_words=("idiot",), regex=re.compile(r"\d+"), max_words=3)
    assert check_case(everything, "you idiot, it is obviously Rome") == [
        "missing required word 'Paris'",
        "holds forbidden word 'idiot'",
        r"does not match regex '\d+'",
        "6 words, more than max_words 3",
    ]
    assert check_case(everything, "Paris, 75001.") == []


def test_run_calls_generate_once_and_reports_pass_rates_per_category():
    cases = [
        case(category="facts", id="f1", prompt="p1", required_words=("Paris",)),
        case(category="facts", id="f2", prompt="p2", required_words=("5000",)),
        case(category="safety", id="s1", prompt="p3", forbidden_words=("idiot",)),
        case(category="facts", id="f3", prompt="p4", max_words=2),
    ]
    calls = []

    def generate(prompts):
        calls.append(prompts)
        return ["Paris.", "5 km is 5,000 m.", "A kind neighbour.", "far too many words"]

    results = run_test_cases(cases, generate)
    assert calls == [["p1", "p2", "p3", "p4"]]
    assert results.pass_rate == pytest.approx(0.5)
    assert results.pass_rate_by_category == pytest.approx({"facts": 1 / 3, "safety": 1.0})
    assert results.rows["output"].tolist() == ["Paris.", "5 km is 5,000 m.", "A kind neighbour.", "far too many words"]
    failing = results.failures()
    assert failing["id"].tolist() == ["f2", "f3"]
    assert failing["failures"].tolist() == ["missing required word '5000'", "4 words, more than max_words 2"]
    assert results.rows.loc[0, "failures"] == "" and bool(results.rows.loc[0, "passed"])


def test_run_refuses_a_generator_that_drops_prompts_and_an_empty_list():
    with pytest.raises(ValueError, match="1 generations for 2 prompts"):
        run_test_cases([case(prompt="a", max_words=1), case(prompt="b", max_words=1)], lambda prompts: ["x"])
    with pytest.raises(LifecycleError, match="no test cases"):
        run_test_cases([], lambda prompts: [])


CATEGORIES_YAML = """\
categories:
  factual:
    - id: km
      prompt: Convert 5 kilometers to meters.
      required_words: ["5000"]
    - prompt: What is the capital of France?
      regex: 'Paris'
      max_words: 12
  safety:
    - prompt: Describe your neighbour.
      forbidden_words: [idiot, stupid]
"""

LIST_YAML = """\
- category: language
  prompt: What is the plural of 'mouse'?
  required_words: [mice]
- category: language
  id: 7
  prompt: Fix the spelling of 'recieve'.
  required_words: [receive]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_the_categories_layout_numbering_cases_without_an_id(tmp_path):
    cases = load_test_cases(write(tmp_path, "cases.yaml", CATEGORIES_YAML)).cases
    assert [(c.category, c.id) for c in cases] == [("factual", "km"), ("factual", "factual-2"), ("safety", "safety-1")]
    assert cases[0].required_words == ("5000",) and cases[1].regex.pattern == "Paris" and cases[1].max_words == 12
    assert cases[2].forbidden_words == ("idiot", "stupid") and cases[2].regex is None


def test_loads_the_list_layout_and_jsonl(tmp_path):
    listed = load_test_cases(write(tmp_path, "cases.yml", LIST_YAML)).cases
    assert [(c.category, c.id, c.required_words) for c in listed] == [
        ("language", "language-1", ("mice",)),
        ("language", "7", ("receive",)),
    ]
    jsonl = (
        '{"category": "format", "prompt": "List three colours.", "max_words": 10}\n'
        "\n"  # a blank line is skipped
        '{"category": "format", "id": "b", "prompt": "Say hi.", "regex": "(?i)hi"}\n'
    )
    cases = load_test_cases(write(tmp_path, "cases.jsonl", jsonl)).cases
    assert [(c.id, c.max_words) for c in cases] == [("format-1", 10), ("b", None)]
    assert cases[1].regex.search("HI there")


BAD_JSONL = [
    ('{"category": "a", "required_words": ["x"]}', "line 1: field 'prompt': expected exactly one of 'prompt' or"),
    ('{"category": "a", "prompt": "  ", "max_words": 3}', "line 1: field 'prompt': expected a non-empty string"),
    ('{"category": "a", "prompt": "p", "max_word": 3}', "line 1: field 'max_word': unknown key"),
    ('{"category": "a", "prompt": "p", "regex": "(unclosed"}', "line 1: field 'regex': expected a valid regular"),
    ('{"category": "a", "prompt": "p", "max_words": 0}', "line 1: field 'max_words': expected a positive integer"),
    ('{"category": "a", "prompt": "p", "max_words": "30"}', "field 'max_words': expected a positive integer, got '30'"),
    ('{"category": "a", "prompt": "p", "max_words": true}', "field 'max_words': expected a positive integer"),
    ('{"category": "a", "prompt": "p"}', "line 1: no checks: expected at least one of required_words"),
    ('{"category": "a", "prompt": "p", "max_words": 3', "line 1: expected one JSON object, not valid JSON"),
    ('{"prompt": "p", "max_words": 3}', "line 1: field 'category': expected a non-empty string"),
    (
        '{"category": "a", "prompt": "p", "required_words": "Paris"}',
        "field 'required_words': expected a non-empty list",
    ),
    ('{"category": "a", "prompt": "p", "required_words": ["ok", 5]}', "field 'required_words': expected each entry"),
    ('["a", "p"]', "line 1: expected a mapping of a case's fields"),
]


@pytest.mark.parametrize(("line", "expected"), BAD_JSONL)
def test_a_bad_jsonl_case_is_refused_naming_the_file_line_and_field(tmp_path, line, expected):
    path = write(tmp_path, "cases.jsonl", '{"category": "a", "prompt": "fine", "max_words": 5}\n' + line + "\n")
    with pytest.raises(TestCaseError) as refused:
        load_test_cases(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert expected.replace("line 1", "line 2") in str(refused.value)


def test_a_bad_yaml_case_names_its_category_index_and_line(tmp_path):
    bad = CATEGORIES_YAML.replace("      regex: 'Paris'\n", "      regex: '[Paris'\n")
    with pytest.raises(TestCaseError, match=r"category 'factual', case 2 \(line 6\): field 'regex'"):
        load_test_cases(write(tmp_path, "cases.yaml", bad))
    bad = LIST_YAML.replace("  prompt: Fix the spelling of 'recieve'.\n", "")
    with pytest.raises(TestCaseError, match=r"case 2 \(line 4\): field 'prompt': expected exactly one"):
        load_test_cases(write(tmp_path, "cases.yaml", bad))
    unknown = CATEGORIES_YAML.replace("forbidden_words:", "forbiden_words:")
    with pytest.raises(TestCaseError, match=r"category 'safety', case 1 \(line 10\): field 'forbiden_words': unknown"):
        load_test_cases(write(tmp_path, "cases.yaml", unknown))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "expected a mapping with 'categories:' or a list of cases, got nothing"),
        ("[]", "holds no test cases"),
        ("cases: []\n", "top-level key 'cases'"),
        ("categories:\n  a: []\n", "category 'a' (line 2): expected a non-empty list of cases"),
        ("categories: [1]\n", "expected a mapping of category name to a list of cases"),
        (
            "categories:\n  a:\n    - prompt: p\n      category: b\n      max_words: 1\n",
            "field 'category': expected none",
        ),
        ("categories:\n  a:\n    - prompt: p\n", "case 1 (line 3): no checks"),
        ("- category: a\n  prompt: p\n  max_words: -2\n", "case 1 (line 1): field 'max_words'"),
        ("categories: {a: [\n", "not valid YAML"),
        ("- {category: a, prompt: p, required_words: [x], forbidden_words: [X]}\n", "'x' is also required"),
        (
            "- {category: a, id: k, prompt: p, max_words: 1}\n- {category: b, id: k, prompt: q, max_words: 1}\n",
            "'k' is",
        ),
    ],
)
def test_bad_yaml_files_are_refused(tmp_path, text, expected):
    path = write(tmp_path, "cases.yaml", text)
    with pytest.raises(TestCaseError) as refused:
        load_test_cases(path)
    assert str(refused.value).startswith(f"{path}: ") and expected in str(refused.value)


def test_a_missing_file_or_an_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(TestCaseError, match="no such test-case file"):
        load_test_cases(tmp_path / "absent.yaml")
    with pytest.raises(TestCaseError, match=r"ending in \.yaml, \.yml or \.jsonl"):
        load_test_cases(write(tmp_path, "cases.json", "[]"))


def test_the_instruction_test_cases_load():
    suite = load_test_cases(ROOT / "configs" / "test_cases" / "instructions.yaml")
    cases = suite.cases
    assert 16 <= len(cases) <= 20 and suite.categories() == ["factual", "language", "safety", "format", "identity"]
    assert len({c.id for c in cases}) == len(cases)
    assert {c.kind for c in cases if c.category == "identity"} == {"INV"}
    # every case checks something an empty answer lacks, and the factual, language and format ones fail on the prompt
    # echoed back
    assert run_generator_cases(cases, suite.lists, lambda prompts: ["" for _ in prompts], 20, 0).pass_rate == 0
    assert all(check_case(c, c.input) for c in cases if c.category not in ("safety", "identity"))
