import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_train_speed_runs_both_sides_and_writes_the_documented_json(tiny_bert, texts_csv, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": "set by --data", "labels": ["ham", "spam"],
                                               "min_rows_per_class": 5}, "model": {"max_length": 32}}))
    out = tmp_path / "speed.json"
    run = subprocess.run([sys.executable, "benchmarks/train_speed.py", "--data", str(texts_csv), "--config", str(config),
                          "--model", str(tiny_bert), "--strategies", "partial", "--epochs", "1", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| partial | **ratio** |" in run.stdout
    (result,) = json.loads(out.read_text())
    assert result["strategy"] == "partial"
    for side in ("ours", "peer"):
        figures = result[side]
        assert figures["train_s"] > 0 and figures["samples_per_s"] > 0 and figures["peak_rss_mb"] > 100
        assert 0 <= figures["test_accuracy"] <= 1 and figures["test_loss"] > 0
    assert result["peer"]["settings"]["batch_size"] == 8
