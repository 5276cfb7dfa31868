"""Stage 1 for task=generation: every format users have (TRL's prompt/completion, messages and text; Alpaca's) in
JSONL, JSON, Parquet and CSV is read and checked, and each kind of bad example is refused by file, line and field;
the loss mask puts the loss on exactly the response tokens."""

import json
import shutil

import pandas as pd
import pytest

from components.config import LifecycleConfig
from components.data.validation import DataValidationError
from components.tasks import task_of

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = "red green blue amber violet cyan olive coral ivory teal plum gold".split()


def instructions(n: int = 60) -> list[dict]:
    """Alpaca-style examples with distinct instructions."""
    return [
        {
            "instruction": f"Repeat the word {WORDS[i % 12]} {i // 12 + 1} times.",
            "input": "" if i % 3 else "now",
            "output": " ".join([WORDS[i % 12]] * (i // 12 + 1)),
        }
        for i in range(n)
    ]


def as_format(rows: list[dict], fmt: str) -> list[dict]:
    user = [r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "") for r in rows]
    if fmt == "alpaca":
        return rows
    if fmt == "prompt_completion":
        return [{"prompt": u, "completion": r["output"]} for u, r in zip(user, rows)]
    if fmt == "messages":
        return [
            {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": r["output"]}]}
            for u, r in zip(user, rows)
        ]
    return [{"text": f"{u} {r['output']}"} for u, r in zip(user, rows)]


def write(rows: list[dict], path) -> str:
    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.assign(**{c: frame[c].map(json.dumps) for c in frame if c == "messages"}).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def chat_llama(tiny_decoders, tmp_path_factory):
    """The tiny Llama with a ChatML chat template and its turn markers as special tokens, as SmolLM2-Instruct has; a
    head size of 16, the least that onnxruntime's attention on the CPU takes (stage 6 exports it)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("chat_llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_decoders["llama"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    heads = {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16}
    config = AutoConfig.from_pretrained(tiny_decoders["llama"], **heads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.save_pretrained(folder)
    return folder


def prepare(path, base, tmp_path, *, max_length=120, **sections):
    cfg = LifecycleConfig(
        task="generation",
        work_dir=str(tmp_path / "work"),
        data={"path": str(path), "pii": "off", **sections.pop("data", {})},
        model={"base": str(base), "max_length": max_length},
        **sections,
    )
    return cfg, task_of("generation").prepare_data(cfg, tmp_path / "data")


@pytest.mark.parametrize("fmt", ["alpaca", "prompt_completion", "messages", "text"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_each_format_is_read_from_each_kind_of_file(fmt, suffix, chat_llama, tmp_path):
    path = write(as_format(instructions(), fmt), tmp_path / f"examples{suffix}")
    _, manifest = prepare(path, chat_llama, tmp_path)
    counts = {split: c["examples"] for split, c in manifest.counts.items()}
    assert sum(counts.values()) == 60 and all(counts.values())
    train = pd.read_parquet(tmp_path / "data" / "train.parquet")
    row = train.iloc[0]
    if fmt == "text":  # domain text: no prompt but the beginning of the sequence; every token trains
        assert row["prompt"] in ("", "<|endoftext|>") and row["response"].startswith("Repeat the word")
    else:
        assert row["prompt"].startswith("<|im_start|>user\nRepeat the word")
        assert row["prompt"].endswith("<|im_start|>assistant\n") and row["response"].split()[0] in WORDS


def test_columns_are_mapped_and_a_model_without_a_chat_template_gets_the_prompt_template(tiny_gpt2, tmp_path):
    rows = [{"question": r["instruction"], "answer": r["output"]} for r in instructions()]
    generation = {"format": "prompt_completion", "columns": {"prompt": "question", "completion": "answer"}}
    path = write(rows, tmp_path / "qa.jsonl")
    _, manifest = prepare(path, tiny_gpt2, tmp_path, max_length=400, generation=generation)
    row = pd.read_parquet(tmp_path / "data" / "train.parquet").iloc[0]
    assert "### Instruction:\nRepeat the word" in row["prompt"] and row["prompt"].endswith("### Response:\n")


@pytest.mark.parametrize(
    "fmt, damage, expected",
    [
        ("alpaca", lambda r: r.update(output="  "), "line 4: output: empty; expected text"),
        ("alpaca", lambda r: r.pop("output"), "line 4: output: missing; expected text"),
        ("prompt_completion", lambda r: r.update(completion=None), "line 4: completion: missing"),
        ("messages", lambda r: r["messages"].reverse(), "line 4: messages[0].role: 'assistant' where 'user'"),
        ("messages", lambda r: r["messages"][0].update(role="robot"), "line 4: messages[0].role: 'robot' is not"),
        ("messages", lambda r: r["messages"].pop(), "line 4: messages: the last turn is 'user'"),
        ("messages", lambda r: r.update(messages="hello"), "line 4: messages: expected a list of {role, content}"),
        ("messages", lambda r: r["messages"][1].update(content=""), "line 4: messages[1].content: the response is"),
    ],
)
def test_each_kind_of_bad_example_is_refused_by_file_line_and_field(fmt, damage, expected, chat_llama, tmp_path):
    rows = as_format(instructions(), fmt)
    damage(rows[3])
    path = write(rows, tmp_path / "examples.jsonl")
    with pytest.raises(DataValidationError) as refused:
        prepare(path, chat_llama, tmp_path)
    assert f"{path}: {expected}" in str(refused.value)
    assert "1 of 60 examples" in str(refused.value)


def test_a_missing_column_names_the_format_and_generation_columns(chat_llama, tmp_path):
    path = write([{"question": "q", "completion": "a"}] * 5, tmp_path / "examples.jsonl")
    with pytest.raises(DataValidationError, match=r"format prompt_completion needs the column\(s\) \['prompt'\]"):
        prepare(path, chat_llama, tmp_path, generation={"format": "prompt_completion"})


def test_a_chat_template_that_does_not_render_is_refused_by_line(chat_llama, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_llama)
    tokenizer.chat_template = (
        "{% if 'forbidden' in messages[0]['content'] %}{{ raise_exception('no') }}{% endif %}" + CHATML
    )
    strict = tmp_path / "strict"
    shutil.copytree(chat_llama, strict)
    tokenizer.save_pretrained(strict)
    rows = instructions()
    rows[7]["instruction"] = "A forbidden instruction."  # the 8th object of the array starts on line 37
    with pytest.raises(DataValidationError, match=r"examples.json: line 37: the chat template does not render: no"):
        prepare(write(rows, tmp_path / "examples.json"), strict, tmp_path)


def test_too_many_truncated_examples_and_a_prompt_past_max_length_are_refused(chat_llama, tmp_path):
    rows = instructions()
    rows[5]["instruction"] = "Repeat " + "this very long instruction " * 12
    path = write(rows, tmp_path / "examples.jsonl")
    with pytest.raises(DataValidationError) as refused:
        prepare(path, chat_llama, tmp_path, max_length=40)
    message = str(refused.value)
    assert "so no response token would train" in message and f"{path}: line 6" in message
    assert "generation.max_truncated_share allows 5.0%: raise model.max_length" in message
    _, manifest = prepare(path, chat_llama, tmp_path, max_length=400)  # long enough: it trains
    assert sum(c["examples"] for c in manifest.counts.values()) == 60


def test_duplicates_go_and_every_example_of_a_prompt_stays_in_one_split(chat_llama, tmp_path):
    rows = instructions()
    rows += [dict(rows[0]), {**rows[1], "output": "another answer"}, {**rows[2], "output": "a third answer"}]
    _, manifest = prepare(write(rows, tmp_path / "examples.jsonl"), chat_llama, tmp_path)
    assert manifest.dropped_duplicates == 1
    splits = {s: pd.read_parquet(tmp_path / "data" / f"{s}.parquet") for s in ("train", "val", "test")}
    homes = pd.concat([frame.assign(split=s) for s, frame in splits.items()]).groupby("text")["split"].nunique()
    assert homes.max() == 1 and sum(len(f) for f in splits.values()) == 62


def test_a_prompt_in_two_given_splits_is_leakage(chat_llama, tmp_path):
    rows = instructions()
    train, test = write(rows[:40], tmp_path / "train.jsonl"), write(rows[39:], tmp_path / "test.jsonl")
    with pytest.raises(DataValidationError, match="leakage"):
        prepare(None, chat_llama, tmp_path, data={"path": None, "train_path": train, "test_path": test})
    _, manifest = prepare(
        None, chat_llama, tmp_path, data={"path": None, "train_path": train, "test_path": test, "on_leakage": "drop"}
    )
    assert manifest.dropped_leaking_texts == {"test": 1}


def test_exactly_the_response_tokens_carry_the_loss(chat_llama):
    """The gradient of the batch's loss reaches the logits only at the positions that predict a response token or
    the end of the sequence; with train_on_prompt the prompt's positions too."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.generation.encoding import encode_examples, response_loss
    from components.text_batches import collate

    tokenizer = AutoTokenizer.from_pretrained(chat_llama)
    model = AutoModelForCausalLM.from_pretrained(chat_llama)
    prompts = ["<|im_start|>user\nRepeat red<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>user\nHi<|im_end|>\n"]
    responses = ["red red", "hello there"]
    for train_on_prompt in (False, True):
        encoded = encode_examples(tokenizer, prompts, responses, 64, train_on_prompt)
        batch = collate(encoded.split, [0, 1], tokenizer.eos_token_id, "cpu")
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100
        )
        loss.backward()
        reached = logits.grad.abs().sum(-1) > 0
        # what stage 4 trains on (the head at response positions only) and transformers' own loss: the same
        assert response_loss(model, batch).item() == pytest.approx(loss.item(), rel=1e-5)
        assert model(**batch).loss.item() == pytest.approx(loss.item(), rel=1e-5)
        for row in range(2):
            prompt_len = len(tokenizer(prompts[row], add_special_tokens=False)["input_ids"])
            full = encoded.full_tokens[row]
            first = 0 if train_on_prompt else prompt_len - 1  # position t predicts token t + 1
            assert reached[row].nonzero().flatten().tolist() == list(range(first, full - 1))
            ids = batch["input_ids"][row, :full].tolist()
            assert ids[-1] == tokenizer.eos_token_id
            assert tokenizer.decode(ids[prompt_len:-1]) == responses[row]


def test_a_mistake_in_the_test_cases_stops_stage_1_before_any_training(chat_llama, tmp_path):
    from components.evaluate.suite_case import TestCaseError

    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"category": "facts", "prompt": "Capital of France?", "required_word": ["Paris"]}\n')
    path = write(instructions(), tmp_path / "examples.jsonl")
    with pytest.raises(TestCaseError, match="cases.jsonl: line 1"):
        prepare(path, chat_llama, tmp_path, test_cases={"path": str(cases)})


