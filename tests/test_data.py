import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import SHARED_SMS, make_texts

from components.config import DataConfig
from components.data import core as data_stage
from components.data.table_readers import DataError
from components.data.validation import DataValidationError
from components.handoff import SPLITS, read_split


def data_config(path, **overrides) -> DataConfig:
    settings = {"path": str(path), "labels": ["ham", "spam"], "min_rows_per_class": 5} | overrides
    return DataConfig(**settings)


def test_prepares_stratified_splits_without_leakage(tmp_path, texts_csv):
    prepared = data_stage.data(data_config(texts_csv), seed=123, cache_dir=tmp_path, out_dir=tmp_path / "out")
    splits = {name: read_split(tmp_path / "out", name) for name in ("train", "val", "test")}
    assert [len(s) for s in splits.values()] == [168, 24, 48]
    for rows in splits.values():  # stratified: each split keeps the 50/50 mix
        assert rows["label"].value_counts().to_dict() == {"ham": len(rows) // 2, "spam": len(rows) // 2}
    texts = [set(rows["text"]) for rows in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["labels"] == ["ham", "spam"] and manifest["fingerprint"] == prepared.fingerprint
    data_docs = (tmp_path / "out" / "validation_all.html").read_text()
    assert "values must never be null" in data_docs and "Evaluated Expectations" in data_docs
    again = data_stage.data(data_config(texts_csv), seed=123, cache_dir=tmp_path, out_dir=tmp_path / "again")
    assert again.fingerprint == prepared.fingerprint  # seeded: the same data gives the same splits


def test_cleaning_strips_drops_duplicates_and_ambiguous_texts_and_reports_them(tmp_path):
    rows = make_texts(100)
    extra = pd.DataFrame({"label": ["ham", "ham", "spam"], "text": [f"  {rows.text[0]} ", "who am i", "who am i"]})
    path = tmp_path / "dups.csv"
    pd.concat([rows, extra]).to_csv(path, index=False)
    prepared = data_stage.data(data_config(path), seed=1, cache_dir=tmp_path, out_dir=tmp_path / "out")
    assert prepared.dropped_duplicates == 1 and prepared.dropped_conflicting_texts == 1
    report = json.loads((tmp_path / "out" / "validation.json").read_text())["all"]
    assert report["conflict_samples"][0]["text"] == "who am i"
    assert sum(sum(c.values()) for c in prepared.counts.values()) == 100


def extra_ham(n: int = 50) -> pd.DataFrame:
    """n more ham texts, to skew make_texts' half-and-half mix."""
    return pd.DataFrame({"label": ["ham"] * n, "text": [f"ham {i}" for i in range(n)]})


def test_undersampling_balances_the_classes(tmp_path):
    rows = pd.concat([make_texts(100), extra_ham()])
    path = tmp_path / "skewed.csv"
    rows.to_csv(path, index=False)
    prepared = data_stage.data(data_config(path, balance="undersample"), 1, tmp_path, tmp_path / "out")
    total = {label: sum(c[label] for c in prepared.counts.values()) for label in ("ham", "spam")}
    assert total == {"ham": 50, "spam": 50}


def test_oversampling_repeats_the_smaller_classes_of_train_only_and_keeps_val_and_test_as_the_data_has_them(tmp_path):
    rows = pd.concat([make_texts(100), extra_ham()])
    path = tmp_path / "skewed.csv"
    rows.to_csv(path, index=False)
    prepared = data_stage.data(data_config(path, balance="oversample"), 1, tmp_path, tmp_path / "out")
    plain = data_stage.data(data_config(path), 1, tmp_path, tmp_path / "plain")
    largest = max(plain.counts["train"].values())
    assert prepared.counts["train"] == {"ham": largest, "spam": largest} != plain.counts["train"]
    assert prepared.counts["val"] == plain.counts["val"] and prepared.counts["test"] == plain.counts["test"]
    train, test = read_split(tmp_path / "out", "train"), read_split(tmp_path / "out", "test")
    assert set(train["text"]) == set(read_split(tmp_path / "plain", "train")["text"])  # repeats, nothing new
    assert not set(train["text"]) & set(test["text"]) and test["text"].is_unique
    again = data_stage.data(data_config(path, balance="oversample"), 1, tmp_path, tmp_path / "again")
    assert again.fingerprint == prepared.fingerprint  # seeded


def test_undersampling_given_splits_balances_train_only(tmp_path):
    texts = make_texts(100)
    pd.concat([texts.iloc[:80], extra_ham()]).to_csv(tmp_path / "train.csv", index=False)
    texts.iloc[80:].to_csv(tmp_path / "test.csv", index=False)
    config = DataConfig(
        train_path=str(tmp_path / "train.csv"),
        test_path=str(tmp_path / "test.csv"),
        labels=["ham", "spam"],
        min_rows_per_class=5,
        balance="undersample",
    )
    prepared = data_stage.data(config, 1, tmp_path, tmp_path / "out")
    assert len(set(prepared.counts["train"].values())) == 1
    assert prepared.counts["test"] == {"ham": 10, "spam": 10}


def test_reads_jsonl_and_parquet(tmp_path):
    rows = make_texts(60)
    rows.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    rows.to_parquet(tmp_path / "t.parquet")
    for name in ("t.jsonl", "t.parquet"):
        prepared = data_stage.data(data_config(tmp_path / name), 1, tmp_path, tmp_path / name.replace(".", "_"))
        assert sum(prepared.counts["train"].values()) == 42


def bad_data_error(tmp_path, rows: pd.DataFrame, **overrides) -> str:
    path = tmp_path / "bad.csv"
    rows.to_csv(path, index=False)
    with pytest.raises(DataValidationError) as err:
        data_stage.data(data_config(path, **overrides), 1, tmp_path, tmp_path / "out")
    assert (tmp_path / "out" / "validation.json").is_file()  # the report is written for the failed gate too
    assert str(path) in str(err.value)
    return str(err.value)


def test_missing_label_column_stops_with_the_columns_found(tmp_path):
    message = bad_data_error(tmp_path, make_texts(40).rename(columns={"label": "category"}))
    assert "column 'label' is missing" in message and "category" in message


def test_unknown_labels_are_named_with_their_rows(tmp_path):
    rows = make_texts(40)
    rows.loc[7, "label"] = "eggs"
    message = bad_data_error(tmp_path, rows)
    assert "expect_column_values_to_be_in_set(label)" in message
    assert "row 9: 'eggs'" in message  # file row 9 = header + 8th data row


def test_empty_texts_are_named_with_their_rows(tmp_path):
    rows = make_texts(40)
    rows.loc[3, "text"] = "   "
    message = bad_data_error(tmp_path, rows)
    assert "expect_column_values_to_not_match_regex(text)" in message and "row 5: '   '" in message


def test_a_single_class_stops(tmp_path):
    rows = make_texts(40).assign(label="ham")
    message = bad_data_error(tmp_path, rows, labels=None)
    assert "at least 2" in message


def test_too_few_rows_of_a_class_stops(tmp_path):
    rows = pd.concat([make_texts(40).query("label == 'ham'"), make_texts(4).query("label == 'spam'")])
    assert "classes below 5 rows: {'spam': 2}" in bad_data_error(tmp_path, rows)


def test_inferred_labels_are_reported(tmp_path, texts_csv):
    prepared = data_stage.data(data_config(texts_csv, labels=None), 1, tmp_path, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "validation.json").read_text())["all"]
    assert prepared.labels == ["ham", "spam"] and report["labels_inferred"] is True


def test_wrong_separator_is_a_clear_error(tmp_path):
    path = tmp_path / "sms.tsv"
    path.write_text("ham\tsee you, later\nspam\tWIN cash, now, call\n" * 20)
    config = data_config(path, separator=",", header=False, column_names=["label", "text"], quoting=False)
    with pytest.raises(
        DataValidationError,
        match=r"reading skipped 20 damaged records, e.g. .*sms.tsv: line 2: 3 "
        r"fields for the 2 column names.*data.separator \(now .,.\)",
    ):
        data_stage.data(config, 1, tmp_path, tmp_path / "out")


def test_leakage_between_given_splits_stops_by_default_and_is_dropped_on_request(tmp_path):
    rows = make_texts(60)
    val = pd.concat([rows[40:50], rows[:1]])  # a train text
    test = pd.concat([rows[50:], rows[:2], rows[40:41]])  # two train texts and a val text
    for name, part in (("train", rows[:40]), ("val", val), ("test", test)):
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    config = DataConfig(
        train_path=str(tmp_path / "train.csv"),
        val_path=str(tmp_path / "val.csv"),
        test_path=str(tmp_path / "test.csv"),
        labels=["ham", "spam"],
        min_rows_per_class=2,
    )
    with pytest.raises(
        DataValidationError,
        match=r"4 texts stand in two splits(.|\n)*row 2 of train and row 12 of "
        r"val(.|\n)*data.on_leakage=drop",
    ):
        data_stage.data(config, 1, tmp_path, tmp_path / "out")
    prepared = data_stage.data(config.model_copy(update={"on_leakage": "drop"}), 1, tmp_path, tmp_path / "out")
    assert prepared.dropped_leaking_texts == {"val": 1, "test": 3}
    assert {split: sum(c.values()) for split, c in prepared.counts.items()} == {"train": 40, "val": 10, "test": 10}
    splits = {name: set(read_split(tmp_path / "out", name)["text"]) for name in SPLITS}
    assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"] or splits["val"] & splits["test"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dropped_leaking_texts"] == {"val": 1, "test": 3}
    # The model card says so (its data section reads the manifest).
    assert "Leakage: 1 texts of val and 3 texts of test that an earlier split also holds were dropped" in (
        card_data_section(tmp_path / "out")
    )


