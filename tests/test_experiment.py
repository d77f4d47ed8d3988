"""The experiment's plan and its statistics (pure logic on hand-made outcomes)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import experiment
from cluster.experiment import Plan, bootstrap, markdown_table


def _plan(tmp_path):
    return Plan(tmp_path, "configs/local_cpu.yaml", [0, 1, 2], 500, 2, 3, ["learner.lr=1e-5"])


def test_plan_has_one_base_eval_and_three_arms_per_seed_on_fixed_problems(tmp_path):
    runs = _plan(tmp_path).commands()
    names = [n for n, _, _ in runs]
    assert names[0] == "base" and len(names) == 1 + 3 * 3
    by_name = {n: " ".join(c) for n, _, c in runs}
    for name, cmd in by_name.items():
        assert "task.data_seed=0" in cmd and "eval.num_problems=500" in cmd and "learner.lr=1e-5" in cmd
    assert "algorithm.stage1_iterations=0" in by_name["stage2_only-seed1"] and "algorithm.stage2_iterations=5" in by_name["stage2_only-seed1"]
    assert "algorithm.alpha=0" in by_name["no_shaping-seed2"] and "run.seed=2" in by_name["no_shaping-seed2"]
    assert "algorithm.alpha" not in by_name["score-seed0"] and "eval.before=false" in by_name["score-seed0"]


def test_run_skips_finished_runs(tmp_path, capsys):
    plan = _plan(tmp_path)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "eval.json").write_text("{}")
    (tmp_path / "score-seed1" / "checkpoints" / "iter_000005").mkdir(parents=True)  # failed after its last checkpoint
    (tmp_path / "score-seed2" / "checkpoints" / "iter_000001.partial").mkdir(parents=True)
    experiment.run(plan, dry_run=True)
    out = capsys.readouterr().out
    assert "base: done already" in out and "score-seed0: " in out and "cluster.main train" in out
    lines = {l.split(":")[0].split("] ")[-1]: l for l in out.splitlines() if l.startswith("[")}
    assert "--resume" in lines["score-seed1"] and "--overwrite" not in lines["score-seed1"]
    assert "--overwrite" in lines["score-seed2"] and "--overwrite" in lines["score-seed0"]


def test_bootstrap_means_intervals_and_paired_difference():
    rng = np.random.default_rng(1)
    n = 400
    r1 = rng.random(n) < 0.4
    # base: attempt 2 flips 10% of right answers to wrong; "score": fixes 15% of wrong ones
    base_r2 = r1 & (rng.random(n) > 0.25)
    score_r2 = r1 | (rng.random(n) < 0.25)
    out = bootstrap({"base": [(r1, base_r2)], "score": [(r1, score_r2), (r1, score_r2 | (rng.random(n) < 0.05))]}, draws=500)
    d_base = out["base"]["delta_t1_t2"]
    assert d_base["mean"] == pytest.approx(base_r2.mean() - r1.mean())
    assert d_base["lo"] < d_base["mean"] < d_base["hi"] < 0
    s = out["score"]
    assert s["seeds"] == 2 and len(s["per_seed"]) == 2 and s["delta_c_to_i"]["mean"] == 0.0
    assert s["delta_t1_t2"]["lo"] > 0
    diff = out["score_minus"]["base"]
    assert diff["lo"] > 0 and diff["p_not_larger"] == 0.0
    table = markdown_table(out)
    assert "(a) base, prompted" in table and "(b) SCoRe" in table and table.count("\n") == 3


def test_bootstrap_refuses_runs_on_different_problems():
    a = np.ones(10, bool)
    with pytest.raises(ValueError, match="same 10 problems"):
        bootstrap({"base": [(a, a)], "score": [(a[:5], a[:5])]})


def test_report_reads_runs_and_writes_table_json_and_plot(tmp_path):
    plan = Plan(tmp_path / "runs", "configs/local_cpu.yaml", [0], 6, 1, 1, [])
    idx = [3, 1, 0, 2, 5, 4]  # rows in any order: the report sorts by problem
    r1 = [1, 0, 1, 0, 1, 0]
    r2 = [1, 1, 1, 0, 0, 0]
    table = pa.table({"problem_index": idx, "r1": pa.array(r1, pa.float32()), "r2": pa.array(r2, pa.float32())})
    for name, where, _ in plan.commands():
        where.mkdir(parents=True)
        (where / "eval.json").write_text("{}")
        if name == "base":
            pq.write_table(table, where / "samples.parquet")
        else:
            (where / "samples").mkdir()
            pq.write_table(table, where / "samples" / "eval_iter000002.parquet")
            (where / "metrics.jsonl").write_text("\n".join(json.dumps({"kind": "train", "step": s, "reward_attempt1": 0.4, "reward_attempt2": 0.5})
                                                           for s in (1, 2)))
    docs = tmp_path / "docs"
    assert experiment.report(plan, docs) == 0
    summary = json.loads((docs / "self_correction.json").read_text())
    assert summary["score"]["accuracy_t1"]["mean"] == pytest.approx(0.5)
    assert summary["score"]["delta_i_to_c"]["mean"] == pytest.approx(1 / 6)
    assert summary["score"]["delta_c_to_i"]["mean"] == pytest.approx(1 / 6)
    assert (docs / "self_correction.png").stat().st_size > 10_000
    assert "(d) SCoRe, α = 0" in (docs / "self_correction.md").read_text()
