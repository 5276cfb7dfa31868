"""Stage 5 for task=generation: the response tokens' cross-entropy and perplexity on the test split with bootstrap
intervals, beside the base model's on the same examples; greedy generations for a seeded sample of test prompts
scored against their references (generated_text.py); the test cases (test_cases.py); the examples with the highest
loss; a paired test against the champion; and the gate."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.config import GateConfig
from components.config.schema_generation import GenerationConfig
from components.evaluate.core import GateDecision, metric_name
from components.generation.encoding import (
    ResponseLosses,
    encode_examples,
    generate,
    render_user_prompt,
    response_losses,
)

log = logging.getLogger(__name__)


@dataclass
class ModelOnTest:
    """One model (the fine-tuned, the base or the champion) on the test split."""

    losses: ResponseLosses
    perplexity_interval: tuple[float, float]
    scores: dict[str, float] = field(default_factory=dict)  # exact_match, rouge_l, chrf over the sampled prompts
    generations: list[str] = field(default_factory=list)  # for the sampled prompts

    @property
    def loss(self) -> float:
        return self.losses.mean_loss()

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


@dataclass
class ChampionComparison:
    """The challenger against the champion on the same test examples: per-example response losses, Wilcoxon's
    signed-rank test."""

    champion_version: str
    champion_perplexity: float
    challenger_lower: int  # examples where the challenger's loss is lower
    champion_lower: int
    p_value: float  # two-sided
    verdict: str  # better, worse or no significant difference


@dataclass
class GenerativeEvaluation:
    model: ModelOnTest
    base: ModelOnTest
    sample: pd.DataFrame  # prompt, reference, generation, base_generation and the scores
    test_cases: object | None  # suite_runs.TestCaseResults
    top_losses: pd.DataFrame  # prompt, reference, generation, loss
    champion: ChampionComparison | None

    def scalars(self) -> dict[str, float]:
        found = {}
        for prefix, side in (("test", self.model), ("base_test", self.base)):
            found |= {
                f"{prefix}_loss": side.loss,
                f"{prefix}_perplexity": side.perplexity,
                f"{prefix}_perplexity_ci_low": side.perplexity_interval[0],
                f"{prefix}_perplexity_ci_high": side.perplexity_interval[1],
                f"{prefix}_token_accuracy": side.losses.accuracy(),
            } | {f"{prefix}_{name}": value for name, value in side.scores.items()}
        if self.test_cases is not None:
            found |= {metric_name(name): value for name, value in self.test_cases.scalars().items()}
        if self.champion:
            found |= {
                "champion_test_perplexity": self.champion.champion_perplexity,
                "champion_wilcoxon_p_value": self.champion.p_value,
            }
        return found

    def tables(self) -> dict[str, pd.DataFrame]:
        tables = {"generations": self.sample, "highest_loss": self.top_losses}
        if self.test_cases is not None:
            tables |= {
                "test_cases": self.test_cases.rows,
                "test_case_failures": self.test_cases.failures(),
                "test_case_examples": self.test_cases.examples,
            }
        return tables


def evaluate_generator(
    model_dir: str,
    base_dir: str,
    data_dir: str,
    gen: GenerationConfig,
    max_length: int,
    where: Placement,
    seed: int,
    champion: tuple[str, str] | None = None,
    significance: float = 0.05,
    suite=None,
    max_fillings: int = 20,
) -> GenerativeEvaluation:
    """Stage 5's findings for a causal LM: the fine-tuned model and the base (stage 2's) on the test split, the test
    cases, the highest losses and, given (version, folder) of the champion, the paired test against it. One model is
    loaded at a time. Only examples with a prompt are generated for (plain text has none to continue from)."""
    import random

    from components.handoff import read_split

    test = read_split(data_dir, "test")
    prompted = [i for i, turns in enumerate(test["turns"]) if turns != "[]"]
    count = len(prompted) if gen.eval_examples is None else min(gen.eval_examples, len(prompted))
    sample = sorted(random.Random(seed).sample(prompted, count))
    with Generator(base_dir, where) as base_model:
        base = on_test(base_model, test, sample, gen, max_length, seed, "base")
    with Generator(model_dir, where) as tuned:
        model = on_test(tuned, test, sample, gen, max_length, seed, "fine-tuned")
        cases = run_cases(tuned, gen, suite, max_fillings, seed) if suite else None
        top = highest_losses(tuned, test, model, gen, set(prompted))
    compared = None
    if champion:
        with Generator(champion[1], where) as theirs:
            losses = theirs.losses(test["prompt"].tolist(), test["response"].tolist(), max_length)
        compared = compare_with_champion(model.losses, losses, champion[0], significance)
    shown = pd.DataFrame(
        {
            "prompt": test["text"].iloc[sample].tolist(),
            "reference": test["response"].iloc[sample].tolist(),
            "generation": model.generations,
            "base_generation": base.generations,
        }
    )
    return GenerativeEvaluation(model, base, shown, cases, top, compared)


def run_cases(tuned: Generator, gen: GenerationConfig, suite, max_fillings: int, seed: int):
    """The test cases' prompts rendered as training rendered its examples, generated for and checked."""
    from components.evaluate.suite_runs import run_generator_cases

    def generate(prompts: list[str]) -> list[str]:
        rendered = [render_user_prompt(p, tuned.tokenizer, gen) for p in prompts]
        return tuned.generate(rendered, gen.max_new_tokens, "generating (test cases)")

    return run_generator_cases(suite.cases, suite.lists, generate, max_fillings, seed)


