"""Generation fine-tuning on this machine, in one run, as tables (docs/benchmarks.md):

- `peer`: our stage 4 against TRL's SFTTrainer (trl 1.16, the field's standard; `pip install -e ".[bench]"`) on
  the same split of the instruction data, base model, LoRA settings, batch size, learning rate, epochs and device:
  time per epoch, peak memory, the test split's response loss (both models scored by the same code). On a CPU the
  peer runs with bf16 and gradient checkpointing off (its defaults made one step 10-20 times slower here) and
  without packing (which wants flash attention).
- `strategies`: full fine-tuning against LoRA (ranks and targets) on the bundled LLM: time, peak memory, test
  perplexity, ROUGE-L on sampled test prompts.
- `classifier`: the bundled LLM as an SMS spam classifier (the ch06 recipe; LoRA, last-token pooling) beside the
  bundled encoder.

Each side trains in its own process, so peak RSS is its own.

    python benchmarks/generation.py peer --epochs 1
    python benchmarks/generation.py strategies --epochs 1 --train-examples 400
    python benchmarks/generation.py classifier --data ../shared/data/sms_spam/SMSSpamCollection
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train_speed import environment_of, peak_memory  # noqa: E402

INSTRUCTIONS = "configs/instructions.yaml"
STRATEGIES = {  # name -> overrides of configs/instructions.yaml
    "full": ["model.strategy=full"],
    "lora r16 all-linear": ["model.strategy=lora", "model.lora.r=16", "model.lora.alpha=32"],
    "lora r8 q,v": [
        "model.strategy=lora",
        "model.lora.r=8",
        "model.lora.alpha=16",
        "model.lora.target_modules=[q_proj, v_proj]",
    ],
    "lora r64 all-linear": ["model.strategy=lora", "model.lora.r=64", "model.lora.alpha=128"],
    "partial (last 4 blocks)": ["model.strategy=partial", "model.trainable_blocks=4"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=["peer", "strategies", "classifier"])
    parser.add_argument("--data", help="the data file (default: the config's)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-examples", type=int, help="train on the first N of the train split (default: all)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--only", help="strategies: a comma-separated subset of the names")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import peft  # noqa: F401  (imported before the clock starts, on both sides)
        import transformers.trainer  # noqa: F401

        result = {"ours": train_ours, "trl": train_trl, "classifier": train_classifier}[args.worker](args)
        Path(args.work, "result.json").write_text(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="generation-bench-") as tmp:
        {"peer": peer_table, "strategies": strategies_table, "classifier": classifier_table}[args.table](
            args, Path(tmp)
        )


def config(args, extra: list[str] = (), path: str = INSTRUCTIONS):
    from components.config import load_config

    sets = [f"train.epochs={args.epochs}", f"train.device={args.device}", "data.pii=off", *extra]
    if args.data:
        sets.append(f"data.path={Path(args.data).resolve()}")
    if args.train_examples:
        sets.append(f"train.max_train_samples={args.train_examples}")
    return load_config(path, sets)


def prepare(args, tmp: Path, path: str = INSTRUCTIONS) -> str:
    """Stage 1 once for every side (personal data is not looked for: the GPU machine has no Presidio)."""
    from components.tasks import task_of

    cfg = config(args, path=path)
    task_of(cfg.task).prepare_data(cfg.model_copy(update={"work_dir": str(tmp)}), tmp / "data")
    return str(tmp / "data")


def run_worker(args, worker: str, data_dir: str, tmp: Path, sets: list[str] = ()) -> dict:
    work = Path(tempfile.mkdtemp(dir=tmp))
    command = [sys.executable, __file__, args.table, "--worker", worker, "--work", str(work), "--data", data_dir]
    command += ["--epochs", str(args.epochs), "--device", args.device]
    command += ["--train-examples", str(args.train_examples)] if args.train_examples else []
    for value in sets:
        command += ["--set", value]
    print(f"  {worker} {' '.join(sets)} ...", file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    result = json.loads((work / "result.json").read_text())
    print(f"  {worker}: {json.dumps(result)}", file=sys.stderr, flush=True)  # kept, should a later side fail
    return result


def train_ours(args) -> dict:
    """Stages 2 and 4 as `lifecycle run` does them, timed from stage 4's start; the test split scored after."""
    from components.fine_tune.core import fine_tune
    from components.handoff import FineTuneJob
    from components.model import core as model_stage

    cfg = config(args, args.set)
    data_dir, work = args.data, Path(args.work)
    model_stage.model(cfg.model, None, cfg.seed, work / "init")
    env = environment_of(cfg)
    started = time.perf_counter()
    job = FineTuneJob(
        str(work / "init"),
        data_dir,
        str(work / "model"),
        str(work / "ckpt"),
        cfg.model,
        cfg.train,
        env.device,
        env.precision,
        cfg.seed,
        task="generation",
    )
    result = fine_tune(job)
    train_s, memory = time.perf_counter() - started, peak_memory(args.device)
    return scored(
        str(work / "model"), data_dir, cfg, env, train_s / result.epochs_run, memory, sample=args.table == "strategies"
    )


