"""One behavioural test case, as CheckList (Ribeiro et al., ACL 2020) has three kinds of them, and how a case's
fields are read from a test-case file (test_cases.py reads the file). Every refusal names the file, the case, the
field and what was expected, so a typo never silently drops a check.

- MFT, minimum functionality: an input and what the model must give: a label (classification), or required and
  forbidden words, a regex, a length limit (generation).
- INV, invariance: a template whose placeholders ({first_name}, {nationality}, any list) are filled from lists;
  the prediction must not change across the fillings (and, for a generator, every filling passes its checks).
- DIR, directional (classification): an edit (append, prepend, replace) that must move a label's probability one
  way."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.errors import LifecycleError

KINDS = ("MFT", "INV", "DIR")
CHECK_KEYS = ("required_words", "forbidden_words", "regex", "max_words")
EDIT_KEYS = ("append", "prepend", "replace")
INPUT_KEY = {"classification": "text", "generation": "prompt"}
CASE_KEYS = {
    "classification": ("category", "id", "kind", "text", "template", "label", "direction", "tolerance", *EDIT_KEYS),
    "generation": ("category", "id", "kind", "prompt", "template", *CHECK_KEYS),
}
PLACEHOLDER = re.compile(r"\{(\w+)\}")
BUILT_IN_PREFIX = "robustness/"  # the categories of the built-in cases (robustness.py)


class TestCaseError(LifecycleError):
    """A test-case file the user can fix: the message names the file, the line or case, the field, what was
    expected."""

    __test__ = False  # a name pytest would otherwise try to collect


@dataclass(frozen=True)
class Site:
    """Where a case sits in its file, so each refusal can say so."""

    path: Path
    where: str

    def error(self, field: str | None, message: str) -> TestCaseError:
        about = f"field '{field}': " if field else ""
        return TestCaseError(f"{self.path}: {self.where}: {about}{message}")


def fill(text: str, filling: dict[str, str]) -> str:
    """`text` with each {name} of the filling replaced by its term (other braces stay)."""
    return PLACEHOLDER.sub(lambda m: filling.get(m.group(1), m.group(0)), text)


@dataclass(frozen=True)
class Edit:
    """A directional case's change of its input: `append`/`prepend` a text (with a space between), or `replace` a
    phrase with another."""

    how: str
    new: str
    old: str = ""

    def apply(self, text: str) -> str:
        if self.how == "append":
            return f"{text} {self.new}"
        if self.how == "prepend":
            return f"{self.new} {text}"
        return text.replace(self.old, self.new)

    def filled(self, filling: dict[str, str]) -> Edit:
        """The edit with a template's {placeholders} as the filling has them."""
        return Edit(self.how, fill(self.new, filling), fill(self.old, filling))

    def __str__(self) -> str:
        return f"{self.how} {self.new!r}" if self.how != "replace" else f"replace {self.old!r} with {self.new!r}"


@dataclass(frozen=True)
class TestCase:
    """One case. `input` is a text or prompt, or a template when `template`; `variants` are the inputs of a
    built-in invariance case (the robustness perturbations), given rather than filled."""

    __test__ = False

    category: str
    id: str
    input: str
    kind: str = "MFT"
    template: bool = False
    label: str | None = None
    direction: str | None = None  # up or down (DIR)
    tolerance: float = 0.0  # how far the probability may move the wrong way and still pass (DIR)
    edits: tuple[Edit, ...] = ()
    required_words: tuple[str, ...] = ()
    forbidden_words: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = None
    max_words: int | None = None
    variants: tuple[str, ...] = ()

    def placeholders(self) -> tuple[str, ...]:
        """The lists the template fills, in order of first use."""
        return tuple(dict.fromkeys(PLACEHOLDER.findall(self.input))) if self.template else ()

    def has_checks(self) -> bool:
        return bool(self.required_words or self.forbidden_words or self.regex is not None or self.max_words)


def parse_case(raw: Any, site: Site, task: str, lists: dict, category: str | None = None) -> TestCase:
    """A case from its mapping; `category` comes from the `categories:` layout, else from the case itself."""
    if not isinstance(raw, dict):
        raise site.error(None, f"expected a mapping of a case's fields, got {kind_of(raw)}")
    keys = CASE_KEYS[task]
    unknown = [key for key in raw if key not in keys]
    if unknown:
        raise site.error(str(unknown[0]), f"unknown key for task={task}; a case takes {', '.join(keys)}")
    category = _category(raw, site, category)
    kind = str(raw.get("kind", "MFT")).upper()
    if kind not in KINDS or (kind == "DIR" and task == "generation"):
        allowed = KINDS if task == "classification" else KINDS[:2]
        raise site.error("kind", f"expected one of {', '.join(allowed)} for task={task}, got {raw['kind']!r}")
    text, template = _input(raw, site, INPUT_KEY[task], lists)
    if kind == "INV" and not template:
        raise site.error("template", "an INV case needs a template with a {list} placeholder to vary")
    found = {
        "required_words": _words(raw, "required_words", site),
        "forbidden_words": _words(raw, "forbidden_words", site),
    }
    both = sorted({w.casefold() for w in found["required_words"]} & {w.casefold() for w in found["forbidden_words"]})
    if both:
        raise site.error("forbidden_words", f"'{both[0]}' is also required, so the case could never pass")
    case = TestCase(
        category,
        _case_id(raw, site),
        text,
        kind,
        template,
        _string(raw, "label", site),
        _direction(raw, site, kind),
        _tolerance(raw, site),
        _edits(raw, site),
        regex=_regex(raw, site),
        max_words=_max_words(raw, site),
        **found,
    )
    _kind_needs(case, raw, site, task)
    _placeholders_known(case, site)
    return case