def test_a_class_left_too_small_by_its_duplicates_is_named_with_the_rows_it_needs(tmp_path):
    rows = pd.DataFrame(
        {
            "label": ["ham"] * 20 + ["spam"] * 20,
            "text": [f"see you at {i}" for i in range(20)] + ["WIN a prize now"] * 20,
        }
    )
    rows.to_csv(tmp_path / "dupes.csv", index=False)
    config = DataConfig(path=str(tmp_path / "dupes.csv"), labels=["ham", "spam"], min_rows_per_class=5)
    with pytest.raises(
        DataValidationError,
        match=r"dupes.csv: after dropping 19 duplicate rows and ambiguous texts, "
        r"class 'spam' has 1 rows; data.min_rows_per_class needs 5",
    ):
        data_stage.data(config, 1, tmp_path, tmp_path / "out")


@pytest.mark.skipif(not SHARED_SMS.is_file(), reason="the shared SMS Spam Collection is not beside the project")
def test_a_group_column_is_carried_to_the_splits_and_a_missing_one_is_named(tmp_path):
    rows = make_texts(120).assign(channel=["sms", "email", "web"] * 40)
    rows.to_csv(tmp_path / "texts.csv", index=False)
    data_stage.data(data_config(tmp_path / "texts.csv", group_column="channel"), 1, tmp_path, tmp_path / "out")
    test = read_split(tmp_path / "out", "test")
    assert set(test["group"]) == {"sms", "email", "web"} and set(test["source"]) == {"data"}
    with pytest.raises(DataValidationError, match="column 'language' is missing"):
        data_stage.data(data_config(tmp_path / "texts.csv", group_column="language"), 1, tmp_path, tmp_path / "out2")


