"""Stage 6 for task=generation on a tiny random chat Llama: the fp32 export of onnxruntime-genai's model builder gives
PyTorch's greedy tokens and log-probabilities, a broken export is caught naming the prompt, the served format is
decided each way, and the bundle holds what OnnxGenerator needs and answers."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from test_generation_data import instructions, prepare, write

from components.config.schema_generation import GenerationConfig
from components.deploy.core import ParityError
from components.deploy.generation_parity import END, GreedyRun, decide_generation_parity
from components.deploy.generative_export import FormatFigures, choose_generator_format, deploy_generator
from components.evaluate.test_cases import load_test_cases

pytest_plugins = ["test_generation_data"]  # its chat_llama fixture


@pytest.fixture(scope="module")
def generation(chat_llama, tmp_path_factory):
    """(data dir, generation section, test cases) for the tiny Llama."""
    root = tmp_path_factory.mktemp("generation_deploy")
    cases = root / "cases.yaml"
    cases.write_text(yaml.safe_dump([{"category": "polite", "prompt": "Say hello.", "forbidden_words": ["zebra"]}]))
    cfg, _ = prepare(write(instructions(60), root / "examples.jsonl"), chat_llama, root)
    return root / "data", GenerationConfig(max_new_tokens=8), load_test_cases(cases)


@pytest.fixture(scope="module")
def deployed(chat_llama, generation, tmp_path_factory):
    out = tmp_path_factory.mktemp("deployed")
    data_dir, gen, suite = generation
    report = deploy_generator(str(chat_llama), str(data_dir), str(out), gen, 120, reference_size=20, suite=suite)
    return out, report


@pytest.mark.slow
def test_the_fp32_export_gives_pytorchs_greedy_tokens_and_a_quantized_build_is_served_when_it_holds(deployed):
    out, report = deployed
    assert report.parity_passed and 0 < report.parity_prompts <= 16 and report.parity_tokens > 0
    assert report.max_abs_logprob_diff < 1e-3 and "ONNX parity passed" in report.reason
    assert set(report.formats) >= {"fp32", "int4"} and report.served == choose_generator_format(report.formats).value
    fp32 = report.formats["fp32"]
    assert fp32.pass_rate == 1.0 and fp32.size_mb > report.formats["int4"].size_mb and fp32.tokens_per_second > 0
    written = json.loads((out / "deployment.json").read_text())
    assert written["served"] == report.served and "fp32_perplexity" in written and "int4_size_mb" in written
    assert sorted(p.name for p in out.iterdir()) == ["bundle", "deployment.json"]  # the unserved exports went


@pytest.mark.slow
def test_the_bundle_holds_what_the_generator_needs_and_answers(deployed, generation):
    from components.deploy.onnx_generator import OnnxGenerator, Sampling

    bundle = deployed[0] / "bundle"
    names = {p.name for p in bundle.iterdir()}
    needed = {"model.onnx", "genai_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    assert needed | {"prompt_format.json", "reference.parquet", "deployment.json"} <= names
    assert json.loads((bundle / "prompt_format.json").read_text())["max_new_tokens"] == 8
    reference = pd.read_parquet(bundle / "reference.parquet")
    assert len(reference) == 20 and {"text", "response", "response_cut"} <= set(reference.columns)
    assert reference["text"].str.startswith("Repeat the word").all()
    generator = OnnxGenerator(bundle)
    try:
        (done,) = generator.complete([[{"role": "user", "content": "Repeat the word red."}]], Sampling(max_tokens=5))
    finally:
        generator.close()
    assert done.finish_reason in ("stop", "length") and 0 < done.completion_tokens <= 5


@pytest.mark.slow
def test_a_broken_export_is_caught_naming_the_prompt(chat_llama, generation, tmp_path, monkeypatch):
    from components.deploy import generative_export

    built = generative_export.build_export

    def broken(model_dir, folder, precision, gen):
        folder = built(model_dir, folder, precision, gen)
        weights = np.fromfile(folder / "model.onnx.data", dtype=np.float32)
        weights *= 1.05  # every weight 5% off: what a wrong cast or a bad quantization would do
        weights.tofile(folder / "model.onnx.data")
        return folder

    monkeypatch.setattr(generative_export, "build_export", broken)
    data_dir, gen, _ = generation
    with pytest.raises(ParityError, match=r"ONNX parity failed on the test prompt 'Repeat the word \w+"):
        deploy_generator(str(chat_llama), str(data_dir), str(tmp_path), gen, 120)
    assert not json.loads((tmp_path / "deployment.json").read_text())["parity_passed"]


class Tokens:
    def decode(self, ids):
        return "".join(chr(97 + i) for i in ids)


def run(torch_tokens, onnx_tokens, shift=0.0, served=(1, 2)):
    logprobs = -np.arange(1, len(torch_tokens) + 1, dtype=float)
    return GreedyRun("Name a colour.", [1, 2], list(served), torch_tokens, onnx_tokens, logprobs, logprobs + shift)


def test_parity_names_the_prompt_and_the_first_differing_token():
    assert decide_generation_parity([run([3, 4, 5], [3, 4, 5], shift=5e-4)], Tokens()).value
    failed = decide_generation_parity([run([3, 4, 5], [3, 4, 5]), run([3, 4, 5], [3, 6, 5])], Tokens())
    assert not failed.value and "'Name a colour.'" in failed.reason
    assert "greedy token 2 is 6 ('g') where PyTorch's is 4 ('e')" in failed.reason
    shorter = decide_generation_parity([run([3, 4, 5], [3, 4])], Tokens())
    assert "greedy token 3 is no token (the length limit) where PyTorch's is 5" in shorter.reason
    ended = decide_generation_parity([run([3, 4, END], [3, 4, 5])], Tokens())
    assert "greedy token 3 is 5 ('f') where PyTorch's is the end of the response" in ended.reason
    drifted = decide_generation_parity([run([3, 4], [3, 4], shift=2e-3)], Tokens())
    assert not drifted.value and "differs from PyTorch's by 2.00e-03 (allowed 1e-03)" in drifted.reason
    rendered = decide_generation_parity([run([3], [3], served=(1, 9))], Tokens())
    assert not rendered.value and "renders it to other tokens than training did" in rendered.reason


def figures(perplexity, pass_rate=None, cases=100):
    return FormatFigures(1.0, perplexity, pass_rate, 1.0, cases if pass_rate is not None else 0)


def test_a_quantized_build_is_served_only_within_the_perplexity_and_pass_rate_tolerances():
    assert choose_generator_format({"fp32": figures(2.0, 0.8), "int4": figures(2.08, 0.76)}).value == "int4"
    worse = choose_generator_format({"fp32": figures(2.0, 0.8), "int4": figures(2.2, 0.8)})
    assert worse.value == "fp32" and "int4 test perplexity 2.200 vs fp32 2.000 (1.100x)" in worse.reason
    cases = choose_generator_format({"fp32": figures(2.0, 0.8), "int4": figures(2.0, 0.7)})
    assert cases.value == "fp32" and "test cases 70% vs 80%" in cases.reason
    int8 = choose_generator_format({"fp32": figures(2.0), "int4": figures(2.5), "int8": figures(2.01)})
    assert int8.value == "int8" and "so int8 is served" in int8.reason
    # Of 16 cases one weighs 6.25 points: one case fewer is within the tolerance, two are not.
    one = choose_generator_format({"fp32": figures(2.0, 10 / 16, 16), "int8": figures(2.0, 9 / 16, 16)})
    two = choose_generator_format({"fp32": figures(2.0, 10 / 16, 16), "int8": figures(2.0, 8 / 16, 16)})
    assert one.value == "int8" and two.value == "fp32"


@pytest.mark.slow
def test_the_bundle_is_registered_as_a_pyfunc_with_its_card_and_answers_prompts(
    deployed, chat_llama, tmp_path, monkeypatch
):
    import mlflow

    from components.config.schema_serving import RolloutConfig
    from components.deploy.generator_adapter import deployment_card
    from components.registry import CHAMPION, challenger, publish_generator_champion, register_generator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("writer")  # not the experiment an earlier test left active, which this store lacks
    (tmp_path / "prompt_format.json").write_text(json.dumps({"max_new_tokens": 8}))
    out, report = deployed
    with mlflow.start_run():
        source = challenger(
            "writer",
            register_generator("writer", str(chat_llama), str(tmp_path / "prompt_format.json"), 8, "# card", {}, True),
        )
        card = deployment_card(source.description, report)
        version, demoted, rollout = publish_generator_champion(
            source, str(out / "bundle"), card, {"format": f"onnx-{report.served}"}, 8, RolloutConfig(mode="canary")
        )
    assert (version, demoted, rollout) == ("2", None, "direct")  # the first champion goes direct
    registered = mlflow.MlflowClient().get_model_version("writer", version)
    assert registered.tags["format"] == f"onnx-{report.served}" and registered.tags["source_version"] == "1"
    assert registered.tags["task"] == "generation" and "## Deployment" in registered.description
    model = mlflow.pyfunc.load_model(f"models:/writer@{CHAMPION}")
    answered = model.predict(pd.DataFrame({"prompt": ["Repeat the word red."]}), params={"max_new_tokens": 3})
    assert list(answered.columns) == ["generation"] and len(answered) == 1