def train_trl(args) -> dict:
    """TRL's SFTTrainer on the same prompt/completion pairs, LoRA as ours, evaluation and a checkpoint each epoch
    (as our stage 4 does); the adapter merged and the test split scored by our code."""
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from components.handoff import read_split
    from components.model.loading import resolve_base

    cfg = config(args)
    work, lora = Path(args.work), cfg.model.lora
    source = resolve_base(cfg.model.base)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="float32")

    def dataset(split: str, limit: int | None = None):
        rows = read_split(args.data, split).head(limit)
        return datasets.Dataset.from_dict({"prompt": rows["prompt"].tolist(), "completion": rows["response"].tolist()})

    env = environment_of(cfg)
    started = time.perf_counter()
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(work / "trl"),
            num_train_epochs=args.epochs,
            per_device_train_batch_size=cfg.train.batch_size,
            per_device_eval_batch_size=cfg.train.eval_batch_size,
            learning_rate=cfg.train.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=cfg.train.warmup_ratio,  # a float below 1: a share of the steps (transformers 5)
            weight_decay=cfg.train.weight_decay,
            max_grad_norm=cfg.train.max_grad_norm,
            max_length=cfg.model.max_length,
            packing=False,
            bf16=False,
            gradient_checkpointing=False,
            eval_strategy="epoch",
            save_strategy="epoch",
            logging_steps=10,
            report_to="none",
            use_cpu=args.device == "cpu",
            seed=cfg.seed,
            dataloader_num_workers=0,
        ),
        train_dataset=dataset("train", cfg.train.max_train_samples),
        eval_dataset=dataset("val"),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    trainer.train()
    train_s, memory = time.perf_counter() - started, peak_memory(args.device)
    trainer.model.merge_and_unload().save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    return scored(str(work / "model"), args.data, cfg, env, train_s / args.epochs, memory)


def scored(model_dir: str, data_dir: str, cfg, env, epoch_s: float, memory: dict, sample: bool = False) -> dict:
    """The test split's response loss and perplexity by the same code for every side; ROUGE-L on sampled prompts
    when asked (greedy generation costs minutes on a CPU)."""
    from components.evaluate.generative import Generator, Placement, on_test
    from components.handoff import read_split

    test = read_split(data_dir, "test")
    where = Placement(env.device, env.precision, cfg.train.eval_batch_size, cfg.train.max_batch_tokens)
    generator = Generator(model_dir, where)
    if sample:
        import random

        picked = sorted(random.Random(cfg.seed).sample(range(len(test)), min(cfg.generation.eval_examples, len(test))))
        found = on_test(generator, test, picked, cfg.generation, cfg.model.max_length, cfg.seed, "benchmark")
        loss, rouge = found.loss, found.scores["rouge_l"]
    else:
        loss, rouge = (
            generator.losses(test["prompt"].tolist(), test["response"].tolist(), cfg.model.max_length).mean_loss(),
            None,
        )
    return {
        "epoch_s": round(epoch_s, 1),
        "test_loss": loss,
        "test_perplexity": math.exp(loss),
        "rouge_l": rouge,
        **memory,
    }


