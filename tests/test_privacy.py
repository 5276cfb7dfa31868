"""Personal data: found and counted in stage 1, redacted or refused as data.pii says, stored in the prediction log
only in serve.log_pii's form, drift reference in that same form; private fine-tuning with Opacus."""

import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import as_args, job_for, make_texts, tiny_settings

from components.config import ConfigError, DataConfig, ModelConfig, PiiConfig, PrivacyConfig, TrainConfig
from components.data import core as data_stage
from components.data.table_readers import DataError
from components.data.validation import DataValidationError
from components.errors import LifecycleError
from components.handoff import SPLITS, read_split
from components.pii import HASH, REDACT, LogPii

# Made-up personal data, two values of each kind, each planted in three texts of its own.
PLANTED = {
    "EMAIL_ADDRESS": ["jane.doe@example.com", "r.patel@mailbox.org"],
    "PHONE_NUMBER": ["07700 900123", "+1 212-555-0187"],
    "CREDIT_CARD": ["4111 1111 1111 1111", "5555555555554444"],
    "IBAN_CODE": ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"],
    "IP_ADDRESS": ["192.168.10.27", "10.20.30.40"],
    "URL": ["https://win-prizes.example.net/claim", "www.cheap-offers.example.com"],
}
VALUES = [value for values in PLANTED.values() for value in values]


def texts_with_personal_data(n: int = 240) -> pd.DataFrame:
    """make_texts(n) with each planted value at the start of three texts (a different three for each value; not
    after the number that ends each text, which a phone number would run into)."""
    rows = make_texts(n)
    for k, value in enumerate(VALUES):
        for i in (3 * k, 3 * k + 1, 3 * k + 2):
            rows.loc[7 * i % n, "text"] = f"{value} {rows.loc[7 * i % n, 'text']}"
    return rows


def kinds_in(texts: pd.Series) -> dict[str, int]:
    """Texts holding each kind of planted value."""
    counts = {
        kind: int(texts.map(lambda t, planted=values: any(v in t for v in planted)).sum())
        for kind, values in PLANTED.items()
    }
    return {kind: n for kind, n in counts.items() if n}


@pytest.fixture(scope="module")
def pii_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pii") / "texts.csv"
    texts_with_personal_data().to_csv(path, index=False)
    return path


def run_stage_1(path: Path, out: Path, pii: str):
    return data_stage.data(
        DataConfig(path=str(path), labels=["ham", "spam"], min_rows_per_class=5, pii=pii), 1, out.parent, out
    )


def test_each_kind_is_found_and_counted_per_split(pii_csv, tmp_path):
    manifest = run_stage_1(pii_csv, tmp_path / "data", "report")
    assert manifest.pii == "report" and "PERSON" not in manifest.pii_entities  # no spaCy model: names unchecked
    for split in SPLITS:
        assert manifest.pii_found[split] == kinds_in(read_split(tmp_path / "data", split)["text"]), split
    assert {kind: sum(found.get(kind, 0) for found in manifest.pii_found.values()) for kind in PLANTED} == {
        kind: 6 for kind in PLANTED
    }


def test_redact_leaves_no_value_in_the_splits_or_the_reports(pii_csv, tmp_path):
    reported = run_stage_1(pii_csv, tmp_path / "reported", "report")
    manifest = run_stage_1(pii_csv, tmp_path / "data", "redact")
    assert manifest.pii_found == reported.pii_found  # the same findings, now replaced
    texts = pd.concat(read_split(tmp_path / "data", split)["text"] for split in SPLITS)
    assert not any(texts.str.contains(value, regex=False).any() for value in VALUES)
    for kind in PLANTED:
        assert texts.str.contains(f"<{kind}>", regex=False).sum() == 6, kind
    for report in (tmp_path / "data").iterdir():  # the manifest, the validation report, the data docs
        if report.suffix != ".parquet":
            assert not any(value in report.read_text() for value in VALUES), report.name


def test_fail_stops_stage_1_naming_the_rows_and_not_the_values(pii_csv, tmp_path):
    with pytest.raises(DataValidationError, match="data.pii=fail") as raised:
        run_stage_1(pii_csv, tmp_path / "data", "fail")
    message = str(raised.value)
    first_rows = sorted(7 * i % 240 + 2 for i in range(3 * len(VALUES)))[:5]  # + 2: the header, lines from 1
    assert re.findall(r"row (\d+)", message) == [str(row) for row in first_rows]
    assert "36 texts" in message and not any(value in message for value in VALUES)
    assert not (tmp_path / "data" / "train.parquet").exists()


