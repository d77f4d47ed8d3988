"""The experiment's plan and its statistics (pure logic on hand-made outcomes)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cluster.experiment import grid, record, report
from cluster.config import ConfigError, load_config
from cluster.experiment.__main__ import main
from cluster.experiment.arms import DESIGN_ARMS, Plan
from cluster.experiment.report import bootstrap, markdown_table
from rewards.tasks import build_task
from common.jsonl import read_jsonl, write_jsonl
from tests.conftest import REPO


def _plan(tmp_path):
    return Plan(tmp_path / "runs", "configs/local_cpu.yaml", [0, 1, 2], 500, 2, 3, ["learner.lr=1e-5"], results=tmp_path / "results")


def test_plan_has_one_base_eval_and_four_trained_arms_per_seed_on_fixed_problems(tmp_path):
    runs = _plan(tmp_path).commands()
    names = [n for n, _, _ in runs]
    assert names[:5] == ["base", "score-seed0", "plain_rl-seed0", "stage2_only-seed0", "no_shaping-seed0"]  # seed-major
    assert len(names) == 1 + 4 * 3
    by_name = {n: " ".join(c) for n, _, c in runs}
    for name, cmd in by_name.items():
        assert "task.data_seed=0" in cmd and "eval.num_problems=500" in cmd and "learner.lr=1e-5" in cmd
        assert f"eval.attempts={5 if name.split('-')[0] in ('base', 'score') else 2}" in cmd  # Acc@t1..t5 for (a) and (b)
    assert "algorithm.stage1_iterations=0" in by_name["stage2_only-seed1"] and "algorithm.stage2_iterations=5" in by_name["stage2_only-seed1"]
    assert "algorithm.alpha=0" in by_name["no_shaping-seed2"] and "run.seed=2" in by_name["no_shaping-seed2"]
    plain = by_name["plain_rl-seed0"]
    assert "algorithm.stage1_iterations=0" in plain and "algorithm.stage2_iterations=5" in plain and "algorithm.alpha=0" in plain
    assert "algorithm.alpha" not in by_name["score-seed0"] and "eval.before=false" in by_name["score-seed0"]
    plan = _plan(tmp_path)
    base_t = " ".join(plan.transfer_command("base", plan.out / "base"))
    assert "--model embedded" in base_t and f"--out {plan.out / 'base' / 'transfer'}" in base_t
    trained_t = plan.transfer_command("score-seed1", plan.out / "score-seed1")
    assert trained_t[trained_t.index("--model") + 1] == str(plan.out / "score-seed1" / "hf_model")
    for cmd in (base_t, " ".join(trained_t)):  # the same problems, two attempts, the wider numbers, the user's overrides
        assert " eval " in cmd and "task.max_operand=20" in cmd and "task.data_seed=0" in cmd and "learner.lr=1e-5" in cmd
        assert cmd.count("eval.attempts=") == 1 and "eval.attempts=2" in cmd
    only = Plan(tmp_path, "c.yaml", [0], 10, 1, 1, [], arms=("score", "plain_rl")).commands()
    assert [n for n, _, _ in only] == ["score-seed0", "plain_rl-seed0"]


def test_run_skips_runs_with_a_result_file_and_resumes_checkpointed_ones(tmp_path, caplog):
    plan = _plan(tmp_path)
    plan.results.mkdir()
    (plan.results / "base.json").write_text("{}")
    (plan.out / "score-seed1" / "checkpoints" / "iter_000005").mkdir(parents=True)  # stopped after its last checkpoint
    (plan.out / "score-seed2" / "checkpoints" / "iter_000001.partial").mkdir(parents=True)
    (plan.out / "plain_rl-seed0").mkdir(parents=True)
    (plan.out / "plain_rl-seed0" / "eval.json").write_text("{}")  # a run directory alone does not mark a run done
    done = plan.out / "stage2_only-seed0"  # finished, but the runner stopped before writing its record
    (done / "hf_model").mkdir(parents=True)
    (done / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "label": "final"}) + "\n")
    with caplog.at_level("INFO", logger="cluster.experiment"):
        grid.run(plan, dry_run=True)
    out = caplog.text
    assert "base: done already" in out and "score-seed0: " in out and "cluster.main train" in out
    lines = {m.split(":")[0].split("] ")[-1]: m for m in caplog.messages if m.startswith("[")}
    assert "--resume" in lines["score-seed1"] and "--overwrite" not in lines["score-seed1"]
    assert "--overwrite" in lines["score-seed2"] and "--overwrite" in lines["score-seed0"]
    assert "done already" not in lines["plain_rl-seed0"] and "cluster.main train" in lines["plain_rl-seed0"]
    assert "finished earlier" in lines["stage2_only-seed0"]  # summarised, not trained again
    transfer = [m for m in caplog.messages if "transfer set:" in m]
    assert len(transfer) == 1 and transfer[0].startswith("[1/13] base, transfer set:")  # only runs done so far; their own line
    (plan.results / "transfer").mkdir()
    (plan.results / "transfer" / "base.json").write_text("{}")
    assert not [m for m in _dry_run_messages(plan, caplog) if "transfer set" in m]


def _dry_run_messages(plan, caplog):
    """What the runner logs in a dry run of ``plan`` from here (earlier messages cleared)."""
    caplog.clear()
    with caplog.at_level("INFO", logger="cluster.experiment"):
        grid.run(plan, dry_run=True)
    return caplog.messages


def test_every_finished_run_corrects_the_base_models_first_attempts_once(tmp_path, caplog):
    """After a trained run finishes, the runner has it write attempt 2 on the base model's saved first attempts
    (``eval --first-attempts``, the Figure 5 diagnostic); a run with that record, or the base arm, gets no such step."""
    plan = _plan(tmp_path)
    plan.results.mkdir()
    for name in ("base", "score-seed0", "stage2_only-seed0"):
        (plan.results / f"{name}.json").write_text("{}")
    (plan.results / "fixed_first").mkdir()
    (plan.results / "fixed_first" / "stage2_only-seed0.json").write_text("{}")
    fixed = [m for m in _dry_run_messages(plan, caplog) if "base first attempts:" in m]
    assert len(fixed) == 1 and fixed[0].split(",")[0].endswith("score-seed0")
    cmd = fixed[0].split("base first attempts: ", 1)[1].split()
    assert cmd[cmd.index("--first-attempts") + 1] == str(plan.out / "base" / "samples.parquet")
    assert cmd[cmd.index("--model") + 1] == str(plan.out / "score-seed0" / "hf_model") and "eval" in cmd
    assert "eval.attempts=2" in cmd and f"task.eval_size={plan.problems}" in cmd  # the base model's held-out problems
    # on another machine the base model's own run folder is gone: the copy committed beside the result files serves
    (plan.results / "base_samples.parquet").write_bytes(b"kept")
    assert plan.fixed_first_command("score-seed0", plan.out / "score-seed0")[plan.fixed_first_command("score-seed0", plan.out / "score-seed0").index(
        "--first-attempts") + 1] == str(plan.results / "base_samples.parquet")


def test_runs_are_not_added_in_another_dtype_than_the_finished_ones(tmp_path, monkeypatch, capsys):
    """model.dtype auto follows the machine, and a grid is continued on whichever machine a session gets: a run
    computed in float32 beside runs computed in bfloat16 is refused in one line unless asked for."""
    from cluster.config import ConfigError
    from cluster.experiment.__main__ import main
    from common import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))  # no native bf16: auto -> float32
    monkeypatch.setattr(devices, "on_gpu", lambda: False)
    plan = Plan(tmp_path / "runs", "configs/experiment_cpu.yaml", [0, 1], 10, 1, 1, [], results=tmp_path / "results",
                arms=("base", "score"), transfer=())
    plan.results.mkdir()
    for name in ("base", "score-seed0"):
        (plan.results / f"{name}.json").write_text(json.dumps({"machines": [{"iteration": 0, "dtype": "bfloat16"}]}))
    (plan.results / "score-seed1.json").write_text(json.dumps({"arm": "score"}))  # written before records had machines
    assert grid.finished_dtypes(plan.results) == {"bfloat16": ["base", "score-seed0"]}
    (plan.results / "score-seed1.json").unlink()  # score-seed1 is left to train
    with pytest.raises(ConfigError, match=r"2 in bfloat16 \(base, score-seed0\), while here model.dtype auto -> float32 "):
        grid.run(plan)
    assert not plan.out.joinpath("score-seed1").exists()  # nothing was started
    args = ["run", "--out", str(plan.out), "--results", str(plan.results), "--seeds", "0", "1", "--arms", "base", "score",
            "--stage1", "1", "--stage2", "1", "--problems", "10", "--transfer"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the finished runs computed in another dtype") and err.count("\n") == 1 and "--allow-mixed-dtype" in err
    assert grid.print_status(plan) == 0  # status says it before anyone starts the runner
    assert "note: `run` would stop on this machine: the finished runs computed in another dtype" in capsys.readouterr().out
    plan.allow_mixed_dtype = True
    grid.check_same_dtype(plan)  # asked for: no error
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))  # this machine computes bf16 too
    plan.allow_mixed_dtype = False
    grid.check_same_dtype(plan)


def test_the_runner_reports_its_plan_when_run_as_a_module(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cluster.experiment", "run", "--dry-run", "--out", str(tmp_path / "runs"), "--results",
                           str(tmp_path / "results"), "--seeds", "0", "--arms", "score"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[1/1] score-seed0: " in proc.stdout and "cluster.main train --overwrite" in proc.stdout


def test_a_finished_run_drops_its_checkpoints_and_keeps_its_model(tmp_path, caplog):
    for keep in (False, True):
        plan = Plan(tmp_path / f"runs{keep}", "c.yaml", [0], 10, 1, 1, [], results=tmp_path / f"results{keep}", arms=("score",),
                    transfer=(), keep_checkpoints=keep)
        where = plan.out / "score-seed0"
        (where / "checkpoints" / "iter_000002" / "state").mkdir(parents=True)
        (where / "checkpoints" / "iter_000002" / "state" / "optim.pt").write_bytes(b"x" * 1000)
        (where / "hf_model").mkdir()
        plan.results.mkdir()
        (plan.results / "score-seed0.json").write_text("{}")
        with caplog.at_level("INFO", logger="cluster.experiment"):
            assert grid.run(plan) == 0
        assert (where / "hf_model").is_dir() and (where / "checkpoints").exists() == keep
    unfinished = Plan(tmp_path / "runs2", "c.yaml", [0], 10, 1, 1, [], results=tmp_path / "results2", arms=("score",), transfer=())
    (unfinished.out / "score-seed0" / "checkpoints" / "iter_000002").mkdir(parents=True)
    (unfinished.out / "score-seed0" / "hf_model").mkdir()  # a result file is what marks a run finished, not a model folder
    grid.run(unfinished, dry_run=True)
    assert (unfinished.out / "score-seed0" / "checkpoints" / "iter_000002").is_dir()


def _fake_checkpoint(folder, iteration, version):
    (folder / "state").mkdir(parents=True)
    (folder / "state" / "optim.pt").write_bytes(b"x" * 100)
    (folder / "score_checkpoint.json").write_text(json.dumps({"iteration": iteration, "version": version}))


def test_pruning_spares_the_checkpoints_asked_to_be_kept(tmp_path):
    from cluster.checkpoints import CheckpointStore

    store = CheckpointStore(tmp_path, keep=1, keep_iterations=[2])
    for i in (1, 2, 3, 4):
        _fake_checkpoint(store.root / f"iter_{i:06d}", i, i)
    store.prune()
    assert [c.iteration for c in store.valid()[0]] == [2, 4]


def test_no_shaping_continues_from_score_stage1_checkpoint_only_where_that_is_exact(tmp_path, caplog, capsys):
    """(d) shares (b)'s Stage I (cluster/experiment/branch.py): the finished (b) keeps its checkpoint at the end of
    Stage I, linked, with its log; (d) of the same seed starts from it with --resume, the best-window checkpoint
    rebuilt as the trainer would hold it; other settings, a better earlier window or a checkpoint of (d)'s own
    mean training from iteration 0."""
    from cluster.experiment import branch

    caplog.set_level("INFO", logger="cluster.experiment")

    def plan(*sets):
        return Plan(tmp_path / "runs", "configs/experiment_cpu.yaml", [0], 10, 2, 2, ["checkpoint.select_window=1", *sets],
                    results=tmp_path / "results", arms=("score", "no_shaping"), transfer=())

    p = plan()
    assert "checkpoint.keep_iterations=[1,2]" in " ".join(dict((n, c) for n, _, c in p.commands())["score-seed0"])
    assert "keep_iterations" not in " ".join(dict((n, c) for n, _, c in p.commands())["no_shaping-seed0"])
    score, mine = p.out / "score-seed0", p.out / "no_shaping-seed0"
    for i in (2, 4):
        _fake_checkpoint(score / "checkpoints" / f"iter_{i:06d}", i, i + 1)
    rows = [{"kind": "train", "step": i, "iteration": i, "reward_attempt2": r} for i, r in zip((1, 2, 3, 4), (0.1, 0.2, 0.5, 0.6))]
    rows += [{"kind": "eval", "step": i, "iteration": i, "label": f"iteration {i}"} for i in (2, 4)]
    (score / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_jsonl(score / "machines.jsonl", [{"iteration": 0, "dtype": "bfloat16"}, {"iteration": 3, "dtype": "bfloat16"}])  # resumed at 3
    (score / "hf_model").mkdir()
    p.results.mkdir()
    (p.results / "score-seed0.json").write_text("{}")
    cmds = {n: c for n, _, c in p.commands()}
    assert grid._run_one(p, "[1/2] score-seed0", "score-seed0", score, cmds["score-seed0"], False, False) == 0
    point = score / branch.BRANCH_DIR
    assert not (score / "checkpoints").exists() and (point / "iter_000002" / "state" / "optim.pt").read_bytes() == b"x" * 100
    assert [json.loads(line)["step"] for line in (point / "metrics.jsonl").read_text().splitlines()] == [1, 2, 2]

    assert not branch.start_from_point(plan("learner.lr=2e-5"), "no_shaping-seed0", mine)  # other shared settings
    assert "other settings" in caplog.text and not mine.exists()
    (mine / "checkpoints" / "iter_000001").mkdir(parents=True)  # (d)'s own checkpoint wins
    assert not branch.start_from_point(p, "no_shaping-seed0", mine)
    shutil.rmtree(mine)
    (mine).mkdir()
    (mine / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "reward_attempt2": 0.9}) + "\n")  # a stopped attempt
    assert branch.start_from_point(p, "no_shaping-seed0", mine)
    ckpt, best = mine / "checkpoints" / "iter_000002", mine / "checkpoints" / "best"
    assert json.loads((ckpt / "score_checkpoint.json").read_text()) == {"iteration": 2, "version": 3}
    assert (ckpt / "state" / "optim.pt").stat().st_ino == (point / "iter_000002" / "state" / "optim.pt").stat().st_ino  # linked
    best_manifest = json.loads((best / "score_checkpoint.json").read_text())
    assert best_manifest["iteration"] == 2 and best_manifest["train_reward"] == 0.2 and best_manifest["version"] == 3
    assert "train_reward" not in json.loads((point / "iter_000002" / "score_checkpoint.json").read_text())  # not written through a link
    assert [json.loads(line)["step"] for line in (mine / "metrics.jsonl").read_text().splitlines()] == [1, 2, 2]  # (b)'s log, not the attempt's
    assert json.loads((mine / "branched_from.json").read_text()) == {"run": "score-seed0", "iteration": 2}
    assert read_jsonl(mine / "machines.jsonl") == [{"iteration": 0, "dtype": "bfloat16"}]  # the start that computed its Stage I
    caplog.clear()
    grid.run(p, dry_run=True)
    assert "--resume" in next(m for m in caplog.messages if m.startswith("[2/2] no_shaping-seed0:"))
    assert [r["branches_from"] for r in grid.status(p)] == [None, None]  # it has its checkpoint now: "stopped", not pending
    shutil.rmtree(mine)
    assert [r["branches_from"] for r in grid.status(p)] == [None, ("score-seed0", 2)]
    assert grid.print_status(p) == 0
    out = capsys.readouterr().out
    assert "no_shaping-seed0     pending  0/4 (from score-seed0's 2)" in out and "2 training iterations left" in out
    assert branch.start_from_point(p, "no_shaping-seed0", mine)

    # finished: (d) drops its checkpoints and the branch point it used
    (mine / "hf_model").mkdir()
    (p.results / "no_shaping-seed0.json").write_text("{}")
    assert grid._run_one(p, "[2/2] no_shaping-seed0", "no_shaping-seed0", mine, cmds["no_shaping-seed0"], False, False) == 0
    assert not point.exists() and not (mine / "checkpoints").exists()

    # a window before the end of Stage I had the best training reward: (b) kept that window's checkpoint too, and
    # (d) starts with it as its best; where it was not kept (an older (b)), no branch
    p1 = Plan(p.out, p.config, [1], 10, 2, 2, p.overrides, results=p.results, arms=p.arms, transfer=())
    assert "checkpoint.keep_iterations=[1,2]" in " ".join(dict((n, c) for n, _, c in p1.commands())["score-seed1"])
    falling = [{"kind": "train", "step": i, "reward_attempt2": r} for i, r in zip((1, 2, 3), (0.5, 0.2, 0.1))]
    branched = p.out / "score-seed1" / branch.BRANCH_DIR
    for kept in ((2, 4), (1, 2, 4)):  # an older (b) that kept only the end of Stage I, then one that kept window 1's too
        shutil.rmtree(p.out / "score-seed1", ignore_errors=True)
        shutil.rmtree(p.out / "no_shaping-seed1", ignore_errors=True)
        for i in kept:
            _fake_checkpoint(p.out / "score-seed1" / "checkpoints" / f"iter_{i:06d}", i, i + 10)
        (p.out / "score-seed1" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in falling))
        assert branch.save_point(p1, "score-seed1", p.out / "score-seed1") is not None
        assert sorted(x.name for x in branched.glob("iter_*")) == [f"iter_{i:06d}" for i in kept if i <= 2], kept
        assert branch.start_from_point(p1, "no_shaping-seed1", p.out / "no_shaping-seed1") == (1 in kept), kept
    assert "best training window before iteration 2 ends at 1," in caplog.text  # the first time: not kept
    best1 = json.loads((p.out / "no_shaping-seed1" / "checkpoints" / "best" / "score_checkpoint.json").read_text())
    assert (best1["iteration"], best1["version"], best1["train_reward"]) == (1, 11, 0.5)  # window 1's weights and reward
    assert (p.out / "no_shaping-seed1" / "checkpoints" / "iter_000002").is_dir()  # it continues from the end of Stage I

    # a (b) that wrote no checkpoint at the end of Stage I keeps no branch point, and the log says what that costs
    for folder in (p.out / "score-seed1", p.out / "no_shaping-seed1"):
        shutil.rmtree(folder)
    _fake_checkpoint(p.out / "score-seed1" / "checkpoints" / "iter_000004", 4, 14)
    caplog.clear()
    assert branch.save_point(p1, "score-seed1", p.out / "score-seed1") is None and not branched.exists()
    assert "score-seed1 has no checkpoint at the end of Stage I" in caplog.text and "no_shaping-seed1 will train Stage I again" in caplog.text
    assert not branch.start_from_point(p1, "no_shaping-seed1", p.out / "no_shaping-seed1")


def test_an_attempt_stopped_with_the_session_still_counts_in_the_wall_time(tmp_path):
    """A real child process: the heartbeat holds the attempt's time while it runs; an attempt that left its
    heartbeat behind (stopped from outside) is recorded when the run is next attempted, and both count."""
    import sys

    out = tmp_path / "runs"
    out.mkdir()
    (out / "r.attempt.json").write_text(json.dumps({"run": "r", "seconds": 120.0}))  # left by a stopped attempt
    # the child exits 0 only if its own heartbeat exists while it runs
    child = f"import time, pathlib; time.sleep(1.5); raise SystemExit(0 if pathlib.Path({str(out / 'r.attempt.json')!r}).exists() else 5)"
    rc, took = grid.run_attempt(out, "r", [sys.executable, "-c", child], beat_s=0.5)
    assert rc == 0 and 1.5 <= took < 30
    rows = [json.loads(line) for line in (out / "timings.jsonl").read_text().splitlines()]
    assert rows[0] == {"run": "r", "seconds": 120.0, "rc": "stopped"} and rows[1]["rc"] == 0
    assert not (out / "r.attempt.json").exists()
    assert grid._wall_seconds(out, "r", out / "r") == pytest.approx(120.0 + took)
    rc, _ = grid.run_attempt(out, "r", [sys.executable, "-c", "raise SystemExit(3)"])
    assert rc == 3


def test_collapse_metrics_compare_final_answers_not_wording():
    from cluster.evaluate import collapse_metrics

    a1 = ["3 + 4 = 7. The answer is 7.", "She has 5 apples.", "x = 2", "12"]
    a2 = ["Let me recheck: 3 + 4 = 7, so 7", "She has 6 apples.", "x = 2", "\\boxed{12}"]
    m = collapse_metrics("math", a1, a2)
    assert m["answer_changed"] == pytest.approx(1 / 4)  # only 5 -> 6
    assert m["text_identical"] == pytest.approx(1 / 4)
    code = collapse_metrics("code", ["```python\ndef f(): return 1\n```"], ["Fixed:\n```python\ndef f(): return 1\n```"])
    assert code == {"answer_changed": 0.0, "text_identical": 0.0}


def test_self_correction_metrics_count_each_kind_of_change():
    from cluster.evaluate import metric_array, self_correction_metrics

    # right->right, wrong->right, right->wrong, wrong->wrong, wrong->right
    r1, r2 = [1.0, 0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 1.0]
    m = self_correction_metrics(r1, r2)
    assert m == pytest.approx({"accuracy_t1": 0.4, "accuracy_t2": 0.6, "delta_t1_t2": 0.2, "delta_i_to_c": 0.4,
                               "delta_c_to_i": 0.2, "num_problems": 5})
    assert m["delta_t1_t2"] == pytest.approx(m["delta_i_to_c"] - m["delta_c_to_i"])
    stacked = metric_array(np.array([r1, r2]) >= 0.5, np.array([r2, r1]) >= 0.5)  # leading axes are kept
    assert stacked.shape == (2, 5) and stacked[1, 2] == pytest.approx(-0.2)
    with pytest.raises(ValueError):
        self_correction_metrics([1.0], [])


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
    out["base"]["delta_t1_t2"] |= {"mean": 0.004, "lo": -0.0004, "hi": 0.012}  # a bound that rounds to zero
    assert "+0.4 [+0.0, +1.2]" in markdown_table(out) and "-0.0" not in markdown_table(out)


def test_the_goal_is_checked_clause_by_clause_from_the_bootstrap():
    rng = np.random.default_rng(2)
    n = 500
    r1 = rng.random(n) < 0.5
    fixes = r1 | (rng.random(n) < 0.3)  # wrong-to-right on ~15% of problems, never right-to-wrong
    seeds = [(r1, fixes)] * 3
    summary = bootstrap({"base": [(r1, r1 & (rng.random(n) > 0.2))], "score": seeds, "stage2_only": [(r1, r1)] * 3,
                         "plain_rl": [(r1, fixes)] * 3}, draws=300)
    summary["training_episodes_per_run"] = 2560
    checks = {c["clause"]: c for c in report.goal_check(summary)}
    assert checks["SCoRe's Δ(t1,t2) > 0, interval above 0"]["met"] is True
    assert checks["SCoRe's Δ minus that of (a) base, prompted, interval above 0"]["met"] is True
    assert checks["SCoRe's Δ minus that of (c) Stage II only, interval above 0"]["met"] is True
    assert checks["SCoRe's Δ minus that of (e) plain two-turn RL, interval above 0"]["met"] is False  # the same outcomes: no difference
    assert checks["SCoRe's Δ minus that of (d) SCoRe, α = 0, interval above 0"]["met"] is None  # no run of (d) yet
    assert checks["SCoRe's Δ_c→i at most half of its Δ_i→c"]["met"] is True
    assert checks["at least 2400 training episodes per run"]["met"] is True
    assert checks["at least 3 seeds per trained arm"]["met"] is False  # (d) has none
    assert "**not met**" in "\n".join(report.goal_lines(list(checks.values())))
    worse = bootstrap({"score": [(fixes, r1)]}, draws=100)  # attempt 2 undoes corrections
    checks = {c["clause"]: c["met"] for c in report.goal_check(worse, scale=False)}
    assert checks["SCoRe's Δ(t1,t2) > 0, interval above 0"] is False and checks["SCoRe's Δ_c→i at most half of its Δ_i→c"] is False
    assert not any("episodes" in c for c in checks)


def test_learning_curves_are_averaged_over_seeds_at_shared_iterations():
    def rec(points):
        return {"curves": [{"iteration": i, "accuracy_t2": v} for i, v in points]}

    # seed 1 stopped before its evaluation at iteration 30: the band covers 10 and 20 only
    its, mean, lo, hi = report.seed_band([rec([(10, 0.2), (20, 0.4), (30, 0.5)]), rec([(10, 0.4), (20, 0.6)]), rec([])], "accuracy_t2")
    assert its == [10, 20] and mean == pytest.approx([0.3, 0.5]) and lo == pytest.approx([0.2, 0.4]) and hi == pytest.approx([0.4, 0.6])
    assert report.seed_band([rec([])], "accuracy_t2")[0] == []


def test_bootstrap_refuses_runs_on_different_problems():
    a = np.ones(10, bool)
    with pytest.raises(ValueError, match="same 10 problems"):
        bootstrap({"base": [(a, a)], "score": [(a[:5], a[:5])]})


def _result(arm, seed, r1, r2, r3=None, episodes=3200):
    per = {"r1": "".join(map(str, r1)), "r2": "".join(map(str, r2))}
    if r3 is not None:
        per["r3"] = "".join(map(str, r3))
    curves = [] if arm == "base" else [{"iteration": i, "accuracy_t1": 0.4, "accuracy_t2": 0.45, "delta_t1_t2": 0.05, "answer_changed": 0.2,
                                        "text_identical": 0.1} for i in (10, 20)]
    return {"name": arm if arm == "base" else f"{arm}-seed{seed}", "arm": arm, "seed": None if arm == "base" else seed, "commit": "x",
            "wall_seconds": 60.0, "final": {"answer_changed": 0.25, "num_problems": len(r1)}, "selected_iteration": None, "per_problem": per,
            "training_episodes": 0 if arm == "base" else episodes, "generated_episodes": 0, "curves": curves,
            "train": [] if arm == "base" else [{"iteration": i, "seconds_iteration": 90.0, "zero_variance_groups": (i - 1) / 4,
                                                **({"fixed": 0.05, "broken": 0.1 * i} if seed == 1 else {})} for i in range(1, 5)]}


def test_report_is_rebuilt_from_result_files_alone(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    r1 = [1, 0, 1, 0, 1, 0]
    fixed = {"problem_index": 1, "problem": "Tom has 2 apples and gets 3 more apples. How many apples does Tom have now?",
             "attempt1": "Tom has 6 apples.", "attempt2": "2 + 3 = 5. Tom has 5 apples.", "gold": "5"}
    files = [_result("base", None, r1, [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0]),
             _result("score", 0, r1, [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]), _result("score", 1, r1, [1, 1, 1, 0, 1, 0], [1, 1, 1, 0, 1, 0], episodes=2400),
             _result("plain_rl", 0, r1, r1, r1)]
    files[1]["corrections"] = [fixed]
    files[3]["branched_from"] = {"run": "score-seed0", "iteration": 2}  # as cluster.experiment.branch records it
    files[1]["machines"] = [{"iteration": 0, "dtype": "bfloat16"}, {"iteration": 2, "dtype": "bfloat16"}]
    files[2]["machines"] = [{"iteration": 0, "dtype": "bfloat16", "recorded": False}]  # added to a record that predates the field
    for rec in files:
        (results / f"{rec['name']}.json").write_text(json.dumps(rec))
    docs = tmp_path / "docs"
    assert report.report(results, docs, design=1) == 0
    summary = json.loads((docs / "self_correction.json").read_text())
    assert summary["score"]["seeds"] == 2 and summary["score"]["accuracy_t1"]["mean"] == pytest.approx(0.5)
    assert summary["score"]["delta_i_to_c"]["mean"] == pytest.approx(1 / 6)
    assert summary["score"]["delta_c_to_i"]["mean"] == pytest.approx(1 / 12)
    assert summary["training_episodes_per_run"] == 2400 and summary["num_problems"] == 6  # the smallest run's
    for arm in ("base", "plain_rl"):
        d = summary["score_minus"][arm]
        assert d["lo"] <= d["mean"] <= d["hi"]
    assert summary["score_minus"]["plain_rl"]["mean"] == pytest.approx(1 / 12)
    assert list(summary["answer_changed"]) == ["base", "score", "plain_rl"]  # arms in ARMS order, not file order
    # pooled over both seeds: 6 wrong first attempts, 2 fixed; 6 right ones, 1 broken
    assert summary["correction_rates"]["score"] == pytest.approx({"wrong_t1": 6, "right_t1": 6, "fixed": 1 / 3, "broken": 1 / 6})
    assert summary["correction_rates"]["plain_rl"]["fixed"] == 0.0
    assert summary["accuracy_by_attempt"]["base"] == pytest.approx([0.5, 1 / 3, 1 / 6])
    assert summary["accuracy_by_attempt"]["score"] == pytest.approx([0.5, 7 / 12, 2 / 3])
    assert (docs / "self_correction.png").stat().st_size > 10_000
    md = (docs / "self_correction.md").read_text()
    assert "(e) plain two-turn RL" in md and "Accuracy@t3" in md and "| score-seed1 | 2400 | 38% | 1 | 6 | — | bfloat16 (inferred) |" in md
    assert "| score-seed0 | 3200 | 38% | 1 | 6 | — | bfloat16 |" in md and "| base | 0 | — | 1 | 0 | — | not recorded |" in md
    assert summary["dtypes"]["score-seed0"] == ["bfloat16"] and "different dtypes" not in md
    assert summary["iteration_seconds"]["score-seed0"] == pytest.approx(360.0)
    assert "| plain_rl-seed0 (iterations 1-2 are score-seed0's) | 3200 |" in md
    assert summary["zero_variance_groups"]["score-seed0"] == pytest.approx(0.375) and summary["zero_variance_groups"]["base"] is None
    assert summary["examples"] == [fixed | {"run": "score-seed0"}]
    assert "> attempt 2: 2 + 3 = 5. Tom has 5 apples." in md and "(gold: 5)" in md
    assert "SCoRe's Δ minus that of (e) plain two-turn RL, interval above 0" in md and "at least 3 seeds per trained arm" in md
    assert [c["met"] for c in summary["goal"] if c["clause"].startswith("at least")] == [True, False]  # 2400 is enough; 2 seeds are not
    assert "transfer" not in summary and "Transfer set" not in md
    # the curves as tables: one column per trained arm with runs, one row per evaluated iteration
    assert "| iteration | (b) SCoRe | (e) plain two-turn RL |\n| --- | --- | --- |\n| 10 | 45.0 | 45.0 |\n| 20 | 45.0 | 45.0 |" in md
    assert "| 10 | +5.0 | +5.0 |" in md and "the collapse diagnostic, mean over seeds" in md
    # training rows per 10 iterations (here iterations 0-3, all in the first window), mean over seeds
    assert "| iterations | (b) SCoRe | (e) plain two-turn RL |\n| --- | --- | --- |\n| 1-10 | 38 | 38 |" in md
    # fixes and breaks of sampled attempts where the records have them (seed 1 only; older records do not)
    assert "sampled attempt 2 breaks a right attempt 1 (% of samples), mean per 10 iterations and over seeds:" in md
    assert "| 1-10 | 25.0 | — |" in md and "| 1-10 | 5.0 | — |" in md
    # every run on its own; no transfer evaluation yet
    assert "| score-seed1 | 50.0 | 66.7 | +16.7 | 25.0% | — | — | — | — |" in md
    (results / "transfer").mkdir()
    for rec in (_result("base", None, [0, 0, 0, 0], [0, 0, 0, 1]), _result("score", 0, [1, 0, 0, 0], [1, 1, 1, 0]),
                _result("plain_rl", 0, [1, 1, 0, 0], [1, 1, 0, 0])):
        if rec["arm"] == "score":
            rec["corrections"] = [fixed | {"problem": "Lily has 14 shells and buys 15 more shells.", "gold": "29"}]
        (results / "transfer" / f"{rec['name']}.json").write_text(json.dumps(rec | {"overrides": ["task.max_operand=20"]}))
    assert report.report(results, docs, design=1) == 0
    summary = json.loads((docs / "self_correction.json").read_text())
    assert summary["score"]["seeds"] == 2  # the main table still reads the main result files only
    t = summary["transfer"]
    assert t["score"]["problems"] == 4 and t["score"]["delta_t1_t2"]["mean"] == pytest.approx(0.5)
    assert t["score_minus"]["plain_rl"]["mean"] == pytest.approx(0.5) and t["score_minus"]["base"]["mean"] == pytest.approx(0.25)
    assert t["overrides"] == ["task.max_operand=20"] and t["num_problems"] == 4 and t["answer_changed"]["score"] == 0.25
    md = (docs / "self_correction.md").read_text()
    assert "Transfer set: 4 held-out problems with task.max_operand=20" in md and md.count("SCoRe minus (e)") == 2
    assert t["examples"][0]["gold"] == "29" and summary["examples"] == [fixed | {"run": "score-seed0"}]
    assert md.index("Transfer-set problems where SCoRe") > md.index("Transfer set: 4") > md.index("(gold: 5)")
    assert "> problem: Lily has 14 shells and buys 15 more shells." in md
    assert "The goal's clauses on the transfer set:" in md and len(t["goal"]) == 6  # no scale clauses
    assert t["correction_rates"]["base"] == {"wrong_t1": 4, "right_t1": 0, "fixed": 0.25, "broken": None}
    assert "| (a) base, prompted | 4 | 25.0% | 0 | — |" in md
    assert "| score-seed0 | 50.0 | 50.0 | +0.0 | 25.0% | — | 25.0 | 75.0 | +50.0 |" in md
    assert "| score-seed1 | 50.0 | 66.7 | +16.7 | 25.0% | — | — | — | — |" in md
    # the same block lands between the markers of a results document, and the prose around them stays
    doc = tmp_path / "RESULTS.md"
    begin, end = report.markers(docs)
    doc.write_text(f"# Results\nprose before\n{begin}\nstale table\n{end}\nprose after\n")
    assert report.report(results, docs, embed_in=doc, design=1) == 0
    text = doc.read_text()
    assert "stale table" not in text and text.startswith("# Results\nprose before\n") and text.endswith(f"{end}\nprose after\n")
    assert md.strip() in text
    # a run computed in another dtype is said where the numbers are read
    (results / "plain_rl-seed0.json").write_text(json.dumps(files[3] | {"machines": [{"iteration": 0, "dtype": "float32"}]}))
    assert report.report(results, docs, design=1) == 0
    assert "**The runs computed in different dtypes (bfloat16, float32)" in (docs / "self_correction.md").read_text()


def test_the_report_checks_that_no_shaping_repeated_score_stage1():
    """(b) and (d) differ only from Stage II (α), so (d)'s Stage I must equal (b)'s of the same seed, which is what
    lets the runner branch (d) from (b)'s checkpoint: the report counts the equal iterations and evaluations."""
    def rec(arm, seed, rewards, curves, **extra):
        return {"arm": arm, "seed": seed, "settings": {"stage1_iterations": 2},
                "train": [{"iteration": i + 1, "reward_attempt1": r, "reward_attempt2": r, "seconds_iteration": 50.0 + i} for i, r in enumerate(rewards)],
                "curves": [{"iteration": i, "accuracy_t2": a} for i, a in curves], **extra}

    by_arm = {"score": [rec("score", 0, [0.1, 0.2, 0.3], [(2, 0.4), (4, 0.5)]), rec("score", 1, [0.1, 0.2, 0.3], [(2, 0.4)])],
              "no_shaping": [rec("no_shaping", 0, [0.1, 0.2, 0.9], [(2, 0.4), (4, 0.9)]),  # Stage II differs: not compared
                             rec("no_shaping", 1, [0.1, 0.25, 0.3], [(2, 0.45)]),
                             rec("no_shaping", 2, [], [], branched_from={"run": "score-seed2", "iteration": 2})]}
    rows = report.stage1_agreement(by_arm)
    assert rows[0] == {"seed": 0, "branched": False, "iterations": 2, "equal_iterations": 2, "compared_iterations": 2,
                       "equal_evaluations": 1, "evaluations": 1}
    assert rows[1]["equal_iterations"] == 1 and rows[1]["equal_evaluations"] == 0  # the timing differs everywhere; not compared
    assert len(rows) == 2  # seed 2 has no (b) record here
    by_arm["score"].append(rec("score", 2, [0.1], []))
    assert report.stage1_agreement(by_arm)[2] == {"seed": 2, "branched": True, "iterations": 2}
    line = report._stage1_line(report.stage1_agreement(by_arm))[1]
    assert "seed 0: 2 of 2 iterations and 1 of 1 validation evaluations equal; seed 1: 1 of 2" in line and "seed 2: shared by branching" in line
    # a (d) computed in another dtype than (b) sampled other tokens from the first step: said, not counted
    by_arm["score"][1]["machines"] = [{"iteration": 0, "dtype": "bfloat16"}]
    by_arm["no_shaping"][1]["machines"] = [{"iteration": 0, "dtype": "float32"}]
    assert report.stage1_agreement(by_arm)[1] == {"seed": 1, "branched": False, "iterations": 2,
                                                   "dtypes": {"score": ["bfloat16"], "no_shaping": ["float32"]}}
    line = report._stage1_line(report.stage1_agreement(by_arm))[1]
    assert "seed 1: not comparable, (b) computed in bfloat16 and (d) in float32" in line and "seed 0: 2 of 2" in line