@pytest.mark.skipif(not SHARED_SMS.is_file(), reason="the shared SMS Spam Collection is not beside the project")
def test_sms_spam_collection_with_the_ch06_protocol(tmp_path):
    from components.config import load_config

    cfg = load_config("configs/sms_spam.yaml", [f"data.path={SHARED_SMS}"])
    prepared = data_stage.data(cfg.data, cfg.seed, tmp_path, tmp_path / "out")
    assert prepared.dropped_duplicates == 414
    assert prepared.counts["test"] == {"ham": 129, "spam": 128}
    assert sum(sum(c.values()) for c in prepared.counts.values()) == 642 * 2


def test_download_is_cached_and_checked(tmp_path):
    import hashlib
    import zipfile

    from components.data.table_readers import fetch

    payload = b"ham\thello\nspam\tWIN\n"
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
        archive.writestr("SMSSpamCollection", payload)
    url = (tmp_path / "data.zip").as_uri()
    digest = hashlib.sha256(payload).hexdigest()
    path = fetch(url, tmp_path / "cache", sha256=digest, member="SMSSpamCollection")
    assert path.read_bytes() == payload
    (tmp_path / "data.zip").unlink()  # cached: a second call does not download
    assert fetch(url, tmp_path / "cache", sha256=digest, member="SMSSpamCollection") == path
    with pytest.raises(DataError, match="sha256"):
        with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
            archive.writestr("SMSSpamCollection", payload + b"tampered")
        fetch(url, tmp_path / "other", sha256=digest, member="SMSSpamCollection")


