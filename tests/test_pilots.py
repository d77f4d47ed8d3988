"""The second design's pilots (issue #34): their plan and the rule that decides whether the grid runs (pure logic on
hand-made outcomes; the runner under it is tests/test_experiment.py's, and eval.split=val runs end to end in
tests/test_overlap.py)."""

import json
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config
from cluster.experiment import grid
from cluster.experiment.pilots import DELTA_POINTS, PILOTS, PLAIN_RL, TASKS, build_plan, pilot_sets, report, rule


def _sets(cmd: list[str]) -> dict[str, str]:
    """The command's --set overrides, the last one winning, as the config loader applies them."""
    pairs = [cmd[i + 1].split("=", 1) for i, c in enumerate(cmd) if c == "--set"]
    return dict(pairs)


def test_every_pilot_evaluates_validation_problems_only_and_only_its_own_settings_differ(tmp_path, caplog):
    plan = build_plan("levels2+3", tmp_path / "runs", tmp_path / "results", iterations=76)
    runs = plan.commands()
    assert [n for n, _, _ in runs] == ["base", *(f"{p}-seed0" for p in plan.run_order())] and set(plan.run_order()) == set(PILOTS)
    by_name = {n: _sets(c) for n, _, c in runs}
    for name, sets in by_name.items():
        assert sets["eval.split"] == "val" and sets["task.difficulty"] == "[2,3]" and sets["eval.attempts"] == "2"
        cfg = load_config(plan.config, [f"{k}={v}" for k, v in sets.items()])
        assert cfg.eval.split == "val" and cfg.task.val_size == 200  # the held-out problems are not read
        if name != "base":
            alg = cfg.algorithm
            assert alg.stage1_iterations + alg.stage2_iterations == 76  # 76 x 8 x 4 = 2,432 episodes
    plain = load_config(plan.config, [f"{k}={v}" for k, v in by_name[f"{PLAIN_RL}-seed0"].items()]).algorithm
    # (e) takes none of SCoRe's options
    assert plain.stage1_iterations == 0 and plain.alpha == 0 and plain.stage2_base_first_attempts == 0 and plain.beta2_target_kl is None
    own = lambda k: k.startswith("algorithm.") or k == "run.name"  # noqa: E731 - what names a pilot
    shared = {k: v for k, v in by_name["score-seed0"].items() if not own(k)}
    for name in PILOTS:
        if name == PLAIN_RL:
            continue
        sets = by_name[f"{name}-seed0"]
        assert {k: v for k, v in sets.items() if not own(k)} == shared, name
        assert float(sets.get("algorithm.alpha", 10)) > 1  # SCoRe's shaping stays on
    assert by_name["score_base_half-seed0"]["algorithm.stage2_base_first_attempts"] == "0.5"
    assert "algorithm.beta2_target_kl" in by_name["score_adaptive_beta2-seed0"]
    long1 = by_name["score_long_stage1-seed0"]
    assert int(long1["algorithm.stage1_iterations"]) == 2 * int(long1["algorithm.stage2_iterations"]) + 1  # 51 + 25
    # each finished pilot corrects the base model's first attempts on the validation split, with the pilot's settings
    plan.results.mkdir()
    for name in ("base", "score-seed0"):
        (plan.results / f"{name}.json").write_text("{}")
    with caplog.at_level("INFO", logger="cluster.experiment"):
        grid.run(plan, dry_run=True)
    fixed = [m for m in caplog.messages if "base first attempts:" in m]
    assert len(fixed) == 1 and "score-seed0" in fixed[0] and "eval.split=val" in fixed[0]
    for task in TASKS:
        build_plan(task).commands()  # every candidate makes a valid plan
    with pytest.raises(ConfigError, match="unknown pilot task"):
        build_plan("level9")


def _record(results, name, r1, r2, fix=None, train=()):
    arm = name.split("-seed")[0]
    a1, a2 = sum(r1) / len(r1), sum(r2) / len(r2)
    rec = {"name": name, "arm": arm, "seed": 0 if "-seed" in name else None, "wall_seconds": 600.0, "train": list(train),
           "final": {"accuracy_t1": a1, "accuracy_t2": a2, "delta_t1_t2": a2 - a1, "answer_changed": 0.25, "num_problems": len(r1)},
           "per_problem": {"r1": "".join(map(str, r1)), "r2": "".join(map(str, r2))}}
    (results / f"{name}.json").write_text(json.dumps(rec))
    if fix is not None:
        (results / "fixed_first").mkdir(exist_ok=True)
        (results / "fixed_first" / f"{name}.json").write_text(json.dumps({"fix_rate": fix, "break_rate": 0.5}))


