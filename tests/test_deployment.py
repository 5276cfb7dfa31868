import json

import numpy as np
import pytest
from conftest import job_for

from components.deploy.core import PARITY_TOLERANCE, ParityError
from components.deploy.onnx_classifier import OnnxClassifier
from components.handoff import read_split


@pytest.mark.slow
def test_onnx_export_matches_pytorch_and_serves_int8_only_when_accuracy_holds(tiny_bundle, tiny_run):
    report = json.loads((tiny_bundle / "deployment.json").read_text())
    assert report["parity_passed"] and report["prediction_agreement"] == 1.0
    assert report["max_abs_logit_diff"] <= PARITY_TOLERANCE
    assert report["int8_size_mb"] < report["fp32_size_mb"] / 2
    assert report["served"] == ("int8" if report["fp32_accuracy"] - report["int8_accuracy"] <= 0.005 else "fp32")
    # The bundle alone (no torch model) classifies the test texts.
    test = read_split(tiny_run[0], "test")
    predictions = OnnxClassifier(tiny_bundle / "bundle").predict(test["text"].tolist())
    accuracy = np.mean([p["label"] == label for p, label in zip(predictions, test["label"])])
    assert accuracy >= 0.9 and set(predictions[0]["probabilities"]) == {"ham", "spam"}


def test_dynamic_axes_take_any_batch_and_length(tiny_bundle):
    classifier = OnnxClassifier(tiny_bundle / "bundle")
    texts = ["win"] + ["see you at lunch tomorrow " * 3] * 5 + ["free prize " * 12]
    assert classifier.logits(texts, batch_size=3).shape == (7, 2)


def test_a_failed_parity_check_fails_the_stage(tiny_run, tmp_path, monkeypatch):
    import components.deploy.core as deployment

    real_logits = OnnxClassifier.logits
    monkeypatch.setattr(
        OnnxClassifier, "logits", lambda self, texts, batch_size=32: real_logits(self, texts, batch_size) + 1e-3
    )
    with pytest.raises(ParityError, match="largest logit difference"):
        deployment.deploy(str(tiny_run[1]), str(tiny_run[0]), str(tmp_path))
    assert json.loads((tmp_path / "deployment.json").read_text())["parity_passed"] is False
    assert not (tmp_path / "model_int8.onnx").exists()  # stopped before quantizing


@pytest.mark.slow
def test_a_gpt2_style_decoder_exports_with_parity(tiny_gpt2, tiny_run, tmp_path):
    # Right padding and last-token pooling must survive the export: parity runs padded batches of mixed lengths.
    from components.config import ModelConfig, TrainConfig
    from components.deploy.core import deploy
    from components.fine_tune.core import fine_tune
    from components.model import core as model_stage

    data_dir = tiny_run[0]
    model_cfg = ModelConfig(max_length=32)
    model_stage.model(ModelConfig(base=str(tiny_gpt2)), ["ham", "spam"], 0, tmp_path / "init")
    fine_tune(
        job_for(
            tmp_path / "init",
            data_dir,
            tmp_path / "model",
            tmp_path / "ckpt",
            model_cfg,
            TrainConfig(epochs=1, batch_size=16, learning_rate=3e-3),
        )
    )
    report = deploy(str(tmp_path / "model"), str(data_dir), str(tmp_path / "deploy"))
    assert report.parity_passed and report.max_abs_logit_diff <= PARITY_TOLERANCE


def test_parity_reuses_stage_5s_logits_only_where_they_are_what_it_would_compute(tiny_run, tiny_bundle, tmp_path):
    """Stage 6 compares the ONNX graph with the PyTorch logits stage 5 computed of the same test texts, instead of
    computing them again, where stage 5 ran on the CPU in fp32 and cut no text at another length; the report is the
    same."""
    from components.deploy import core as deployment
    from components.evaluate.core import load_logits_predictor
    from components.handoff import write_test_logits
    from components.model.loading import load_classifier

    texts = read_split(tiny_run[0], "test")["text"].tolist()
    logits = load_logits_predictor(str(tiny_run[1]), ["ham", "spam"], 32, 64, "cpu", "fp32")(texts)
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    write_test_logits(evaluation, logits, "cpu", "fp32", 32)
    tokenizer = load_classifier(str(tiny_run[1]), ["ham", "spam"])[1]
    assert deployment._stage_5_logits(str(evaluation), tokenizer, texts) is not None
    report = deployment.deploy(str(tiny_run[1]), str(tiny_run[0]), str(tmp_path / "out"), evaluation_dir=evaluation)
    assert report.to_dict() == json.loads((tiny_bundle / "deployment.json").read_text())

    # fine-tuning set the tokenizer's limit to 32 tokens; stage 5 at 16 cut this text where the export does not
    long_texts = texts[:-1] + [" ".join(["word"] * 24)]
    for written, checked in (
        (("cuda", "fp32", 32), texts),
        (("cpu", "bf16", 32), texts),
        (("cpu", "fp32", 32), texts[1:]),
        (("cpu", "fp32", 16), long_texts),
    ):
        write_test_logits(evaluation, logits, *written)
        assert deployment._stage_5_logits(str(evaluation), tokenizer, checked) is None, written
    assert deployment._stage_5_logits(None, tokenizer, texts) is None