def peer_table(args, tmp: Path) -> None:
    data_dir = prepare(args, tmp)
    ours, peer = run_worker(args, "ours", data_dir, tmp), run_worker(args, "trl", data_dir, tmp)
    print(f"\nLoRA on the bundled LLM, {args.epochs} epoch(s) on {args.device}; ratio = ours / TRL\n")
    print("| side | time per epoch | peak RSS | test response loss | test perplexity |")
    print("|---|---|---|---|---|")
    for name, r in (("TRL SFTTrainer", peer), ("ours", ours)):
        print(
            f"| {name} | {r['epoch_s']:.0f} s | {r['peak_rss_mb']} MB | {r['test_loss']:.4f} "
            f"| {r['test_perplexity']:.3f} |"
        )
    print(
        f"| **ratio** | **{ours['epoch_s'] / peer['epoch_s']:.2f}×** "
        f"| {ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}× "
        f"| {ours['test_loss'] - peer['test_loss']:+.4f} | |"
    )


def strategies_table(args, tmp: Path) -> None:
    data_dir = prepare(args, tmp)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(STRATEGIES)
    rows = {name: run_worker(args, "ours", data_dir, tmp, STRATEGIES[name]) for name in names}
    print(f"\nThe bundled LLM, {args.epochs} epoch(s) on {args.device}\n")
    print("| strategy | time per epoch | peak RSS | test perplexity | ROUGE-L |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['epoch_s']:.0f} s | {r['peak_rss_mb']} MB | {r['test_perplexity']:.3f} "
            f"| {r['rouge_l']:.3f} |"
        )


def train_classifier(args) -> dict:
    """Stages 2 and 4 of the SMS config on a base, then the test split's accuracy."""
    from benchmarks.train_speed import fine_tune_once
    from components.evaluate.core import load_logits_predictor
    from components.handoff import read_manifest, read_split
    from components.model import core as model_stage
    from components.scoring import class_indices

    cfg = config(args, args.set, path="configs/sms_spam.yaml")
    work, labels = Path(args.work), read_manifest(args.data).labels
    model_stage.model(cfg.model, labels, cfg.seed, work / "init")
    env = environment_of(cfg)
    started = time.perf_counter()
    result = fine_tune_once(cfg, env, str(work / "init"), args.data, work)
    train_s, memory = time.perf_counter() - started, peak_memory(args.device)
    test = read_split(args.data, "test")
    logits = load_logits_predictor(str(work / "model"), labels, cfg.model.max_length, 64, env.device, env.precision)(
        test["text"].tolist()
    )
    accuracy = float((logits.argmax(-1) == class_indices(test, labels)).mean())
    return {
        "epoch_s": round(train_s / result.epochs_run, 1),
        "epochs": result.epochs_run,
        "test_accuracy": accuracy,
        **memory,
    }


def classifier_table(args, tmp: Path) -> None:
    data_dir = prepare(args, tmp, path="configs/sms_spam.yaml")
    sides = {
        "bundled encoder (MiniLM-L6), full": ["model.base=bundled", "model.strategy=full"],
        "bundled LLM (SmolLM2-135M), LoRA": ["model.base=bundled-llm", "model.strategy=lora", "model.max_length=128"],
    }
    rows = {name: run_worker(args, "classifier", data_dir, tmp, sets) for name, sets in sides.items()}
    print(f"\nSMS spam (ch06 recipe: balanced, 70/10/20), {args.epochs} epoch(s) at most on {args.device}\n")
    print("| model | time per epoch | epochs | peak RSS | test accuracy |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['epoch_s']:.0f} s | {r['epochs']} | {r['peak_rss_mb']} MB | {r['test_accuracy']:.2%} |")


if __name__ == "__main__":
    main()
