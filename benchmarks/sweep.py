"""The config's defaults against a sweep, in one run on one data set: `lifecycle run` and `lifecycle tune` on the
same config, each in a fresh work directory (its own MLflow store, no champion to compare with), then a table of
test accuracy and macro-F1 with their 95% intervals (stage 5's bootstrap), the validation loss that chose the
model, and each side's wall time on this machine.

    python benchmarks/sweep.py --config configs/sms_spam.yaml \\
        --set data.path=../shared/data/sms_spam/SMSSpamCollection --trials 16 --timeout-minutes 20
    python benchmarks/sweep.py --config configs/trec.yaml --trials 16 --timeout-minutes 30 --json trec.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE", help="for both sides (repeatable)"
    )
    parser.add_argument("--trials", type=int, default=16, help="the sweep's budget of trials (tune.trials)")
    parser.add_argument("--timeout-minutes", type=float, help="the sweep's wall-clock budget (tune.timeout_minutes)")
    parser.add_argument("--work", help="keep the two work directories here (default: a temporary one)")
    parser.add_argument("--json", help="write the results here as well")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sweep-benchmark-") as tmp:
        work = Path(args.work or tmp).resolve()
        sweep = [f"tune.trials={args.trials}"] + (
            [f"tune.timeout_minutes={args.timeout_minutes}"] if args.timeout_minutes else []
        )
        results = [
            run_side("defaults", "run", args, work / "defaults", []),
            run_side("sweep", "tune", args, work / "sweep", sweep),
        ]
    print(table(args.config, results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def run_side(side: str, command: str, args, work_dir: Path, extra: list[str]) -> dict:
    """One `lifecycle` command in its own process; its parent run's figures from its MLflow store."""
    import mlflow

    settings = [
        f"work_dir={work_dir}",
        "gate.compare_with_champion=false",
        "deploy.rollout.mode=direct",
        *args.overrides,
        *extra,
    ]
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            command,
            "--config",
            args.config,
            *(part for setting in settings for part in ("--set", setting)),
        ],
        cwd=ROOT,
        text=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{side}: lifecycle {command} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    client = mlflow.MlflowClient(f"sqlite:///{work_dir / 'mlflow.db'}")
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.mlflow.parentRunId IS NULL"
    )
    metrics, tags = parent.data.metrics, parent.data.tags
    stages = {
        run.info.run_name: run.data.metrics
        for run in client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    }
    test = stages["5-evaluate"]  # with the intervals
    result = {
        "side": side,
        "wall_s": seconds,
        "trials": int(metrics.get("trials", 1)),
        "pruned": int(metrics.get("trials_pruned", 0)),
        "winner": tags.get("sweep.winner", ""),
        "val_loss": metrics["best_val_loss"] if side == "sweep" else stages["4-fine-tune"]["best_val_loss"],
        "params": {k: v for k, v in parent.data.params.items() if k.startswith(("model.", "train."))},
        "searched": _searched(work_dir),
    }
    for name in ("accuracy", "macro_f1"):
        result[name] = [test[f"test_{name}"], test[f"test_{name}_ci_low"], test[f"test_{name}_ci_high"]]
    return result


def _searched(work_dir: Path) -> list[str]:
    """The keys a sweep searched (its search_space.json); none for a run."""
    found = list((work_dir / "mlartifacts").rglob("search_space.json"))
    return list(json.loads(found[0].read_text())) if found else []


def table(config: str, results: list[dict]) -> str:
    lines = [
        f"config {config}",
        "",
        "| side | trials (pruned) | val loss | test accuracy (95% CI) | macro-F1 (95% CI) | wall time | settings |",
        "|---|---|---|---|---|---|---|",
    ]
    searched = sorted(set().union(*(r["searched"] for r in results)))
    for r in results:
        (acc, acc_low, acc_high), (f1, f1_low, f1_high) = r["accuracy"], r["macro_f1"]
        settings = ", ".join(f"{k.split('.')[-1]}={_short(r['params'].get(k, ''))}" for k in searched)
        lines.append(
            f"| {r['side']}{' (' + r['winner'] + ')' if r['winner'] else ''} | {r['trials']} ({r['pruned']}) "
            f"| {r['val_loss']:.4f} | {acc:.2%} ({acc_low:.2%}-{acc_high:.2%}) "
            f"| {f1:.4f} ({f1_low:.4f}-{f1_high:.4f}) | {r['wall_s'] / 60:.1f} min | {settings} |"
        )
    return "\n".join(lines)


def _short(value: str) -> str:
    try:
        return f"{float(value):.3g}"
    except ValueError:
        return value


if __name__ == "__main__":
    main()
