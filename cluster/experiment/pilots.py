"""The second design's pilots (issue #34): SCoRe's variants against plain two-turn RL on one candidate task, one
seed each, on the validation split only, and the rule that decides whether the grid is worth its hours.

    python -m cluster.experiment.pilots run --task levels2+3 [--commit]     # continues where it stopped
    python -m cluster.experiment.pilots status --task levels2+3
    python -m cluster.experiment.pilots report --task levels2+3             # the rule, a table and the curves
    python -m cluster.experiment.pilots grid --task levels2+3               # the grid's commands, once the rule says run it

Invariants: every evaluation of a pilot reads validation problems (``eval.split=val``: the base model's, each run's
final and periodic ones, and the base model's first attempts that each run corrects), so the held-out problems stay
untouched until the grid; the pilots share every setting but what names them, and (e) takes none of SCoRe's
options; a pilot runs through the grid's runner (cluster/experiment/grid.py), so it resumes, is timed over every
attempt, and its result file is committed as it finishes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.config import ConfigError
from cluster.evaluate import correction_rates
from cluster.experiment.arms import Plan
from cluster.experiment.record import load_results, outcomes

# candidate training distributions: task overrides and the new tokens an attempt needs (written-out steps need room)
TASKS: dict[str, tuple[list[str], int]] = {
    "level2": (["task.difficulty=2"], 64),  # the first design's distribution, for reference
    "level2-max20": (["task.difficulty=2", "task.max_operand=20"], 64),
    "levels2+3": (["task.difficulty=[2,3]"], 64),
    "level3-steps": (["task.difficulty=3", "task.show_steps=true"], 128),
    "levels2+3-steps": (["task.difficulty=[2,3]", "task.show_steps=true"], 128),
}
# a priori: Stage I's attempt-1 KL held near twice the bf16 rounding floor seen between policy and reference
# (about 0.0025 per token right after the first update, docs/results/overlap/synchronous/metrics.jsonl)
ADAPTIVE_BETA2_TARGET_KL = 0.005
PLAIN_RL = "plain_rl"
# name -> what the pilot is, and its overrides given the run's length in iterations
PILOTS: dict[str, str] = {
    PLAIN_RL: "(e) plain two-turn RL",
    "score": "SCoRe, fixed β2, no base first attempts",
    "score_base_half": "SCoRe, half of each Stage II batch on base-model first attempts",
    "score_adaptive_beta2": f"SCoRe, adaptive β2 (target attempt-1 KL {ADAPTIVE_BETA2_TARGET_KL})",
    "score_long_stage1": "SCoRe, Stage I twice as long as Stage II",
}
DELTA_POINTS, FIX_POINTS = 2.0, 5.0  # the rule: SCoRe over its paired (e) by this much, in Δ(t1,t2) or in fix rate
PLAIN_RL_CEILING = 0.80  # the task keeps mistakes to correct: (e)'s final validation Accuracy@t1 at most this


def pilot_sets(name: str, iterations: int) -> list[str]:
    def stages(stage1: int) -> list[str]:
        return [f"algorithm.stage1_iterations={stage1}", f"algorithm.stage2_iterations={iterations - stage1}"]

    half = iterations // 2
    return {
        PLAIN_RL: [*stages(0), "algorithm.alpha=0"],
        "score": stages(half),
        "score_base_half": [*stages(half), "algorithm.stage2_base_first_attempts=0.5"],
        "score_adaptive_beta2": [*stages(half), f"algorithm.beta2_target_kl={ADAPTIVE_BETA2_TARGET_KL}"],
        "score_long_stage1": stages(round(2 * iterations / 3)),
    }[name]


@dataclass
class PilotPlan(Plan):
    """The pilots of one candidate task as a plan the grid's runner takes: the base model and each pilot, one seed,
    every evaluation on the validation split, two attempts, no transfer set."""

    task: str = "levels2+3"

    def shared_sets(self, attempts: int) -> list[str]:
        sets, max_tokens = TASKS[self.task]
        return [*super().shared_sets(attempts), *sets, "eval.split=val", f"rollout.attempt1.max_tokens={max_tokens}",
                f"rollout.attempt2.max_tokens={max_tokens}", f"eval.max_tokens={max_tokens}"]

    def arm_sets(self, arm: str) -> list[str]:
        return pilot_sets(arm, self.stage1 + self.stage2)

    def run_order(self) -> tuple[str, ...]:
        """(e) first, then the anti-collapse options before the plain and long-Stage-I variants: a session fits two
        or three pilots, and the base first attempts and adaptive β2 are the levers the first design's collapse
        calls for (docs/RESULTS.md section 1)."""
        return (PLAIN_RL, "score_base_half", "score_adaptive_beta2", "score", "score_long_stage1")


def build_plan(task: str, out: Path | None = None, results: Path | None = None, iterations: int = 76, seed: int = 0,
               config: str = "configs/experiment_cpu.yaml", overrides: tuple[str, ...] = ()) -> PilotPlan:
    """``iterations``: every pilot's length (76 x 8 problems x 4 samples = 2,432 episodes, the issue's >= 2,400)."""
    if task not in TASKS:
        raise ConfigError(f"unknown pilot task {task!r}; choose one of {', '.join(TASKS)}")
    half = iterations // 2
    # periodic curves on 100 validation problems every 10 iterations; the final evaluation on all 200
    periodic = ["eval.every_iterations=10", "eval.periodic_problems=100", *overrides]
    return PilotPlan(out or Path("runs/pilots") / task, config, [seed], 500, half, iterations - half, periodic,
                     results or Path("docs/results/pilots") / task / "runs", attempts=2, arms=("base", *PILOTS), transfer=(), task=task)


def grid_args(task: str, best: str, iterations: int = 76, pilot_seed: int = 0, seeds: int = 3) -> list[str]:
    """``python -m cluster.experiment run`` arguments of the grid the pilots chose: the pilots' task and run length,
    the held-out problems (no ``eval.split=val``), and the best pilot's own settings as (b)'s (``--score-set``), which
    (c), (d) and, for the share of base first attempts, (f) inherit.

    Seeds other than the pilots' (``pilot_seed + 1`` on): a run is a deterministic function of its config and seed,
    so the grid's run of the pilots' seed would retrain the very runs the rule compared, and (b)'s would be the one
    chosen for its validation score, a winner's curse its held-out numbers would carry (the held-out problems differ,
    the model does not)."""
    sets, max_tokens = TASKS[task]
    own = pilot_sets(best, iterations)
    stage1 = next(int(s.split("=")[1]) for s in own if s.startswith("algorithm.stage1_iterations="))
    chosen = [s for s in own if not s.startswith(("algorithm.stage1_iterations=", "algorithm.stage2_iterations="))]
    shared = [*sets, f"rollout.attempt1.max_tokens={max_tokens}", f"rollout.attempt2.max_tokens={max_tokens}", f"eval.max_tokens={max_tokens}"]
    return ["--out", f"runs/design2/{task}", "--seeds", *[str(pilot_seed + 1 + i) for i in range(seeds)],
            "--stage1", str(stage1), "--stage2", str(iterations - stage1),
            *[a for s in shared for a in ("--set", s)], *[a for s in chosen for a in ("--score-set", s)]]


def grid_lines(plan: PilotPlan) -> tuple[int, list[str]]:
    """The grid's run, status and report commands when the rule says run it and every pilot finished; else a
    one-line reason and exit code 2."""
    decision = rule(plan.results)
    if not decision.get("run_grid"):
        return 2, [f"error: the rule does not say run the grid for {plan.task}: {decision['why']}"]
    if decision["pending"]:
        return 2, [f"error: the grid takes the best pilot's settings; still to run: {', '.join(decision['pending'])} "
                   f"(python -m cluster.experiment.pilots run --task {plan.task} --commit)"]
    import shlex

    args = " ".join(shlex.quote(a) for a in grid_args(plan.task, decision["best"], plan.stage1 + plan.stage2, plan.seeds[0]))
    return 0, [f"# the grid on {plan.task}, (b) with {decision['best']}'s settings ({PILOTS[decision['best']]})",
               f"python -m cluster.experiment run {args} --commit", f"python -m cluster.experiment status {args}",
               "python -m cluster.experiment report"]


def _fixed_first(results: Path, name: str) -> dict[str, Any] | None:
    path = results / "fixed_first" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fix_rate(results: Path, name: str) -> float | None:
    fixed = _fixed_first(results, name)
    return fixed["fix_rate"] if fixed else None


SAMPLED_WINDOW = 10  # the training rows averaged for the sampled Δ: the run's last iterations


def sampled_delta(rec: dict[str, Any], window: int = SAMPLED_WINDOW) -> float | None:
    """Δ(t1,t2) at the training temperature: mean attempt-2 minus attempt-1 training reward over the last ``window``
    iterations. The first design saw SCoRe's shaping act on sampled second attempts but not under greedy decoding
    (docs/RESULTS.md 1.2.3), so the pilots report both. Where Stage II mixes in base-model first attempts, the
    attempt-1 reward there includes the base model's, so read it beside the greedy Δ, not alone."""
    rows = [r for r in rec.get("train", []) if r.get("reward_attempt1") is not None and r.get("reward_attempt2") is not None][-window:]
    return float(np.mean([r["reward_attempt2"] - r["reward_attempt1"] for r in rows])) if rows else None


