"""`python -m cluster.main eval` on a model folder: the paper's table, JSON, CSV and samples."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from tests.conftest import REPO


def test_eval_command_writes_the_table_and_files(model_path, tmp_path):
    out = tmp_path / "eval"
    done = subprocess.run(
        [sys.executable, "-m", "cluster.main", "eval", "--model", model_path, "--out", str(out),
         "--set", "eval.num_problems=4", "--set", "eval.max_tokens=24", "--set", "rollout.cpu_kv_cache_gb=0.25",
         "--set", "run.dashboard=false", "--set", "run.num_cpus=2", "--set", "eval.attempts=3"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Accuracy@t1" in done.stdout and "Δ_c→i" in done.stdout
    record = json.loads((out / "eval.json").read_text())
    assert record["num_problems"] == 4
    assert record["delta_t1_t2"] == record["accuracy_t2"] - record["accuracy_t1"]
    rows = list(csv.DictReader((out / "eval.csv").open()))
    assert rows[0]["num_problems"] == "4"
    import pyarrow.parquet as pq

    samples = pq.read_table(out / "samples.parquet")
    assert samples.num_rows == 4 and {"r1", "r2", "r3", "a3_text"} <= set(samples.column_names)
    assert record["accuracy_t3"] == sum(r >= 0.5 for r in samples["r3"].to_pylist()) / 4  # the instruction, repeated once more
    assert 0 <= record["answer_changed"] <= 1 and record["split"] == "eval"
    from common.devices import resolve_dtype

    # where it computed: the dtype auto chose on this machine, and the flags that chose it
    assert record["machine"]["dtype"] == resolve_dtype("auto", gpu=False) == record["machine"]["auto_dtype"]
    assert record["machine"]["cpus"] >= 1 and "torch" in record["machine"]["versions"]


def test_eval_on_the_validation_split_needs_one(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cluster.main", "eval", "--split", "val", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error:") and "task.val_size" in done.stderr


def test_eval_command_reports_a_missing_model_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cluster.main", "eval", "--model", str(tmp_path / "nope")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "Traceback" not in done.stderr
