"""The GPU check (`make gpu-check`), in one go on a machine with a CUDA GPU: the GPU tests, the fine-tuning benchmark
of every strategy against the Hugging Face Trainer peer (benchmarks/train_speed.py), the pipeline benchmark
(benchmarks/pipeline.py) and the serving benchmark (benchmarks/serving.py, with onnxruntime's CUDA provider where it
is installed); then one table, headed with the GPU's name. Each step's own output goes to the log file beside the
table. A step that cannot run (a library missing there) is a row that says why, and the others still run.

A GPU machine may hold torch, transformers, peft and onnxruntime but not kfp, mlflow, evidently or great-expectations:
`make gpu-wheels` puts the wheels it lacks, and the data, in .gpu/ to carry there; --wheels installs them first.

    python benchmarks/gpu_check.py --wheels .gpu/wheels --data .gpu/data/SMSSpamCollection
    python benchmarks/gpu_check.py --dry-run          # the same steps on the CPU with a tiny model: what tests run
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
STRATEGIES = "full,partial,lora,head"
# The GPU machine gets no Presidio (gpu_wheels.LEFT_OUT): its run neither looks for personal data nor redacts the
# log, which costs CPU time, not GPU time (docs/benchmarks.md has the scan's cost on a CPU).
PII_OFF = ["data.pii=off", "serve.log_pii=keep"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/sms_spam/SMSSpamCollection", help="the SMS collection")
    parser.add_argument("--wheels", help="a folder of wheels to install first (make gpu-wheels)")
    parser.add_argument("--out", default="gpu-check", help="folder for the log, the JSON and the table")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, a tiny model and tiny data, one epoch")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    }
    log = open(out / "gpu_check.log", "w")
    if args.wheels:
        env = install_wheels(Path(args.wheels), env, log)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        steps = Steps(Path(tmp), env, log, args)
        rows = steps.gpu_tests() + steps.fine_tuning() + steps.pipeline() + steps.serving()
    table = render(device_name(args.dry_run), rows)
    (out / "gpu_check.md").write_text(table)
    (out / "gpu_check.json").write_text(json.dumps(rows, indent=2))
    print(table + f"\nthe steps' own output: {out / 'gpu_check.log'}")


def install_wheels(wheels: Path, env: dict, log) -> dict:
    """The carried wheels into a folder of their own, first on the path of every step."""
    site = Path(tempfile.gettempdir()) / "gpu-check-site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--upgrade",
            "--target",
            str(site),
            *map(str, sorted(wheels.glob("*.whl"))),
        ],
        check=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return env | {"PYTHONPATH": os.pathsep.join([str(site), env["PYTHONPATH"]])}


class Steps:
    def __init__(self, tmp: Path, env: dict, log, args):
        self.tmp, self.env, self.log, self.dry_run = tmp, env, log, args.dry_run
        self.data, self.model_settings = Path(args.data).resolve(), []
        if self.dry_run:  # tiny data and a tiny BERT, made as the tests make them
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import build_tiny_bert, make_texts, tiny_settings

            self.data, self.model = tmp / "texts.csv", build_tiny_bert(tmp / "tiny_bert")
            make_texts(240).to_csv(self.data, index=False)
            self.model_settings = tiny_settings(
                tmp / "run" / "work",
                self.data,
                self.model,
                "train.epochs=1",
                "gate.min_accuracy=0",
                "gate.min_macro_f1=0",
            )

    def command(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess:
        self.log.write(f"\n$ {' '.join(command)}\n")
        self.log.flush()
        done = subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True)
        self.log.write(done.stdout + done.stderr)
        self.log.flush()
        if check and done.returncode != 0:
            raise StepFailed(f"exit {done.returncode}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        return done

    def step(self, name: str, measure) -> list[dict]:
        started = time.perf_counter()
        try:
            rows = measure()
        except StepFailed as err:
            rows = [{"check": name, "result": f"did not run: {err}"}]
        for row in rows:
            row.setdefault("seconds", round(time.perf_counter() - started, 1))
        return rows

    def gpu_tests(self) -> list[dict]:
        def measure():
            done = self.command(
                [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"], check=False
            )
            summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-200:]
            return [{"check": "GPU tests (pytest -m gpu)", "result": summary.strip("= ")}]

        return self.step("GPU tests", measure)

    def fine_tuning(self) -> list[dict]:
        def measure():
            result = self.tmp / "train_speed.json"
            device = "cpu" if self.dry_run else "cuda"
            extra = (
                [
                    "--config",
                    self.write_dry_run_config(),
                    "--model",
                    str(self.model),
                    "--strategies",
                    "partial",
                    "--epochs",
                    "1",
                ]
                if self.dry_run
                else ["--strategies", STRATEGIES]
            )
            self.command(
                [
                    sys.executable,
                    "benchmarks/train_speed.py",
                    "--data",
                    str(self.data),
                    "--device",
                    device,
                    "--json",
                    str(result),
                    *extra,
                ]
            )
            return [
                {
                    "check": f"fine-tuning, {r['strategy']}: ours vs the Trainer peer",
                    "result": f"{r['ours']['train_s']:.1f} s vs {r['peer']['train_s']:.1f} s "
                    f"({r['ours']['train_s'] / r['peer']['train_s']:.2f}x); test accuracy "
                    f"{r['ours']['test_accuracy']:.2%} vs {r['peer']['test_accuracy']:.2%}",
                }
                for r in json.loads(result.read_text())
            ]

        return self.step("fine-tuning", measure)

    def write_dry_run_config(self) -> str:
        import yaml

        path = self.tmp / "dry_run.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "data": {"path": "set by --data", "labels": ["ham", "spam"], "min_rows_per_class": 5},
                    "model": {"max_length": 32},
                }
            )
        )
        return str(path)

    def pipeline(self) -> list[dict]:
        def measure():
            result = self.tmp / "pipeline.json"
            settings = [part for s in [*self.model_settings, *PII_OFF] for part in ("--set", s)]
            self.command(
                [
                    sys.executable,
                    "benchmarks/pipeline.py",
                    "--data",
                    str(self.data),
                    "--keep",
                    str(self.tmp / "run"),
                    "--json",
                    str(result),
                    *settings,
                ]
            )
            r = json.loads(result.read_text())
            return [
                {
                    "check": "the default run (benchmarks/pipeline.py)",
                    "result": f"{r['wall_s']:.1f} s, of it fixed cost {r['wall_s'] - r['train_loop_s']:.1f} s and "
                    f"the training loop {r['train_loop_s']:.1f} s ({r['wall_s'] / r['fine_tune_s']:.2f}x its "
                    f"fine-tuning stage); test accuracy {r['test_value']:.2%}",
                }
            ]

        return self.step("pipeline", measure)

    def serving(self) -> list[dict]:
        def measure():
            runs = sorted((self.tmp / "run" / "work" / "kfp").glob("*-training-*"))
            if not runs:
                raise StepFailed("no run to serve: the pipeline step did not finish")
            result = self.tmp / "serving.json"
            counts = ["--single", "20", "--batches", "2", "--rounds", "2"] if self.dry_run else ["--device", "cuda"]
            self.command(
                [sys.executable, "benchmarks/serving.py", "--run-dir", str(runs[-1]), "--json", str(result), *counts]
            )
            return [
                {
                    "check": f"serving, {r['runtime']}",
                    "result": f"p50 {r['p50_ms']:.1f} ms for one text, {r['texts_per_s']:.0f} texts/s in batches "
                    f"of 32, test accuracy {r['accuracy']:.2%}",
                }
                for r in json.loads(result.read_text())
            ]

        return self.step("serving", measure)


class StepFailed(Exception):
    pass


def device_name(dry_run: bool) -> str:
    import torch

    if torch.cuda.is_available() and not dry_run:
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"no GPU: a dry run on the CPU ({os.cpu_count()} cores, torch {torch.__version__})"


def render(device: str, rows: list[dict]) -> str:
    lines = [f"GPU check on {device}, {time.strftime('%Y-%m-%d')}", "", "| check | result | seconds |", "|---|---|---|"]
    lines += [f"| {r['check']} | {r['result']} | {r['seconds']} |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