def run_table(results: Path, by_arm: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every finished run of the pilots (``by_arm``, read from ``results``) on one row: the final validation evaluation
    (greedy), Δ at the training temperature, the collapse diagnostic, attempt 2 on the base model's first attempts,
    and the wall time."""
    problems = next((r["final"]["num_problems"] for rs in by_arm.values() for r in rs), "—")
    lines = [f"Every run, final evaluation on the {problems} validation problems (greedy; %):", "", "| run | Accuracy@t1 | Accuracy@t2 | Δ(t1,t2) greedy | Δ sampled, last 10 iterations | answer changed "
             "| base first attempts: fix / break | selected iteration | wall time |", "|" + " --- |" * 9]
    pct = lambda v, signed=False: "—" if v is None else f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"  # noqa: E731
    for arm in ("base", *PILOTS):
        for rec in by_arm.get(arm, []):
            f, fixed = rec["final"], _fixed_first(results, rec["name"])
            title = "(a) base model, prompted" if arm == "base" else PILOTS[arm]
            if arm == "base":  # its own first attempts: the same rates from its two attempts
                fixed = correction_rates(outcomes(rec, 1), outcomes(rec, 2))
            rates = "—" if fixed is None else f"{pct(fixed['fix_rate'])}% / {pct(fixed['break_rate'])}%"
            lines.append(f"| {title} | {pct(f['accuracy_t1'])} | {pct(f['accuracy_t2'])} | {pct(f['delta_t1_t2'], True)} "
                         f"| {pct(sampled_delta(rec), True)} | {pct(f.get('answer_changed'))}% | {rates} "
                         f"| {rec.get('selected_iteration') or '—'} | {rec['wall_seconds'] / 60:.1f} min |")
    return lines


def rule(results: Path, draws: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Each finished SCoRe pilot against (e) on the same validation problems: the paired difference in Δ(t1,t2)
    (points, with a 95% bootstrap interval over problems) and in fix rate on the base model's first attempts;
    whether the best of them clears the rule (``DELTA_POINTS`` or ``FIX_POINTS``)."""
    by_arm = load_results(results)
    if PLAIN_RL not in by_arm:
        return {"decided": False, "why": "(e) plain two-turn RL has not finished", "pilots": {}}
    rl = by_arm[PLAIN_RL][0]
    rl1, rl2 = outcomes(rl, 1), outcomes(rl, 2)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(rl1), size=(draws, len(rl1)))
    rl_fix = _fix_rate(results, rl["name"])
    task = {"plain_rl_accuracy_t1": float(rl1.mean()), "ceiling": PLAIN_RL_CEILING, "mistakes_remain": bool(rl1.mean() <= PLAIN_RL_CEILING)}
    pilots: dict[str, Any] = {}
    for arm, recs in by_arm.items():
        if arm in ("base", PLAIN_RL) or arm not in PILOTS:
            continue
        rec = recs[0]
        s1, s2 = outcomes(rec, 1), outcomes(rec, 2)
        if len(s1) != len(rl1):
            raise ValueError(f"{rec['name']} and {rl['name']} were evaluated on different problems ({len(s1)} vs {len(rl1)})")
        diff = (s2.astype(float) - s1) - (rl2.astype(float) - rl1)  # per problem: SCoRe's change minus (e)'s
        boot = diff[pick].mean(1)
        fix = _fix_rate(results, rec["name"])
        pilots[arm] = {"delta_t1_t2": float((s2.mean() - s1.mean())), "plain_rl_delta_t1_t2": float(rl2.mean() - rl1.mean()),
                       "delta_minus_plain_rl": {"mean": float(100 * diff.mean()), "lo": float(100 * np.percentile(boot, 2.5)),
                                                "hi": float(100 * np.percentile(boot, 97.5))},
                       "fix_rate": fix, "plain_rl_fix_rate": rl_fix,
                       "fix_minus_plain_rl": None if fix is None or rl_fix is None else 100 * (fix - rl_fix),
                       "accuracy_t1": float(s1.mean()), "plain_rl_accuracy_t1": float(rl1.mean())}
        p = pilots[arm]
        p["passes"] = p["delta_minus_plain_rl"]["mean"] >= DELTA_POINTS or (p["fix_minus_plain_rl"] or -np.inf) >= FIX_POINTS
    if not pilots:
        return {"decided": False, "why": "no SCoRe pilot has finished", "pilots": pilots, "task": task}
    best = max(pilots, key=lambda a: (pilots[a]["passes"], pilots[a]["delta_minus_plain_rl"]["mean"]))
    left = [a for a in PILOTS if a not in by_arm]
    run_grid = pilots[best]["passes"]
    return {"decided": run_grid or not left, "run_grid": run_grid, "best": best, "pilots": pilots, "pending": left, "task": task,
            "why": (f"{best} beats (e) by {pilots[best]['delta_minus_plain_rl']['mean']:+.1f} points in Δ(t1,t2)"
                    + (f"; the grid takes the best pilot's settings once {', '.join(left)} finished" if left else "") if run_grid else
                    f"no finished SCoRe pilot beats (e) by {DELTA_POINTS:g} points in Δ(t1,t2) or {FIX_POINTS:g} in fix rate"
                    + (f" ({', '.join(left)} still to run)" if left else ""))}