def _placeholders_known(case: TestCase, site: Site) -> None:
    """A {placeholder} in a word or an edit must be one the case's template fills, else it is looked for as
    written and the case could never pass."""
    fields = {"required_words": case.required_words, "forbidden_words": case.forbidden_words}
    for edit in case.edits:
        fields.setdefault(edit.how, ())
        fields[edit.how] += (edit.new, edit.old)
    for field, texts in fields.items():
        for text in texts:
            unknown = [name for name in PLACEHOLDER.findall(text) if name not in case.placeholders()]
            if unknown:
                filled = ", ".join(f"{{{name}}}" for name in case.placeholders()) or "none (no template)"
                raise site.error(
                    field, f"{{{unknown[0]}}} is not a placeholder of the case's template; it fills {filled}"
                )


def _kind_needs(case: TestCase, raw: dict, site: Site, task: str) -> None:
    """What each kind must have, by task."""
    if task == "generation":
        if not case.has_checks():
            raise site.error(None, f"no checks: expected at least one of {', '.join(CHECK_KEYS)}")
        return
    if case.kind != "INV" and case.label is None:
        raise site.error("label", f"a {case.kind} case needs the label it expects")
    edited = [key for key in (*EDIT_KEYS, "direction", "tolerance") if key in raw]
    if case.kind == "DIR" and not case.edits:
        raise site.error(None, f"a DIR case needs an edit: one of {', '.join(EDIT_KEYS)}")
    if case.kind != "DIR" and edited:
        raise site.error(edited[0], "only a DIR case takes an edit, a direction or a tolerance")


def _category(raw: dict, site: Site, category: str | None) -> str:
    if category is not None:
        if "category" in raw:
            raise site.error("category", "expected none here: the case's category is the key it sits under")
    else:
        category = raw.get("category")
        if not isinstance(category, str) or not category.strip():
            raise site.error("category", f"expected a non-empty string naming the case's category, got {category!r}")
    if category.startswith(BUILT_IN_PREFIX):
        raise site.error("category", f"'{category}': a name starting {BUILT_IN_PREFIX} is a built-in category's")
    return category


def _input(raw: dict, site: Site, key: str, lists: dict) -> tuple[str, bool]:
    """(the text or template, whether it is a template); a template's placeholders must name lists."""
    given = [name for name in (key, "template") if name in raw]
    if len(given) != 1:
        raise site.error(key, f"expected exactly one of '{key}' or 'template', got {len(given)}")
    value = raw[given[0]]
    if not isinstance(value, str) or not value.strip():
        raise site.error(given[0], f"expected a non-empty string, got {value!r}")
    if given[0] == key:
        return value, False
    names = PLACEHOLDER.findall(value)
    if not names:
        raise site.error("template", f"expected at least one {{list}} placeholder, got {value!r}")
    unknown = [name for name in names if name not in lists]
    if unknown:
        raise site.error(
            "template",
            f"{{{unknown[0]}}} names no list; the lists are {', '.join(sorted(lists))} (add yours under lists:)",
        )
    return value, True


def _case_id(raw: dict, site: Site) -> str:
    """The given id as a string (an integer is taken too); '' when absent, for the loader to number."""
    if "id" not in raw:
        return ""
    value = raw["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise site.error("id", f"expected a non-empty string or an integer, got {value!r}")
    return str(value).strip()


def _string(raw: dict, field: str, site: Site) -> str | None:
    if field not in raw:
        return None
    value = raw[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise site.error(field, f"expected a non-empty string, got {value!r}")
    return str(value).strip()


def _direction(raw: dict, site: Site, kind: str) -> str | None:
    if "direction" not in raw:
        if kind == "DIR":
            raise site.error("direction", "a DIR case needs direction: up or down (the label's probability)")
        return None
    if raw["direction"] not in ("up", "down"):
        raise site.error("direction", f"expected up or down, got {raw['direction']!r}")
    return raw["direction"]


def _tolerance(raw: dict, site: Site) -> float:
    value = raw.get("tolerance", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise site.error("tolerance", f"expected a probability between 0 and 1, got {value!r}")
    return float(value)


def _edits(raw: dict, site: Site) -> tuple[Edit, ...]:
    """`append`/`prepend`: a text or a list of texts, each one edit; `replace`: a mapping of phrase to phrase."""
    edits = []
    for how in ("append", "prepend"):
        if how in raw:
            value = raw[how]
            texts = [value] if isinstance(value, str) else value
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise site.error(how, f"expected a non-empty text or a list of them, got {value!r}")
            edits += [Edit(how, text.strip()) for text in texts]
    if "replace" in raw:
        value = raw["replace"]
        if not isinstance(value, dict) or not value or not all(isinstance(v, str) and k for k, v in value.items()):
            raise site.error("replace", f"expected a mapping of phrase to its replacement, got {value!r}")
        edits += [Edit("replace", new, str(old)) for old, new in value.items()]
    return tuple(edits)


def _words(raw: dict, field: str, site: Site) -> tuple[str, ...]:
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


def _regex(raw: dict, site: Site) -> re.Pattern[str] | None:
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


def _max_words(raw: dict, site: Site) -> int | None:
    if "max_words" not in raw:
        return None
    value = raw["max_words"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise site.error("max_words", f"expected a positive integer, got {value!r}")
    return value


def kind_of(value: Any) -> str:
    return "nothing" if value is None else f"a {type(value).__name__} ({value!r:.40})"
