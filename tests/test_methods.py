"""The fine-tuning methods beyond full, partial, LoRA and head: any peft method by its own config (model.peft) and
bottleneck adapters (model.strategy: adapter), on tiny encoders and decoders, from training to the served graph."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import job_for, wait_until_ready, write_splits

from components.config import AdapterConfig, ConfigError, ModelConfig, PeftMethodConfig, TrainConfig, validate_config
from components.handoff import BOTTLENECK_ADAPTERS, PEFT_ADAPTER, read_model_spec, read_split
from components.model import core as model_stage
from components.model.blocks import ModelError
from components.model.loading import load_classifier
from pipelines.tracking_server import free_port

LABELS = ["ham", "spam"]
SPAM, HAM = "win free prize cash claim now call", "see you at lunch tomorrow thanks love"

# (base fixture, model config, saved beside the base): merged methods leave a plain model, the others their adapter.
METHODS = {
    "bert-ia3": ("tiny_bert", {"strategy": "peft", "peft": {"method": "ia3"}}, None),
    "bert-prompt_tuning": (
        "tiny_bert",
        {"strategy": "peft", "peft": {"method": "prompt_tuning", "num_virtual_tokens": 4}},
        PEFT_ADAPTER,
    ),
    "bert-adapter": ("tiny_bert", {"strategy": "adapter", "adapter": {"size": 8}}, BOTTLENECK_ADAPTERS),
    "gpt2-ia3": ("tiny_gpt2", {"strategy": "peft", "peft": {"method": "IA3"}}, None),
    "gpt2-adapter": (
        "tiny_gpt2",
        {"strategy": "adapter", "adapter": {"size": 8, "activation": "gelu"}},
        BOTTLENECK_ADAPTERS,
    ),
    "llama-adapter": (
        "tiny_llama",
        {"strategy": "adapter", "adapter": {"size": 8, "after": ["feed_forward"]}},
        BOTTLENECK_ADAPTERS,
    ),
}


@pytest.fixture(scope="module")
def tiny_llama(tiny_decoders):
    return tiny_decoders["llama"]


def test_an_unknown_peft_method_or_argument_is_a_config_error_naming_it(tmp_path):
    def error(peft: dict) -> str:
        with pytest.raises(ConfigError) as caught:
            validate_config(
                {"data": {"path": "x.csv"}, "model": {"strategy": "peft", "peft": peft}}, str(tmp_path / "c.yaml")
            )
        return str(caught.value)

    message = error({"method": "ia4"})
    assert "model.peft" in message and "'ia4' is not a method of peft" in message and "ia3" in message
    message = error({"method": "ia3", "target_modulez": ["query"]})
    assert "'target_modulez' is not an argument of peft's IA3Config" in message and "target_modules" in message
    assert "num_virtual_tokens" in error({"method": "prompt_tuning", "num_virtual_tokens": "many"})
    with pytest.raises(ConfigError, match="needs model.peft.method"):
        validate_config({"data": {"path": "x.csv"}, "model": {"strategy": "peft"}}, str(tmp_path / "c.yaml"))
    assert PeftMethodConfig(method="Prompt_Tuning", num_virtual_tokens=8).peft_config().num_virtual_tokens == 8


@pytest.mark.parametrize(
    "fixture, method, message",
    [
        (
            "tiny_gpt2",
            "prompt_tuning",
            "prompt_tuning on the decoder gpt2: its classification head would read a padding",
        ),
        ("tiny_bert", "prefix_tuning", "prefix_tuning on bert: peft passes the prefix as past_key_values"),
    ],
)
def test_a_prompt_style_method_the_model_cannot_take_is_refused_at_stage_2(fixture, method, message, request, tmp_path):
    """Prompt tuning on a decoder: peft gives it embeddings, not ids, so its head would read the batch's last
    position, a padding token. Prefix tuning: peft 0.21 looks for past_key_values, which transformers 5 renamed."""
    cfg = ModelConfig(
        base=str(request.getfixturevalue(fixture)), strategy="peft", peft={"method": method, "num_virtual_tokens": 4}
    )
    with pytest.raises(ModelError, match=message):
        model_stage.model(cfg, LABELS, 0, tmp_path)


@pytest.mark.parametrize(
    "fixture, expected",
    [
        ("tiny_bert", ["attention.output.dense", "output.dense"]),
        ("tiny_gpt2", ["attn.c_proj", "mlp.c_proj"]),
        ("tiny_llama", ["self_attn.o_proj", "mlp.down_proj"]),
    ],
)
def test_adapters_follow_the_attention_and_feed_forward_output_of_every_block(fixture, expected, request):
    import torch

    from components.model.blocks import count_parameters, transformer_blocks
    from components.model.bottleneck import ADAPTER_CHILD
    from components.model.strategies import apply_strategy

    model, tokenizer = load_classifier(str(request.getfixturevalue(fixture)), LABELS)
    batch = tokenizer([SPAM, HAM + " and more words"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model.eval()(**batch).logits
    model = apply_strategy(model, ModelConfig(strategy="adapter", adapter=AdapterConfig(size=4)))
    for block in transformer_blocks(model):
        adapted = sorted(name for name, module in block.named_modules() if hasattr(module, ADAPTER_CHILD))
        assert adapted == sorted(expected)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all(
        ADAPTER_CHILD in name
        or name.startswith(("classifier", "score", "bert.pooler"))
        or "ln_f" in name
        or name.startswith("model.norm")
        for name in trained
    )
    assert count_parameters(model)[1] < count_parameters(model)[0] / 2
    with torch.no_grad():  # a new adapter is the identity: the base model's outputs
        torch.testing.assert_close(model(**batch).logits, before)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_exports_with_parity_serves_and_loads_back(method, request, tmp_path):
    import torch

    from components.deploy.core import deploy
    from components.fine_tune.core import fine_tune
    from components.pyfunc_model import TextClassifier

    fixture, settings, beside = METHODS[method]
    base = request.getfixturevalue(fixture)
    model_cfg = ModelConfig(base=str(base), max_length=32, **settings)
    data_dir = write_splits(tmp_path / "data", LABELS)
    init = tmp_path / "init"
    stage2 = model_stage.model(model_cfg.model_copy(update={"strategy": "full"}), LABELS, 0, init)
    train_cfg = TrainConfig(epochs=3, batch_size=16, early_stopping_patience=3).for_strategy(model_cfg)
    result = fine_tune(job_for(init, data_dir, tmp_path / "model", tmp_path / "ckpt", model_cfg, train_cfg))
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    spec = read_model_spec(result.model_dir)
    assert 0 < spec.trainable_parameters < stage2.total_parameters / 2
    for name in (PEFT_ADAPTER, BOTTLENECK_ADAPTERS):
        assert (tmp_path / "model" / name).exists() == (name == beside)

    # Loads back: the pyfunc that stage 5 registers gives the trained model's answers, not its base's.
    texts = read_split(data_dir, "test")["text"].tolist()
    pyfunc = TextClassifier()
    pyfunc.load_context(SimpleNamespace(artifacts={"model_dir": result.model_dir}))
    served_by_torch = np.stack(
        pyfunc.predict(None, texts)["probabilities"].map(lambda p: [p[label] for label in LABELS])
    )
    base_model, tokenizer = load_classifier(str(init), LABELS)
    with torch.no_grad():
        untrained = torch.softmax(base_model.eval()(**tokenizer(texts, padding=True, return_tensors="pt")).logits, -1)
    assert np.abs(served_by_torch - untrained.numpy()).max() > 1e-3

    # Exports with parity (deploy raises ParityError otherwise) and serves through MLServer.
    report = deploy(result.model_dir, str(data_dir), str(tmp_path / "deploy"))
    assert report.parity_passed and report.max_abs_logit_diff <= 1e-4
    served = served_probabilities(tmp_path / "deploy" / "bundle", texts[:8], tmp_path)
    np.testing.assert_allclose(served.sum(1), 1, atol=1e-5)
    if report.served == "fp32":
        np.testing.assert_allclose(served, served_by_torch[:8], atol=1e-4)
    else:  # int8 is served where it keeps fp32's test accuracy
        assert (served.argmax(1) == served_by_torch[:8].argmax(1)).mean() >= 0.75


def served_probabilities(bundle, texts: list[str], tmp_path) -> np.ndarray:
    """The texts through MLServer serving the bundle, as a KServe V2 client (tritonclient) sends them."""
    import tritonclient.http as httpclient

    port = free_port(3)
    code = (
        f"from components.deploy.server import Limits, serve; "
        f"serve({str(bundle)!r}, 'method', '1', {port}, {str(tmp_path / 'predictions')!r}, Limits())"
    )
    with open(tmp_path / "server.out", "w") as sink:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process, output=tmp_path / "server.out")
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
        inputs = httpclient.InferInput("text", [len(texts)], "BYTES")
        inputs.set_data_from_numpy(np.array(texts, dtype=object), binary_data=False)
        result = client.infer(
            "method", [inputs], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)]
        )
        return result.as_numpy("probabilities")
    finally:
        process.kill()
        process.wait()
