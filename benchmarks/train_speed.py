"""Fine-tuning speed on this machine, in one run: our fine-tuning stage vs a plain Hugging Face Trainer script
(the peer), on the same split, base model and device. Prints a table per strategy: training wall time,
samples/s, peak memory, test accuracy and cross-entropy, and ours as a share of the peer's time.

The peer uses the settings tutorials give: batch size 8, lr 5e-5 (full, partial) or 1e-3 (LoRA r8 on the
attention query/value), dynamic padding, evaluation and a checkpoint each epoch, bf16 on a GPU. Ours uses the
defaults of `lifecycle run` for the strategy. Both train for --epochs. Each side runs in its own process, so
peak RSS is that side's own.

    python benchmarks/train_speed.py --data ../shared/data/sms_spam/SMSSpamCollection --epochs 3
    python benchmarks/train_speed.py --data ... --model DIR --strategies partial --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEER_BATCH_SIZE = 8
PEER_LEARNING_RATE = {"full": 5e-5, "partial": 5e-5, "head": 5e-5, "lora": 1e-3}
STRATEGIES = ("full", "partial", "lora", "head")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the data file (read as --config describes it)")
    parser.add_argument("--config", default="configs/sms_spam.yaml", help="how to read and split the data")
    parser.add_argument("--model", default="bundled", help="a local model directory (default: bundled MiniLM)")
    parser.add_argument("--strategies", default="full,partial,lora")
    parser.add_argument("--epochs", type=int, default=3, help="for both sides")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", help="write the results here as well")
    parser.add_argument("--worker", choices=["ours", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        # Both sides import the libraries before their timer starts: a cost of starting Python, not of training.
        import peft  # noqa: F401
        import transformers.trainer  # noqa: F401

        result = (train_ours if args.worker == "ours" else train_peer)(args)
        Path(args.work, f"{args.worker}.json").write_text(json.dumps(result))
        return

    strategies = [s.strip() for s in args.strategies.split(",")]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"--strategies: unknown {sorted(unknown)}; choose from {', '.join(STRATEGIES)}")
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        data_dir = prepare_split(args, Path(tmp))
        results = []
        for strategy in strategies:
            sides = {}
            for side in ("peer", "ours"):
                work = Path(tmp) / strategy / side
                work.mkdir(parents=True)
                print(f"\n== {strategy}: {side} ==", flush=True)
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        side,
                        "--strategy",
                        strategy,
                        "--work",
                        str(work),
                        "--data",
                        str(data_dir),
                        "--model",
                        args.model,
                        "--epochs",
                        str(args.epochs),
                        "--device",
                        args.device,
                        "--config",
                        args.config,
                    ],
                    check=True,
                )
                sides[side] = json.loads((work / f"{side}.json").read_text())
            results.append({"strategy": strategy, **sides})
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def prepare_split(args, tmp: Path) -> Path:
    """Stages 1 and 2 as `lifecycle run` does them, once for every run: the split (validation, undersampling,
    stratified split) and the base model with its seeded new head, which our side starts from."""
    from components.config import load_config
    from components.data import core as data_stage
    from components.model import core as model_stage

    cfg = load_config(args.config, [f"data.path={Path(args.data).resolve()}", f"model.base={args.model}"])
    # Personal data is not looked for: the split is what both sides train on, and the GPU machine has no Presidio.
    manifest = data_stage.data(cfg.data.model_copy(update={"pii": "off"}), cfg.seed, tmp / "downloads", tmp / "data")
    model_stage.model(
        cfg.model.model_copy(update={"strategy": "full"}), manifest.labels, cfg.seed, tmp / "data" / "init"
    )
    return tmp / "data"


def environment_of(cfg):
    """Stage 3 for this config, before the clock starts: it probes the hardware (on a GPU it sets up CUDA)."""
    from components.environment import core as environment_stage

    return environment_stage.environment(cfg.train.device, cfg.train.precision, cfg.train.threads, cfg.seed, {})


def fine_tune_once(cfg, env, init_dir: str, data_dir: str, work: Path):
    """Stage 4 in this process, as `lifecycle run` trains, in stage 3's environment `env`."""
    from components.fine_tune.core import fine_tune
    from components.handoff import FineTuneJob

    job = FineTuneJob(
        init_dir,
        data_dir,
        str(work / "model"),
        str(work / "checkpoint"),
        cfg.model,
        cfg.train,
        env.device,
        env.precision,
        cfg.seed,
    )
    return fine_tune(job)


def train_ours(args) -> dict:
    """Stage 4 with the strategy's defaults, timed, then the test split through stage 5's evaluation."""
    import torch

    from components.config import load_config
    from components.evaluate.core import load_logits_predictor
    from components.handoff import read_manifest, read_split
    from components.scoring import class_indices
    from components.statistics import softmax

    cfg = load_config(
        args.config,
        [
            f"data.path={args.data}",
            f"model.base={args.model}",
            f"model.strategy={args.strategy}",
            f"train.epochs={args.epochs}",
            f"train.device={args.device}",
        ],
    )
    work = Path(args.work)
    env = environment_of(cfg)
    started = time.perf_counter()
    result = fine_tune_once(cfg, env, str(Path(args.data) / "init"), args.data, work)
    train_s, memory = time.perf_counter() - started, peak_memory(args.device)
    labels, test = read_manifest(args.data).labels, read_split(args.data, "test")
    logits = load_logits_predictor(
        str(work / "model"), labels, cfg.model.max_length, cfg.train.eval_batch_size, env.device, env.precision
    )(test["text"].tolist())
    probabilities, targets = softmax(logits), class_indices(test, labels)
    settings = {
        "batch_size": cfg.train.batch_size,
        "learning_rate": cfg.train.learning_rate,
        "epochs_run": result.epochs_run,
        "precision": env.precision,
    }
    train_rows = len(read_split(args.data, "train"))
    return side_result(
        train_s, train_rows * result.epochs_run, torch.log(torch.from_numpy(probabilities)), targets, memory, settings
    )