def test_off_looks_for_nothing_and_says_so(pii_csv, tmp_path):
    from components.config import validate_config

    assert validate_config({"data": {"path": "x.csv", "pii": False}}).data.pii == "off"  # YAML's reading of off
    manifest = run_stage_1(pii_csv, tmp_path / "data", "off")
    assert manifest.pii_entities == [] and manifest.pii_found == {split: {} for split in SPLITS}
    texts = pd.concat(read_split(tmp_path / "data", split)["text"] for split in SPLITS)
    assert texts.str.contains("07700 900123", regex=False).sum() == 3  # as they came


def test_only_texts_that_can_hold_a_finding_go_to_presidio_and_the_findings_are_the_same():
    """The scan sends Presidio only the texts that can hold a finding (a digit, @, a link, two colons): over the whole
    SMS collection, the planted values and bare domains that only a context word could make a finding, it gives
    every text the same form and kinds as sending it every text; a batch without such a text never loads it."""
    from conftest import SHARED_SMS

    from components.pii import PiiScanner

    texts = pd.read_csv(SHARED_SMS, sep="\t", header=None, quoting=3)[1].tolist() + [
        *texts_with_personal_data(60)["text"],
        "the link is dinner.ms, see the website shop.example",
        "dead:beef::cafe is the address",
    ]
    filtered, every_text = PiiScanner(PiiConfig(), load=False), PiiScanner(PiiConfig())
    every_text.may_hold = lambda text: True
    assert sum(map(filtered.may_hold, texts)) < len(texts) / 2
    found = [filtered.transform(t, REDACT) for t in texts]
    assert found == [every_text.transform(t, REDACT) for t in texts]
    assert sum(bool(kinds) for _, kinds in found) > 400

    lazy = PiiScanner(PiiConfig(), load=False)
    assert lazy.texts_in(["see you at lunch", "ok thanks!"], REDACT) == ["see you at lunch", "ok thanks!"]
    assert "_engines" not in vars(lazy)  # Presidio never loaded
    assert PiiScanner(PiiConfig(spacy_model="en_core_web_sm"), load=False).may_hold("see you")  # names: in any text


def test_stage_1s_redacted_texts_are_what_the_logs_redact_form_makes_of_each_split(tmp_path):
    """With data.pii=report stage 1 keeps each split's texts redacted where they hold personal data, which stages 6
    and 7 read instead of scanning again: they are what the prediction log's redact form makes of the split."""
    from conftest import SHARED_SMS

    from components.handoff import read_redacted, read_texts

    sms = pd.read_csv(SHARED_SMS, sep="\t", header=None, quoting=3, names=["label", "text"]).head(400)
    path = tmp_path / "texts.csv"
    pd.concat([texts_with_personal_data(), sms]).to_csv(path, index=False)
    run_stage_1(path, tmp_path / "data", "report")
    log_form = LogPii(REDACT)
    for split in SPLITS:
        texts, redacted = read_texts(tmp_path / "data", split), read_redacted(tmp_path / "data", split)
        assert redacted and log_form.drift_texts(texts, redacted) == log_form.drift_form()(texts), split
    assert read_redacted(run_stage_1(path, tmp_path / "redact", "redact").out_dir, "test") is None


def test_names_need_a_spacy_model_the_user_has(tmp_path):
    from components.pii import PiiScanner

    with pytest.raises(ConfigError, match="pii.spacy_model: 'en_core_web_nothing' is neither an installed"):
        PiiScanner(PiiConfig(spacy_model="en_core_web_nothing"))
    with pytest.raises(ConfigError, match="SOCIAL_NUMBER: not an entity"):
        from components.config import validate_config

        validate_config({"data": {"path": "x.csv"}, "pii": {"entities": ["SOCIAL_NUMBER"]}})


