"""Where the time of a default run goes, stage by stage, beside its fine-tuning: `lifecycle run` once in a scratch
work dir (MLflow on SQLite there), with each task timing itself (components/timings.py). Per task: start-up (the
process, the interpreter, kfp's executor and the imports before the stage), imports during the stage, MLflow calls,
the stage's own work, and what follows the stage (kfp writing the outputs, the exit); then kfp.local's own time
between tasks, the run's wall time and that time as a multiple of the fine-tuning stage's.

    python benchmarks/pipeline.py --data ../shared/data/sms_spam/SMSSpamCollection
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pipeline-benchmark-") as tmp:
        result = measure_run(args, Path(args.keep or tmp))
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def measure_run(args, tmp: Path) -> dict:
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
        args.config,
        *[part for setting in settings for part in ("--set", setting)],
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {TIMINGS_FILE: str(timings)}
    started = time.time()
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
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
        "test_accuracy": test_accuracy(tmp / "work"),
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


def test_accuracy(work: Path) -> float:
    """The run's test accuracy as logged on its parent run."""
    import mlflow

    from components.tracking import default_tracking_uri

    client = mlflow.MlflowClient(default_tracking_uri(work))
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(experiments, "tags.mlflow.parentRunId IS NULL")
    return parent.data.metrics["test_accuracy"]


def device_name(settings: list[str]) -> str:
    import torch

    if torch.cuda.is_available() and "train.device=cpu" not in settings:
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores)"


def print_table(result: dict) -> None:
    tasks = result["tasks"]
    fine_tune = result["fine_tune_s"]
    before = tasks[0]["process_started"] - result["started"]
    after = result["ended"] - tasks[-1]["exited"]
    between = result["wall_s"] - sum(t["total"] for t in tasks) - before - after
    print(
        f"\nThe default run on {result['device']}: test accuracy {result['test_accuracy']:.2%}, "
        f"{result['printed_lines']} lines printed\n"
    )
    print("| task | " + " | ".join(f"{c} s" for c in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for task in tasks:
        print(f"| {task['task']} | " + " | ".join(f"{task[c]:.1f}" for c in COLUMNS) + " |")
    totals = {c: sum(t[c] for t in tasks) for c in COLUMNS}
    print("| all tasks | " + " | ".join(f"{totals[c]:.1f}" for c in COLUMNS) + " |")
    for name, seconds in (
        ("before the first stage: the command, its MLflow run, the parent-run task", before),
        ("between stages: kfp.local", between),
        ("after the last stage: the command", after),
    ):
        print(f"| {name} | | | | | | {seconds:.1f} |")
    print(f"| **the run (wall)** | | | | | | **{result['wall_s']:.1f}** |")
    print(f"\nthe run took {result['wall_s'] / fine_tune:.2f} times its fine-tuning stage ({fine_tune:.1f} s)")
    print(
        "the slowest imports inside each stage: "
        + "; ".join(
            f"{t['task']} " + ", ".join(f"{name} {s:.1f} s" for name, s in t["slowest_imports"].items()) for t in tasks
        )
    )


if __name__ == "__main__":
    main()
