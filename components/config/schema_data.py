"""The data's sections: where the data is and how it is read, checked, cleaned, balanced and split (`data`), and
what counts as personal data (`pii`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.config.section import Section


class SplitConfig(Section):
    """How one data file is split, stratified by label and seeded: the three shares sum to 1."""

    train: float = Field(0.7, gt=0, lt=1)
    """The share of the texts in the train split."""
    val: float = Field(0.1, gt=0, lt=1)
    """The share of the texts in the validation split, which picks the best epoch and stops training early."""
    test: float = Field(0.2, gt=0, lt=1)
    """The share of the texts in the test split, which the gate judges the model on."""

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {self.train + self.val + self.test:g}")
        return self


class DataConfig(Section):
    """Where the labelled texts are, and how stage 1 reads, checks, cleans, balances and splits them. Every path is a
    local file or a storage URI (s3://, gs://, abfs://, https://, file://; components/storage.py)."""

    path: str | None = None
    """One file (or storage URI) of all the texts, split as data.split says; wins over data.url. None: data.url or
    the given splits."""
    url: str | None = None
    """A URL to download the data from on the first run, cached under work_dir/downloads. None: no download."""
    url_member: str | None = None
    """The file inside the downloaded zip to read. None: the download is the data file itself."""
    sha256: str | None = None
    """The SHA-256 of the downloaded data file (of the zip member for a zip): a download that differs is refused.
    None: not checked."""
    train_path: str | None = None
    """The train split's file when the splits are given (with test_path at least) instead of one file to split.
    None: data.path or data.url."""
    val_path: str | None = None
    """The validation split's file. None: val_from_train of the train file is held out, stratified and seeded."""
    test_path: str | None = None
    """The test split's file, given with train_path."""
    val_from_train: float = Field(0.1, gt=0, lt=1)
    """The share of the given train file held out for validation when val_path is not given."""
    feedback_path: str | None = None
    """Newly labelled data (a file, or a folder of files in this format), added to the data on every run. None:
    none."""
    format: Literal["auto", "delimited", "jsonl", "parquet"] = "auto"
    """How the files are read: delimited text (CSV, TSV), JSON lines or Parquet; auto goes by the file's suffix
    (.parquet, .jsonl/.ndjson/.json, else delimited)."""
    separator: str = ","
    """The one character between the fields of a delimited file (\\t for a tab)."""
    header: bool = True
    """Whether a delimited file's first line names its columns; false needs column_names."""
    column_names: list[str] | None = None
    """The columns of a header-less delimited file, in order. None: the header names them."""
    quoting: bool = True
    """Whether quote characters in a delimited file quote fields; false: they are plain text (csv.QUOTE_NONE)."""
    encoding: str = "utf-8"
    """The text encoding of the data files (a Python codec name: utf-8, latin-1, cp1252, ...)."""
    text_column: str = "text"
    """The column holding the texts to classify."""
    label_column: str = "label"
    """The column holding each text's label."""
    group_column: str | None = None
    """A column to report metrics per value of (language, channel, ...): carried through stage 1 as `group`. None:
    no groups."""
    labels: list[str] | None = None
    """The classes, at least two, which the data must hold. None: inferred from the data and reported."""
    control_characters: Literal["strip", "refuse"] = "strip"
    """Control characters in a text (NUL and the other C0 controls but tab and newline): strip (whitespace-like ones
    become a space, the rest go; counted in the manifest and the model card) or refuse (the gate names the rows)."""
    min_rows_per_class: int = Field(10, ge=1)
    """The fewest texts each class must have once duplicates and conflicting texts are gone; fewer fails the data
    checks."""
    min_text_chars: int = Field(1, ge=1)
    """The shortest text allowed, in characters; a shorter one fails the data checks."""
    max_text_chars: int = Field(10_000, ge=1)
    """The longest text allowed, in characters; a longer one fails the data checks."""
    balance: Literal["none", "undersample", "oversample"] = "none"
    """undersample: every class cut to the smallest's size (of the whole data set before splitting, or of the train
    split when the splits are given). oversample: the train split's smaller classes drawn again, with replacement,
    up to the largest's size; validation and test keep the data's own balance."""
    on_leakage: Literal["fail", "drop"] = "fail"
    """A text in two splits scores memorisation as generalisation. fail: stop and name them; drop: remove from val
    and test the texts train holds, and from test those val holds (counted in the manifest and the model card)."""
    pii: Literal["report", "redact", "fail", "off"] = "report"
    """Personal data in the texts (found as the pii section says): report (counted per split in the manifest, MLflow
    and the model card), redact (each finding replaced by its typed placeholder, <PHONE_NUMBER>, in every split
    before anything is checked, split or written), fail (stop and name the rows) or off (not looked for, for data
    known to hold none or too large to scan; the model card says it was not checked)."""
    split: SplitConfig = SplitConfig()
    """How one data file (data.path or data.url) is split into train, validation and test."""
    name: str = "dataset"
    """The data set's name, for the model card and MLflow's dataset inputs."""
    licence: str = "unknown"
    """The data's licence, for the model card."""
    citation: str = ""
    """How to cite the data, for the model card; empty: no citation."""

    @field_validator("separator")
    @classmethod
    def _one_character(cls, separator: str) -> str:
        if len(separator) != 1:
            raise ValueError("expected one character (\\t for a tab)")
        return separator

    @field_validator("pii", mode="before")
    @classmethod
    def _off_is_not_false(cls, pii):
        return "off" if pii is False else pii  # YAML 1.1 reads a bare off as false

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        import codecs

        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError("unknown encoding; e.g. utf-8, latin-1, cp1252") from None
        return encoding

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.train_path or self.val_path or self.test_path) and not (self.train_path and self.test_path):
            raise ValueError(
                "give train_path and test_path (and val_path, or val_from_train of the train file is "
                "held out for validation), or none of them"
            )
        if not (self.path or self.url or self.train_path):
            raise ValueError(
                "no data: set data.path (a file or storage URI), data.url, or "
                "train_path and test_path (val_path optional)"
            )
        if self.labels is not None and len(set(self.labels)) < 2:
            raise ValueError("labels must name at least two distinct classes")
        if self.min_text_chars > self.max_text_chars:
            raise ValueError("min_text_chars is larger than max_text_chars")
        return self