def test_the_log_stores_only_its_form_and_hashes_repeat_under_one_key(tmp_path, monkeypatch):
    from monitoring.prediction_log import PredictionLog, read_predictions

    texts = ["call 07700 900123 or mail jane.doe@example.com", "again: 07700 900123", "see you at lunch"]
    redacted = LogPii(REDACT).text_form()(texts)
    assert redacted == ["call <PHONE_NUMBER> or mail <EMAIL_ADDRESS>", "again: <PHONE_NUMBER>", "see you at lunch"]
    hashed = LogPii(HASH).text_form(hash_key="k" * 16)(texts)
    digests = [re.findall(r"[0-9a-f]{64}", text) for text in hashed]
    assert digests[0][0] == digests[1][0] and len(digests[0]) == 2 and hashed[2] == texts[2]  # the same number
    assert LogPii(HASH).text_form(hash_key="another key 1234")(texts[1:2]) != hashed[1:2]
    monkeypatch.delenv("LIFECYCLE_PII_HASH_KEY", raising=False)
    with pytest.raises(LifecycleError, match="LIFECYCLE_PII_HASH_KEY .*unset"):
        LogPii(HASH).text_form()

    log = PredictionLog(str(tmp_path / "log"), flush_texts=100, text_form=LogPii(REDACT).text_form())
    log.write(texts, ["spam", "spam", "ham"], [None] * 3, "m", "1")
    log.close()
    assert read_predictions(str(tmp_path / "log"))["text"].tolist() == redacted
    assert "07700" not in "".join(p.read_text() for p in (tmp_path / "log").iterdir())


@pytest.mark.slow
def test_monitoring_redacted_traffic_of_the_training_mix_raises_no_drift(pii_csv, tiny_run, tmp_path):
    """The reference is built in the log's form: the redaction itself is no drift (built from the texts as they
    came, the same traffic is drift)."""
    from components.config import LifecycleConfig
    from components.deploy.core import deploy
    from components.deploy.onnx_classifier import OnnxClassifier
    from components.handoff import bundle_dir
    from monitoring.core import monitor
    from monitoring.drift import check_drift, profile_texts

    rows = make_texts(480, seed=5)
    heavy = rows.assign(text=[f"{VALUES[i % len(VALUES)]} {t}" if i % 2 else t for i, t in enumerate(rows["text"])])
    heavy[:240].to_csv(tmp_path / "mix.csv", index=False)
    run_stage_1(tmp_path / "mix.csv", tmp_path / "data", "report")
    deploy(
        str(tiny_run[1]), str(tmp_path / "data"), str(tmp_path / "deploy"), reference_size=240, log_pii=LogPii(REDACT)
    )
    form = LogPii(REDACT).text_form()
    bundle = bundle_dir(tmp_path / "deploy")
    cfg = LifecycleConfig(data=DataConfig(path="x.csv"))
    traffic = form(heavy["text"][240:].tolist())  # as the server logs them
    result = monitor(bundle, pd.DataFrame({"text": traffic}), cfg, tmp_path / "report")
    assert not result.drift_detected, result.reason
    as_they_came = profile_texts(OnnxClassifier(bundle), read_split(tmp_path / "data", "train")["text"].tolist())
    assert check_drift(as_they_came, profile_texts(OnnxClassifier(bundle), traffic), cfg.monitor)[0].drift_detected
    # A log kept in another form than the reference's gets no verdict (which could start a retraining).
    keeping = LifecycleConfig(data=DataConfig(path="x.csv"), serve={"log_pii": "keep"})
    with pytest.raises(
        DataError,
        match="as serve.log_pii=redact made them, and the prediction log stores them as serve.log_pii=keep: no verdict",
    ):
        monitor(bundle, heavy[["text"]].iloc[240:], keeping, tmp_path / "report")


@pytest.mark.slow
def test_private_fine_tuning_spends_at_most_its_epsilon_for_head_partial_and_lora(tiny_bert, tiny_run, tmp_path):
    from components.fine_tune.core import fine_tune
    from components.model import core as model_stage

    data_dir = tiny_run[0]
    for strategy in ("head", "partial", "lora"):
        model_cfg = ModelConfig(base=str(tiny_bert), strategy=strategy, max_length=32)
        model_stage.model(model_cfg, ["ham", "spam"], 0, tmp_path / strategy / "init")
        result = fine_tune(
            job_for(
                tmp_path / strategy / "init",
                data_dir,
                tmp_path / strategy / "model",
                tmp_path / strategy / "ckpt",
                model_cfg,
                TrainConfig(epochs=2, batch_size=16, learning_rate=3e-3, privacy=PrivacyConfig(epsilon=8)),
            )
        )
        assert 7 < result.epsilon_spent <= 8.0 + 1e-6, strategy  # the noise spends the budget, no more
        assert result.hyperparameters["privacy"] == {"epsilon": 8, "delta": 1e-5, "max_grad_norm": 1.0}


