"""Serving speed on this machine, in one run: the fine-tuned model through transformers (PyTorch eager) vs the
ONNX export under onnxruntime, fp32 and int8. Prints p50/p99 latency for one text, throughput for batches of 32
(the median of interleaved rounds), and test accuracy.

    python benchmarks/serving.py                       # the newest `lifecycle run` under work/kfp
    python benchmarks/serving.py --run-dir work/kfp/sms-spam-training-...
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from components.handoff import bundle_dir, read_split
from components.stages import DATA, DEPLOY, FINE_TUNE


def run_parser(holds: str, single: int, rounds: int, per: str) -> argparse.ArgumentParser:
    """A serving benchmark's arguments: the KFP run folder it reads, one-text requests and interleaved rounds."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help=f"a KFP run folder with {holds}")
    parser.add_argument("--single", type=int, default=single, help=f"one-text requests timed per {per}")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds; medians are reported")
    return parser


def main() -> None:
    parser = run_parser("data/dataset, fine-tune/model, deploy/", single=300, rounds=5, per="runtime in all")
    parser.add_argument("--batches", type=int, default=10, help="batches of 32 timed per runtime and round")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: PyTorch on the GPU, and onnxruntime's CUDA provider too where it is installed",
    )
    parser.add_argument("--json", help="write the rows here as well")
    args = parser.parse_args()
    run = Path(args.run_dir) if args.run_dir else newest_run(Path("work/kfp"))
    test = read_split(run / DATA.task_name / "dataset", "test")
    texts, labels = test["text"].tolist(), test["label"].tolist()
    threads = os.cpu_count()
    print(f"run {run}\n{len(texts)} test texts, {threads} CPU threads\n")

    # Rounds interleave the runtimes and the medians are reported: on a shared machine the load drifts, and
    # timing one runtime after another would charge that drift to whichever ran at a bad moment.
    predictors = dict(runtimes(run, threads, args.device))
    rng = np.random.default_rng(0)
    singles = [texts[i] for i in rng.integers(0, len(texts), args.single)]
    batches = [list(rng.choice(texts, 32)) for _ in range(args.batches)]
    latencies = {name: [] for name in predictors}
    throughputs = {name: [] for name in predictors}
    for predict in predictors.values():
        for text in texts[:10]:  # warm-up
            predict([text])
    for _ in range(args.rounds):
        for name, predict in predictors.items():
            for text in singles[: len(singles) // args.rounds]:
                start = time.perf_counter()
                predict([text])
                latencies[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            for batch in batches:
                predict(batch)
            throughputs[name].append(32 * len(batches) / (time.perf_counter() - start))
    rows = [
        {
            "runtime": name,
            "p50_ms": 1000 * np.percentile(latencies[name], 50),
            "p99_ms": 1000 * np.percentile(latencies[name], 99),
            "texts_per_s": float(np.median(throughputs[name])),
            "accuracy": float(np.mean([p == t for p, t in zip(predict(texts), labels)])),
        }
        for name, predict in predictors.items()
    ]
    base = rows[0]["texts_per_s"]
    print(
        "| runtime | p50 latency, 1 text | p99 latency, 1 text | throughput, batches of 32 | vs PyTorch | "
        "test accuracy |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['runtime']} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['texts_per_s']:.0f} texts/s | "
            f"{r['texts_per_s'] / base:.2f}x | {r['accuracy']:.2%} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def runtimes(run: Path, threads: int, device: str = "cpu"):
    import onnxruntime
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from components.deploy.onnx_classifier import OnnxClassifier
    from components.handoff import read_labels

    model_dir = run / FINE_TUNE.task_name / "model"
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval().to(device)
    labels = read_labels(model_dir)

    def eager(texts):  # what a user of transformers writes
        with torch.inference_mode():
            batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt").to(device)
            return [labels[i] for i in model(**batch).logits.argmax(-1).tolist()]

    yield f"PyTorch eager (transformers, {device})", eager
    deploy = (run / DEPLOY.task_name / "onnx_model").resolve()
    bundle = bundle_dir(deploy)
    providers = ["CPUExecutionProvider"] + (
        ["CUDAExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        else []
    )
    for provider in providers:
        for precision in ("fp32", "int8"):
            classifier = OnnxClassifier(
                bundle, onnx_file=str(deploy / f"model_{precision}.onnx"), threads=threads, provider=provider
            )
            yield (
                f"onnxruntime {precision} ({provider.removesuffix('ExecutionProvider')})",
                lambda texts, c=classifier: [p["label"] for p in c.predict(texts)],
            )


def newest_run(root: Path) -> Path:
    runs = sorted(
        (p for p in root.glob("*-training-*") if (p / DEPLOY.task_name).is_dir()), key=lambda p: p.stat().st_mtime
    )
    if not runs:
        raise SystemExit(f"no deployed run under {root}: run `lifecycle run` first, or pass --run-dir")
    return runs[-1]


if __name__ == "__main__":
    main()
