"""Personal data in texts, found and replaced with Microsoft Presidio: its pattern recognizers (e-mail addresses,
phone numbers, credit-card numbers, IBANs, IP addresses, URLs) need no language model; names need a spaCy pipeline
with named entities (pii.spacy_model), which the user installs: nothing is downloaded.

Three forms of a text: keep (as it came), redact (each finding replaced by its typed placeholder, <PHONE_NUMBER>)
and hash (each finding replaced by a keyed SHA-256 of it, so the same number gives the same hash in every text)."""

from __future__ import annotations

import functools
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from components.config import ConfigError, PiiConfig
from components.errors import LifecycleError

KEEP, REDACT, HASH = "keep", "redact", "hash"
# Presidio's e-mail recognizer checks the domain with tldextract, which fetches the public suffix list from the
# network unless told not to; its bundled copy is as good for this.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")


class PiiScanner:
    """Presidio's analyzer (the configured entities, no model download) and anonymizer, made once: at once with
    `load`, else at the first text that can hold a finding (a batch without one never loads Presidio)."""

    def __init__(self, config: PiiConfig, hash_key: str | None = None, load: bool = True):
        self.config, self.hash_key = config, hash_key
        self.entities = checked_entities(config)
        self.may_hold = finding_precondition(self.entities)
        if load:
            self._engines  # noqa: B018 (loads them, and says now that a configured spaCy pipeline is missing)

    @functools.cached_property
    def _engines(self):
        """(analyzer, anonymizer)."""
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.predefined_recognizers import PhoneRecognizer
        from presidio_anonymizer import AnonymizerEngine

        # It warns of each recognizer of another language it leaves out: not the user's concern.
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        config = self.config
        nlp_engine = _nlp_engine(config)
        registry = RecognizerRegistry(supported_languages=[config.language])
        registry.load_predefined_recognizers(languages=[config.language], nlp_engine=nlp_engine)
        registry.remove_recognizer("PhoneRecognizer")
        registry.add_recognizer(
            PhoneRecognizer(supported_regions=config.phone_regions, supported_language=config.language)
        )
        analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[config.language])
        return analyzer, AnonymizerEngine()

    def transform(self, text: str, form: str) -> tuple[str, list[str]]:
        """(the text in `form`, the entity type of each finding, overlaps resolved as the anonymizer resolves
        them)."""
        if not self.may_hold(text):
            return text, []
        from presidio_anonymizer.entities import OperatorConfig

        analyzer, anonymizer = self._engines
        found = [
            result
            for result in analyzer.analyze(
                text=text, language=self.config.language, entities=self.entities, score_threshold=self.config.min_score
            )
            if _plausible(result, text)
        ]
        if not found:
            return text, []
        operator = (
            OperatorConfig("hash", {"hash_type": "sha256", "salt": self.hash_key})
            if form == HASH
            else OperatorConfig("replace")
            if form == REDACT
            else OperatorConfig("keep")
        )
        result = anonymizer.anonymize(text=text, analyzer_results=found, operators={"DEFAULT": operator})
        return (text if form == KEEP else result.text), [item.entity_type for item in result.items]

    def texts_in(self, texts: Iterable[str], form: str) -> list[str]:
        """Every text in `form`."""
        return [self.transform(text, form)[0] for text in texts]


# What a text must hold for Presidio's recognizer of an entity to find one there, as the patterns are written
# (components/config/schema_data.py lists the entities): a digit for numbers; `@`; two colons for IPv6; for a URL,
# a scheme, www. or a path (_plausible drops the rest) or a context word that lifts a bare domain's score. An entity
# not listed (names, places, dates: spaCy's) can be in any text. Searched case-blind, `.` across lines.
_FINDING_PRECONDITIONS = {
    "EMAIL_ADDRESS": "@",
    "PHONE_NUMBER": r"\d",
    "CREDIT_CARD": r"\d",
    "IBAN_CODE": r"\d",
    "MEDICAL_LICENSE": r"\d",
    "CRYPTO": r"\d",
    "IP_ADDRESS": r"\d|:.*:",
    "URL": r"/|www\.|url|website|link",
}


def finding_precondition(entities: list[str]) -> Callable[[str], bool]:
    """text -> whether Presidio could find one of `entities` in it. Most texts of a chat or a review hold no digit,
    no @ and no link: they need no scan, which is most of its time."""
    if any(entity not in _FINDING_PRECONDITIONS for entity in entities):
        return lambda text: True
    pattern = re.compile("|".join(f"(?:{_FINDING_PRECONDITIONS[e]})" for e in entities), re.IGNORECASE | re.DOTALL)
    return lambda text: pattern.search(text) is not None


