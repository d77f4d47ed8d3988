"""The self-correction experiment of docs/RESULTS.md: four arms x seeds, then a report.

    python -m cluster.experiment run    --out runs/experiment      # trains and evaluates every arm
    python -m cluster.experiment report --out runs/experiment      # tables, intervals, plot

Arms (the paper's ablations):
  (a) base         the base model prompted to self-correct (evaluation only);
  (b) score        Stage I, then Stage II;
  (c) stage2_only  Stage II only, for the same total number of iterations;
  (d) no_shaping   Stage I, then Stage II with alpha = 0.

Every arm evaluates on the same held-out problems (``task.data_seed`` is fixed); the seed
changes the order of training problems and the sampling. Each run is a separate
``python -m cluster.main`` process, so a crash loses one run, and ``run`` skips runs that
already finished: re-running it continues the experiment (a failed run that left a checkpoint
continues from it with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.evaluate import LABELS, METRICS, self_correction_metrics

ARMS = ("base", "score", "stage2_only", "no_shaping")
ARM_TITLES = {"base": "(a) base, prompted", "score": "(b) SCoRe", "stage2_only": "(c) Stage II only", "no_shaping": "(d) SCoRe, α = 0"}


@dataclass
class Plan:
    """What the experiment runs: the shared settings and the arms' differences."""

    out: Path
    config: str
    seeds: list[int]
    problems: int
    stage1: int
    stage2: int
    overrides: list[str]

    def common(self) -> list[str]:
        sets = [f"run.output_dir={self.out}", "task.data_seed=0", f"task.eval_size={self.problems}",
                f"eval.num_problems={self.problems}", "eval.before=false", "run.progress=false", *self.overrides]
        return [a for s in sets for a in ("--set", s)]

    def arm_sets(self, arm: str) -> list[str]:
        s1, s2 = self.stage1, self.stage2
        return {
            "score": [f"algorithm.stage1_iterations={s1}", f"algorithm.stage2_iterations={s2}"],
            "stage2_only": ["algorithm.stage1_iterations=0", f"algorithm.stage2_iterations={s1 + s2}"],
            "no_shaping": [f"algorithm.stage1_iterations={s1}", f"algorithm.stage2_iterations={s2}", "algorithm.alpha=0"],
        }[arm]

    def commands(self) -> list[tuple[str, Path, list[str]]]:
        """(name, directory whose eval.json marks it done, command) for every run."""
        py = [sys.executable, "-m", "cluster.main"]
        runs = [("base", self.out / "base", [*py, "eval", "--config", self.config, "--model", "embedded", "--out", str(self.out / "base"),
                                             *self.common(), "--set", "run.name=base"])]
        for seed in self.seeds:
            for arm in ARMS[1:]:
                name = f"{arm}-seed{seed}"
                sets = [*self.arm_sets(arm), f"run.seed={seed}", f"run.name={name}"]
                runs.append((name, self.out / name, [*py, "train", "--overwrite", "--config", self.config, *self.common(),
                                                     *[a for s in sets for a in ("--set", s)]]))
        return runs


