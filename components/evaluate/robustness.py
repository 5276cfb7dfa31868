"""Stage 5's robustness check: accuracy on the test texts as real traffic alters them (typos, case, punctuation,
whitespace, a URL or an emoji appended), each beside the clean accuracy; and the same alterations as built-in
invariance cases of the test-case report (category robustness/<perturbation>: the prediction must not change).
Seeded."""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable

import numpy as np

Perturbation = Callable[[str, random.Random], str]


def typos(text: str, rng: random.Random, rate: float = 0.1) -> str:
    """Two neighbouring inner letters swapped in about `rate` of the words of four letters or more."""

    def swap(word: str) -> str:
        if len(word) < 4 or rng.random() >= rate:
            return word
        i = rng.randrange(1, len(word) - 2)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]

    return " ".join(swap(word) for word in text.split(" "))


PERTURBATIONS: dict[str, Perturbation] = {
    "typos": typos,
    "lowercase": lambda text, rng: text.lower(),
    "uppercase": lambda text, rng: text.upper(),
    "no_punctuation": lambda text, rng: text.translate(str.maketrans("", "", string.punctuation)),
    "extra_whitespace": lambda text, rng: "  " + re.sub(r"\s+", "   ", text) + " \n",
    "url_appended": lambda text, rng: f"{text} https://example.com/info?id={rng.randrange(10_000)}",
    "emoji_appended": lambda text, rng: f"{text} {rng.choice(['🙂', '👍', '😂', '🔥', '❤️'])}",
}


def perturbed(texts: list[str], seed: int, perturbations: dict[str, Perturbation] = PERTURBATIONS):
    """Each perturbation's altered texts, in the order of `texts`, by a generator seeded per perturbation."""
    altered = {}
    for name, perturb in perturbations.items():
        rng = random.Random(f"{seed}-{name}")
        altered[name] = [perturb(text, rng) for text in texts]
    return altered


def robustness_cases(texts: list[str], seed: int) -> list:
    """An invariance case per test text and perturbation that changed it: the text and its altered form."""
    from components.evaluate.suite_case import BUILT_IN_PREFIX, TestCase

    return [
        TestCase(f"{BUILT_IN_PREFIX}{name}", f"{name}-{i + 1}", text, "INV", variants=(text, changed))
        for name, texts_altered in perturbed(texts, seed).items()
        for i, (text, changed) in enumerate(zip(texts, texts_altered))
        if changed != text
    ]


def robustness(
    predict: Callable[[list[str]], np.ndarray],
    texts: list[str],
    targets: np.ndarray,
    clean_accuracy: float,
    seed: int,
    perturbations: dict[str, Perturbation] = PERTURBATIONS,
) -> list[dict]:
    """Per perturbation: the share of texts it changed, the accuracy on the changed set, and its drop against
    the clean accuracy (in points of accuracy, positive when worse)."""
    rows = []
    for name, altered in perturbed(texts, seed, perturbations).items():
        accuracy = float((predict(altered).argmax(axis=1) == targets).mean())
        rows.append(
            {
                "perturbation": name,
                "changed_share": float(np.mean([a != t for a, t in zip(altered, texts)])),
                "accuracy": accuracy,
                "drop": clean_accuracy - accuracy,
            }
        )
    return rows
