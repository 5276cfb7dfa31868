"""The linear baseline of stage 5: TF-IDF of word and character n-grams with logistic regression, trained on the
same train split and scored on the same test split, so a run says what fine-tuning gained over it."""

from __future__ import annotations

import numpy as np


def baseline_probabilities(
    train_texts: list[str], train_targets: np.ndarray, test_texts: list[str], n_classes: int, seed: int
) -> np.ndarray:
    """Class probabilities of the test texts (columns: every class index, a class absent from train at 0)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
    )
    model = make_pipeline(features, LogisticRegression(C=10.0, max_iter=2000, random_state=seed))
    model.fit(train_texts, train_targets)
    probabilities = np.zeros((len(test_texts), n_classes))
    probabilities[:, model.classes_] = model.predict_proba(test_texts)
    return probabilities
