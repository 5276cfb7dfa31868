"""Every fine-tuning strategy on one data set, one row per run, each in its own process: trainable parameters,
training time, peak memory, test accuracy and macro-F1 with bootstrap 95% intervals. The split and the base model
with its seeded head are made once (stages 1 and 2); each row is stage 4 with the strategy's defaults, then the
test split scored as stage 5 scores it.

    python benchmarks/strategies.py --config configs/sms_spam.yaml \\
        --set data.path=../shared/data/sms_spam/SMSSpamCollection
    python benchmarks/strategies.py --config configs/trec.yaml --rows strategies
    python benchmarks/strategies.py --config configs/sms_spam.yaml --set data.path=... --rows lora-grid
    python benchmarks/strategies.py --config configs/sms_spam.yaml --set data.path=... --set model.strategy=head \\
        --rows privacy
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

from benchmarks.train_speed import environment_of, fine_tune_once, peak_rss_kib  # noqa: E402

# Each row: its name and the --set overrides that make it.
STRATEGY_ROWS = {
    "full": ["model.strategy=full"],
    "partial": ["model.strategy=partial"],
    "lora": ["model.strategy=lora"],
    "head": ["model.strategy=head"],
    "adapter": ["model.strategy=adapter"],
    "ia3": ["model.strategy=peft", "model.peft.method=ia3"],
    "prompt_tuning": ["model.strategy=peft", "model.peft.method=prompt_tuning", "model.peft.num_virtual_tokens=20"],
}
# LoRA at ranks 4, 8 and 16 with alpha 1x and 2x the rank, on the attention's query and value (peft's default for
# BERT) against every linear layer.
LORA_GRID = {
    f"lora r{r} a{alpha} {name}": [
        "model.strategy=lora",
        f"model.lora.r={r}",
        f"model.lora.alpha={alpha}",
        f"model.lora.target_modules={targets}",
    ]
    for name, targets in (("attention", "null"), ("all-linear", "all-linear"))
    for r in (4, 8, 16)
    for alpha in (r, 2 * r)
}
# The configured strategy (--set model.strategy=...) with DP-SGD (train.privacy) at three privacy budgets and
# without.
PRIVACY_ROWS = {"no privacy": []} | {f"ε={epsilon:g}": [f"train.privacy.epsilon={epsilon}"] for epsilon in (8, 3, 1)}
ROWS = {"strategies": STRATEGY_ROWS, "lora-grid": LORA_GRID, "privacy": PRIVACY_ROWS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the data set's config (how to read and split it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument(
        "--rows", default="strategies", help=f"one of {', '.join(ROWS)}, or row names of strategies, comma-separated"
    )
    parser.add_argument("--json", help="write the results here as well")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = train_and_score(args.config, args.set + json.loads(args.worker), Path(args.work))
        Path(args.work, "result.json").write_text(json.dumps(result))
        return
    rows = ROWS.get(args.rows) or {name: STRATEGY_ROWS[name] for name in args.rows.split(",") if name in STRATEGY_ROWS}
    if not rows:
        parser.error(f"--rows: expected one of {', '.join(ROWS)} or of {', '.join(STRATEGY_ROWS)}")
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="strategies-") as tmp:
        overrides = args.set + prepare(args.config, args.set, Path(tmp))
        for name, row in rows.items():
            work = Path(tmp) / f"row{len(results)}"
            work.mkdir()
            with open(work / "row.log", "w") as log:  # the worker's own output; shown only when it fails
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--config",
                        args.config,
                        "--worker",
                        json.dumps(row),
                        "--work",
                        str(work),
                    ]
                    + [f"--set={o}" for o in overrides],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if done.returncode:
                sys.exit(f"{name}: failed\n{(work / 'row.log').read_text()[-3000:]}")
            results.append({"row": name, **json.loads((work / "result.json").read_text())})
            print(f"{name}: {results[-1]['train_s']:.1f} s, test accuracy {results[-1]['accuracy']:.2%}", flush=True)
    print_table(results, args, time.perf_counter() - started)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def prepare(config: str, overrides: list[str], tmp: Path) -> list[str]:
    """Stages 1 and 2 once for every row: the split and the base model with its seeded head. Returns the overrides
    that point the rows at them."""
    from components.config import load_config
    from components.data import core as data_stage
    from components.model import core as model_stage

    cfg = load_config(config, overrides)
    manifest = data_stage.data(cfg.data, cfg.seed, tmp / "downloads", tmp / "data", cfg.pii)
    print(
        f"data: {manifest.summary()}; personal data (data.pii={manifest.pii}) per split: {manifest.pii_found}",
        flush=True,
    )
    model_stage.model(cfg.model.model_copy(update={"strategy": "full"}), manifest.labels, cfg.seed, tmp / "init")
    return [f"work_dir={tmp}"]


def train_and_score(config: str, overrides: list[str], work: Path) -> dict:
    """Stage 4 for the row, timed from loading the model to the saved model, then the test split scored."""
    from components.config import load_config
    from components.evaluate.core import load_logits_predictor
    from components.handoff import read_manifest, read_model_spec, read_split
    from components.scoring import class_indices, score
    from components.statistics import bootstrap_intervals, softmax

    cfg = load_config(config, overrides)
    tmp = Path(cfg.work_dir)
    data_dir = str(tmp / "data")
    env = environment_of(cfg)
    started = time.perf_counter()
    result = fine_tune_once(cfg, env, str(tmp / "init"), data_dir, work)
    train_s, peak_mb = time.perf_counter() - started, peak_rss_kib() / 1024
    labels, test = read_manifest(data_dir).labels, read_split(data_dir, "test")
    logits = load_logits_predictor(
        result.model_dir, labels, cfg.model.max_length, cfg.train.eval_batch_size, env.device, env.precision
    )(test["text"].tolist())
    targets = class_indices(test, labels)
    metrics = score(softmax(logits), targets, labels)
    intervals = bootstrap_intervals(targets, logits.argmax(1), len(labels), cfg.seed)
    spec = read_model_spec(result.model_dir)
    return {
        "trainable_parameters": spec.trainable_parameters,
        "total_parameters": spec.total_parameters,
        "train_s": round(train_s, 1),
        "epochs_run": result.epochs_run,
        "peak_rss_mb": round(peak_mb),
        "batch_size": cfg.train.batch_size,
        "learning_rate": cfg.train.learning_rate,
        "accuracy": metrics.test_accuracy,
        "accuracy_ci": intervals["accuracy"],
        "macro_f1": metrics.test_macro_f1,
        "macro_f1_ci": intervals["macro_f1"],
        "test_size": metrics.test_size,
        "epsilon_spent": result.epsilon_spent,
    }


def print_table(results: list[dict], args, elapsed: float) -> None:
    print(
        f"\n{args.config} {' '.join(args.set)}: {len(results)} rows in {elapsed / 60:.1f} min, "
        f"{results[0]['test_size'] if results else 0} test texts\n"
    )
    print(
        "| row | trainable parameters | lr | epochs | train time | peak RSS | test accuracy (95% CI) | "
        "macro-F1 (95% CI) | ε spent |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        share = r["trainable_parameters"] / r["total_parameters"]
        (a_low, a_high), (f_low, f_high) = r["accuracy_ci"], r["macro_f1_ci"]
        print(
            f"| {r['row']} | {r['trainable_parameters']:,} ({share:.2%}) | {r['learning_rate']:g} | "
            f"{r['epochs_run']} | {r['train_s']:.1f} s | {r['peak_rss_mb']:,} MB | "
            f"{r['accuracy']:.2%} ({a_low:.2%}-{a_high:.2%}) | {r['macro_f1']:.4f} ({f_low:.4f}-{f_high:.4f}) | "
            + ("none" if r["epsilon_spent"] is None else f"{r['epsilon_spent']:.2f}")
            + " |"
        )


if __name__ == "__main__":
    main()