def _plausible(result, text: str) -> bool:
    """Presidio's URL pattern without a scheme (score 0.5) matches any word.tld, of which chat texts without a space
    after a full stop are full ("dinner.ms", "Tmorrow.pl": 358 such findings in the SMS collection's ham): such a
    finding counts only when it starts with www. or has a path."""
    if result.entity_type != "URL" or result.score >= 0.6:
        return True
    found = text[result.start : result.end].lower()
    return found.startswith("www.") or "/" in found


def checked_entities(config: PiiConfig) -> list[str]:
    """The configured entities that can be found: names (PERSON) only with a spaCy model."""
    return [e for e in config.entities if e != "PERSON" or config.spacy_model]


def _nlp_engine(config: PiiConfig):
    """spaCy as Presidio's NLP engine: the user's pipeline (pii.spacy_model, installed or a folder) for names, else
    a blank one (tokens only) for the pattern recognizers. Presidio's default engine would download a model."""
    import spacy
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine

    class InstalledSpacy(SpacyNlpEngine):
        def load(self) -> None:
            if not config.spacy_model:
                self.nlp = {config.language: spacy.blank(config.language)}
                return
            try:
                self.nlp = {config.language: spacy.load(config.spacy_model)}
            except OSError as err:
                raise ConfigError(
                    f"pii.spacy_model: {config.spacy_model!r} is neither an installed spaCy pipeline "
                    f"nor a folder holding one ({err}); install it (python -m spacy download NAME) "
                    f"or leave pii.spacy_model unset to check patterns only, without names"
                ) from None

    engine = InstalledSpacy(
        models=[{"lang_code": config.language, "model_name": config.spacy_model or "blank"}],
        ner_model_configuration=NerModelConfiguration(),
    )
    engine.load()
    return engine


def text_form(
    form: str, config: PiiConfig, hash_key: str | None = None, load: bool = True
) -> Callable[[list[str]], list[str]]:
    """The function that puts texts in `form` (keep, redact, hash), as the prediction log stores them; Presidio
    loaded at once, or (not `load`) at the first text that can hold a finding."""
    if form == KEEP:
        return list
    scanner = PiiScanner(config, hash_key, load)
    return functools.partial(scanner.texts_in, form=form)


@dataclass(frozen=True)
class LogPii:
    """What the prediction log stores of the personal data in each text (serve.log_pii: keep, redact, hash), found
    as `pii` (a PiiConfig's fields) says; hash's key is read from the environment variable `key_env`."""

    form: str = "redact"
    pii: dict = field(default_factory=dict)
    key_env: str = "LIFECYCLE_PII_HASH_KEY"

    @classmethod
    def of(cls, cfg) -> LogPii:
        """The LifecycleConfig's serve.log_pii, found as its pii section says."""
        return cls(cfg.serve.log_pii, cfg.pii.model_dump(), cfg.serve.log_pii_key_env)

    def text_form(self, hash_key: str | None = None, load: bool = True):
        """The function that puts texts in this form; hash's key from the environment unless given."""
        if self.form == HASH:
            hash_key = hash_key or log_hash_key(self.key_env)
        return text_form(self.form, PiiConfig(**self.pii), hash_key, load)

    def drift_form(self):
        """This form as drift is measured on it, for a batch of texts (Presidio loads only if one can hold a
        finding): hashed with a key of its own, since the drift check compares what texts look like (a hash's
        length), never their values."""
        return self.text_form(hash_key=secrets.token_hex(16), load=False)

    def drift_texts(self, texts: list[str], redacted: dict[int, str] | None) -> list[str]:
        """drift_form of `texts`; where this form is redact, `redacted` (stage 1's redacted texts by position, of
        those holding personal data, found with the same pii section) spares the scan."""
        if self.form == REDACT and redacted is not None:
            return [redacted.get(i, text) for i, text in enumerate(texts)]
        return self.drift_form()(texts)


def log_hash_key(env_name: str) -> str:
    """serve.log_pii=hash's key, from the environment variable serve.log_pii_key_env (a Kubernetes Secret on a
    cluster): at least 16 characters, or hashes of phone numbers could be reversed by trying them all."""
    key = os.environ.get(env_name, "")
    if len(key) < MIN_KEY_CHARS:
        raise LifecycleError(
            f"serve.log_pii=hash needs a secret key of at least {MIN_KEY_CHARS} characters in the "
            f"environment variable {env_name} (serve.log_pii_key_env); it is "
            + ("unset" if not key else f"{len(key)} characters long")
            + ". E.g. export "
            + env_name
            + "=$(openssl rand -hex 16)"
        )
    return key


MIN_KEY_CHARS = 16