def test_feedback_files_of_one_class_join_the_data_and_a_bad_one_is_named(tmp_path, texts_csv):
    feedback = tmp_path / "feedback"
    feedback.mkdir()
    new = pd.DataFrame({"text": [f"quarterly invoice {i}" for i in range(30)], "label": "ham"})
    new.to_json(feedback / "labelled.jsonl", orient="records", lines=True)  # JSONL beside CSV data
    data = DataConfig(path=str(texts_csv), feedback_path=str(feedback), labels=["ham", "spam"], min_rows_per_class=5)
    prepared = data_stage.data(data, 1, tmp_path, tmp_path / "out")
    assert sum(counts["ham"] for counts in prepared.counts.values()) == 120 + 30
    assert (tmp_path / "out" / "validation_feedback-labelled.html").is_file()
    splits = pd.concat(read_split(tmp_path / "out", name) for name in SPLITS)
    assert splits["source"].value_counts().to_dict() == {"data": 240, "feedback": 30}  # for stage 5's slices

    new.assign(label="junk").to_json(feedback / "more.jsonl", orient="records", lines=True)
    with pytest.raises(DataValidationError, match=r"more\.jsonl(.|\n)*not in \['ham', 'spam'\]"):
        data_stage.data(data, 1, tmp_path, tmp_path / "out2")


def test_control_characters_are_stripped_and_counted_or_refused_naming_the_row_never_cut(tmp_path):
    rows = make_texts(60)
    rows.loc[4, "text"] = "FreeMsg Hey there da\x00rling it's been 3 week's now\x0cand no word back"
    path = tmp_path / "nul.csv"
    rows.to_csv(path, index=False)
    prepared = data_stage.data(data_config(path), 1, tmp_path, tmp_path / "out")
    texts = pd.concat(read_split(tmp_path / "out", split) for split in SPLITS)["text"].tolist()
    assert "FreeMsg Hey there darling it's been 3 week's now and no word back" in texts  # whole, not cut at the NUL
    assert prepared.stripped_control_characters == 1 and prepared.control_characters == "strip"
    assert json.loads((tmp_path / "out" / "validation.json").read_text())["all"]["stripped_control_characters"] == 1
    assert "1 texts held control characters (NUL and other C0 controls" in card_data_section(tmp_path / "out")

    message = bad_data_error(tmp_path, rows, control_characters="refuse")
    assert 'row 6: "FreeMsg Hey there da\\x00rling' in message and "hold control characters" in message


def test_damaged_records_are_skipped_named_and_counted_in_every_format(tmp_path, caplog):
    rows = make_texts(60)
    csv_path = tmp_path / "texts.csv"
    rows.to_csv(csv_path, index=False)
    with open(csv_path, "ab") as out:
        out.write(b"ham,three,fields\nspam,caf\xe9 latin-1\n")  # lines 62 and 63
    feedback = tmp_path / "feedback"
    feedback.mkdir()
    good = rows.assign(text=rows["text"] + " again").head(10).to_json(orient="records", lines=True)
    (feedback / "cut.jsonl").write_text(good + '{"text": "cut off", "lab')  # line 11
    (feedback / "broken.parquet").write_bytes(b"PAR1 not really")
    with caplog.at_level("WARNING"):
        prepared = data_stage.data(data_config(csv_path, feedback_path=str(feedback)), 1, tmp_path, tmp_path / "out")
    assert prepared.skipped_records == 3 and prepared.skipped_files == 1
    assert sum(sum(c.values()) for c in prepared.counts.values()) == 70  # every good row kept
    warned = caplog.text
    assert "texts.csv: line 62: 3 fields for the 2 column names ['label', 'text']" in warned
    assert "texts.csv: line 63: not valid utf-8 text (byte 0xe9)" in warned
    assert "cut.jsonl: line 11: not JSON" in warned and "broken.parquet: not a readable Parquet file" in warned
    report = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert report["all"]["skipped_records"] == 2 and report["feedback-cut"]["skipped_records"] == 1