def test_personal_data_is_redacted_in_each_turn_and_the_prompt_is_rendered_from_the_redacted_turns(
    chat_llama, tmp_path
):
    rows = instructions()
    rows[2]["input"] = "Write to:\njohn.doe@example.com\nabout the meeting"
    _, manifest = prepare(write(rows, tmp_path / "examples.jsonl"), chat_llama, tmp_path, data={"pii": "redact"})
    splits = pd.concat(pd.read_parquet(tmp_path / "data" / f"{s}.parquet") for s in ("train", "val", "test"))
    redacted = splits[splits["turns"].str.contains("EMAIL_ADDRESS")]
    assert len(redacted) == 1 and sum(manifest.pii_texts.values()) == 1
    turns = json.loads(redacted["turns"].iloc[0])  # still JSON: each turn's content was redacted, not the JSON text
    assert turns[0]["content"].endswith("Write to:\n<EMAIL_ADDRESS>\nabout the meeting")
    assert "<EMAIL_ADDRESS>" in redacted["prompt"].iloc[0] and "john.doe" not in redacted["prompt"].iloc[0]


def test_given_splits_too_small_for_a_validation_split_are_refused(chat_llama, tmp_path):
    rows = instructions()
    train, test = write(rows[:4], tmp_path / "train.jsonl"), write(rows[10:20], tmp_path / "test.jsonl")
    with pytest.raises(DataValidationError, match="the val split is empty"):
        prepare(None, chat_llama, tmp_path, data={"path": None, "train_path": train, "test_path": test})