def rule_lines(decision: dict[str, Any]) -> list[str]:
    lines = ["| pilot | Δ(t1,t2) | (e)'s Δ | Δ minus (e), points [95%] | fix rate | (e)'s fix rate | passes |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for arm, p in decision["pilots"].items():
        d = p["delta_minus_plain_rl"]
        lines.append(f"| {PILOTS[arm]} | {100 * p['delta_t1_t2']:+.1f} | {100 * p['plain_rl_delta_t1_t2']:+.1f} | "
                     f"{d['mean']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}] | {pct(p['fix_rate'])} | {pct(p['plain_rl_fix_rate'])} | "
                     f"{'yes' if p['passes'] else 'no'} |")
    lines.append("")
    if "task" in decision:
        t = decision["task"]
        lines.append(f"Task: (e)'s final validation Accuracy@t1 is {100 * t['plain_rl_accuracy_t1']:.1f}% "
                     f"({'at most' if t['mistakes_remain'] else 'above'} {100 * t['ceiling']:.0f}%: "
                     f"{'mistakes remain to correct' if t['mistakes_remain'] else 'plain RL learns the task itself; choose a harder one'}).")
    lines.append(f"Rule: {'run the grid' if decision.get('run_grid') else 'skip the grid' if decision['decided'] else 'not decided yet'}: "
                 f"{decision['why']}.")
    return lines


def report(plan: PilotPlan) -> int:
    """The rule's decision (``rule.json``), its table (``pilots.md``) and the validation curves (``curves.png``), beside
    the folder of result files."""
    decision = rule(plan.results)
    by_arm = load_results(plan.results)
    lines = [f"# Pilots on {plan.task} (validation split)", "", *rule_lines(decision), "", *run_table(plan.results, by_arm)]
    where = plan.results.parent
    where.mkdir(parents=True, exist_ok=True)
    (where / "rule.json").write_text(json.dumps(decision, indent=1) + "\n")
    curves = _plot_curves(by_arm, where)
    if curves:
        lines += ["", f"![validation curves]({curves.name})"]
    (where / "pilots.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _plot_curves(by_arm: dict[str, list[dict[str, Any]]], where: Path) -> Path | None:
    trained = {a: recs[0] for a, recs in by_arm.items() if a in PILOTS}
    if not trained:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for arm, rec in trained.items():
        it = [c["iteration"] for c in rec["curves"]]
        for ax, key in zip(axes, ("accuracy_t1", "delta_t1_t2", "answer_changed")):
            ax.plot(it, [c[key] for c in rec["curves"]], marker="o", label=PILOTS[arm])
    axes[0].set(title="validation Accuracy@t1 (greedy)", xlabel="iteration")
    axes[1].set(title="validation Δ(t1,t2) (greedy)", xlabel="iteration")
    axes[2].set(title="attempt 2 changes the answer (collapse diagnostic)", xlabel="iteration")
    axes[1].axhline(0, color="grey", lw=0.5)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = where / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    from cluster.experiment.grid import print_status, run
    from common.logs import setup_logging

    p = argparse.ArgumentParser(prog="python -m cluster.experiment.pilots", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["run", "status", "report", "grid"],
                   help="grid: print the commands of the grid the pilots chose (once the rule says so and every pilot finished)")
    p.add_argument("--task", default="levels2+3", choices=list(TASKS), help="the candidate training distribution (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=76, help="every pilot's length in iterations (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--commit", action="store_true", help="git-commit each run's result file as it is written")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    a = p.parse_args(argv)
    setup_logging()
    plan = build_plan(a.task, iterations=a.iterations, overrides=tuple(a.overrides))
    if a.command == "run":
        try:
            rc = run(plan, a.dry_run, a.commit)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if not a.dry_run:
            report(plan)
        return rc
    if a.command == "status":
        return print_status(plan)
    if a.command == "grid":
        rc, lines = grid_lines(plan)
        print("\n".join(lines), file=sys.stderr if rc else sys.stdout)
        return rc
    return report(plan)


if __name__ == "__main__":
    sys.exit(main())
