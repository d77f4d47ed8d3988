"""run.loggers: metrics.jsonl, TensorBoard, the console, W&B and MLflow, written through cluster/trackers.py.

Uses the real wandb (offline, as an air-gapped cluster runs it) and mlflow (a sqlite store in the run
directory), read back through their own storage (tests/tracking.py). No model: these tests are about what
reaches the trackers; the trainer's records reach them in tests/test_training.py's resume test.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.config import ConfigError, load_config
from cluster.run_log import RunLog, plot_run
from common.jsonl import read_jsonl
from tests.tracking import wandb_runs

REPO = Path(__file__).resolve().parent.parent
MACHINE = {"dtype": "float32", "device": "cpu"}


def _eval(label, t1, t2):
    return {"label": label, "accuracy_t1": t1, "accuracy_t2": t2, "delta_t1_t2": t2 - t1, "delta_i_to_c": t2 - t1, "delta_c_to_i": 0.0}


def _train(i):
    return {"iteration": i, "stage": 1, "reward_attempt1": 0.1 * i, "reward_attempt2": 0.2 * i, "seconds_learn": 1.0 + i, "note": "x"}


def _log(run_dir, cfg, steps, truncate=None, finish=False):
    log = RunLog(run_dir, cfg.run, dashboard=False)
    if truncate is not None:
        log.truncate_after(truncate)
    log.start(json.loads(cfg.model_dump_json()), MACHINE)
    if truncate is None:
        log.write("eval", 0, _eval("base", 0.25, 0.5))
    for i in steps:
        log.write("train", i, _train(i))
    if finish:
        log.write("eval", steps[-1], _eval("final", 0.5, 0.75))
        samples = run_dir / "samples" / "eval_iter000004.parquet"
        samples.parent.mkdir()
        pq.write_table(pa.table({"a1_text": ["1+1=2"], "r1": [1.0], "a1_response_ids": [[1, 2]]}), samples)
        plot = plot_run(log.records(), run_dir / "plot.png")
        log.finish("| table |", ["run directory: here"], plot, [samples])
    log.close()


def test_a_resumed_run_continues_the_same_wandb_and_mlflow_runs_without_a_step_twice(tmp_path, monkeypatch, capsys):
    """Steps 1-3 logged, a restart from the checkpoint at 1 redoes 2-3 (exactly, as resume does) and adds 4:
    each tracker holds steps 1-4 once, with metrics.jsonl's values, the config as parameters, the machine,
    and at the end the table, the plot and the samples."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(None, ["run.loggers=[console,jsonl,tensorboard,wandb,mlflow]", "algorithm.alpha=7.5", "run.wandb.tags=[ci]"])
    _log(tmp_path, cfg, [1, 2, 3])
    _log(tmp_path, cfg, [2, 3, 4], truncate=1, finish=True)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert "| table |" in capsys.readouterr().out  # the console's final table

    state = json.loads((tmp_path / "trackers.json").read_text())
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(state["mlflow"]["id"])
    for key in ("reward_attempt1", "reward_attempt2", "seconds_learn", "iteration"):
        history = client.get_metric_history(run.info.run_id, f"train/{key}")
        assert sorted((m.step, m.value) for m in history) == [(r["step"], pytest.approx(r[key])) for r in train], key
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval_final/accuracy_t2")] == [(4, 0.75)]
    assert json.loads(run.data.params["algorithm.alpha"]) == 7.5 and run.data.params["run.name"] == cfg.run.name
    assert run.data.tags["machine.dtype"] == "float32" and run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert {"plot.png", "final_table.txt", "samples/eval_iter000004.parquet"} <= artifacts
    assert (tmp_path / "mlflow_artifacts").is_dir() and not (tmp_path.parent / "mlruns").exists()  # inside the run directory

    segments = wandb_runs(tmp_path / "wandb")
    assert len(segments) == 2 and {s["id"] for s in segments} == {state["wandb"]["id"]}
    assert segments[0]["config"]["algorithm"]["alpha"] == 7.5 and segments[0]["config"]["machine"] == MACHINE
    rows = [row for s in segments for row in s["history"]]
    steps = [row["_step"] for row in rows]
    assert steps == sorted(set(steps)), f"a W&B step was logged twice or went back: {steps}"
    by_step = {row["_step"]: row for row in rows}
    for r in train:
        assert by_step[r["step"]]["train/reward_attempt2"] == pytest.approx(r["reward_attempt2"])
    assert by_step[0]["eval_base/accuracy_t1"] == 0.25 and by_step[4]["eval_final/accuracy_t1"] == 0.5
    assert by_step[4]["plot/_type"] == "image-file"  # the final table's plot and the evaluated samples, as W&B media
    assert by_step[4]["samples/eval_iter000004/_type"] == "table-file" and by_step[4]["samples/eval_iter000004/nrows"] == 1


def test_loggers_without_jsonl_or_with_a_typo_are_one_line_errors():
    with pytest.raises(ConfigError, match="run.loggers: .*must include jsonl"):
        load_config(None, ["run.loggers=[console,tensorboard]"])
    with pytest.raises(ConfigError, match="run.loggers.1: Input should be 'console', 'jsonl', 'tensorboard', 'wandb' or 'mlflow'"):
        load_config(None, ["run.loggers=[jsonl,wandbb]"])


@pytest.mark.parametrize("logger,package", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_logger_whose_package_is_missing_is_one_line_at_start_naming_the_extra(tmp_path, logger, package):
    """A user without the extra installed: the package is shadowed by one that fails to import, as a missing one does."""
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{package}'\")\n")
    done = subprocess.run([sys.executable, "-m", "cluster.main", "train", "--set", f"run.loggers=[jsonl,{logger}]", "--set", f"run.output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and f"pip install 'score-on-ray[{package}]'" in lines[0], done.stderr
