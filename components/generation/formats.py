"""A generation data set's examples as users have them (TRL's prompt/completion, messages and text; Alpaca's
instruction, input and output), checked one by one and made into one form: the conversation before the response
and the response. Every problem names the file, the line and the field."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from components.config.schema_generation import GenerationConfig

ROLES = ("system", "user", "assistant")
# The fields each format reads (before generation.columns maps them), the optional ones after a |
FORMAT_FIELDS = {
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "text": ("text",),
    "alpaca": ("instruction", "output"),
}
OPTIONAL_FIELDS = {"alpaca": ("input",)}


@dataclass(frozen=True)
class Example:
    """One example in the form every later stage reads: the turns before the response (none for plain text) and the
    response, which carries the loss (the whole text, for domain fine-tuning)."""

    turns: list[dict]  # {role, content}: system?, user, assistant, ..., user
    response: str


def detect_format(columns, gen: GenerationConfig, where: str) -> str:
    """The configured format, or the first whose fields the table holds (generation.columns applied)."""
    if gen.format != "auto":
        return gen.format
    names = set(columns)
    for fmt in ("messages", "prompt_completion", "alpaca", "text"):
        if all(gen.columns.get(f, f) in names for f in FORMAT_FIELDS[fmt]):
            return fmt
    raise ExampleError(
        f"{where}: cannot tell the examples' format from the columns {sorted(map(str, names))}: expected "
        + "; ".join(f"{fmt} ({', '.join(fields)})" for fmt, fields in FORMAT_FIELDS.items())
        + ". Set generation.format, and generation.columns where the names differ"
    )


def missing_columns(columns, fmt: str, gen: GenerationConfig) -> list[str]:
    return [gen.columns.get(f, f) for f in FORMAT_FIELDS[fmt] if gen.columns.get(f, f) not in set(columns)]


class ExampleError(ValueError):
    """An example that cannot train: the message names the field and what was expected."""


def to_examples(frame: pd.DataFrame, fmt: str, gen: GenerationConfig, where: str) -> tuple[list, list[str]]:
    """(examples, problems): one Example (or None) per row, in order, and a line per row refused, naming the file,
    its line (the frame's index) and the field."""
    column = {
        f: gen.columns.get(f, f) for fields in (*FORMAT_FIELDS.values(), *OPTIONAL_FIELDS.values()) for f in fields
    }
    examples, problems = [], []
    for line, record in zip(frame.index, frame.to_dict("records")):
        try:
            example = READERS[fmt](record, column)
            if gen.system_prompt and example.turns and example.turns[0]["role"] != "system":
                example = Example([{"role": "system", "content": gen.system_prompt}, *example.turns], example.response)
            examples.append(example)
        except ExampleError as err:
            examples.append(None)
            problems.append(f"{where}: line {line}: {err}")
    return examples, problems


def _text(record: dict, field: str, column: dict, required: bool = True) -> str:
    value = record.get(column[field])
    if _missing(value):
        if required:
            raise ExampleError(f"{column[field]}: missing; expected text")
        return ""
    if not isinstance(value, str):
        raise ExampleError(f"{column[field]}: expected text, got {type(value).__name__}")
    if required and not value.strip():
        raise ExampleError(f"{column[field]}: empty; expected text")
    return value


def _missing(value) -> bool:
    return value is None or isinstance(value, float) and pd.isna(value)


def _turns(value, name: str) -> list[dict]:
    """A list of {role, content} turns: given as a list, or as JSON text (a CSV's cell)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ExampleError(f"{name}: expected a list of {{role, content}} turns (JSON), got text") from None
    if not isinstance(value, list) or not value:
        raise ExampleError(f"{name}: expected a non-empty list of {{role, content}} turns")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or set(turn) - {"role", "content"} - {"name"} or "role" not in turn:
            raise ExampleError(f"{name}[{i}]: expected {{role, content}}, got {str(turn)[:80]!r}")
        if turn["role"] not in ROLES:
            raise ExampleError(f"{name}[{i}].role: {turn['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(turn.get("content"), str):
            raise ExampleError(f"{name}[{i}].content: expected text")
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def check_role_order(turns: list[dict], name: str) -> None:
    """An optional system turn first, then user and assistant in turn, ending with the assistant's response."""
    roles = [t["role"] for t in turns]
    start = 1 if roles[0] == "system" else 0
    for i, role in enumerate(roles[start:], start=start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if role != expected:
            raise ExampleError(f"{name}[{i}].role: {role!r} where {expected!r} was expected (roles {roles})")
    if roles[-1] != "assistant":
        raise ExampleError(f"{name}: the last turn is {roles[-1]!r}; expected the assistant's response")


def _messages(record: dict, column: dict) -> Example:
    turns = _turns(record.get(column["messages"]), column["messages"])
    check_role_order(turns, column["messages"])
    if not turns[-1]["content"].strip():
        raise ExampleError(f"{column['messages']}[{len(turns) - 1}].content: the response is empty")
    return Example(turns[:-1], turns[-1]["content"])


def _prompt_completion(record: dict, column: dict) -> Example:
    prompt, completion = record.get(column["prompt"]), record.get(column["completion"])
    if isinstance(prompt, list) or isinstance(prompt, str) and prompt.lstrip().startswith("[{"):  # conversational
        turns = _turns(prompt, column["prompt"]) + _turns(completion, column["completion"])
        check_role_order(turns, f"{column['prompt']} + {column['completion']}")
        if not turns[-1]["content"].strip():
            raise ExampleError(f"{column['completion']}: the response is empty")
        return Example(turns[:-1], turns[-1]["content"])
    text = _text(record, "prompt", column)
    return Example([{"role": "user", "content": text}], _text(record, "completion", column))


def _alpaca(record: dict, column: dict) -> Example:
    instruction, given = _text(record, "instruction", column), _text(record, "input", column, required=False)
    user = f"{instruction}\n\n{given}" if given.strip() else instruction
    return Example([{"role": "user", "content": user}], _text(record, "output", column))


def _plain(record: dict, column: dict) -> Example:
    return Example([], _text(record, "text", column))


READERS = {"messages": _messages, "prompt_completion": _prompt_completion, "alpaca": _alpaca, "text": _plain}
