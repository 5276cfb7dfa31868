import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import job_for, make_texts, predict_test_split, write_splits

from components.config import LoraConfig, ModelConfig, TrainConfig
from components.handoff import read_split
from components.model import core as model_stage
from components.model.loading import load_classifier
from components.scoring import score

LABELS = ["ham", "spam"]
NO_GPU = not __import__("torch").cuda.is_available()


@pytest.fixture
def data_dir(tmp_path):
    return write_splits(tmp_path / "data", LABELS)


def tune(base, data_dir, tmp_path, strategy="full", epochs=3, name="tuned", device="cpu", precision="fp32", **train):
    from components.fine_tune.core import fine_tune

    model_cfg = ModelConfig(strategy=strategy, max_length=32, lora=LoraConfig(r=4))
    init = tmp_path / f"init-{name}"
    model_stage.model(model_cfg.model_copy(update={"base": str(base)}), LABELS, 0, init)
    train_cfg = TrainConfig(epochs=epochs, batch_size=16, learning_rate=train.pop("learning_rate", 3e-3), **train)
    logged = []
    result = fine_tune(
        job_for(init, data_dir, tmp_path / name, tmp_path / f"ckpt-{name}", model_cfg, train_cfg, device, precision),
        lambda metrics, step: logged.append((step, metrics)),
    )
    return result, logged


@pytest.mark.parametrize(
    "fixture, strategy", [("tiny_bert", "full"), ("tiny_gpt2", "full"), ("tiny_bert", "lora"), ("tiny_gpt2", "partial")]
)
def test_fine_tuning_lowers_the_loss_and_learns_the_task(fixture, strategy, request, data_dir, tmp_path):
    # LoRA on a random tiny base learns slower than full training: more epochs, higher rate.
    lora = strategy == "lora"
    result, logged = tune(
        request.getfixturevalue(fixture),
        data_dir,
        tmp_path,
        strategy,
        epochs=6 if lora else 3,
        learning_rate=2e-2 if lora else 3e-3,
    )
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]
    assert result.best_val_accuracy >= 0.9
    step_losses = [m["train_loss"] for _, m in logged if "learning_rate" in m]
    assert len(step_losses) >= 3  # per-step loss is logged, not only per epoch
    # The saved model is a plain transformers model (LoRA merged) that reloads with the same accuracy.
    probabilities, targets, labels = predict_test_split(result.model_dir, data_dir)
    assert score(probabilities, targets, labels).test_accuracy >= 0.85
    assert not (tmp_path / "tuned" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "tuned" / "label_map.json").read_text()) == {"0": "ham", "1": "spam"}


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("strategy", ["full", "partial", "lora", "head"])
def test_llama_and_qwen2_decoders_fine_tune_with_every_strategy(family, strategy, tiny_decoders, data_dir, tmp_path):
    """Causal LMs loaded for sequence classification: a pad token set (they have none), last-token pooling."""
    spec = model_stage.model(
        ModelConfig(base=str(tiny_decoders[family]), strategy=strategy, lora=LoraConfig(r=4)),
        LABELS,
        0,
        tmp_path / "spec",
    )
    assert spec.is_decoder and spec.model_type == family
    result, _ = tune(
        tiny_decoders[family],
        data_dir,
        tmp_path,
        strategy,
        epochs=2,
        learning_rate=2e-2 if strategy in ("lora", "head") else 3e-3,
    )
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]
    probabilities, targets, labels = predict_test_split(result.model_dir, data_dir)
    assert probabilities.shape == (len(targets), 2)  # the saved model reloads and classifies


@pytest.mark.skipif(not NO_GPU, reason="checks the error of a machine without a GPU")
def test_qlora_without_a_gpu_is_a_clear_error(tiny_decoders, data_dir, tmp_path):
    from components.config import ConfigError

    with pytest.raises(ConfigError, match="model.strategy=qlora needs a CUDA GPU"):
        tune(tiny_decoders["llama"], data_dir, tmp_path, "qlora", epochs=1)


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU (bitsandbytes 4-bit)")
def test_qlora_trains_a_4bit_decoder_and_saves_it_merged_in_full_precision(tiny_decoders, data_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from components.model.loading import load_classifier as load

    quantized, _ = load(str(tiny_decoders["llama"]), LABELS, quantized=True)
    assert any("4bit" in type(m).__name__ for m in quantized.modules())  # bitsandbytes' Linear4bit
    result, _ = tune(
        tiny_decoders["llama"],
        data_dir,
        tmp_path,
        "qlora",
        epochs=3,
        device="cuda",
        precision="bf16",
        learning_rate=2e-2,
    )
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]
    weights = load_file(Path(result.model_dir) / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values()) and not any("lora" in k for k in weights)
    probabilities, targets, labels = predict_test_split(result.model_dir, data_dir)
    assert probabilities.shape == (len(targets), 2)


