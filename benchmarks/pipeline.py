"""Where the time of a default run goes, stage by stage, beside its fine-tuning: `lifecycle run` once in a scratch
work dir (MLflow on SQLite there), with each task timing itself (components/timings.py). Per task: start-up (the
process, the interpreter, kfp's executor and the imports before the stage), imports during the stage, MLflow calls,
the stage's own work, and what follows the stage (kfp writing the outputs, the exit); then kfp.local's own time
between tasks and the run's wall time. The run's fixed cost is everything outside stage 4's training loop (its
train_seconds): what every run pays, whatever its data and however fast its fine-tuning.

    python benchmarks/pipeline.py --data ../shared/data/sms_spam/SMSSpamCollection
    python benchmarks/pipeline.py --before 5eb4286      # that commit's tree first, then this one, one after the other
    python benchmarks/pipeline.py --config configs/instructions.yaml \
        --data ../shared/data/instructions/instruction-data.json     # the generation run
    python benchmarks/pipeline.py --data ... --set train.device=cuda --json pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("start-up", "imports", "MLflow", "work", "after", "total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/sms_spam/SMSSpamCollection", help="data.path of the run")
    parser.add_argument("--config", default="configs/sms_spam.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    parser.add_argument("--json", help="write the measurements here as well")
    parser.add_argument("--keep", help="run in this folder and keep it (the default: a scratch folder, deleted)")
    parser.add_argument("--before", metavar="COMMIT", help="first the same run with that commit's tree, for a before")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="pipeline-benchmark-") as tmp:
        if args.before:
            results[f"before ({args.before})"] = measure_before(args, Path(tmp))
        work = Path(args.keep) if args.keep else Path(tmp) / "run"
        results["after" if args.before else "this tree"] = measure_run(args, work, ROOT)
    for name, result in results.items():
        print_table(result, name)
    if args.before:
        print_comparison(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results if args.before else results["this tree"], indent=2))


def measure_before(args, tmp: Path) -> dict:
    """The same run with the tree of `args.before` (a git worktree, with this Python and its installed packages)."""
    tree = tmp / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.before], cwd=ROOT, check=True)
    try:
        return measure_run(args, tmp / "before-run", tree)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)


def measure_run(args, tmp: Path, tree: Path) -> dict:
    """One `lifecycle run` of the tree at `tree`, timed."""
    from components.timings import TIMINGS_FILE

    tmp.mkdir(parents=True, exist_ok=True)
    timings = tmp / "timings.jsonl"
    timings.unlink(missing_ok=True)
    settings = [f"data.path={Path(args.data).resolve()}", f"work_dir={tmp / 'work'}", *args.set]
    command = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "run",
        "--config",
        str(tree / args.config),
        *[part for setting in settings for part in ("--set", setting)],
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {TIMINGS_FILE: str(timings)}
    started = time.time()
    run = subprocess.run(command, cwd=tree, env=env | {"PYTHONPATH": str(tree)}, capture_output=True, text=True)
    wall = time.time() - started
    if run.returncode != 0:
        sys.exit(f"the run failed (exit {run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    from components.stages import FINE_TUNE

    tasks = [
        task_row(t)
        for t in sorted(
            (json.loads(line) for line in timings.read_text().splitlines()), key=lambda t: t["stage_started"]
        )
    ]
    return {
        "started": started,
        "ended": started + wall,
        "wall_s": wall,
        "tasks": tasks,
        "fine_tune_s": next(t["stage"] for t in tasks if t["task"] == FINE_TUNE.run_name),
        "printed_lines": len(run.stdout.splitlines()),
        **run_metrics(tmp / "work"),
        "device": device_name(args.set),
    }


def task_row(task: dict) -> dict:
    stage = task["stage_ended"] - task["stage_started"]
    return {
        "task": task["task"],
        "start-up": task["stage_started"] - task["process_started"],
        "imports": task["imports"],
        "MLflow": task["mlflow"],
        "work": stage - task["imports"] - task["mlflow"],
        "after": task["exited"] - task["stage_ended"],
        "total": task["exited"] - task["process_started"],
        "stage": stage,
        "slowest_imports": task["slowest_imports"],
        "process_started": task["process_started"],
        "exited": task["exited"],
    }


def run_metrics(work: Path) -> dict:
    """The run's test metric as logged on its parent run (a classifier's accuracy, a generator's perplexity) and its
    training loop's seconds (stage 4's train_seconds)."""
    import mlflow

    from components.stages import FINE_TUNE
    from components.tracking import default_tracking_uri

    client = mlflow.MlflowClient(default_tracking_uri(work))
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(experiments, "tags.mlflow.parentRunId IS NULL")
    (fine_tune,) = client.search_runs(experiments, f"tags.mlflow.runName = '{FINE_TUNE.run_name}'")
    metric = "test_accuracy" if "test_accuracy" in parent.data.metrics else "test_perplexity"
    return {
        "test_metric": metric,
        "test_value": parent.data.metrics.get(metric),  # None where the run logs neither
        "train_loop_s": fine_tune.data.metrics["train_seconds"],
    }


def device_name(settings: list[str]) -> str:
    import torch

    if torch.cuda.is_available() and "train.device=cpu" not in settings:
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores)"


def print_table(result: dict, name: str) -> None:
    tasks = result["tasks"]
    before = tasks[0]["process_started"] - result["started"]
    after = result["ended"] - tasks[-1]["exited"]
    between = result["wall_s"] - sum(t["total"] for t in tasks) - before - after
    print(f"\n{name}: the run on {result['device']}: {outcome(result)}, {result['printed_lines']} lines printed\n")
    print("| task | " + " | ".join(f"{c} s" for c in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for task in tasks:
        print(f"| {task['task']} | " + " | ".join(f"{task[c]:.1f}" for c in COLUMNS) + " |")
    totals = {c: sum(t[c] for t in tasks) for c in COLUMNS}
    print("| all tasks | " + " | ".join(f"{totals[c]:.1f}" for c in COLUMNS) + " |")
    for part, seconds in (
        ("before the first stage: the command, its MLflow run, the parent-run task", before),
        ("between stages: kfp.local", between),
        ("after the last stage: the command", after),
    ):
        print(f"| {part} | | | | | | {seconds:.1f} |")
    print(f"| **the run (wall)** | | | | | | **{result['wall_s']:.1f}** |")
    print(
        f"\nfixed cost {fixed_cost(result):.1f} s (all but stage 4's training loop) beside the training loop's "
        f"{result['train_loop_s']:.1f} s; the run took {result['wall_s'] / result['fine_tune_s']:.2f} times its "
        f"fine-tuning stage ({result['fine_tune_s']:.1f} s)"
    )
    print(
        "the slowest imports inside each stage: "
        + "; ".join(
            f"{t['task']} " + ", ".join(f"{name} {s:.1f} s" for name, s in t["slowest_imports"].items()) for t in tasks
        )
    )


def fixed_cost(result: dict) -> float:
    """What the run spent outside stage 4's training loop: stages 1-3 and 5-7, stage 4 around its loop, every
    task's start-up, kfp.local and the command."""
    return result["wall_s"] - result["train_loop_s"]


def outcome(result: dict) -> str:
    value = result["test_value"]
    return f"{result['test_metric']} " + ("not logged" if value is None else f"{value:.4f}")


def print_comparison(results: dict) -> None:
    """Before and after side by side: each stage's time, the fixed cost and the training loop."""
    (before_name, before), (after_name, after) = results.items()
    stages = {t["task"]: [t["total"]] for t in before["tasks"]}
    for t in after["tasks"]:
        stages.setdefault(t["task"], [None]).append(t["total"])
    print(f"\n| | {before_name} s | {after_name} s |\n|---|---|---|")
    for task, seconds in stages.items():
        print(f"| {task} | " + " | ".join("" if s is None else f"{s:.1f}" for s in seconds) + " |")
    for part, key in (("the training loop (stage 4)", "train_loop_s"), ("the run (wall)", "wall_s")):
        print(f"| {part} | {before[key]:.1f} | {after[key]:.1f} |")
    print(
        f"| **fixed cost** (the wall time less the training loop) | **{fixed_cost(before):.1f}** | "
        f"**{fixed_cost(after):.1f}** |"
    )
    print(f"| outcome | {outcome(before)} | {outcome(after)} |")


if __name__ == "__main__":
    main()
