"""Stage 6, deployment: export to ONNX, prove it gives the PyTorch model's answers, quantize to int8 when that
costs no accuracy, and assemble the bundle that is registered and served."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.decision import Decision
from components.deploy.onnx_classifier import EMBEDDING_OUTPUT, OnnxClassifier
from components.errors import RunFailure
from components.handoff import (
    BUNDLE_FILES,
    BUNDLE_MODEL,
    CALIBRATION,
    DEPLOYMENT,
    INPUT_PII,
    REFERENCE,
    bundle_dir,
    read_labels,
    read_redacted,
    read_split,
    write_json,
)
from components.pii import KEEP, LogPii
from components.statistics import softmax
from monitoring.drift import profile_texts

PARITY_TOLERANCE = 1e-4  # largest absolute logit difference allowed for fp32
ONNX_OPSET = 23  # the first with the Attention op
INT8_MAX_ACCURACY_DROP = 0.005  # int8 is served only within 0.5 points of fp32's test accuracy


class ParityError(RunFailure):
    """The ONNX export does not give the PyTorch model's answers."""


@dataclass
class DeploymentReport:
    test_size: int
    max_abs_logit_diff: float  # fp32 ONNX vs PyTorch on the whole test split
    prediction_agreement: float
    parity_passed: bool
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    fp32_size_mb: float | None = None
    int8_size_mb: float | None = None
    served: str | None = None  # "int8" or "fp32"
    reason: str = ""
    reference_pii: str = KEEP  # the form of the drift reference's texts (serve.log_pii when it was deployed)

    def to_dict(self) -> dict:
        return asdict(self)


def export_onnx(model, tokenizer, path: str | Path) -> None:
    """torch.onnx (dynamo) with dynamic batch and sequence axes; checked with onnx.checker. Opset 23 exports
    attention as one ONNX Attention op, which onnxruntime runs faster than the decomposed form."""
    import inspect

    import onnx
    import torch

    takes_positions = "position_ids" in inspect.signature(model.forward).parameters  # not peft's prompt tuning

    class Classifier(torch.nn.Module):  # the graph's interface: token ids and mask in; logits, embedding out
        def __init__(self):
            super().__init__()
            self.model = model.eval()

        def forward(self, input_ids, attention_mask):
            # Position ids shaped like the batch, as the model makes them: without them the exporter gives Llama's
            # and Qwen2's RotaryEmbedding op a batch of one, which onnxruntime refuses for larger batches.
            positions = (
                {"position_ids": torch.arange(input_ids.shape[1]).expand(input_ids.shape)} if takes_positions else {}
            )
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **positions)
            # The sentence embedding (mean of the last hidden states over real tokens), for embedding drift. Prompt
            # tuning puts its virtual tokens before the text's: the last positions are the text's.
            hidden = out.hidden_states[-1][:, -input_ids.shape[1] :]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return out.logits, (hidden * mask).sum(1) / mask.sum(1)

    example = tokenizer(
        ["a short text", "a somewhat longer text for the example batch"], padding=True, return_tensors="pt"
    )
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    program = torch.onnx.export(
        Classifier().eval(),
        (example["input_ids"], example["attention_mask"]),
        dynamo=True,
        opset_version=ONNX_OPSET,
        input_names=["input_ids", "attention_mask"],
        output_names=["logits", EMBEDDING_OUTPUT],
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        verbose=False,
    )
    program.save(str(path))
    onnx.checker.check_model(str(path))


def deploy(
    model_dir: str,
    data_dir: str,
    out_dir: str,
    reference_size: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    temperature: float = 1.0,
    log_pii: LogPii | None = None,
    input_pii: dict | None = None,
    evaluation_dir: str | None = None,
) -> DeploymentReport:
    """Stage 6 up to the registry: out_dir/bundle holds the model to serve (its probabilities scaled by the
    `temperature` stage 5 kept) and its monitoring reference, its texts in the prediction log's form (`log_pii`:
    their personal data redacted or hashed as serve.log_pii says; redacted by default), out_dir/deployment.json
    the report.
    `input_pii`: the pii section the training texts were redacted with (data.pii=redact), with which the bundle
    redacts what it scores. `evaluation_dir`: stage 5's report, whose PyTorch logits of the test split parity
    reuses where they are what it would compute. Raises ParityError when the fp32 export does not give the PyTorch
    model's answers."""
    from components.model.loading import load_classifier
    from components.scoring import class_indices

    out, bundle = Path(out_dir), bundle_dir(out_dir)
    _assemble_bundle(model_dir, bundle, temperature, input_pii)
    labels = read_labels(bundle)
    model, tokenizer = load_classifier(model_dir, labels)
    test = read_split(data_dir, "test")
    texts, targets = test["text"].tolist(), class_indices(test, labels)
    # 1. fp32 export and parity with PyTorch on the whole test split
    export_onnx(model, tokenizer, bundle / BUNDLE_MODEL)
    fp32_logits = OnnxClassifier(bundle).logits(texts, batch_size)
    torch_logits = _stage_5_logits(evaluation_dir, tokenizer, texts)
    if torch_logits is None:
        torch_logits = _torch_logits(model, tokenizer, texts, batch_size)
    report = parity_report(torch_logits, fp32_logits)
    if not report.parity_passed:
        _write_report(out, report)
        raise ParityError(report.reason)
    # 2. int8 dynamic quantization, served only when it keeps fp32's accuracy
    _quantize_and_choose(out, bundle, texts, targets, labels, fp32_logits, batch_size, report)
    # 3. the drift reference: training texts in the log's form as the served graph sees them (stage 7 compares
    # the logged traffic with it; another form would be drift of its own)
    train, log_pii, redacted = read_split(data_dir, "train"), log_pii or LogPii(), read_redacted(data_dir, "train")
    rows = train.sample(min(reference_size, len(train)), random_state=seed)
    sample = log_pii.drift_texts(
        rows["text"].tolist(),
        None if redacted is None else {i: redacted[row] for i, row in enumerate(rows.index) if row in redacted},
    )
    profile_texts(OnnxClassifier(bundle), sample).to_parquet(bundle / REFERENCE, index=False)
    report.reference_pii = log_pii.form
    _write_report(out, report)
    shutil.copy(out / DEPLOYMENT, bundle / DEPLOYMENT)
    return report