def test_an_evaluation_record_quotes_corrections_from_the_evaluated_problems(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rewards.tasks.arithmetic import ArithmeticTask

    problems = ArithmeticTask(2, train_size=20, eval_size=4, max_operand=20).problems("eval")
    rows = {"problem_index": [2, 0, 1, 3], "r1": [0.0, 1.0, 0.0, 1.0], "r2": [1.0, 1.0, 0.0, 0.0],
            "a1_messages": [json.dumps([{"role": "user", "content": problems[i].question}]) for i in (2, 0, 1, 3)],
            "a1_text": ["one", "two", "three", "four"], "a2_text": ["fixed", "kept", "still wrong", "broken"]}
    pq.write_table(pa.table(rows), tmp_path / "samples.parquet")
    (tmp_path / "eval.json").write_text(json.dumps({"accuracy_t1": 0.5, "accuracy_t2": 0.5, "delta_t1_t2": 0.0, "num_problems": 4}))
    rec = record.summarize_run("score-seed0", tmp_path, 12.0, eval_only=True, problems=problems)
    assert rec["per_problem"] == {"r1": "1001", "r2": "1010"}  # in problem order
    assert rec["corrections"] == [{"problem_index": 2, "problem": problems[2].question, "attempt1": "one", "attempt2": "fixed",
                                   "gold": problems[2].gold}]
    assert "corrections" not in record.summarize_run("base", tmp_path, 12.0, eval_only=True)
    other = ArithmeticTask(2, train_size=20, eval_size=4).problems("eval")  # the level's own numbers: other problems
    with pytest.raises(ValueError, match="not the ones rebuilt"):
        record.summarize_run("score-seed0", tmp_path, 12.0, eval_only=True, problems=other)


def test_embedding_needs_both_markers_in_order_and_leaves_the_document_alone_otherwise(tmp_path):
    doc = tmp_path / "RESULTS.md"
    begin, end = report.markers()
    assert not report.embed(doc, "x") and not doc.exists()
    for text in ("no markers\n", f"{begin}\nonly the start\n", f"{end}\nwrong order\n{begin}\n"):
        doc.write_text(text)
        assert not report.embed(doc, "block") and doc.read_text() == text
    doc.write_text(f"a\n{begin}\nold\n{end}\nb\n")
    assert report.embed(doc, "new\n") and report.embed(doc, "new\n")  # idempotent
    assert doc.read_text() == f"a\n{begin}\n\nnew\n\n{end}\nb\n"


def test_one_document_holds_two_designs_reports_and_each_rebuild_touches_only_its_own(tmp_path):
    doc, first = tmp_path / "RESULTS.md", Path("docs/results/design1")
    (b2, e2), (b1, e1) = report.markers(), report.markers(first)
    assert b1 != b2 and "--docs docs/results/design1 " in b1  # the marker names the command that rebuilds it
    doc.write_text(f"second\n{b2}\nold 2\n{e2}\nfirst\n{b1}\nold 1\n{e1}\n")
    assert report.embed(doc, "new 1", first)
    assert doc.read_text() == f"second\n{b2}\nold 2\n{e2}\nfirst\n{b1}\n\nnew 1\n\n{e1}\n"
    assert report.embed(doc, "new 2")
    assert doc.read_text() == f"second\n{b2}\n\nnew 2\n\n{e2}\nfirst\n{b1}\n\nnew 1\n\n{e1}\n"


def test_report_without_results_is_one_line(tmp_path, capsys):
    assert report.report(tmp_path / "nothing", tmp_path / "docs") == 2
    assert capsys.readouterr().err.startswith("error: no result files")


def test_status_reads_where_the_grid_stands_from_its_files(tmp_path, capsys):
    import os
    import time

    plan = Plan(tmp_path / "runs", "c.yaml", [0], 10, 2, 3, [], results=tmp_path / "results", arms=("base", "score", "plain_rl", "stage2_only"))
    plan.results.mkdir()
    (plan.results / "base.json").write_text(json.dumps(_result("base", None, [1, 0], [1, 1])))
    for name, iterations in (("score-seed0", 4), ("plain_rl-seed0", 3)):
        where = plan.out / name
        (where / "checkpoints" / "iter_000002").mkdir(parents=True)
        (where / "metrics.jsonl").write_text("".join(json.dumps({"kind": "train", "iteration": i, "seconds_iteration": 60.0}) + "\n"
                                                     for i in range(1, iterations + 1)))
        (plan.out / f"{name}.attempt.json").write_text("{}")
    stale = time.time() - 600
    os.utime(plan.out / "plain_rl-seed0.attempt.json", (stale, stale))  # its runner was stopped ten minutes ago
    rows = {r["run"]: r for r in grid.status(plan)}
    assert rows["base"]["state"] == "done" and rows["base"]["transfer"] is False
    assert (rows["score-seed0"]["state"], rows["score-seed0"]["iteration"], rows["score-seed0"]["resumes_from"]) == ("running", 4, 2)
    assert (rows["plain_rl-seed0"]["state"], rows["plain_rl-seed0"]["resumes_from"]) == ("stopped", 2)
    assert rows["stage2_only-seed0"]["state"] == "pending" and rows["stage2_only-seed0"]["iterations"] == 5
    (plan.out / "stage2_only-seed0.attempt.json").write_text("{}")  # just started: a heartbeat, no checkpoint
    started = grid.status(plan)[-1]
    assert started["state"] == "running" and started["resumes_from"] == 0
    assert grid.print_status(plan) == 0
    out = capsys.readouterr().out
    assert "score-seed0          running  4/5 (checkpoint 2)" in out
    assert "stage2_only-seed0    running  0/5 (no checkpoint yet)" in out
    assert "1 of 4 runs done; 9 training iterations left" in out  # 1 + 3 (resumes at 2) + 5 - 0


def test_rewriting_a_log_replaces_a_hard_link_instead_of_writing_through_it(tmp_path):
    """A branched run's metrics.jsonl may start as a link to (b)'s kept log; truncating or rewriting it
    must leave (b)'s copy as it was."""
    kept = tmp_path / "kept.jsonl"
    write_jsonl(kept, [{"step": 1}, {"step": 2}])
    mine = tmp_path / "metrics.jsonl"
    mine.hardlink_to(kept)
    write_jsonl(mine, [{"step": 1}])
    assert read_jsonl(kept) == [{"step": 1}, {"step": 2}]
    assert read_jsonl(mine) == [{"step": 1}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.jsonl", "metrics.jsonl"]  # no partial file left


def test_a_start_replaces_the_machine_lines_of_the_work_it_redoes(tmp_path, monkeypatch):
    """machines.jsonl names the machines that computed the iterations a run keeps: a resume from an earlier
    checkpoint drops the lines of starts whose iterations it redoes, as the metrics log drops their rows."""
    from cluster.machines import machines, note_start
    from common import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    note_start(tmp_path, 0, "bfloat16")
    note_start(tmp_path, 20, "bfloat16")  # resumed at 20; reached 27 and was stopped; its last checkpoint: 20
    note_start(tmp_path, 20, "bfloat16")  # so the next start redoes 21-27 and the line before it goes
    got = machines(tmp_path)
    assert [m["iteration"] for m in got] == [0, 20] and got[1]["time"] >= got[0]["time"]
    assert got[0]["dtype"] == "bfloat16" and got[0]["cpu_flags"] == ["avx2", "avx512_bf16"] and got[0]["auto_dtype"] == "bfloat16"
    note_start(tmp_path, 0, "float32")  # a fresh start (--overwrite of a run that crashed before its first metrics)
    assert [(m["iteration"], m["dtype"]) for m in machines(tmp_path)] == [(0, "float32")]


def test_the_second_design_adds_f_with_scores_share_of_base_first_attempts_and_keeps_b_settings_in_c_and_d(tmp_path):
    chosen = ("algorithm.stage2_base_first_attempts=0.5", "algorithm.beta2_target_kl=0.005")
    plan = Plan(tmp_path / "runs", "configs/experiment_cpu.yaml", [0], 500, 40, 40, [], results=tmp_path / "results",
                arms=DESIGN_ARMS[2], score_sets=chosen)
    by_name = {n: c for n, _, c in plan.commands()}
    assert list(by_name)[:4] == ["base", "score-seed0", "plain_rl-seed0", "plain_rl_base_first-seed0"]  # (f) right after (e)
    cfg = {n: load_config(plan.config, [c[i + 1] for i, a in enumerate(c) if a == "--set"]).algorithm
           for n, c in by_name.items() if n != "base"}
    for arm in ("score", "stage2_only", "no_shaping"):  # (c) and (d) keep every setting chosen for (b) ...
        assert cfg[f"{arm}-seed0"].stage2_base_first_attempts == 0.5, arm
    assert cfg["score-seed0"].beta2_target_kl == cfg["no_shaping-seed0"].beta2_target_kl == 0.005
    assert cfg["stage2_only-seed0"].beta2_target_kl is None  # ... but (c) has no Stage I for an adaptive β2 to act in
    f, e = cfg["plain_rl_base_first-seed0"], cfg["plain_rl-seed0"]
    assert f.stage2_base_first_attempts == 0.5 and f.beta2_target_kl is None  # (f): the share only
    assert e.stage2_base_first_attempts == 0 and e.beta2_target_kl is None  # (e): none of them
    for c in (f, e, cfg["stage2_only-seed0"]):
        assert c.stage1_iterations == 0 and c.stage2_iterations == 80
    assert f.alpha == e.alpha == cfg["no_shaping-seed0"].alpha == 0 and cfg["score-seed0"].alpha > 1
    # (f) without a share would be (e) again: refused in one line
    with pytest.raises(ConfigError, match="plain_rl_base_first needs SCoRe's share"):
        Plan(tmp_path, "c.yaml", [0], 10, 1, 1, [], arms=DESIGN_ARMS[2])
    assert main(["run", "--dry-run", "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"), "--arms", "plain_rl_base_first"]) == 2


def test_the_second_designs_report_pools_fix_and_break_rates_and_checks_them_against_every_trained_arm(tmp_path):
    results = tmp_path / "results"
    (results / "fixed_first").mkdir(parents=True)
    r1 = [1, 0, 1, 0, 1, 0]
    files = [_result("base", None, r1, r1), _result("score", 0, r1, [1, 1, 1, 0, 1, 0]), _result("score", 1, r1, [1, 1, 1, 1, 1, 0]),
             _result("plain_rl", 0, r1, r1), _result("plain_rl_base_first", 0, r1, [1, 1, 1, 0, 1, 0])]
    for rec in files:
        (results / f"{rec['name']}.json").write_text(json.dumps(rec))
    # on the base model's 20 wrong and 10 right first attempts: SCoRe fixes 4 and 6 (pooled 10 of 40) and breaks 1 of 20
    for name, fix, brk in (("score-seed0", 0.2, 0.0), ("score-seed1", 0.3, 0.1), ("plain_rl-seed0", 0.05, 0.0),
                           ("plain_rl_base_first-seed0", 0.3, 0.2)):
        (results / "fixed_first" / f"{name}.json").write_text(json.dumps(
            {"run": name, "fix_rate": fix, "wrong_first_attempts": 20, "break_rate": brk, "right_first_attempts": 10}))
    docs = tmp_path / "docs"
    assert report.report(results, docs) == 0
    summary = json.loads((docs / "self_correction.json").read_text())
    assert summary["design"] == 2 and summary["training_episodes_per_run"] == 3200
    fixed = summary["fixed_first_attempts"]
    assert set(fixed) == {"score", "plain_rl", "plain_rl_base_first"}  # the base model corrects nobody's first attempts here
    s = fixed["score"]
    assert s["runs"] == 2 and s["wrong_first_attempts"] == 40 and s["fix_rate"] == pytest.approx(0.25)
    assert s["break_rate"] == pytest.approx(0.05) and s["fix_rate_lo"] < 0.25 < s["fix_rate_hi"] and s["break_rate_lo"] < 0.05 < s["break_rate_hi"]
    for arm in ("base", "plain_rl", "plain_rl_base_first"):  # every arm's paired difference in Δ, (f) included
        d = summary["score_minus"][arm]
        assert d["lo"] <= d["mean"] <= d["hi"]
    goal = {c["clause"]: c["met"] for c in summary["goal"]}
    fix_clause = "SCoRe's fix rate on the base model's first attempts above that of {}, its break rate no higher"
    assert goal[fix_clause.format("(e) plain two-turn RL")] is False  # fixes more, but breaks more than (e)'s 0
    assert goal[fix_clause.format("(f) plain RL, base first attempts")] is False  # (f) fixes more (0.30 > 0.25)
    assert goal[fix_clause.format("(c) Stage II only")] is None and goal[fix_clause.format("(d) SCoRe, α = 0")] is None
    assert "SCoRe's Δ minus that of (f) plain RL, base first attempts, interval above 0" in goal
    md = (docs / "self_correction.md").read_text()
    assert "| (b) SCoRe | 2 | 40 | 25.0% [" in md and "| (f) plain RL, base first attempts | 1 | 20 | 30.0% [" in md
    # (f) beaten on both rates: met
    (results / "fixed_first" / "plain_rl_base_first-seed0.json").write_text(json.dumps(
        {"fix_rate": 0.1, "wrong_first_attempts": 20, "break_rate": 0.1, "right_first_attempts": 10}))
    assert report.report(results, docs) == 0
    goal = {c["clause"]: c["met"] for c in json.loads((docs / "self_correction.json").read_text())["goal"]}
    assert goal[fix_clause.format("(f) plain RL, base first attempts")] is True
    # the first design's report has neither (f) nor these clauses, and refuses runs of an arm it does not have
    assert report.report(results, docs, design=1) == 2
    (results / "plain_rl_base_first-seed0.json").unlink()
    assert report.report(results, docs, design=1) == 0
    first = json.loads((docs / "self_correction.json").read_text())
    assert "design" not in first and "fixed_first_attempts" not in first
    assert not any("fix rate" in c["clause"] or "(f)" in c["clause"] for c in first["goal"])


def test_every_run_is_also_evaluated_at_the_training_temperature_and_reported_beside_greedy(tmp_path, caplog):
    """The first design saw SCoRe's shaping act on sampled second attempts but not under greedy decoding; the second
    evaluates every run (the base model too) on the same held-out problems at the training temperature."""
    plan = Plan(tmp_path / "runs", "configs/experiment_cpu.yaml", [0], 500, 2, 3, [], results=tmp_path / "results",
                arms=("base", "score"), sampled=True)
    assert plan.side_evals() == ("transfer", "sampled")
    cmd = plan.side_eval_command("sampled", "score-seed0", plan.out / "score-seed0")
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    cfg = load_config(plan.config, sets)
    assert cfg.eval.temperature == cfg.rollout.attempt1.temperature == 0.5 and cfg.eval.attempts == 2
    assert cfg.task.max_operand != 20 and cfg.eval.num_problems == 500 and cfg.task.data_seed == 0  # the held-out problems
    assert cmd[cmd.index("--model") + 1] == str(plan.out / "score-seed0" / "hf_model")
    assert cmd[cmd.index("--out") + 1] == str(plan.out / "score-seed0" / "sampled")
    held_out = load_config(plan.config, plan.shared_sets(2))
    same = build_task(held_out.task, seed=held_out.run.seed).problems("eval")[:500]
    assert plan.side_eval_problems("sampled") == same != plan.transfer_problems()  # the final evaluation's problems, not the transfer set's
    # the runner gives each finished run its evaluation once, on its own line
    plan.results.mkdir()
    (plan.results / "base.json").write_text("{}")
    lines = [m for m in _dry_run_messages(plan, caplog) if "at the training temperature:" in m]
    assert len(lines) == 1 and lines[0].startswith("[1/2] base, held-out problems at the training temperature:") and "eval.temperature=0.5" in lines[0]
    (plan.results / "sampled").mkdir()
    (plan.results / "sampled" / "base.json").write_text("{}")
    assert not [m for m in _dry_run_messages(plan, caplog) if "training temperature" in m]
    assert [r["sampled"] for r in grid.status(plan)] == [True, False]
    # the report: the greedy table, and the sampled one beside it with its own paired differences
    results = tmp_path / "report"
    (results / "sampled").mkdir(parents=True)
    r1 = [1, 0, 1, 0, 1, 0]
    for rec in (_result("base", None, r1, r1), _result("score", 0, r1, r1)):
        (results / f"{rec['name']}.json").write_text(json.dumps(rec))
    for rec in (_result("base", None, r1, [1, 0, 0, 0, 1, 0]), _result("score", 0, r1, [1, 1, 1, 1, 1, 0])):
        (results / "sampled" / f"{rec['name']}.json").write_text(json.dumps(rec | {"overrides": ["eval.temperature=0.5"]}))
    docs = tmp_path / "docs"
    assert report.report(results, docs) == 0
    summary = json.loads((docs / "self_correction.json").read_text())
    assert summary["score"]["delta_t1_t2"]["mean"] == 0  # greedy: no change
    sm = summary["sampled"]
    assert sm["overrides"] == ["eval.temperature=0.5"] and sm["score"]["delta_t1_t2"]["mean"] == pytest.approx(2 / 6)
    assert sm["score_minus"]["base"]["mean"] == pytest.approx(3 / 6)
    md = (docs / "self_correction.md").read_text()
    assert "At the training temperature (eval.temperature=0.5): the same 6 held-out problems" in md
    assert "- Δ(t1,t2) of SCoRe minus (a) base, prompted: +50.0 points" in md


def test_without_base_first_attempts_the_second_designs_goal_leaves_out_f_and_says_why(tmp_path):
    """(f) is plain RL with SCoRe's share of base first attempts: at share 0 it is (e), the runner does not run it,
    and the goal must not wait on it; with a share above 0 a missing (f) stays an open clause."""
    results = tmp_path / "results"
    results.mkdir()
    r1 = [1, 0, 1, 0, 1, 0]
    files = [_result("score", 0, r1, [1, 1, 1, 0, 1, 0]), _result("plain_rl", 0, r1, r1)]
    for rec in files:
        rec["settings"] = {"stage2_base_first_attempts": 0.0, "beta2_target_kl": 0.005}
        (results / f"{rec['name']}.json").write_text(json.dumps(rec))
    docs = tmp_path / "docs"
    assert report.report(results, docs) == 0
    summary = json.loads((docs / "self_correction.json").read_text())
    clauses = [c["clause"] for c in summary["goal"]]
    assert not any("(f)" in c for c in clauses) and any("(e) plain two-turn RL" in c for c in clauses)
    f_diff = summary["score_minus"]["plain_rl_base_first"]  # the JSON keeps (f)'s key, and says which run stands for it
    assert f_diff["same_run_as"] == "plain_rl" and f_diff["mean"] == summary["score_minus"]["plain_rl"]["mean"] == pytest.approx(1 / 6)
    assert "(f) plain RL, base first attempts is not run: SCoRe took no base-model first attempts" in (docs / "self_correction.md").read_text()
    base_only = tmp_path / "base_only"
    base_only.mkdir()
    (base_only / "base.json").write_text(json.dumps(_result("base", None, r1, r1)))
    assert report.report(base_only, tmp_path / "base_docs") == 0  # nothing trained yet: every clause open
    assert {c["met"] for c in json.loads((tmp_path / "base_docs" / "self_correction.json").read_text())["goal"]} == {None}
    files[0]["settings"]["stage2_base_first_attempts"] = 0.5  # a share: (f) is owed, its clauses wait for it
    (results / "score-seed0.json").write_text(json.dumps(files[0]))
    assert report.report(results, docs) == 0
    goal = {c["clause"]: c["met"] for c in json.loads((docs / "self_correction.json").read_text())["goal"]}
    assert goal["SCoRe's Δ minus that of (f) plain RL, base first attempts, interval above 0"] is None
    assert "plain_rl_base_first" not in json.loads((docs / "self_correction.json").read_text())["score_minus"]  # owed, not aliased
