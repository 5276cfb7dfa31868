"""Serving and rollouts: the model server (`serve`) and how a new champion reaches traffic (`deploy.rollout`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.config.section import Section


class ServeConfig(Section):
    """The model server (`lifecycle serve`, KServe): where it listens, what a request may hold, the prediction log."""

    port: int = Field(8080, ge=1, le=65533)
    """The HTTP port; gRPC listens on the next port, Prometheus metrics on the one after."""
    host: str = "127.0.0.1"
    """The address to listen on: 127.0.0.1 for this machine only; 0.0.0.0 in a container (KServe)."""
    max_batch: int = Field(64, ge=1)
    """The most texts one request may hold."""
    max_text_chars: int = Field(2000, ge=1)
    """The longest text a request may hold, in characters; a request with a longer one is refused."""
    max_request_bytes: int = Field(1 << 20, ge=1024)
    """The largest request body, in bytes; a larger one gets HTTP 413."""
    log_flush_texts: int = Field(100, ge=1)
    """The prediction log is written in shards (object stores have no append): one when this many texts wait, when
    the oldest has waited log_flush_seconds, and when the server stops. A crash loses at most what waits."""
    log_flush_seconds: float = Field(30, gt=0)
    """The longest a text waits, in seconds, before the prediction log's shard holding it is written."""
    follow_seconds: float = Field(5, gt=0)
    """How often, in seconds, a server started on models:/NAME@ALIAS reads the registry and swaps in the version the
    alias (and a rollout's candidate) points at, without a restart."""
    # redact by default: the log is read by whoever reads the bucket, and neither the drift check nor a rollout's
    # decision needs the values; hash keeps "the same number again" for those who need it.
    log_pii: Literal["keep", "redact", "hash"] = "redact"
    """What the prediction log stores of each text's personal data (the pii section finds it): keep, redact (its
    typed placeholder) or hash (a SHA-256 keyed with the secret in the environment variable log_pii_key_env, the
    same for the same value)."""
    log_pii_key_env: str = "LIFECYCLE_PII_HASH_KEY"
    """The environment variable that holds the secret key of log_pii=hash."""
    max_prompt_tokens: int = Field(1024, ge=1)
    """task=generation: the most tokens a request's rendered prompt may have; a longer one gets HTTP 400."""
    max_tokens: int = Field(256, ge=1)
    """task=generation: the most tokens a response may have, and the length of one whose request names none; a
    request's larger max_tokens is capped to it."""
    max_waiting: int = Field(16, ge=1)
    """task=generation: requests that may wait for the generator beside those it is answering; more get HTTP 429."""


class RolloutConfig(Section):
    """How a new champion reaches traffic once stage 5's gate passed (the first champion always goes direct).
    shadow (the default): the champion answers, the candidate scores a copy of each request off the answer path;
    canary: `canary_percent` of requests, by a stable hash of the request, are answered by the candidate; direct:
    all traffic at once. shadow and canary end in a decision on live evidence (monitoring/rollout.py)."""

    mode: Literal["shadow", "canary", "direct"] = "shadow"
    """shadow: the candidate scores a copy of each request off the answer path; canary: it answers canary_percent of
    the requests; direct: it takes all traffic at once."""
    canary_percent: float = Field(10, gt=0, lt=100)
    """For mode canary: the percentage of requests, chosen by a stable hash of the request, the candidate answers."""
    min_texts: int = Field(200, ge=1)
    """Texts scored by both versions before any decision but a rollback."""
    min_labelled: int = Field(50, ge=1)
    """Of those, texts with a label in the feedback before accuracy decides."""
    deadline_hours: float = Field(72, gt=0)
    """Hours after which too little evidence ends the rollout as on_deadline says."""
    on_deadline: Literal["rollback", "promote"] = "rollback"
    """What a rollout with too little evidence at its deadline does with the candidate: roll it back or promote it."""
    max_error_rate: float = Field(0.01, ge=0, le=1)
    """The candidate's largest share (0..1) of failed scorings; more rolls it back."""
    max_p99_ratio: float = Field(2.0, ge=1)
    """The candidate's p99 latency of its answers as a multiple of the champion's, at most; slower rolls it back."""


class DeployConfig(Section):
    """Stage 6, deployment: how a model that passed the gate becomes the served champion."""

    rollout: RolloutConfig = RolloutConfig()
    """How a new champion reaches traffic."""