@pytest.mark.parametrize("fixture, strategy", [("tiny_bert", "head"), ("tiny_gpt2", "partial")])
def test_cached_outputs_stand_in_for_the_frozen_blocks(fixture, strategy, request, data_dir):
    """The top trains on what the frozen blocks would give (eval mode), and they run once, not every epoch."""
    import torch

    from components.fine_tune.frozen_blocks import CachedBlocks, frozen_outputs, standing_in
    from components.fine_tune.session import frozen_block_count
    from components.model.blocks import transformer_blocks
    from components.model.strategies import apply_strategy
    from components.text_batches import encode, predict_logits

    model_cfg = ModelConfig(strategy=strategy)
    model, tokenizer = load_classifier(str(request.getfixturevalue(fixture)), LABELS)
    model = apply_strategy(model, model_cfg)
    rows = read_split(data_dir, "val")
    split = encode(tokenizer, rows["text"].tolist(), 32)
    pad = tokenizer.pad_token_id
    frozen = frozen_block_count(model, model_cfg)
    assert frozen == (2 if strategy == "head" else 1)
    expected = predict_logits(model, split, 8, pad, "cpu", "fp32")
    states = frozen_outputs(model, split, frozen, 5, 64, pad, "cpu", "fp32")  # other batches, other padding
    lowest = transformer_blocks(model)[0]
    calls = []
    lowest.register_forward_hook(lambda *_: calls.append(1))
    stand_in = CachedBlocks()
    with standing_in(model, frozen, stand_in):
        replayed = predict_logits(model, split, 8, pad, "cpu", "fp32", lambda idx: stand_in.feed(states, idx, "cpu"))
    assert calls == []
    torch.testing.assert_close(replayed, expected, atol=1e-5, rtol=1e-4)
    assert transformer_blocks(model)[0] is lowest  # put back for saving


@pytest.mark.parametrize("strategy, attention", [("full", "sdpa"), ("full", "eager"), ("lora", "sdpa")])
def test_the_last_block_runs_for_the_pooled_token_only_with_the_same_logits_and_gradients(
    tiny_bert, strategy, attention
):
    import torch

    from components.fine_tune.pooled_block import first_token_only
    from components.model.blocks import transformer_blocks
    from components.model.strategies import apply_strategy

    model, _ = load_classifier(str(tiny_bert), LABELS)
    model.set_attn_implementation(attention)
    model = apply_strategy(model, ModelConfig(strategy=strategy, lora=LoraConfig(r=4))).eval()
    torch.manual_seed(0)
    ids = torch.randint(5, 90, (6, 12))
    mask = torch.ones_like(ids)
    mask[:3, 7:] = 0  # padded rows: the first token must not attend to padding
    labels = torch.tensor([0, 1, 0, 1, 1, 0])

    def logits_and_gradients():
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    rows = []
    transformer_blocks(model)[-1].intermediate.register_forward_hook(lambda m, args, out: rows.append(out.shape[:2]))
    whole = logits_and_gradients()
    with first_token_only(model):
        pooled = logits_and_gradients()
    assert rows == [(6, 12), (6, 1)]  # the feed-forward of the last block ran once per text
    torch.testing.assert_close(pooled[0], whole[0], atol=1e-6, rtol=1e-5)
    assert pooled[1].keys() == whole[1].keys()
    for name, gradient in whole[1].items():
        torch.testing.assert_close(pooled[1][name], gradient, atol=1e-6, rtol=1e-5, msg=name)
    model(input_ids=ids, attention_mask=mask)
    assert rows[-1] == (6, 12)  # the block is whole again after the context


def test_set_dropout_switches_off_every_dropout_layer(tiny_bert):
    import torch

    from components.model.blocks import set_dropout

    model, _ = load_classifier(str(tiny_bert), LABELS)
    model.train()
    ids = torch.randint(5, 90, (4, 12))

    def twice():
        return model(input_ids=ids).logits, model(input_ids=ids).logits

    first, second = twice()
    assert not torch.equal(first, second)  # dropout draws new masks each pass
    set_dropout(model, 0.0)
    first, second = twice()
    assert torch.equal(first, second)  # hidden, attention and head dropout all off