def decide_parity(
    max_abs_logit_diff: float, agreement: float, test_size: int, tolerance: float = PARITY_TOLERANCE
) -> Decision[bool]:
    """Does the fp32 export give the PyTorch model's answers? Every prediction the same and every logit within
    `tolerance`."""
    passed = max_abs_logit_diff <= tolerance and agreement == 1.0
    return Decision(
        passed,
        f"ONNX parity {'passed' if passed else 'failed'} on {test_size} test texts: largest "
        f"logit difference {max_abs_logit_diff:.2e} (allowed {tolerance:.0e}), predictions agree "
        f"on {agreement:.2%} (needed 100%)",
    )


def choose_served_format(
    fp32_accuracy: float, int8_accuracy: float, max_drop: float = INT8_MAX_ACCURACY_DROP
) -> Decision[str]:
    """int8 when it costs at most `max_drop` of fp32's test accuracy, else fp32."""
    served = "int8" if fp32_accuracy - int8_accuracy <= max_drop else "fp32"
    return Decision(
        served,
        f"int8 test accuracy {int8_accuracy:.4f} vs fp32 {fp32_accuracy:.4f}: "
        + ("within" if served == "int8" else "more than")
        + f" {max_drop:.1%} lower, so {served} is served",
    )


def parity_report(torch_logits: np.ndarray, onnx_logits: np.ndarray) -> DeploymentReport:
    diff = float(np.abs(onnx_logits - torch_logits).max())
    agreement = float((onnx_logits.argmax(1) == torch_logits.argmax(1)).mean())
    parity = decide_parity(diff, agreement, len(torch_logits))
    return DeploymentReport(len(torch_logits), diff, agreement, parity.value, reason=parity.reason)


def _assemble_bundle(model_dir: str, bundle: Path, temperature: float, input_pii: dict | None) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_FILES:
        if (Path(model_dir) / name).is_file():
            shutil.copy(Path(model_dir) / name, bundle / name)
    if temperature != 1.0:
        write_json(bundle, CALIBRATION, {"temperature": temperature})
    if input_pii is not None:
        write_json(bundle, INPUT_PII, input_pii)


def _torch_logits(model, tokenizer, texts: list[str], batch_size: int) -> np.ndarray:
    from components.text_batches import encode, predict_logits

    split = encode(tokenizer, texts, tokenizer.model_max_length)
    return predict_logits(model, split, batch_size, tokenizer.pad_token_id, "cpu", "fp32").numpy()


def _stage_5_logits(evaluation_dir: str | None, tokenizer, texts: list[str]) -> np.ndarray | None:
    """Stage 5's PyTorch logits of these texts where they are what _torch_logits would give: the same model on the
    CPU in fp32, and every text cut at the same token (stage 5 at model.max_length, the export at the tokenizer's
    limit); else None."""
    from components.handoff import read_test_logits

    saved = read_test_logits(evaluation_dir) if evaluation_dir else None
    if saved is None:
        return None
    logits, device, precision, max_length = saved
    if (device, precision) != ("cpu", "fp32") or len(logits) != len(texts):
        return None
    limit = tokenizer.model_max_length
    if max_length != limit:
        longest = max((len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]), default=0)
        if longest > min(max_length, limit):
            return None
    return logits


def _quantize_and_choose(
    out: Path,
    bundle: Path,
    texts: list[str],
    targets: np.ndarray,
    labels: list[str],
    fp32_logits: np.ndarray,
    batch_size: int,
    report: DeploymentReport,
) -> None:
    """Both graphs beside the bundle, the one choose_served_format picks in it, the figures in the report."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from components.scoring import score

    shutil.move(bundle / BUNDLE_MODEL, out / "model_fp32.onnx")
    # Not the attention op: the quantizer would turn the ONNX Attention op into a QAttention that cannot load.
    quantize_dynamic(
        str(out / "model_fp32.onnx"),
        str(bundle / "model_int8.onnx"),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm", "Gather"],
    )
    int8_probabilities = OnnxClassifier(bundle, "model_int8.onnx").probabilities(texts, batch_size)
    shutil.move(bundle / "model_int8.onnx", out / "model_int8.onnx")
    report.fp32_accuracy = score(softmax(fp32_logits), targets, labels).test_accuracy
    report.int8_accuracy = score(int8_probabilities, targets, labels).test_accuracy
    report.fp32_size_mb = (out / "model_fp32.onnx").stat().st_size / 2**20
    report.int8_size_mb = (out / "model_int8.onnx").stat().st_size / 2**20
    choice = choose_served_format(report.fp32_accuracy, report.int8_accuracy)
    report.served, report.reason = choice.value, choice.reason
    shutil.copy(out / f"model_{report.served}.onnx", bundle / BUNDLE_MODEL)


def _write_report(out: Path, report: DeploymentReport) -> None:
    write_json(out, DEPLOYMENT, report.to_dict())
