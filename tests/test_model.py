import pytest

from components.config import LoraConfig, ModelConfig
from components.model import core as model_stage
from components.model.blocks import count_parameters, transformer_blocks
from components.model.loading import load_classifier
from components.model.strategies import apply_strategy

LABELS = ["ham", "spam"]


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2"])
def test_partial_trains_the_last_blocks_final_norm_and_head_only(fixture, request):
    model, _ = load_classifier(str(request.getfixturevalue(fixture)), LABELS)
    apply_strategy(model, ModelConfig(strategy="partial"))
    names = trainable_names(model)
    blocks = transformer_blocks(model)
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert not any(p.requires_grad for p in blocks[0].parameters())
    assert not any("embed" in n or ".wte." in n or ".wpe." in n for n in names)
    head = "classifier" if fixture == "tiny_bert" else "score"
    assert any(n.startswith(head) for n in names)
    if fixture == "tiny_gpt2":
        assert "transformer.ln_f.weight" in names  # the final norm sits above the blocks


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2"])
def test_head_strategy_freezes_every_block(fixture, request):
    model, _ = load_classifier(str(request.getfixturevalue(fixture)), LABELS)
    apply_strategy(model, ModelConfig(strategy="head"))
    assert not any(p.requires_grad for block in transformer_blocks(model) for p in block.parameters())
    total, trainable = count_parameters(model)
    assert 0 < trainable < total / 10


@pytest.mark.parametrize("fixture, targets", [("tiny_bert", {"query", "value"}), ("tiny_gpt2", {"c_attn"})])
def test_lora_uses_per_architecture_default_targets_and_trains_adapters_and_head(fixture, targets, request, tmp_path):
    spec = model_stage.model(
        ModelConfig(base=str(request.getfixturevalue(fixture)), strategy="lora", lora=LoraConfig(r=4)),
        LABELS,
        0,
        tmp_path,
    )
    assert set(spec.adapted_modules) == targets
    assert 0 < spec.trainable_parameters < spec.total_parameters


def test_decoder_gets_a_pad_token_and_right_padding(tiny_gpt2):
    model, tokenizer = load_classifier(str(tiny_gpt2), LABELS)
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "right"
    assert model.config.pad_token_id == tokenizer.eos_token_id
    assert model.config.id2label == {0: "ham", 1: "spam"}


def test_initialised_model_is_saved_as_safetensors_with_seeded_head(tiny_bert, tmp_path):
    first = model_stage.model(ModelConfig(base=str(tiny_bert)), LABELS, 7, tmp_path / "a")
    model_stage.model(ModelConfig(base=str(tiny_bert)), LABELS, 7, tmp_path / "b")
    assert first.trainable_parameters == first.total_parameters
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert not list((tmp_path / "a").glob("*.bin"))


def test_a_model_that_does_not_exist_is_a_clear_error(tmp_path):
    from components.model.blocks import ModelError

    with pytest.raises(ModelError, match="no-such-model"):
        load_classifier(str(tmp_path / "no-such-model"), LABELS)