# A folder here, and an fsspec URI (in-memory: the code path of an object store, where the run resumes elsewhere).
@pytest.mark.parametrize("where", ["folder", "uri"])
def test_an_interrupted_run_resumes_from_its_last_checkpoint(where, tiny_bert, data_dir, tmp_path):
    from components import storage

    checkpoints = str(tmp_path / "ckpt-r") if where == "folder" else f"memory://checkpoints/{tmp_path.name}"
    straight, _ = tune(tiny_bert, data_dir, tmp_path, epochs=3, name="straight")

    class Interrupt(Exception):
        pass

    def stop_in_epoch_two(metrics, step):
        if "val_loss" not in metrics and step > 11 + 3:  # 11 steps per epoch: we are inside epoch 2
            raise Interrupt

    from components.fine_tune.core import fine_tune

    init = tmp_path / "init-straight"
    cfg = ModelConfig(strategy="full", max_length=32), TrainConfig(epochs=3, batch_size=16, learning_rate=3e-3)
    with pytest.raises(Interrupt):
        fine_tune(job_for(init, data_dir, tmp_path / "r", checkpoints, *cfg), stop_in_epoch_two)
    if where == "uri":  # one complete checkpoint, named by LATEST
        assert storage.read_bytes(storage.join(checkpoints, "LATEST")) == b"epoch-0001"
        assert {Path(f).name for f in storage.list_files(storage.join(checkpoints, "epoch-0001"))} == {
            "best.safetensors",
            "last.safetensors",
            "optim.pt",
            "state.json",
        }
    resumed = fine_tune(job_for(init, data_dir, tmp_path / "r", checkpoints, *cfg))
    assert resumed.resumed_from_epoch == 1
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    # Same batches, same weights: resuming gives the uninterrupted run's result.
    assert resumed.best_val_loss == pytest.approx(straight.best_val_loss, rel=1e-4)


def test_early_stopping_restores_the_best_epoch(tiny_bert, data_dir, tmp_path):
    # A learning rate this high makes validation loss rise after the first epochs.
    result, _ = tune(tiny_bert, data_dir, tmp_path, epochs=6, learning_rate=0.2, early_stopping_patience=1)
    best = min(result.history, key=lambda r: r["val_loss"])
    assert result.best_epoch == best["epoch"]
    if result.stopped_early:
        assert result.epochs_run == result.best_epoch + 1
    model, _ = load_classifier(result.model_dir, LABELS)
    assert model is not None


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU")
# partial: the cached outputs of the frozen blocks are fed to the GPU
@pytest.mark.parametrize("fixture, strategy", [("tiny_bert", "full"), ("tiny_gpt2", "partial")])
def test_fine_tuning_on_a_gpu_in_bf16(fixture, strategy, request, data_dir, tmp_path):
    from components.fine_tune.core import fine_tune

    init = tmp_path / "init"
    model_stage.model(ModelConfig(base=str(request.getfixturevalue(fixture)), strategy=strategy), LABELS, 0, init)
    result = fine_tune(
        job_for(
            init,
            data_dir,
            tmp_path / "gpu",
            tmp_path / "ckpt",
            ModelConfig(strategy=strategy, max_length=32),
            TrainConfig(epochs=3, batch_size=16, learning_rate=3e-3),
            "cuda",
            "bf16",
        )
    )
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_val_accuracy >= 0.9


def test_training_batches_cover_every_text_once_within_the_size_and_token_caps():
    import random

    from components.text_batches import EncodedSplit, eval_batches, train_batches

    rng = random.Random(0)
    split = EncodedSplit([[1] * rng.randint(1, 120) for _ in range(500)], None)
    for batches in (train_batches(split, 32, random.Random(1), max_tokens=768), eval_batches(split, 64, 768)):
        assert sorted(i for batch in batches for i in batch) == list(range(500))
        widths = [max(len(split.input_ids[i]) for i in batch) for batch in batches]
        assert all(len(batch) <= 64 and len(batch) * width <= 768 for batch, width in zip(batches, widths))
    batches = train_batches(split, 32, random.Random(1), max_tokens=768)
    assert max(map(len, batches)) == 32  # short texts still fill whole batches
    # A new order each epoch, the same for the same seed (a resumed run replays it).
    rng = random.Random(1)
    first, second = train_batches(split, 32, rng, 768), train_batches(split, 32, rng, 768)
    assert first != second and first == batches