def run(plan: Plan, dry_run: bool = False) -> int:
    plan.out.mkdir(parents=True, exist_ok=True)
    todo = plan.commands()
    for i, (name, where, cmd) in enumerate(todo, 1):
        if (where / "eval.json").exists():
            print(f"[{i}/{len(todo)}] {name}: done already", flush=True)
            continue
        if "--overwrite" in cmd and any(not c.name.endswith(".partial") for c in (where / "checkpoints").glob("iter_*")):
            cmd = [("--resume" if c == "--overwrite" else c) for c in cmd]  # a failed run continues from its checkpoint
        print(f"[{i}/{len(todo)}] {name}: {' '.join(cmd)}", flush=True)
        if dry_run:
            continue
        t0 = time.monotonic()
        with (plan.out / f"{name}.log").open("w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        took = time.monotonic() - t0
        with (plan.out / "timings.jsonl").open("a") as f:
            f.write(json.dumps({"run": name, "seconds": took, "rc": rc}) + "\n")
        status = "finished" if rc == 0 else f"FAILED (exit {rc}), see {plan.out / name}.log"
        print(f"    {status} in {took / 60:.1f} min", flush=True)
    return 0


# -- the report ------------------------------------------------------------------------------

def load_rewards(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-problem attempt-1 and attempt-2 rewards of a run's final evaluation, ordered by problem."""
    import pyarrow.parquet as pq

    found = [run_dir / "samples.parquet"] if (run_dir / "samples.parquet").exists() else sorted((run_dir / "samples").glob("eval_iter*.parquet"))
    if not found:
        raise FileNotFoundError(f"no evaluation samples under {run_dir}")
    t = pq.read_table(found[-1], columns=["problem_index", "r1", "r2"]).to_pydict()
    order = np.argsort(t["problem_index"])
    return np.asarray(t["r1"])[order] >= 0.5, np.asarray(t["r2"])[order] >= 0.5


def _metric_array(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """The five metrics over the last axis (problems); leading axes are kept."""
    acc1, acc2 = r1.mean(-1), r2.mean(-1)
    return np.stack([acc1, acc2, acc2 - acc1, (~r1 & r2).mean(-1), (r1 & ~r2).mean(-1)], -1)


def bootstrap(results: dict[str, list[tuple[np.ndarray, np.ndarray]]], draws: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Means over seeds and 95% intervals from a two-level bootstrap (seeds, then problems).

    Problems are resampled jointly for every arm, so differences between arms are paired.
    ``results[arm]`` is a list over seeds of (r1, r2) boolean arrays over the same problems.
    """
    rng = np.random.default_rng(seed)
    n = len(next(iter(results.values()))[0][0])
    stats: dict[str, np.ndarray] = {}
    for arm, runs in results.items():
        if any(len(r1) != n for r1, _ in runs):
            raise ValueError(f"{arm}: every run must be evaluated on the same {n} problems")
    problems = rng.integers(0, n, size=(draws, n))
    for arm, runs in results.items():
        r1 = np.stack([a for a, _ in runs])  # seeds x problems
        r2 = np.stack([b for _, b in runs])
        pick = rng.integers(0, len(runs), size=(draws, len(runs)))  # seeds resampled per draw
        rows, cols = pick[:, :, None], problems[:, None, :]  # draws x seeds x problems
        stats[arm] = _metric_array(r1[rows, cols], r2[rows, cols]).mean(1)
    out: dict[str, Any] = {}
    for arm, runs in results.items():
        point = np.mean([_metric_array(a, b) for a, b in runs], 0)
        lo, hi = np.percentile(stats[arm], [2.5, 97.5], 0)
        per_seed = [dict(zip(METRICS, map(float, _metric_array(a, b)))) for a, b in runs]
        out[arm] = {"seeds": len(runs), "problems": n, "per_seed": per_seed,
                    **{m: {"mean": float(point[i]), "lo": float(lo[i]), "hi": float(hi[i])} for i, m in enumerate(METRICS)}}
    if "score" in stats:
        d = METRICS.index("delta_t1_t2")
        out["score_minus"] = {}
        for arm in results:
            if arm != "score":
                diff = stats["score"][:, d] - stats[arm][:, d]
                out["score_minus"][arm] = {"mean": float(out["score"]["delta_t1_t2"]["mean"] - out[arm]["delta_t1_t2"]["mean"]),
                                           "lo": float(np.percentile(diff, 2.5)), "hi": float(np.percentile(diff, 97.5)),
                                           "p_not_larger": float((diff <= 0).mean())}
    return out


def markdown_table(summary: dict[str, Any]) -> str:
    head = "| arm | seeds | " + " | ".join(LABELS[m] for m in METRICS) + " |"
    lines = [head, "|" + " --- |" * (len(METRICS) + 2)]
    for arm in ARMS:
        if arm not in summary:
            continue
        s = summary[arm]
        cells = [f"{100 * s[m]['mean']:+.1f} [{100 * s[m]['lo']:+.1f}, {100 * s[m]['hi']:+.1f}]" if m.startswith("delta")
                 else f"{100 * s[m]['mean']:.1f} [{100 * s[m]['lo']:.1f}, {100 * s[m]['hi']:.1f}]" for m in METRICS]
        lines.append(f"| {ARM_TITLES[arm]} | {s['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], out: Path, curves: dict[str, list[list[dict[str, Any]]]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if a in summary]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    shown = ["accuracy_t1", "accuracy_t2", "delta_t1_t2", "delta_i_to_c", "delta_c_to_i"]
    width = 0.8 / len(shown)
    for j, m in enumerate(shown):
        means = [100 * summary[a][m]["mean"] for a in arms]
        err = [[100 * (summary[a][m]["mean"] - summary[a][m]["lo"]) for a in arms], [100 * (summary[a][m]["hi"] - summary[a][m]["mean"]) for a in arms]]
        ax.bar(np.arange(len(arms)) + (j - (len(shown) - 1) / 2) * width, means, width, yerr=err, capsize=3, label=LABELS[m])
    ax.set_xticks(np.arange(len(arms)), [ARM_TITLES[a] for a in arms], fontsize=8)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("% of held-out problems (95% CI)")
    ax.legend(fontsize=8)
    ax.set_title(f"final evaluation, {summary[arms[0]]['problems']} problems")
    for arm, runs in curves.items():
        for i, recs in enumerate(runs):
            it = [r["step"] for r in recs]
            bx.plot(it, [r["reward_attempt2"] - r["reward_attempt1"] for r in recs], color=f"C{ARMS.index(arm)}", alpha=0.7,
                    label=ARM_TITLES[arm] if i == 0 else None)
    bx.axhline(0, color="grey", lw=0.5)
    bx.set_xlabel("iteration")
    bx.set_ylabel("training reward, attempt 2 - attempt 1")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def report(plan: Plan, doc_dir: Path) -> int:
    results: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    curves: dict[str, list[list[dict[str, Any]]]] = {}
    missing = []
    for name, where, _ in plan.commands():
        arm = name.split("-seed")[0]
        if not (where / "eval.json").exists():
            missing.append(name)
            continue
        results.setdefault(arm, []).append(load_rewards(where))
        if arm != "base":
            recs = [json.loads(line) for line in (where / "metrics.jsonl").read_text().splitlines() if line.strip()]
            curves.setdefault(arm, []).append([r for r in recs if r.get("kind") == "train"])
    if missing:
        print(f"not finished (left out of the report): {', '.join(missing)}", file=sys.stderr)
    if not results:
        print("error: no finished runs under " + str(plan.out), file=sys.stderr)
        return 2
    summary = bootstrap(results)
    timings = [json.loads(line) for line in (plan.out / "timings.jsonl").read_text().splitlines()] if (plan.out / "timings.jsonl").exists() else []
    summary["wall_seconds"] = {t["run"]: t["seconds"] for t in timings}
    doc_dir.mkdir(parents=True, exist_ok=True)
    (doc_dir / "self_correction.json").write_text(json.dumps(summary, indent=1))
    table = markdown_table(summary)
    (doc_dir / "self_correction.md").write_text(table + "\n")
    png = plot(summary, doc_dir / "self_correction.png", curves)
    print(table)
    for arm, d in summary.get("score_minus", {}).items():
        print(f"Δ(t1,t2) of SCoRe minus {arm}: {100 * d['mean']:+.1f} points [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]")
    print(f"wrote {doc_dir / 'self_correction.json'}, {doc_dir / 'self_correction.md'}, {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.experiment", description="SCoRe's ablations: four arms x seeds, and their report.")
    p.add_argument("command", choices=["run", "report"])
    p.add_argument("--out", default="runs/experiment", help="where the runs go (default: %(default)s)")
    p.add_argument("--config", default="configs/local_cpu.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--problems", type=int, default=500, help="held-out problems per evaluation (default: %(default)s)")
    p.add_argument("--stage1", type=int, default=2, help="Stage I iterations of (b) and (d) (default: %(default)s)")
    p.add_argument("--stage2", type=int, default=3, help="Stage II iterations; (c) runs stage1 + stage2 (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--docs", default="docs/results", help="report output folder (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    a = p.parse_args(argv)
    plan = Plan(Path(a.out), a.config, a.seeds, a.problems, a.stage1, a.stage2, a.overrides)
    if a.command == "run":
        return run(plan, a.dry_run)
    return report(plan, Path(a.docs))


if __name__ == "__main__":
    sys.exit(main())
