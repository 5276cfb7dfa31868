"""Stage 5's behavioural test cases for generation. A course exercise writes prompts with checks (words that must or
must not appear, a pattern, a length) in a YAML or JSONL file: each check is a fact about the model a reader can
follow, where ROUGE and chrF only say how near it came to one reference. Loading refuses a bad file whole, naming
the file, the line or case, the field and what was expected, so a typo never silently drops a check."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.errors import LifecycleError

CHECK_KEYS = ("required_words", "forbidden_words", "regex", "max_words")
CASE_KEYS = ("category", "id", "prompt", *CHECK_KEYS)
RESULT_COLUMNS = ["category", "id", "prompt", "generation", "passed", "failures"]
SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".jsonl": "jsonl"}


class TestCaseError(LifecycleError):
    """A test-case file the user can fix: the message names the file, the line or case, the field, what was
    expected."""

    __test__ = False  # a name pytest would otherwise try to collect


@dataclass(frozen=True)
class TestCase:
    """One prompt and its checks; `regex` is compiled when the file is loaded, so a bad pattern fails there."""

    __test__ = False

    category: str
    id: str
    prompt: str
    required_words: tuple[str, ...] = ()
    forbidden_words: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = None
    max_words: int | None = None


@dataclass
class TestCaseResults:
    """Per-case rows (category, id, prompt, generation, passed, failures) and the pass rates MLflow logs."""

    __test__ = False

    rows: pd.DataFrame
    pass_rate: float
    pass_rate_by_category: dict[str, float]

    def failures(self) -> pd.DataFrame:
        """The failing rows, for an MLflow table a reader can go through."""
        return self.rows[~self.rows["passed"]].reset_index(drop=True)


@dataclass(frozen=True)
class _Site:
    """Where a case sits in its file, so each refusal can say so."""

    path: Path
    where: str

    def error(self, field: str | None, message: str) -> TestCaseError:
        about = f"field '{field}': " if field else ""
        return TestCaseError(f"{self.path}: {self.where}: {about}{message}")


def load_test_cases(path: str | Path) -> list[TestCase]:
    """The cases of a .yaml/.yml file (`categories:` mapping names to lists of cases, or a list of cases that each
    name their `category`) or a .jsonl file (one case a line, with its `category`). Cases without an `id` get
    '<category>-<n>', n counting within the category; ids must be unique in the file."""
    path = Path(path)
    if not path.is_file():
        raise TestCaseError(f"{path}: no such test-case file")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TestCaseError(f"{path}: expected a test-case file ending in .yaml, .yml or .jsonl")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TestCaseError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    parsed = list(_yaml_cases(path, text) if kind == "yaml" else _jsonl_cases(path, text))
    if not parsed:
        raise TestCaseError(f"{path}: holds no test cases")
    cases, seen, counts = [], {}, {}
    for case, site in parsed:
        counts[case.category] = counts.get(case.category, 0) + 1
        if not case.id:
            case = dataclasses.replace(case, id=f"{case.category}-{counts[case.category]}")
        if case.id in seen:
            raise site.error("id", f"expected ids unique in the file; '{case.id}' is also at {seen[case.id]}")
        seen[case.id] = site.where
        cases.append(case)
    return cases


def _yaml_cases(path: Path, text: str) -> Iterator[tuple[TestCase, _Site]]:
    """Either YAML layout; a case's site gives its category, its 1-based index and the line it starts on."""
    data, root = _read_yaml(path, text)

    def site(label: str, *steps: str | int) -> _Site:
        line = _line(root, *steps)
        return _Site(path, label + (f" (line {line})" if line else ""))

    if isinstance(data, list):
        for index, raw in enumerate(data):
            case_site = site(f"case {index + 1}", index)
            yield _parse_case(raw, case_site), case_site
        return
    if not isinstance(data, dict):
        raise TestCaseError(f"{path}: expected a mapping with 'categories:' or a list of cases, got {_kind(data)}")
    extra = [key for key in data if key != "categories"]
    if extra:
        raise TestCaseError(f"{path}: top-level key '{extra[0]}': expected only 'categories:' (or a list of cases)")
    categories = data.get("categories")
    if not isinstance(categories, dict) or not categories:
        raise site("'categories:'", "categories").error(
            None, f"expected a mapping of category name to a list of cases, got {_kind(categories)}"
        )
    for name, raws in categories.items():
        where = site(f"category {name!r}", "categories", name)
        if not isinstance(name, str) or not name.strip():
            raise where.error(None, "expected a category name that is a non-empty string (quote it)")
        if not isinstance(raws, list) or not raws:
            raise where.error(None, f"expected a non-empty list of cases, got {_kind(raws)}")
        for index, raw in enumerate(raws):
            case_site = site(f"category '{name}', case {index + 1}", "categories", name, index)
            yield _parse_case(raw, case_site, category=name), case_site


def _read_yaml(path: Path, text: str) -> tuple[Any, Any]:
    """The document and its node tree, whose marks give each case's line."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    except yaml.YAMLError as error:
        raise TestCaseError(f"{path}: not valid YAML: {error}") from None
    finally:
        loader.dispose()


def _line(node: Any, *steps: str | int) -> int | None:
    """The 1-based line where the node reached by `steps` (mapping keys, list indices) starts; None off the tree."""
    import yaml

    for step in steps:
        if isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
        elif isinstance(node, yaml.MappingNode):
            node = next((value for key, value in reversed(node.value) if key.value == step), None)  # the last wins
        else:
            return None
    return node.start_mark.line + 1 if node is not None else None


def _jsonl_cases(path: Path, text: str) -> Iterator[tuple[TestCase, _Site]]:
    """One JSON object a line; blank lines are skipped, and the line number is each case's site."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        site = _Site(path, f"line {number}")
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            raise site.error(
                None, f"expected one JSON object, not valid JSON ({error.msg}, column {error.colno})"
            ) from None
        yield _parse_case(raw, site), site


