"""Stage 5's test-case file, one format for both tasks (a case's kinds and fields: suite_case.py). YAML, with
`categories:` mapping names to lists of cases and optional `lists:` of terms for templates, or a list of cases that
each name their `category`; or JSONL, one case a line, where a line holding only `lists` gives the lists. Loading
refuses a bad file whole, naming the file, the line or case, the field and what was expected."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.evaluate.identity_terms import BUILT_IN_LISTS
from components.evaluate.suite_case import PLACEHOLDER, Site, TestCase, TestCaseError, kind_of, parse_case

SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".jsonl": "jsonl"}


@dataclass(frozen=True)
class TestSuite:
    """A file's cases, and the lists its templates fill from (the built-in ones, and the file's own by name)."""

    __test__ = False

    cases: tuple[TestCase, ...]
    lists: dict[str, tuple[str, ...]]

    def categories(self) -> list[str]:
        return list(dict.fromkeys(case.category for case in self.cases))


# A raw case: its mapping, where it sits, and its category when the layout gives it.
Entry = tuple[Any, Site, str | None]


def load_test_cases(path: str | Path, task: str = "generation") -> TestSuite:
    """The file's cases for the task. Cases without an `id` get '<category>-<n>', n counting within the category;
    ids must be unique in the file."""
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
    own, entries = _yaml_entries(path, text) if kind == "yaml" else _jsonl_entries(path, text)
    if not entries:
        raise TestCaseError(f"{path}: holds no test cases")
    lists = dict(BUILT_IN_LISTS) | own
    cases, seen, counts = [], {}, {}
    for raw, site, category in entries:
        case = parse_case(raw, site, task, lists, category)
        counts[case.category] = counts.get(case.category, 0) + 1
        if not case.id:
            case = dataclasses.replace(case, id=f"{case.category}-{counts[case.category]}")
        if case.id in seen:
            raise site.error("id", f"expected ids unique in the file; '{case.id}' is also at {seen[case.id]}")
        seen[case.id] = site.where
        cases.append(case)
    used = {name for case in cases for name in case.placeholders()}
    return TestSuite(tuple(cases), {name: terms for name, terms in lists.items() if name in used})


def _lists(value: Any, site: Site) -> dict[str, tuple[str, ...]]:
    """`lists:`, a mapping of a name (letters, digits, _) to a non-empty list of terms."""
    if not isinstance(value, dict) or not value:
        raise site.error("lists", f"expected a mapping of list name to a list of terms, got {kind_of(value)}")
    found = {}
    for name, terms in value.items():
        if not isinstance(name, str) or not PLACEHOLDER.fullmatch(f"{{{name}}}"):
            raise site.error("lists", f"list name {name!r}: expected letters, digits and _ only")
        if not isinstance(terms, list) or not terms or not all(isinstance(t, str) and t.strip() for t in terms):
            raise site.error(
                "lists", f"list '{name}': expected a non-empty list of non-empty strings, got {terms!r:.60}"
            )
        found[name] = tuple(term.strip() for term in terms)
    return found


def _yaml_entries(path: Path, text: str) -> tuple[dict, list[Entry]]:
    """Either YAML layout; a case's site gives its category, its 1-based index and the line it starts on."""
    data, root = _read_yaml(path, text)

    def site(label: str, *steps: str | int) -> Site:
        line = _line(root, *steps)
        return Site(path, label + (f" (line {line})" if line else ""))

    if isinstance(data, list):
        return {}, [(raw, site(f"case {index + 1}", index), None) for index, raw in enumerate(data)]
    if not isinstance(data, dict):
        raise TestCaseError(f"{path}: expected a mapping with 'categories:' or a list of cases, got {kind_of(data)}")
    extra = [key for key in data if key not in ("categories", "lists")]
    if extra:
        raise TestCaseError(
            f"{path}: top-level key '{extra[0]}': expected only 'categories:' and 'lists:' (or a list of cases)"
        )
    lists = _lists(data["lists"], site("'lists:'", "lists")) if "lists" in data else {}
    categories = data.get("categories")
    if not isinstance(categories, dict) or not categories:
        raise site("'categories:'", "categories").error(
            None, f"expected a mapping of category name to a list of cases, got {kind_of(categories)}"
        )
    entries = []
    for name, raws in categories.items():
        where = site(f"category {name!r}", "categories", name)
        if not isinstance(name, str) or not name.strip():
            raise where.error(None, "expected a category name that is a non-empty string (quote it)")
        if not isinstance(raws, list) or not raws:
            raise where.error(None, f"expected a non-empty list of cases, got {kind_of(raws)}")
        for index, raw in enumerate(raws):
            entries.append((raw, site(f"category '{name}', case {index + 1}", "categories", name, index), name))
    return lists, entries


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


def _jsonl_entries(path: Path, text: str) -> tuple[dict, list[Entry]]:
    """One JSON object a line; blank lines are skipped, and the line number is each case's site."""
    lists, entries = {}, []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        site = Site(path, f"line {number}")
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            raise site.error(
                None, f"expected one JSON object, not valid JSON ({error.msg}, column {error.colno})"
            ) from None
        if isinstance(raw, dict) and list(raw) == ["lists"]:
            lists |= _lists(raw["lists"], site)
        else:
            entries.append((raw, site, None))
    return lists, entries
