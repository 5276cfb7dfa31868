"""Stage 5's scores for generated text: exact match, ROUGE-L and chrF on known pairs (no model)."""

import math

import pandas as pd
import pytest

from components.evaluate.generated_text import SCORE_COLUMNS, mean_scores, normalise, text_scores


def test_identical_texts_score_one_on_every_metric():
    scores = text_scores(["The capital of France is Paris."], ["The capital of France is Paris."])
    assert list(scores.columns) == list(SCORE_COLUMNS)
    assert scores.iloc[0].to_dict() == pytest.approx({"exact_match": 1, "rouge_l": 1.0, "chrf": 1.0})


def test_exact_match_ignores_case_and_whitespace_but_not_words():
    assert normalise("  The   Capital\nIS Paris. ") == "the capital is paris."
    scores = text_scores(
        ["  the CAPITAL of france\tis paris. ", "The capital is Paris."], ["The capital of France is Paris."] * 2
    )
    assert scores["exact_match"].tolist() == [1, 0]
    assert scores["exact_match"].dtype.kind == "i"


def test_disjoint_texts_score_near_zero():
    row = text_scores(["zebra quantum violin"], ["The capital of France is Paris."]).iloc[0]
    assert row["exact_match"] == 0 and row["rouge_l"] == 0.0 and row["chrf"] < 0.1


def test_a_partial_answer_scores_between_zero_and_one():
    # LCS "the capital is paris": precision 4/4, recall 4/6, so F = 0.8
    row = text_scores(["The capital is Paris."], ["The capital of France is Paris."]).iloc[0]
    assert row["rouge_l"] == pytest.approx(0.8)
    assert 0.3 < row["chrf"] < 1.0


def test_rouge_l_stems_words():
    row = text_scores(["He walked to the stores"], ["He walks to the store"]).iloc[0]
    assert row["rouge_l"] == pytest.approx(1.0) and row["exact_match"] == 0


def test_an_empty_generation_scores_zero_rather_than_failing():
    scores = text_scores(["", "   ", None], ["Paris.", "Paris.", ""])
    assert (scores[list(SCORE_COLUMNS)] == 0).all().all()


def test_mean_scores_averages_each_column():
    scores = text_scores(["Paris.", ""], ["Paris.", "Rome."])
    assert mean_scores(scores) == pytest.approx({"exact_match": 0.5, "rouge_l": 0.5, "chrf": 0.5})
    empty = text_scores([], [])
    assert list(empty.columns) == list(SCORE_COLUMNS) and all(math.isnan(v) for v in mean_scores(empty).values())


def test_unequal_lengths_are_refused():
    with pytest.raises(ValueError, match="2 generations for 1 references"):
        text_scores(["a", "b"], ["a"])


def test_scores_are_one_row_per_example_in_order():
    scores = text_scores(["a cat", "Paris", "x"], ["a cat", "Rome", "x"])
    assert isinstance(scores, pd.DataFrame) and scores["exact_match"].tolist() == [1, 0, 1]