def _parse_case(raw: Any, site: _Site, category: str | None = None) -> TestCase:
    """A case from its mapping; `category` comes from the `categories:` layout, else from the case itself."""
    if not isinstance(raw, dict):
        raise site.error(None, f"expected a mapping of a case's fields, got {_kind(raw)}")
    unknown = [key for key in raw if key not in CASE_KEYS]
    if unknown:
        raise site.error(str(unknown[0]), f"unknown key; a case takes {', '.join(CASE_KEYS)}")
    if category is None:
        category = raw.get("category")
        if not isinstance(category, str) or not category.strip():
            raise site.error("category", f"expected a non-empty string naming the case's category, got {category!r}")
    elif "category" in raw:
        raise site.error("category", "expected none here: the case's category is the key it sits under")
    if "prompt" not in raw:
        raise site.error("prompt", "missing; every case needs a non-empty string prompt")
    prompt = raw["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise site.error("prompt", f"expected a non-empty string, got {prompt!r}")
    if not any(key in raw for key in CHECK_KEYS):
        raise site.error(None, f"no checks: expected at least one of {', '.join(CHECK_KEYS)}")
    required, forbidden = _words(raw, "required_words", site), _words(raw, "forbidden_words", site)
    both = sorted({word.casefold() for word in required} & {word.casefold() for word in forbidden})
    if both:
        raise site.error("forbidden_words", f"'{both[0]}' is also required, so the case could never pass")
    return TestCase(
        category, _case_id(raw, site), prompt, required, forbidden, _regex(raw, site), _max_words(raw, site)
    )


def _case_id(raw: dict, site: _Site) -> str:
    """The given id as a string (an integer is taken too); '' when absent, for the loader to number."""
    if "id" not in raw:
        return ""
    value = raw["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise site.error("id", f"expected a non-empty string or an integer, got {value!r}")
    return str(value).strip()


def _words(raw: dict, field: str, site: _Site) -> tuple[str, ...]:
    """A list of words or phrases; a bare string is refused, since it is most often a list written wrong."""
    if field not in raw:
        return ()
    value = raw[field]
    if not isinstance(value, list) or not value:
        raise site.error(field, f"expected a non-empty list of words or phrases, got {value!r}")
    for word in value:
        if not isinstance(word, str) or not word.strip():
            raise site.error(field, f"expected each entry a non-empty string, got {word!r}")
    return tuple(word.strip() for word in value)


def _regex(raw: dict, site: _Site) -> re.Pattern[str] | None:
    """The pattern compiled now, so a bad one is refused with its file rather than mid-evaluation."""
    if "regex" not in raw:
        return None
    value = raw["regex"]
    if not isinstance(value, str) or not value:
        raise site.error("regex", f"expected a non-empty regular expression string, got {value!r}")
    try:
        return re.compile(value)
    except re.error as error:
        raise site.error("regex", f"expected a valid regular expression, {value!r} does not compile: {error}") from None


def _max_words(raw: dict, site: _Site) -> int | None:
    if "max_words" not in raw:
        return None
    value = raw["max_words"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise site.error("max_words", f"expected a positive integer, got {value!r}")
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"a {type(value).__name__} ({value!r:.40})"


@functools.lru_cache(maxsize=1024)
def word_pattern(word: str) -> re.Pattern[str]:
    """A word or phrase as a whole: case-insensitive, not inside a longer word ('cat' is not in 'category'), its
    spaces matching any whitespace. Lookarounds rather than \\b, so a word ending in '+' or '.' still matches."""
    body = r"\s+".join(re.escape(part) for part in word.split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def check_case(case: TestCase, generation: str) -> list[str]:
    """Each check the generation fails, as a line a reader understands; empty when it passes."""
    failures = [f"missing required word '{w}'" for w in case.required_words if not word_pattern(w).search(generation)]
    failures += [f"holds forbidden word '{w}'" for w in case.forbidden_words if word_pattern(w).search(generation)]
    if case.regex is not None and not case.regex.search(generation):
        failures.append(f"does not match regex '{case.regex.pattern}'")
    words = len(generation.split())
    if case.max_words is not None and words > case.max_words:
        failures.append(f"{words} words, more than max_words {case.max_words}")
    return failures


def run_test_cases(cases: Sequence[TestCase], generate: Callable[[list[str]], list[str]]) -> TestCaseResults:
    """`generate` is called once with every prompt (one batch, as stage 5 generates greedily); each generation is
    checked, and the pass rates are the shares of cases passed, overall and per category (in the file's order)."""
    cases = list(cases)
    if not cases:
        raise LifecycleError("no test cases to run: expected at least one (load_test_cases refuses an empty file)")
    generations = list(generate([case.prompt for case in cases]))
    if len(generations) != len(cases):
        raise ValueError(f"generate returned {len(generations)} generations for {len(cases)} prompts")
    rows = []
    for case, generation in zip(cases, generations):
        generation = "" if generation is None else str(generation)
        failures = check_case(case, generation)
        rows.append([case.category, case.id, case.prompt, generation, not failures, "; ".join(failures)])
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS).astype({"passed": bool})
    by_category = {str(name): float(passed.mean()) for name, passed in frame.groupby("category", sort=False)["passed"]}
    return TestCaseResults(frame, float(frame["passed"].mean()), by_category)
