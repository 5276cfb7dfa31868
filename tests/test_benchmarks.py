import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_dry_run_runs_every_step_on_the_cpu_and_prints_one_table(tmp_path):
    """`make gpu-check` on a machine without a GPU (--dry-run): the GPU tests (they skip), the fine-tuning benchmark
    against the Trainer peer, the pipeline benchmark and the serving benchmark, each measured, in one table."""
    out = tmp_path / "gpu-check"
    run = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.startswith("GPU check on no GPU: a dry run on the CPU")
    rows = json.loads((out / "gpu_check.json").read_text())
    checks = [row["check"] for row in rows]
    assert checks[0] == "GPU tests (pytest -m gpu)" and "3 skipped" in rows[0]["result"]
    assert checks[1] == "fine-tuning, partial: ours vs the Trainer peer" and "x); test accuracy" in rows[1]["result"]
    assert checks[2] == "the default run (benchmarks/pipeline.py)" and "x its fine-tuning stage" in rows[2]["result"]
    assert [c for c in checks[3:]] == [
        "serving, PyTorch eager (transformers, cpu)",
        "serving, onnxruntime fp32 (CPU)",
        "serving, onnxruntime int8 (CPU)",
    ]
    assert all("did not run" not in row["result"] and row["seconds"] > 0 for row in rows)
    for row in rows:
        assert f"| {row['check']} | {row['result']} |" in run.stdout
    assert "$ " in (out / "gpu_check.log").read_text()  # each step's own output is in the log