@pytest.mark.parametrize(
    "content, settings, message",
    [
        (
            "label,text\nham,see you,later\nspam,win,cash now\n",
            {},
            r"no row has the 2 fields of the column names \['label', 'text'\]: 2 rows have 3 fields",
        ),
        (
            "ham\tsee you\tsoon\nspam\twin\tnow\n",
            {"separator": "\t", "header": False, "column_names": ["label", "text"]},
            r"2 rows have 3 fields.*data.separator \(now '\\t'\)",
        ),
        ("text,label,text\na,ham,b\n", {}, r"the column name\(s\) \['text'\] appear more than once"),
        (
            'label,text\nham,"see you\nspam,win\n',
            {},
            r"line 2: a quote opened in this row is never closed.*data.quoting",
        ),
        ("", {}, r"no rows to read"),
    ],
)
def test_a_file_that_does_not_fit_its_format_says_why(tmp_path, content, settings, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        data_stage.data(data_config(path, **settings), 1, tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda rows: rows.assign(label=rows["label"].where(rows.index % 7 != 0, "Spam")), "not among them: ['Spam']"),
        (
            lambda rows: pd.concat([pd.DataFrame({"label": ["label"], "text": ["text"]}), rows]),
            "not among them: ['label']",
        ),
    ],
)
def test_more_labels_than_configured_are_named(tmp_path, change, named):
    message = bad_data_error(tmp_path, change(make_texts(60)))
    assert "more than the 2 of data.labels" in message and named in message


@pytest.mark.slow
def test_a_published_train_and_test_pair_gets_its_validation_split_from_train_with_leakage_checked(tmp_path):
    """TREC as published: a train file and a test file (six imbalanced classes, a header, an extra column)."""
    trec = SHARED_SMS.parents[1] / "trec"
    config = DataConfig(
        train_path=str(trec / "train.tsv"),
        test_path=str(trec / "test.tsv"),
        separator="\t",
        min_rows_per_class=5,
        val_from_train=0.1,
    )
    with pytest.raises(DataValidationError, match=r"texts stand in two splits(.|\n)*of test(.|\n)*on_leakage=drop"):
        data_stage.data(config, 1, tmp_path, tmp_path / "out")
    prepared = data_stage.data(config.model_copy(update={"on_leakage": "drop"}), 1, tmp_path, tmp_path / "out")
    sizes = {split: sum(counts.values()) for split, counts in prepared.counts.items()}
    assert sizes["val"] == round(0.1 * (sizes["train"] + sizes["val"] + prepared.dropped_leaking_texts.get("val", 0)))
    assert sizes["test"] == 500 - prepared.dropped_leaking_texts["test"]
    train, val = prepared.counts["train"], prepared.counts["val"]
    assert abs(val["ABBR"] / sizes["val"] - train["ABBR"] / sizes["train"]) < 0.005  # stratified: the rare class too
    again = data_stage.data(config.model_copy(update={"on_leakage": "drop"}), 1, tmp_path, tmp_path / "again")
    assert again.fingerprint == prepared.fingerprint  # seeded
    with pytest.raises(ValueError, match="give train_path and test_path"):
        DataConfig(train_path="train.tsv", val_path="val.tsv")


def card_data_section(data_dir: Path) -> str:
    """The model card's data section for stage 1's output (it reads the manifest)."""
    from components.evaluate import model_card
    from components.evaluate.card_facts import CardFacts
    from components.handoff import read_manifest

    spec = SimpleNamespace(labels=["ham", "spam"])
    data_meta = {"name": "texts", "licence": "CC0", "citation": ""}
    facts = CardFacts("m", spec, read_manifest(data_dir), data_meta, None, None, None, None)
    return model_card._data(facts)
