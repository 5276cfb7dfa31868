import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dry_run(script: str, *arguments: str) -> subprocess.CompletedProcess:
    """A benchmark's --dry-run, which must succeed: what it printed."""
    run = subprocess.run(
        [sys.executable, script, "--dry-run", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_the_gpu_check_dry_run_runs_every_step_on_the_cpu_and_prints_one_table(tmp_path):
    """`make gpu-check` on a machine without a GPU (--dry-run): the GPU tests (they skip), the fine-tuning benchmark
    against the Trainer peer, the pipeline benchmark and the serving benchmark, each measured, in one table."""
    out = tmp_path / "gpu-check"
    run = dry_run("benchmarks/gpu_check.py", "--out", str(out))
    assert run.stdout.startswith("GPU check on no GPU: a dry run on the CPU")
    rows = json.loads((out / "gpu_check.json").read_text())
    checks = [row["check"] for row in rows]
    assert checks[0] == "GPU tests (pytest -m gpu)" and "3 skipped" in rows[0]["result"]
    assert checks[1] == "fine-tuning, partial: ours vs the Trainer peer" and "x); test accuracy" in rows[1]["result"]
    assert checks[2] == "the default run (benchmarks/pipeline.py)" and "fixed cost" in rows[2]["result"]
    assert [c for c in checks[3:]] == [
        "serving, PyTorch eager (transformers, cpu)",
        "serving, onnxruntime fp32 (CPU)",
        "serving, onnxruntime int8 (CPU)",
    ]
    assert all("did not run" not in row["result"] and row["seconds"] > 0 for row in rows)
    for row in rows:
        assert f"| {row['check']} | {row['result']} |" in run.stdout
    assert "$ " in (out / "gpu_check.log").read_text()  # each step's own output is in the log


@pytest.mark.slow
def test_the_generator_serving_benchmark_dry_run_measures_every_side_in_one_table(tmp_path):
    """benchmarks/serving_generation.py --dry-run: our server (int4, fp32) and transformers' `generate`, at 1 and 2
    clients, in one table; llama-cpp-python's server too where LLAMA_PYTHON names a python that has it."""
    table = tmp_path / "table.md"
    run = dry_run("benchmarks/serving_generation.py", "--markdown", str(table))
    assert run.stdout.strip() == table.read_text().strip()
    rows = [line.split(" | ") for line in table.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    sides = ["ours int4", "ours fp32", *(["llama.cpp"] if os.environ.get("LLAMA_PYTHON") else []), "transformers"]
    assert [(row[0].lstrip("| "), row[1]) for row in rows[1:]] == [(side, c) for side in sides for c in ("1", "2")]
    for row in rows[1:]:
        assert int(row[6]) > 0 and row[7].endswith(" MB"), row  # tokens generated, memory sampled
    equal = {(row[0].lstrip("| "), row[1]): row[8].rstrip(" |") for row in rows[1:]}
    assert equal["transformers", "1"] == "100%" and equal["ours fp32", "1"] == "100%"  # greedy, the same model