def test_a_strategy_or_layer_opacus_cannot_train_privately_is_a_config_error(tiny_bert, tmp_path):
    import torch

    from components.config import validate_config
    from components.fine_tune.privacy import check_layers

    with pytest.raises(ConfigError, match="model.strategy=qlora cannot train privately"):
        validate_config(
            {"data": {"path": "x.csv"}, "model": {"strategy": "qlora"}, "train": {"privacy": {"epsilon": 3}}}
        )
    with pytest.raises(ConfigError, match="train.privacy trains in one process"):
        validate_config({"data": {"path": "x.csv"}, "train": {"processes": 2, "privacy": {"epsilon": 3}}})
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(ConfigError, match="train.privacy: Opacus cannot train these layers privately: .*BatchNorm"):
        check_layers(model)


@pytest.mark.slow
def test_redact_through_the_whole_run_leaves_no_value_in_any_file_or_the_tracking_store(
    pii_csv, tmp_path, tiny_bert, monkeypatch
):
    """Every file the run wrote (splits, MLflow's store and artifacts, the registered versions, the reports) is
    searched for the planted values; Parquet files are read, the others searched as bytes."""
    from pipelines.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = tiny_settings(tmp_path / "work", pii_csv, tiny_bert, "data.pii=redact")
    assert main(["run", *as_args(settings)]) == 0
    searched = 0
    for path in (tmp_path / "work").rglob("*"):
        if not path.is_file():
            continue
        searched += 1
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            content = "\n".join(
                frame[c].astype(str).str.cat(sep="\n") for c in frame.columns if frame[c].dtype == object
            )
        else:
            content = path.read_bytes().decode("utf-8", errors="replace")
        assert not [value for value in VALUES if value in content], path
    assert searched > 50
    # The model learned from redacted texts, so the served bundle scores texts redacted the same way.
    from components.deploy.onnx_classifier import OnnxClassifier

    served = OnnxClassifier(next((tmp_path / "work").rglob("input_pii.json")).parent)
    sent = "07700 900123 win free prize cash claim now"
    assert (served.logits([sent]) == served.logits(["<PHONE_NUMBER> win free prize cash claim now"])).all()
    card = next((tmp_path / "work").rglob("model_card.md")).read_text()
    assert "each replaced by its typed placeholder" in card and "Trained without differential privacy" in card
    assert "Personal data (texts holding each kind; data.pii=redact):" in card and "| CREDIT_CARD |" in card


def test_names_are_found_with_a_spacy_pipeline_the_user_gives(tmp_path):
    """A pipeline of the user's (here a blank one with an entity ruler that knows one name, saved to a folder)."""
    import spacy

    from components.pii import PiiScanner

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "PERSON", "pattern": "Jane Doe"}])
    nlp.to_disk(tmp_path / "names")
    scanner = PiiScanner(PiiConfig(spacy_model=str(tmp_path / "names")))
    assert scanner.transform("ask Jane Doe on 07700 900123", REDACT) == (
        "ask <PERSON> on <PHONE_NUMBER>",
        ["PHONE_NUMBER", "PERSON"],
    )


@pytest.mark.slow
def test_a_private_run_logs_the_epsilon_spent_and_the_card_states_it(tmp_path, tiny_bert, monkeypatch):
    import mlflow

    from pipelines.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_texts(240).to_csv(tmp_path / "texts.csv", index=False)
    settings = tiny_settings(
        tmp_path / "work",
        tmp_path / "texts.csv",
        tiny_bert,
        "model.strategy=head",
        "train.privacy.epsilon=8",
        "gate.min_accuracy=0",
        "gate.min_macro_f1=0",
    )
    assert main(["run", *as_args(settings)]) == 0
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    (fine_tune,) = client.search_runs(
        [client.get_experiment_by_name("sms-spam").experiment_id], "attributes.run_name = '4-fine-tune'"
    )
    assert 7 < fine_tune.data.metrics["epsilon_spent"] <= 8 + 1e-6
    assert fine_tune.data.params["placement"] == "in_process"
    card = next((tmp_path / "work").rglob("model_card.md")).read_text()
    assert re.search(
        r"Trained with differential privacy \(DP-SGD, Opacus\): ε = [78]\.\d\d spent of the\s+target 8", card
    ), card
