"""The generation task's section (`generation`): how examples are laid out and rendered, what carries the loss, what
stage 5 generates and checks, and its gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.config.section import Section

# The prompt of the instruction fine-tuning chapter this project follows (Alpaca's), for a model without a chat
# template: {prompt} is the user's turn (an Alpaca example's instruction, a blank line and its input).
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{prompt}\n\n### Response:\n"
)


class GenerationConfig(Section):
    """task=generation: instruction fine-tuning (prompt and response, chat messages, Alpaca's instruction, input and
    output) or domain fine-tuning (plain text) of a causal LM, the loss on the response tokens."""

    format: Literal["auto", "prompt_completion", "messages", "text", "alpaca"] = "auto"
    """How an example is laid out, as TRL and Alpaca name them. prompt_completion: `prompt` and `completion`;
    messages: `messages`, a list of {role, content} turns (system, user, assistant) ending with the assistant's;
    text: `text` for domain fine-tuning (every token trains); alpaca: `instruction`, `input` (may be empty) and
    `output`. auto: by the columns the data holds."""
    columns: dict[str, str] = {}
    """The data's column for a field of the format where the names differ, e.g. {prompt: question, completion:
    answer}. Empty: the format's own names."""
    chat_template: bool = True
    """Render examples with the tokenizer's chat template where it has one; false, or a tokenizer without one: the
    prompt_template."""
    prompt_template: str = ALPACA_TEMPLATE
    """The prompt of a model without a chat template, holding {prompt}: the user's turn (earlier turns of a chat,
    each as `role: content`, come before it). The response follows it, then the end-of-sequence token."""
    system_prompt: str | None = None
    """A system turn put before every example that has none (with the prompt template, a `system: ...` line before
    it). None: none, though a chat template may add its own (SmolLM2's does)."""
    train_on_prompt: bool = False
    """Whether the prompt's tokens carry the loss too; false: the response's tokens only (and the end-of-sequence
    token after it)."""
    max_truncated_share: float = Field(0.05, ge=0, le=1)
    """The largest share (0..1) of examples that may be cut at model.max_length; more fails the data checks (raise
    model.max_length). An example with no response token left is refused always."""
    eval_examples: int | None = Field(50, ge=1)
    """Stage 5 generates for a seeded sample of this many test prompts (and the base model for the same); the losses
    and perplexity cover every test example. None: every test prompt."""
    max_new_tokens: int = Field(96, ge=1)
    """The most tokens stage 5 generates per prompt (greedy decoding)."""
    beat_base_model: bool = True
    """The gate: the test perplexity must be below the base model's on the same test examples."""
    top_losses: int = Field(20, ge=1)
    """The test examples with the highest loss shown as a table (prompt, reference, generation)."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw):
        """The test cases were a key of this section until they served both tasks."""
        moved = {"test_cases": "test_cases.path", "min_test_case_pass_rate": "test_cases.min_pass_rate"}
        for old, new in moved.items():
            if isinstance(raw, dict) and old in raw:
                raise ValueError(f"generation.{old} is now {new} (the test cases serve both tasks)")
        return raw

    @field_validator("prompt_template")
    @classmethod
    def _holds_prompt(cls, template: str) -> str:
        if "{prompt}" not in template:
            raise ValueError("the template must hold {prompt}, where the user's turn goes")
        try:
            template.format(prompt="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"only {{prompt}} may be in braces (double other braces: {{{{ }}}}); {err}") from None
        return template

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, columns: dict[str, str]) -> dict[str, str]:
        fields = {"prompt", "completion", "messages", "text", "instruction", "input", "output"}
        unknown = sorted(set(columns) - fields)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not a field of any format; the fields are {', '.join(sorted(fields))}"
            )
        return columns