def highest_losses(
    tuned: Generator, test: pd.DataFrame, model: ModelOnTest, gen: GenerationConfig, prompted: set[int]
) -> pd.DataFrame:
    """The test examples with the highest response loss: prompt, reference, the model's generation (none for plain
    text), loss."""
    per_example = model.losses.per_example()
    top = [int(i) for i in np.argsort(-per_example, kind="stable")[: gen.top_losses]]
    asked = [i for i in top if i in prompted]
    made = tuned.generate(test["prompt"].iloc[asked].tolist(), gen.max_new_tokens, "generating (highest loss)")
    generations = dict(zip(asked, made))
    return pd.DataFrame(
        {
            "prompt": test["text"].iloc[top].tolist(),
            "reference": test["response"].iloc[top].tolist(),
            "generation": [generations.get(i, "") for i in top],
            "loss": per_example[top].round(4),
        }
    )


def perplexity_interval(losses: ResponseLosses, seed: int, resamples: int = 1000, level: float = 0.95):
    """Percentile bootstrap interval of the perplexity (examples resampled with replacement, seeded; each resample's
    loss per token over its examples' tokens, as the whole split's)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(losses.tokens), size=(resamples, len(losses.tokens)))
    per_resample = losses.loss_sums[picks].sum(1) / np.maximum(losses.tokens[picks].sum(1), 1)
    low, high = np.percentile(np.exp(per_resample), [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


@dataclass(frozen=True)
class Placement:
    """Where stage 5 runs its models, as stage 3 found (device, precision) and the train section sets (batches)."""

    device: str
    precision: str
    batch_size: int  # examples per batch of losses
    max_tokens: int | None = None  # padded tokens per batch at most (train.max_batch_tokens)


GENERATION_BATCH = 8  # prompts generated for at once: each holds a key-value cache of its own


class Generator:
    """A causal LM from a folder, on the device: its response losses on encoded examples and its greedy
    generations. A context manager: leaving it frees the model (stage 5 holds one at a time)."""

    def __init__(self, folder: str, where: Placement):
        from components.model.loading import load_model

        model, self.tokenizer = load_model(folder, None)
        self.model, self.where = model.to(where.device).eval(), where

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc) -> None:
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def losses(self, prompts: list[str], responses: list[str], max_length: int) -> ResponseLosses:
        where = self.where
        split = encode_examples(self.tokenizer, prompts, responses, max_length).split
        pad = self.tokenizer.pad_token_id
        return response_losses(
            self.model, split, where.batch_size, pad, where.device, where.precision, where.max_tokens
        )

    def generate(self, prompts: list[str], max_new_tokens: int, what: str) -> list[str]:
        from components.stage_output import Progress

        progress = Progress(len(prompts), what, log)
        return generate(
            self.model, self.tokenizer, prompts, max_new_tokens, GENERATION_BATCH, self.where.device, progress
        )


def on_test(
    generator: Generator, test: pd.DataFrame, sample: list[int], gen: GenerationConfig, max_length: int, seed: int, who
) -> ModelOnTest:
    """A model's losses on every test example and its generations for the sampled ones, scored."""
    from components.evaluate.generated_text import mean_scores, text_scores

    losses = generator.losses(test["prompt"].tolist(), test["response"].tolist(), max_length)
    prompts = test["prompt"].iloc[sample].tolist()
    generations = generator.generate(prompts, gen.max_new_tokens, f"generating ({who})")
    scores = mean_scores(text_scores(generations, test["response"].iloc[sample].tolist())) if sample else {}
    return ModelOnTest(losses, perplexity_interval(losses, seed), scores, generations)


def compare_with_champion(
    challenger: ResponseLosses, champion: ResponseLosses, version: str, significance: float
) -> ChampionComparison:
    """Wilcoxon's signed-rank test on the per-example losses of the same test examples (ties dropped)."""
    from scipy.stats import rankdata, wilcoxon

    differences = challenger.per_example() - champion.per_example()
    changed = differences[differences != 0]
    p_value = float(wilcoxon(changed).pvalue) if len(changed) else 1.0
    ranks = rankdata(np.abs(changed))
    # The direction of the signed-rank statistic: the ranks of the examples where the challenger's loss is lower
    # against those where it is higher.
    lower_ranks, higher_ranks = ranks[changed < 0].sum(), ranks[changed > 0].sum()
    verdict = "no significant difference"
    if p_value < significance and lower_ranks != higher_ranks:
        verdict = "better" if lower_ranks > higher_ranks else "worse"
    lower, higher = int((differences < 0).sum()), int((differences > 0).sum())
    return ChampionComparison(version, math.exp(champion.mean_loss()), lower, higher, p_value, verdict)


def decide_generation_gate(
    found: GenerativeEvaluation, gen: GenerationConfig, gate: GateConfig, more=()
) -> GateDecision:
    """Below the base model's test perplexity, against the champion the paired test under gate.champion_rule, and
    `more` checks as (passed, line): the test cases' floors."""
    failures, checked = [], []

    def check(passed: bool, line: str) -> None:
        (checked if passed else failures).append(line)

    if gen.beat_base_model:
        check(
            found.model.perplexity < found.base.perplexity,
            f"test perplexity {found.model.perplexity:.3f} vs base model {found.base.perplexity:.3f}",
        )
    if found.champion is not None:
        c = found.champion
        check(
            c.verdict == "better" if gate.champion_rule == "better" else c.verdict != "worse",
            f"vs champion version {c.champion_version} (perplexity {c.champion_perplexity:.3f}): lower loss on "
            f"{c.challenger_lower} examples, the champion on {c.champion_lower}; Wilcoxon signed-rank p = "
            f"{c.p_value:.3g} at level {gate.significance:g}: {c.verdict} (rule {gate.champion_rule})",
        )
    for passed, line in more:
        check(passed, line)
    return GateDecision(passed=not failures, reasons=failures or checked)
