"""Stage 6 for task=generation: export the fine-tuned causal LM with onnxruntime-genai's model builder, prove the fp32
export answers as the PyTorch model does (generation_parity.py), serve a quantized build when it costs no
measurable quality, and assemble the bundle that is registered and served with its drift reference.

Formats: int4 first, the smallest; int8 only when int4 is refused, since it is three times int4's size; fp32 when
both are. Measured on the bundled SmolLM2-135M-Instruct (its instruction test split and test cases, 2 busy CPU
cores): fp32 515 MB, perplexity 3.598, 31 tokens/s; int4 83 MB, 4.646 (1.29x), half fp32's test-case pass rate, 62
tokens/s; int8 255 MB, 3.651 (1.015x), fp32's pass rate, 63 tokens/s: int8 is served. That is where int8 helps."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from components.config.schema_generation import GenerationConfig
from components.decision import Decision
from components.deploy.core import ParityError
from components.errors import LifecycleError, RunFailure
from components.handoff import DEPLOYMENT, REFERENCE, bundle_dir, read_split, write_json
from components.pii import LogPii

QUANTIZED = ("int4", "int8")  # tried in this order; the first within the tolerances is served
MAX_PERPLEXITY_RATIO = 1.05  # a quantized build's test response perplexity at most 5% above fp32's
MAX_PASS_RATE_DROP = 0.05  # and its test-case pass rate at most 5 points below fp32's
PARITY_PROMPTS, PARITY_MAX_TOKENS = 16, 32  # a seeded sample of test prompts, greedy up to this many tokens each
# Each reference prompt needs a generated response (seconds each on a CPU); a few hundred give Evidently's tests
# enough rows for the prompts' and responses' features, where a classifier's reference costs one forward pass a text.
MAX_REFERENCE = 200
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


@dataclass
class FormatFigures:
    """One export measured on the test split."""

    size_mb: float
    perplexity: float  # of the test responses' tokens, teacher-forced
    pass_rate: float | None  # of the test cases (test_cases.path); None without them
    tokens_per_second: float  # greedy, the parity prompts all at once through the engine
    cases: int = 0  # how many test cases the pass rate is of


@dataclass
class GeneratorDeploymentReport:
    parity_prompts: int
    parity_tokens: int
    max_abs_logprob_diff: float  # fp32 export vs PyTorch, over the parity prompts' greedy tokens
    parity_passed: bool
    reason: str  # parity's, or the served format's
    formats: dict[str, FormatFigures] = field(default_factory=dict)
    served: str | None = None  # int4, int8 or fp32
    reference_size: int = 0
    reference_pii: str = "redact"

    def to_dict(self) -> dict:
        """Flat: the figures as <format>_<figure> (MLflow metrics, KFP metadata)."""
        flat = {k: v for k, v in asdict(self).items() if k != "formats"}
        return flat | {f"{name}_{k}": v for name, f in self.formats.items() for k, v in asdict(f).items()}


def deploy_generator(
    model_dir: str,
    data_dir: str,
    out_dir: str,
    gen: GenerationConfig,
    max_length: int,
    seed: int = 0,
    reference_size: int = 1000,
    max_tokens: int = 256,
    log_pii: LogPii | None = None,
    suite=None,
    max_fillings: int = 20,
) -> GeneratorDeploymentReport:
    """Stage 6 up to the registry: out_dir/bundle holds the export to serve, its rendering (prompt_format.json) and
    its drift reference; out_dir/deployment.json the report. `max_tokens`: serve.max_tokens, the longest of the
    reference's responses, as the server cuts a response whose request names none. Raises ParityError when the fp32
    export does not answer as the PyTorch model does. `suite`: the test cases (test_cases.TestSuite) each build is
    measured on."""
    from components.generation.encoding import encode_examples
    from components.model.loading import load_tokenizer

    out, bundle = Path(out_dir), bundle_dir(out_dir)
    test = read_split(data_dir, "test")
    prompted = [i for i, turns in enumerate(test["turns"]) if turns != "[]"]
    sample = test.iloc[sorted(random.Random(seed).sample(prompted, min(PARITY_PROMPTS, len(prompted))))]
    messages = [json.loads(t) for t in sample["turns"]]
    encoded = encode_examples(load_tokenizer(model_dir), test["prompt"].tolist(), test["response"].tolist(), max_length)
    fp32 = build_export(model_dir, out / "onnx-fp32", "fp32", gen)
    figures, completions = measure(fp32, messages, encoded.split, gen, suite, max_fillings, seed)
    report = _parity(model_dir, fp32, sample, completions)
    if not report.parity_passed:
        write_json(out, DEPLOYMENT, report.to_dict())
        raise ParityError(report.reason)
    report.formats["fp32"] = figures
    for precision in QUANTIZED:
        folder = build_export(model_dir, out / f"onnx-{precision}", precision, gen)
        report.formats[precision] = measure(folder, messages, encoded.split, gen, suite, max_fillings, seed)[0]
        choice = choose_generator_format(report.formats)
        if choice.value != "fp32":
            break
    report.served, report.reason = choice.value, f"{report.reason}; {choice.reason}"
    if bundle.exists():
        shutil.rmtree(bundle)
    (out / f"onnx-{report.served}").rename(bundle)
    for precision in report.formats:  # measured and reported; the builder makes them again in seconds
        shutil.rmtree(out / f"onnx-{precision}", ignore_errors=True)
    train, log_pii = read_split(data_dir, "train"), log_pii or LogPii()
    reference = drift_reference(bundle, train, min(reference_size, MAX_REFERENCE), seed, max_tokens, log_pii)
    reference.to_parquet(bundle / REFERENCE, index=False)
    report.reference_size, report.reference_pii = len(reference), log_pii.form
    write_json(out, DEPLOYMENT, report.to_dict())
    shutil.copy(out / DEPLOYMENT, bundle / DEPLOYMENT)
    return report


def build_export(model_dir: str, folder: Path, precision: str, gen: GenerationConfig) -> Path:
    """The model builder's CPU export of `precision` in `folder`, with the fine-tuned model's tokenizer files and its
    rendering beside it: what OnnxGenerator loads."""
    from components.deploy.onnx_generator import PROMPT_FORMAT
    from components.evaluate.generative_adapter import RENDERING

    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(folder)]
    done = subprocess.run([*command, "-p", precision, "-e", "cpu"], capture_output=True, text=True)
    if done.returncode != 0 or not (folder / "genai_config.json").is_file():
        raise RunFailure(
            f"onnxruntime-genai's model builder could not export {model_dir} ({precision}, cpu); it said:\n"
            + "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        )
    head_size = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    if head_size % 16:
        raise LifecycleError(
            f"{model_dir}/config.json: a head size of {head_size} (hidden_size / num_attention_heads, or head_dim); "
            "onnxruntime's attention on the CPU (GroupQueryAttention) takes multiples of 16, so this model cannot be "
            "served: fine-tune a base whose head size is one"
        )
    for name in TOKENIZER_FILES:  # the tokenizer training used (the builder's copies differ in their settings)
        if (Path(model_dir) / name).is_file():
            shutil.copy(Path(model_dir) / name, folder / name)
    write_json(folder, PROMPT_FORMAT, gen.model_dump(include=set(RENDERING)))
    return folder


def measure(
    folder: Path, messages: list[list[dict]], split, gen: GenerationConfig, suite=None, max_fillings=20, seed=0
):
    """(FormatFigures, the greedy Completions of `messages`) of one export, the test cases (a TestSuite) run on it
    when there are some."""
    import math

    from components.deploy.generation_parity import OnnxScorer, response_losses
    from components.deploy.onnx_generator import OnnxGenerator, Sampling

    generator = OnnxGenerator(folder)
    try:
        start = time.perf_counter()
        completions = generator.complete(messages, Sampling(PARITY_MAX_TOKENS))
        seconds = time.perf_counter() - start
        pass_rate, count = _pass_rate(generator, gen, suite, max_fillings, seed) if suite else (None, 0)
    finally:
        generator.close()
    failed = [c for c in completions if c.finish_reason == "error"]
    if failed:
        raise RunFailure(
            f"the {folder.name} export failed to generate for {len(failed)} test prompts (its log says why)"
        )
    size = sum(f.stat().st_size for f in folder.glob("model.onnx*")) / 2**20
    perplexity = math.exp(response_losses(OnnxScorer(folder), split).mean_loss())
    speed = sum(c.completion_tokens for c in completions) / max(seconds, 1e-9)
    return FormatFigures(round(size, 2), perplexity, pass_rate, round(speed, 1), count), completions


def _pass_rate(generator, gen: GenerationConfig, suite, max_fillings: int, seed: int) -> tuple[float, int]:
    """(the test cases' pass rate, how many cases), their prompts generated for as stage 5 does (greedy,
    generation.max_new_tokens)."""
    from components.deploy.onnx_generator import Sampling
    from components.evaluate.suite_runs import run_generator_cases

    def generate(prompts: list[str]) -> list[str]:
        asked = [[{"role": "user", "content": p}] for p in prompts]
        return [c.text.strip() for c in generator.complete(asked, Sampling(gen.max_new_tokens))]

    results = run_generator_cases(suite.cases, suite.lists, generate, max_fillings, seed)
    return results.pass_rate, len(results.rows)


def _parity(model_dir: str, folder: Path, sample: pd.DataFrame, completions) -> GeneratorDeploymentReport:
    """The fp32 export's greedy tokens and their log-probabilities against PyTorch's, on the sampled test prompts."""
    from components.deploy import generation_parity as parity
    from components.deploy.onnx_generator import BundlePrompts
    from components.model.loading import load_model

    model, tokenizer = load_model(model_dir, None)
    model.eval()
    scorer, served = parity.OnnxScorer(folder), BundlePrompts(folder)  # its rendering, not a second model
    served_ids = [served.ids(json.loads(t)) for t in sample["turns"]]
    runs = []
    for text, prompt, ids, done in zip(sample["text"], sample["prompt"], served_ids, completions):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        made = parity.torch_greedy(model, tokenizer, prompt_ids, PARITY_MAX_TOKENS)  # with its end-of-sequence token
        ended = made[-1:] == [tokenizer.eos_token_id]
        run = parity.GreedyRun(
            text,
            prompt_ids,
            ids,
            made[:-1] + [parity.END] if ended else made,
            done.token_ids + [parity.END] if done.finish_reason == "stop" else done.token_ids,
        )
        whole, start = prompt_ids + made, len(prompt_ids)
        run.torch_logprobs = parity.token_logprobs(parity.torch_log_probabilities(model, whole), start, made)
        run.onnx_logprobs = parity.token_logprobs(scorer.log_probabilities(whole), start, made)
        runs.append(run)
    verdict = parity.decide_generation_parity(runs, tokenizer)
    return GeneratorDeploymentReport(
        len(runs),
        sum(len(r.torch_tokens) for r in runs),
        parity.largest_logprob_difference(runs),
        verdict.value,
        verdict.reason,
    )


def choose_generator_format(
    formats: dict[str, FormatFigures], max_ratio: float = MAX_PERPLEXITY_RATIO, max_drop: float = MAX_PASS_RATE_DROP
) -> Decision[str]:
    """The first quantized build (QUANTIZED's order) whose test perplexity is at most `max_ratio` times fp32's and
    whose test-case pass rate is at most `max_drop` below fp32's, or one case below where one case weighs more (of
    16 cases, one is 6.25 points: a tolerance under one case would let no greedy token change); else fp32."""
    fp32, said = formats["fp32"], []
    for name in (q for q in QUANTIZED if q in formats):
        it = formats[name]
        ratio = it.perplexity / fp32.perplexity
        drop = (fp32.pass_rate - it.pass_rate) if fp32.pass_rate is not None and it.pass_rate is not None else 0.0
        keeps = ratio <= max_ratio and drop <= max(max_drop, 1 / fp32.cases if fp32.cases else 0) + 1e-9
        cases = f", test cases {it.pass_rate:.0%} vs {fp32.pass_rate:.0%}" if it.pass_rate is not None else ""
        said.append(f"{name} test perplexity {it.perplexity:.3f} vs fp32 {fp32.perplexity:.3f} ({ratio:.3f}x){cases}")
        if keeps:
            return Decision(name, f"{'; '.join(said)}: within {max_ratio:g}x and {max_drop:.0%}, so {name} is served")
    return Decision("fp32", f"{'; '.join(said)}: beyond {max_ratio:g}x or {max_drop:.0%}, so fp32 is served")


def drift_reference(
    bundle: Path, train: pd.DataFrame, size: int, seed: int, max_tokens: int, log_pii: LogPii
) -> pd.DataFrame:
    """A seeded sample of training prompts and the served model's own greedy responses to them, both in the
    prediction log's form, profiled as stage 7 profiles served traffic."""
    from components.deploy.onnx_generator import OnnxGenerator, Sampling
    from monitoring.generation_drift import profile_generations

    rows = train.sample(min(size, len(train)), random_state=seed)
    # Domain text has no prompt: its texts stand for what users of such a model send.
    asked = [json.loads(t) or [{"role": "user", "content": x}] for t, x in zip(rows["turns"], rows["text"])]
    generator = OnnxGenerator(bundle)
    try:
        done = generator.complete(asked, Sampling(max_tokens))
    finally:
        generator.close()
    form = log_pii.drift_form()  # one key for prompts and responses
    frame = pd.DataFrame(
        {
            "text": form(rows["text"].tolist()),
            "response": form([c.text for c in done]),
            "finish_reason": [c.finish_reason for c in done],
        }
    )
    return profile_generations(frame)