class PiiConfig(Section):
    """What counts as personal data (components/pii.py: Microsoft Presidio's recognizers, by its entity names)."""

    entities: list[str] = Field(
        ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "URL", "PERSON"], min_length=1
    )
    """The kinds of personal data looked for, by Presidio's entity names."""
    spacy_model: str | None = None
    """The spaCy pipeline with named entities that finds names (PERSON): an installed one (en_core_web_lg) or a
    folder. None: the patterns only, and names are not checked (the model card says so)."""
    language: str = "en"
    """The texts' language, as Presidio's recognizers and the spaCy pipeline name it (ISO 639-1)."""
    phone_regions: list[str] = Field(["US", "GB", "DE", "FR", "IN", "CA", "BR", "IL", "AU"], min_length=1)
    """Where phone numbers are written in their national form (ISO 3166 codes); international ones (+44...) are
    found always."""
    min_score: float = Field(0.4, ge=0, le=1)
    """Presidio's confidence (0..1) that a finding is personal data, at least; its phone numbers score 0.4, its URLs
    0.5 to 0.6."""

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, entities: list[str]) -> list[str]:
        unknown = sorted(set(entities) - PII_ENTITIES)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not an entity these recognizers find; they find "
                f"{', '.join(sorted(PII_ENTITIES))}"
            )
        return entities


# The entities of Presidio's predefined recognizers for any language (the country-specific ones, US_SSN,
# UK_NHS, ..., are left out: their patterns match many ordinary numbers) and of its spaCy recognizer.
PII_ENTITIES = {
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "URL",
    "PERSON",
    "CRYPTO",
    "DATE_TIME",
    "LOCATION",
    "NRP",
    "MEDICAL_LICENSE",
}