def test_checkpoints_work_where_the_filesystem_has_no_hard_links(tiny_bert, data_dir, tmp_path, monkeypatch):
    import components.fine_tune.checkpoint

    def no_links(src, dst):
        raise OSError("hard links not supported")

    monkeypatch.setattr(components.fine_tune.checkpoint.os, "link", no_links)
    result, _ = tune(tiny_bert, data_dir, tmp_path, epochs=3)
    assert (tmp_path / "ckpt-tuned" / "best.safetensors").is_file()
    assert result.best_val_accuracy >= 0.9


@pytest.mark.slow
def test_two_processes_train_with_ddp_and_an_interrupted_run_resumes_with_two(tiny_bert, data_dir, tmp_path):
    """torchrun with 2 ranks (gloo on CPU): the loss falls, accuracy clears a floor; stopped after its first
    checkpoint, the run resumes from it with 2 ranks again."""
    import signal
    import subprocess
    import time

    from components.fine_tune.torchrun import fine_tune_in_processes, torchrun_command
    from components.handoff import write_job

    init = tmp_path / "init"
    model_cfg = ModelConfig(strategy="full", max_length=32)
    model_stage.model(ModelConfig(base=str(tiny_bert)), LABELS, 0, init)
    train_cfg = TrainConfig(epochs=6, batch_size=16, learning_rate=3e-3, early_stopping_patience=6)
    job = job_for(init, data_dir, tmp_path / "tuned", tmp_path / "ckpt", model_cfg, train_cfg, threads=1)
    first = subprocess.Popen(
        torchrun_command(write_job(tmp_path, job), 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = tmp_path / "ckpt" / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)  # as a pod's end does: torchrun passes it on to the ranks
    first.wait(timeout=60)
    interrupted_after = json.loads(state.read_text())["epoch"]  # 1, unless this machine was slow to stop it
    assert not (tmp_path / "tuned" / "train_result.json").exists()

    resumed = fine_tune_in_processes(replace(job, threads=2), 2)
    assert resumed.resumed_from_epoch == interrupted_after >= 1
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4, 5, 6]
    losses = [r["train_loss"] for r in resumed.history]
    assert losses[-1] < losses[0] and resumed.best_val_accuracy >= 0.9
    probabilities, targets, labels = predict_test_split(resumed.model_dir, data_dir)
    assert score(probabilities, targets, labels).test_accuracy >= 0.85


def test_each_rank_takes_an_equal_share_of_the_same_batches():
    from components.fine_tune.session import Ranks

    batches = [[i] for i in range(7)]
    shares = [Ranks(rank, 2).share(batches) for rank in range(2)]
    assert shares == [[[0], [2], [4], [6]], [[1], [3], [5], [0]]]  # wrapped round: 8 = 4 steps each
    assert Ranks().share(batches) == batches


def test_balanced_class_weights_weigh_each_texts_loss_by_its_class_as_computed_by_hand(tiny_bert):
    import numpy as np
    import torch

    from components.fine_tune.session import balanced_class_weights
    from components.tasks import task_of

    training_loss = task_of("classification").loss

    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert np.allclose(weights, [4 / (2 * 3), 4 / (2 * 1)])  # n / (classes x count)
    assert balanced_class_weights(np.array([0, 0]), 2).tolist() == [0.5, 0.0]  # a class with no text: no weight
    model, tokenizer = load_classifier(str(tiny_bert), LABELS)
    model.eval()
    batch = dict(
        tokenizer(
            ["win cash now", "see you at lunch", "thanks love", "call me later"], padding=True, return_tensors="pt"
        ),
        labels=torch.tensor([1, 0, 0, 0]),
    )
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        weighted = training_loss(model, batch, torch.tensor(balanced_class_weights(batch["labels"].numpy(), 2)))
        plain = training_loss(model, batch)
    per_text = -torch.log_softmax(logits, -1)[torch.arange(4), batch["labels"]]
    by_hand = (2.0 * per_text[0] + (2 / 3) * per_text[1:].sum()) / (2.0 + 3 * (2 / 3))
    assert weighted.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert plain.item() == pytest.approx(per_text.mean().item(), rel=1e-5)
    assert weighted.item() != pytest.approx(plain.item())


def test_fine_tuning_with_balanced_class_weights_learns_imbalanced_data(tmp_path, tiny_bert):
    rows = make_texts(240)
    skewed = rows[:168][(rows[:168]["label"] == "ham") | (rows[:168].index % 8 == 1)]  # ham 84, spam 21
    data_dir = write_splits(tmp_path / "data", LABELS, train_rows=skewed)
    result, _ = tune(tiny_bert, data_dir, tmp_path, class_weights="balanced")
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0] and result.best_val_accuracy >= 0.9
