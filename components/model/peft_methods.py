"""Any peft method by peft's own config (model.peft): the method's name and arguments checked against peft's config
class for it, so a mistake stops the run when the config is read, naming the key."""

from __future__ import annotations

from pydantic import ValidationError


def peft_method_config(method: str, arguments: dict, task_type: str = "SEQ_CLS"):
    """peft's config object of the method (peft's PeftType name, upper case) for sequence classification, which
    also trains and saves the head, or for a causal LM (CAUSAL_LM); a ValueError names the method, argument or
    value that peft does not take."""
    import dataclasses
    import difflib

    import peft
    from peft import PeftType, TaskType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    methods = sorted(t.value.lower() for t in PeftType)
    if method not in PeftType.__members__:
        raise ValueError(
            f"method {method.lower()!r} is not a method of peft {peft.__version__}; it has {', '.join(methods)}"
        )
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[method]]
    accepted = {f.name for f in dataclasses.fields(config_class) if f.init} - SET_BY_THE_LIFECYCLE
    for key in arguments:
        if key not in accepted:
            near = difflib.get_close_matches(key, accepted, n=3)
            raise ValueError(
                f"{key!r} is not an argument of peft's {config_class.__name__} (method "
                f"{method.lower()})"
                + (f"; did you mean {', '.join(near)}?" if near else f"; it takes {', '.join(sorted(accepted))}")
            )
    _check_types(config_class, arguments)
    try:
        return config_class(task_type=TaskType[task_type], **arguments)
    except (TypeError, ValueError) as err:
        raise ValueError(f"peft's {config_class.__name__}: {err}") from None


def _check_types(config_class, arguments: dict) -> None:
    """Each argument against the type its peft config class declares (peft's dataclasses do not check them)."""
    import typing

    from pydantic import PydanticSchemaGenerationError, TypeAdapter

    hints = typing.get_type_hints(config_class)
    for key, value in arguments.items():
        try:
            adapter = TypeAdapter(hints[key])
        except PydanticSchemaGenerationError:  # a type pydantic does not know (e.g. a torch dtype): peft checks it
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as err:
            expected = getattr(hints[key], "__name__", str(hints[key]).replace("typing.", ""))
            raise ValueError(
                f"{key}={value!r}: {err.errors()[0]['msg']} (peft's {config_class.__name__} takes {expected})"
            ) from None


# Keys of peft's configs that the lifecycle sets itself: the task (sequence classification), the base model's
# name and whether it is used for inference only.
SET_BY_THE_LIFECYCLE = {"peft_type", "task_type", "base_model_name_or_path", "inference_mode", "revision"}
