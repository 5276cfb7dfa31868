"""Stage 5's scores for generation: each greedy generation against its reference by exact match, ROUGE-L and chrF.
Exact match is strict and plain to read; ROUGE-L credits the reference's words in their order (what Alpaca-style
evaluations report); chrF credits character n-grams, so it still sees near misses in inflected or non-Latin text,
which ROUGE's tokenizer (ASCII letters and digits) drops. The libraries are called directly: `evaluate.load` would
download its metric scripts. The behavioural checks a course exercise writes are in suite_runs.py."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

SCORE_COLUMNS = ("exact_match", "rouge_l", "chrf")


def normalise(text: str) -> str:
    """Stripped, whitespace collapsed and case-folded: exact match ignores what a reader would not call a change."""
    return " ".join(text.split()).casefold()


def text_scores(generations: Sequence[str], references: Sequence[str]) -> pd.DataFrame:
    """One row per example: exact_match (0/1 after `normalise`), rouge_l (ROUGE-L F-measure, stemmed) and chrf
    (sacrebleu's sentence chrF / 100), each in 0..1. An empty generation scores 0 on all three rather than failing,
    since a model that says nothing is a result to report, not an error."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import CHRF

    if len(generations) != len(references):
        raise ValueError(f"{len(generations)} generations for {len(references)} references: expected one each")
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    chrf = CHRF()
    rows = []
    for generation, reference in zip(generations, references):
        generation, reference = generation or "", reference or ""
        if not normalise(generation):
            rows.append({"exact_match": 0, "rouge_l": 0.0, "chrf": 0.0})
            continue
        rows.append(
            {
                "exact_match": int(normalise(generation) == normalise(reference)),
                "rouge_l": float(rouge.score(reference, generation)["rougeL"].fmeasure),  # (target, prediction)
                "chrf": float(chrf.sentence_score(generation, [reference]).score) / 100,
            }
        )
    frame = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    return frame.astype({"exact_match": int, "rouge_l": float, "chrf": float})


def mean_scores(scores: pd.DataFrame) -> dict[str, float]:
    """The test split's figures, as MLflow metrics take them: each score's mean (NaN when there are no rows)."""
    return {column: float(scores[column].mean()) for column in SCORE_COLUMNS}