def test_the_rule_runs_the_grid_only_when_a_score_pilot_clears_it(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    n = 100
    assert rule(results)["decided"] is False  # nothing finished
    # (e): 50 right at attempt 1, 1 fixed and 1 broken at attempt 2 (Δ 0)
    rl1 = [1] * 50 + [0] * 50
    rl2 = [1] * 49 + [0] + [1] + [0] * 49
    _record(results, f"{PLAIN_RL}-seed0", rl1, rl2, fix=0.02)
    alone = rule(results)  # (e) alone already says whether the task keeps mistakes to correct
    assert not alone["decided"] and alone["task"]["mistakes_remain"] and "no SCoRe pilot" in alone["why"]
    # SCoRe: the same first attempts, one more fix than (e): Δ +1 point, below the rule's 2
    s2 = [1] * 49 + [0] + [1, 1] + [0] * 48
    _record(results, "score-seed0", rl1, s2, fix=0.04)
    decision = rule(results)
    assert decision["task"] == {"plain_rl_accuracy_t1": 0.5, "ceiling": 0.8, "mistakes_remain": True}
    p = decision["pilots"]["score"]
    assert p["delta_minus_plain_rl"]["mean"] == pytest.approx(1.0) and p["fix_minus_plain_rl"] == pytest.approx(2.0)
    assert p["delta_minus_plain_rl"]["lo"] <= 1.0 <= p["delta_minus_plain_rl"]["hi"]
    assert not p["passes"] and not decision["run_grid"] and not decision["decided"]  # other pilots are still to run
    # a pilot that fixes 5 more of (e)'s wrong first attempts on the base model's: the fix-rate clause alone clears it
    _record(results, "score_base_half-seed0", rl1, s2, fix=0.02 + 0.06)
    decision = rule(results)
    assert decision["pilots"]["score_base_half"]["passes"] and decision["run_grid"] and decision["best"] == "score_base_half"
    assert "once score_adaptive_beta2, score_long_stage1 finished" in decision["why"]  # the settings are chosen from all of them
    # Δ alone clears it too: three more fixes than (e) and no break
    s2b = [1] * 50 + [1, 1, 1] + [0] * 47
    _record(results, "score_base_half-seed0", rl1, s2b, fix=0.02)
    p = rule(results)["pilots"]["score_base_half"]
    assert p["delta_minus_plain_rl"]["mean"] == pytest.approx(3.0) and 3.0 >= DELTA_POINTS and p["passes"]
    # no pilot clears it and every pilot finished: decided, the grid is skipped
    for name in PILOTS:
        if name != PLAIN_RL:
            _record(results, f"{name}-seed0", rl1, rl2, fix=0.02)
    decision = rule(results)
    assert decision["decided"] and not decision["run_grid"] and "no finished SCoRe pilot" in decision["why"]
    assert len(rl1) == n
    _record(results, f"{PLAIN_RL}-seed0", [1] * 81 + [0] * 19, [1] * 81 + [0] * 19)  # plain RL learned the task itself
    assert rule(results)["task"]["mistakes_remain"] is False
    _record(results, f"{PLAIN_RL}-seed0", rl1, rl2, fix=0.02)
    _record(results, "score-seed0", rl1[:90], rl2[:90])
    with pytest.raises(ValueError, match="different problems"):
        rule(results)


def test_the_report_writes_the_rule_and_its_table(tmp_path):
    plan = build_plan("levels2+3", tmp_path / "runs", tmp_path / "pilots" / "runs")
    plan.results.mkdir(parents=True)
    _record(plan.results, "base", [1, 1, 0, 0], [1, 0, 1, 0])
    _record(plan.results, f"{PLAIN_RL}-seed0", [1, 0, 0, 0], [1, 0, 0, 0], fix=0.0)
    # training rewards at the sampling temperature: the first row falls outside the last-10 window
    rows = [{"iteration": 1, "reward_attempt1": 0.0, "reward_attempt2": 1.0}] + [
        {"iteration": i, "reward_attempt1": 0.5, "reward_attempt2": 0.5 + 0.02 * (i % 2)} for i in range(2, 12)]
    _record(plan.results, "score-seed0", [1, 0, 0, 0], [1, 1, 0, 0], fix=0.1, train=rows)
    for name in (f"{PLAIN_RL}-seed0", "score-seed0"):  # curves for the figure
        rec = json.loads((plan.results / f"{name}.json").read_text())
        rec["curves"] = [{"iteration": 10, "accuracy_t1": 0.3, "delta_t1_t2": 0.0, "answer_changed": 0.1}, {"iteration": 20, "accuracy_t1": 0.4, "delta_t1_t2": 0.05, "answer_changed": 0.2}]
        (plan.results / f"{name}.json").write_text(json.dumps(rec))
    assert report(plan) == 0
    decision = json.loads((plan.results.parent / "rule.json").read_text())
    assert decision["run_grid"] and decision["best"] == "score"
    md = (plan.results.parent / "pilots.md").read_text()
    assert "+25.0 [" in md and "Rule: run the grid" in md and "Accuracy@t1 is 25.0% (at most 80%: mistakes remain" in md and (plan.results.parent / "curves.png").exists()
    # every run on a row: greedy and sampled Δ (mean of the last 10 rows: +1.0), fix / break on the base model's first
    # attempts (the base model's own from its two attempts: 1 of 2 wrong fixed, 1 of 2 right broken)
    assert "| (a) base model, prompted | 50.0 | 50.0 | +0.0 | — | 25.0% | 50.0% / 50.0% | — | 10.0 min |" in md
    assert "| (e) plain two-turn RL | 25.0 | 25.0 | +0.0 | — | 25.0% | 0.0% / 50.0% |" in md
    assert "| SCoRe, fixed β2, no base first attempts | 25.0 | 50.0 | +25.0 | +1.0 | 25.0% | 10.0% / 50.0% |" in md
    assert pilot_sets("score", 76) == ["algorithm.stage1_iterations=38", "algorithm.stage2_iterations=38"]


def test_the_grid_the_pilots_choose_runs_on_held_out_problems_with_the_best_pilots_settings(tmp_path):
    from cluster.experiment.pilots import grid_args, grid_lines

    plan = build_plan("levels2+3", tmp_path / "runs", tmp_path / "pilots" / "runs")
    plan.results.mkdir(parents=True)
    rl1, rl2 = [1] * 50 + [0] * 50, [1] * 49 + [0] + [1] + [0] * 49
    _record(plan.results, f"{PLAIN_RL}-seed0", rl1, rl2, fix=0.02)
    _record(plan.results, "score_base_half-seed0", rl1, [1] * 50 + [1, 1, 1] + [0] * 47, fix=0.02)  # clears the rule
    rc, lines = grid_lines(plan)
    assert rc == 2 and "still to run: score, score_adaptive_beta2, score_long_stage1 " in lines[0]  # settings come from all of them
    for name in ("score", "score_adaptive_beta2", "score_long_stage1"):
        _record(plan.results, f"{name}-seed0", rl1, rl2, fix=0.02)
    rc, lines = grid_lines(plan)
    assert rc == 0 and "score_base_half's settings" in lines[0] and lines[1].startswith("python -m cluster.experiment run ")
    # the printed arguments build the grid: six arms, (b) with the pilot's share, the pilots' task and length, held-out problems
    from cluster.experiment.__main__ import main as experiment

    args = grid_args("levels2+3", "score_base_half", 76)
    assert args[:2] == ["--out", "runs/design2/levels2+3"]
    assert args[args.index("--seeds") + 1:args.index("--seeds") + 4] == ["1", "2", "3"]  # not the pilots' seed 0: fresh runs
    assert "--seeds 1 2 3" in lines[1] and "--seeds 1 2 3" in lines[2]
    assert experiment(["run", "--dry-run", *args, "--out", str(tmp_path / "g"), "--results", str(tmp_path / "grid")]) == 0  # its CLI takes them
    from cluster.experiment.arms import DESIGN_ARMS, Plan

    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    chosen = tuple(args[i + 1] for i, a in enumerate(args) if a == "--score-set")
    assert chosen == ("algorithm.stage2_base_first_attempts=0.5",) and "task.difficulty=[2,3]" in sets
    grid = Plan(Path(args[args.index("--out") + 1]), "configs/experiment_cpu.yaml", [0], 500, int(args[args.index("--stage1") + 1]),
                int(args[args.index("--stage2") + 1]), sets, arms=DESIGN_ARMS[2], score_sets=chosen, sampled=True)
    by_name = {n: c for n, _, c in grid.commands()}
    assert len(by_name) == 6 and "plain_rl_base_first-seed0" in by_name
    for name, cmd in by_name.items():
        cfg = load_config(grid.config, [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"])
        assert cfg.eval.split == "eval" and cfg.task.difficulty == [2, 3] and cfg.rollout.attempt1.max_tokens == 64, name
        if name != "base":
            assert cfg.algorithm.stage1_iterations + cfg.algorithm.stage2_iterations == 76  # the pilots' length, 2,432 episodes
    # a pilot with a longer Stage I hands the grid its stage lengths, not a --score-set
    long1 = grid_args("levels2+3", "score_long_stage1", 76)
    assert long1[long1.index("--stage1") + 1] == "51" and long1[long1.index("--stage2") + 1] == "25" and "--score-set" not in long1
    # where the rule says skip, there is no grid to print
    _record(plan.results, "score_base_half-seed0", rl1, rl2, fix=0.02)
    rc, lines = grid_lines(plan)
    assert rc == 2 and lines[0].startswith("error: the rule does not say run the grid")
