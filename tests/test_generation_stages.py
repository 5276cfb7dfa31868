"""Stages 2-5 for task=generation on tiny random decoders: training on the response tokens resumes where it was
stopped; stage 5 measures the model against its base, runs the test cases (a failing one is reported), and the gate
refuses a model worse than its base or than the champion; the whole run through `lifecycle run`."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import job_for
from test_generation_data import instructions, prepare, write

from components.config import GateConfig, LifecycleConfig, ModelConfig, TrainConfig
from components.config.schema_generation import GenerationConfig
from components.evaluate.generative import (
    GenerativeEvaluation,
    ModelOnTest,
    Placement,
    compare_with_champion,
    decide_generation_gate,
    evaluate_generator,
)
from components.evaluate.suite_runs import gate_checks
from components.evaluate.test_cases import load_test_cases
from components.generation.encoding import ResponseLosses
from components.model import core as model_stage

pytest_plugins = ["test_generation_data"]  # its chat_llama fixture


@pytest.fixture(scope="module")
def instruction_data(chat_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("instruction_data")
    prepare(write(instructions(120), root / "examples.jsonl"), chat_llama, root)
    return root / "data"


def train(base, data_dir, out, *, epochs=3, learning_rate=3e-3, strategy="full", after=None, checkpoints=None):
    from components.fine_tune.core import fine_tune

    init = out.parent / f"{out.name}-init"
    if not init.exists():
        model_stage.model(ModelConfig(base=str(base), strategy=strategy), None, 0, init)
    model_cfg = ModelConfig(strategy=strategy, max_length=120)
    train_cfg = TrainConfig(epochs=epochs, batch_size=8, learning_rate=learning_rate, early_stopping_patience=3)
    checkpoints = checkpoints or out.parent / f"{out.name}-ckpt"
    job = job_for(init, data_dir, out, checkpoints, model_cfg, train_cfg, task="generation")
    return fine_tune(job, after_epoch=after), init


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_response_loss_falls_and_an_interrupted_run_resumes_to_the_same_model(
    family, chat_llama, tiny_gpt2, tmp_path
):
    from safetensors.torch import load_file

    base = chat_llama if family == "llama" else tiny_gpt2
    root = tmp_path / "data-root"
    root.mkdir()
    short = {"prompt_template": "Q: {prompt}\nA: "}  # GPT-2 has no chat template; the tiny one's BPE is small
    prepare(write(instructions(96), root / "examples.jsonl"), base, root, max_length=120, generation=short)
    data_dir = root / "data"
    straight, _ = train(base, data_dir, tmp_path / "straight")
    history = straight.history
    assert history[-1]["val_loss"] < history[0]["val_loss"] and history[-1]["train_loss"] < history[0]["train_loss"]

    class Interrupt(Exception):
        pass

    def stop_after_epoch_two(row):
        if row["epoch"] == 2:
            raise Interrupt

    checkpoints = tmp_path / "resumed-ckpt"
    with pytest.raises(Interrupt):
        train(base, data_dir, tmp_path / "resumed", after=stop_after_epoch_two, checkpoints=checkpoints)
    resumed, _ = train(base, data_dir, tmp_path / "resumed", checkpoints=checkpoints)
    assert resumed.resumed_from_epoch == 2 and [r["epoch"] for r in resumed.history] == [1, 2, 3]
    ours, theirs = (load_file(tmp_path / name / "model.safetensors") for name in ("resumed", "straight"))
    assert all(np.allclose(ours[k].numpy(), theirs[k].numpy(), atol=1e-5) for k in theirs)


def test_lora_on_a_causal_lm_trains_adapters_and_saves_a_merged_model(instruction_data, chat_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    result, init = train(chat_llama, instruction_data, tmp_path / "lora", strategy="lora", epochs=2)
    spec = json.loads((tmp_path / "lora" / "model_spec.json").read_text())
    assert spec["strategy"] == "lora" and spec["merged_into_base"] and 0 < spec["trainable_parameters"] < 10_000
    AutoModelForCausalLM.from_pretrained(tmp_path / "lora")  # a plain causal LM folder, adapters merged
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_stage_5_measures_the_model_against_its_base_and_reports_a_failing_test_case(
    instruction_data, chat_llama, tmp_path
):
    cases = tmp_path / "cases.yaml"
    repeated = "Repeat the word red 1 times."
    cases.write_text(
        yaml.safe_dump(
            {
                "categories": {
                    "polite": [{"prompt": repeated, "forbidden_words": ["zebra"]}],
                    "impossible": [{"prompt": repeated, "required_words": ["zebra"]}],
                    "names": [
                        {"kind": "INV", "template": "Say hello to {first_name}.", "forbidden_words": ["zebra"]},
                        {"kind": "INV", "template": "Greet {gender}.", "required_words": ["{gender}"]},
                    ],
                }
            }
        )
    )
    _, init = train(chat_llama, instruction_data, tmp_path / "tuned")
    gen = GenerationConfig(eval_examples=6, max_new_tokens=6, top_losses=3)
    where = Placement("cpu", "fp32", 16, 768)
    suite = load_test_cases(cases)
    found = evaluate_generator(
        str(tmp_path / "tuned"), str(init), str(instruction_data), gen, 120, where, 0, suite=suite, max_fillings=4
    )
    metrics = found.scalars()
    assert metrics["test_perplexity"] < metrics["base_test_perplexity"]
    low, high = found.model.perplexity_interval
    assert low <= metrics["test_perplexity"] <= high
    assert {"test_rouge_l", "base_test_rouge_l", "test_chrf", "test_exact_match"} <= set(metrics)
    assert len(found.sample) == 6 and len(found.top_losses) == 3
    assert found.top_losses["loss"].is_monotonic_decreasing
    failures = found.test_cases.failures()
    assert list(failures["category"])[0] == "impossible" and "missing required word 'zebra'" in failures["failures"][0]
    assert metrics["test_case_pass_rate.impossible"] == 0.0 and metrics["test_case_pass_rate.names.INV"] <= 0.5
    # four of the twelve names filled in (max_fillings), each gender once: the generations were checked per filling
    examples = found.test_cases.examples
    assert (examples["id"] == "names-1").sum() == 4 and (examples["id"] == "names-2").sum() == 3
    assert not examples.loc[examples["id"] == "names-2", "passed"].any()  # a random model greets no one by name
    assert 0 <= metrics["counterfactual_flip_share.first_name"] <= 0.5
    cfg = LifecycleConfig(data={"path": "x"}, task="generation", test_cases={"path": str(cases), "min_pass_rate": 0.5})
    decision = decide_generation_gate(found, gen, GateConfig(), gate_checks(cfg, found.test_cases))
    assert not decision.passed and "test cases 'impossible': pass rate 0% (0 of 1) vs minimum 50%" in decision.reasons


def test_domain_text_is_measured_by_perplexity_without_generations(chat_llama, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    rows = [{"text": f"{r['instruction']} {r['output']}"} for r in instructions(60)]
    prepare(write(rows, root / "domain.jsonl"), chat_llama, root)
    _, init = train(chat_llama, root / "data", tmp_path / "tuned", epochs=1)
    gen = GenerationConfig(top_losses=2)
    found = evaluate_generator(
        str(tmp_path / "tuned"), str(init), str(root / "data"), gen, 120, Placement("cpu", "fp32", 16), 0
    )
    assert found.sample.empty and found.model.scores == {} and found.model.perplexity > 1
    assert list(found.top_losses["generation"]) == ["", ""]  # plain text has no prompt to continue from


def losses(per_example: list[float]) -> ResponseLosses:
    tokens = np.full(len(per_example), 10)
    return ResponseLosses(np.asarray(per_example) * tokens, tokens, tokens // 2)


def evaluation(model: list[float], base: list[float], champion: ResponseLosses | None = None) -> GenerativeEvaluation:
    sides = [ModelOnTest(losses(v), (0.0, 1e9), {"rouge_l": 0.5}) for v in (model, base)]
    compared = compare_with_champion(sides[0].losses, champion, "3", 0.05) if champion is not None else None
    return GenerativeEvaluation(*sides, pd.DataFrame(), None, pd.DataFrame(), compared)


def test_the_gate_refuses_a_model_worse_than_its_base_or_than_the_champion():
    rng = np.random.default_rng(0)
    good = list(1.0 + rng.random(40))
    worse = [v + 0.3 for v in good]
    assert decide_generation_gate(evaluation(good, worse), GenerationConfig(), GateConfig()).passed
    refused = decide_generation_gate(evaluation(worse, good), GenerationConfig(), GateConfig())
    assert not refused.passed and refused.reasons[0].startswith("test perplexity")
    against = evaluation(worse, [v + 1 for v in worse], champion=losses(good))
    assert against.champion.verdict == "worse" and against.champion.p_value < 0.05
    verdict = decide_generation_gate(against, GenerationConfig(), GateConfig())
    assert not verdict.passed and "Wilcoxon signed-rank" in verdict.reasons[0]
    level = evaluation(good, [v + 1 for v in good], champion=losses([v + rng.normal(0, 0.01) for v in good]))
    assert level.champion.verdict == "no significant difference"
    assert decide_generation_gate(level, GenerationConfig(), GateConfig()).passed
    assert not decide_generation_gate(level, GenerationConfig(), GateConfig(champion_rule="better")).passed