def train_peer(args) -> dict:
    """A plain Trainer script: tokenize with the tokenizer, pad per batch, train, evaluate each epoch."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from components.config import LoraConfig, ModelConfig, load_config
    from components.handoff import SPLITS, read_manifest, read_split
    from components.model.loading import resolve_base
    from components.model.strategies import apply_strategy
    from components.text_batches import encode, predict_logits

    max_length = load_config(args.config, [f"data.path={args.data}"]).model.max_length  # as ours truncates
    precision = "bf16" if args.device == "cuda" else "fp32"
    torch.manual_seed(123)
    labels = read_manifest(args.data).labels
    splits = {s: read_split(args.data, s) for s in SPLITS}
    started = time.perf_counter()
    source = resolve_base(args.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(labels))
    model.config.pad_token_id = tokenizer.pad_token_id
    # The same parameters train as in ours: the last block and everything above it, or LoRA r8 on query/value.
    model = apply_strategy(model, ModelConfig(strategy=args.strategy, lora=LoraConfig(r=8, alpha=16, dropout=0.1)))

    def dataset(rows):
        encoded = tokenizer(rows["text"].tolist(), truncation=True, max_length=max_length)
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": labels.index(label)}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], rows["label"])
        ]

    training_args = TrainingArguments(
        output_dir=str(Path(args.work) / "trainer"),
        per_device_train_batch_size=PEER_BATCH_SIZE,
        per_device_eval_batch_size=PEER_BATCH_SIZE,
        num_train_epochs=args.epochs,
        learning_rate=PEER_LEARNING_RATE[args.strategy],
        weight_decay=0.01,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        logging_strategy="epoch",
        bf16=precision == "bf16",
        use_cpu=args.device == "cpu",
        seed=123,
        report_to="none",
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset(splits["train"]),
        eval_dataset=dataset(splits["val"]),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.train()
    train_s, memory = time.perf_counter() - started, peak_memory(args.device)
    test = encode(
        tokenizer, splits["test"]["text"].tolist(), max_length, [labels.index(v) for v in splits["test"]["label"]]
    )
    logits = predict_logits(trainer.model, test, 64, tokenizer.pad_token_id, args.device, precision)
    settings = {
        "batch_size": PEER_BATCH_SIZE,
        "learning_rate": PEER_LEARNING_RATE[args.strategy],
        "epochs_run": args.epochs,
        "precision": precision,
    }
    return side_result(
        train_s, len(splits["train"]) * args.epochs, torch.log_softmax(logits, -1), test.labels, memory, settings
    )


def peak_memory(device: str) -> dict:
    """This process's peak memory so far: taken when training ends, before the test split is scored."""
    import torch

    memory = {"peak_rss_mb": round(peak_rss_kib() / 1024)}
    if device == "cuda":
        memory["gpu_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return memory


def peak_rss_kib() -> int:
    """VmHWM: this process's own high-water mark. Not ru_maxrss, which a spawned process inherits from its
    parent (here the parent holds the base model)."""
    status = Path("/proc/self/status")
    if status.exists():
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # bytes on macOS


def side_result(train_s: float, samples: int, log_probs, targets, memory: dict, settings: dict) -> dict:
    """The same figures for both sides; test metrics from log-probabilities."""
    import torch

    targets = torch.as_tensor(targets)
    return {
        "train_s": round(train_s, 2),
        "samples_per_s": round(samples / train_s, 1),
        "test_accuracy": (log_probs.argmax(-1) == targets).float().mean().item(),
        "test_loss": torch.nn.functional.nll_loss(log_probs.float(), targets).item(),
        **memory,
        "settings": settings,
    }


def print_table(results: list[dict], args) -> None:
    gpu = args.device == "cuda"
    print(f"\n{args.epochs} epochs on {args.device}; ratio = ours / peer\n")
    gpu_column = "GPU max allocated | " if gpu else ""
    print(f"| strategy | side | batch, lr | train time | samples/s | peak RSS | {gpu_column}test accuracy | test CE |")
    print("|---|---|---|---|---|---|" + ("---|" if gpu else "") + "---|---|")
    for row in results:
        for side in ("peer", "ours"):
            r = row[side]
            s = r["settings"]
            cells = [
                row["strategy"],
                side,
                f"{s['batch_size']}, {s['learning_rate']:g}",
                f"{r['train_s']:.1f} s",
                f"{r['samples_per_s']:.1f}",
                f"{r['peak_rss_mb']} MB",
            ]
            if gpu:
                cells.append(f"{r['gpu_max_allocated_mb']} MB")
            cells += [f"{r['test_accuracy']:.2%}", f"{r['test_loss']:.4f}"]
            print("| " + " | ".join(cells) + " |")
        ours, peer = row["ours"], row["peer"]
        cells = [
            row["strategy"],
            "**ratio**",
            "",
            f"**{ours['train_s'] / peer['train_s']:.2f}×**",
            f"{ours['samples_per_s'] / peer['samples_per_s']:.2f}×",
            f"{ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}×",
        ]
        if gpu:
            cells.append(f"{ours['gpu_max_allocated_mb'] / max(peer['gpu_max_allocated_mb'], 1):.2f}×")
        cells += [
            f"{100 * (ours['test_accuracy'] - peer['test_accuracy']):+.2f} points",
            f"{ours['test_loss'] - peer['test_loss']:+.4f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
