"""The overlap against the synchronous loop on the embedded default (issue #35, item 5): two 30-iteration runs of
configs/local_cpu.yaml with the same seed, ``rollout.off_policy_steps`` 0 and 1, a validation split watched every
5 iterations, then a table and a plot of what they did.

    .venv/bin/python scripts/compare_overlap.py [--out runs/overlap-comparison] [--report-only]

A run that already finished is not redone (also when only its files under docs/results/overlap/<arm>/ are
here, as in a fresh checkout); one that stopped is resumed (``train --resume``). The synchronous run
keeps the default threads (each phase uses both cores in turn); the overlapped one gives the generator and the
learner rank a core each. The report goes to docs/results/overlap/ (overlap.md, overlap.json, overlap.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.jsonl import read_jsonl  # noqa: E402

COMMON = ["algorithm.stage1_iterations=10", "algorithm.stage2_iterations=20", "task.val_size=100", "eval.every_iterations=5",
          "eval.periodic_problems=50", "run.seed=0",
          "checkpoint.every_iterations=5"]
ARMS = {"synchronous": ["rollout.off_policy_steps=0"],
        "overlap": ["rollout.off_policy_steps=1", "rollout.threads_per_generator=1", "learner.threads_per_rank=1"]}
TRAIN_KEYS = ("reward_attempt1", "reward_attempt2", "staleness", "mismatch_mean_abs_attempt1", "mismatch_mean_abs_attempt2",
              "is_weight_mean_attempt1", "is_weight_mean_attempt2", "seconds_iteration", "learner_wait_seconds",
              "generator_wait_seconds", "overlap_saved_seconds")


KEPT = ("metrics.jsonl", "eval.json", "eval.csv", "config.yaml", "machines.jsonl")  # what docs/results/overlap/<arm>/ keeps
DEST = ROOT / "docs" / "results" / "overlap"


def run_arm(out: Path, arm: str) -> None:
    """Run one arm unless it finished before (here, or committed under docs/results/overlap/<arm>/), then keep its
    small files (metrics, evaluations, config, machine) under docs/results/overlap/<arm>/ for the report."""
    run_dir, kept = out / arm, DEST / arm
    if not (run_dir / "eval.json").exists() and (kept / "eval.json").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            if (kept / name).exists():
                shutil.copy(kept / name, run_dir / name)
    if (run_dir / "eval.json").exists():
        print(f"{arm}: finished before, not redone", flush=True)
        return
    resume = ["--resume"] if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("iter_*[0-9]")) else ["--overwrite"]
    sets = [f"run.output_dir={out}", f"run.name={arm}", *COMMON, *ARMS[arm]]
    cmd = [sys.executable, "-m", "cluster.main", "train", "--config", "configs/local_cpu.yaml", *resume, *(a for s in sets for a in ("--set", s))]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    kept.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, kept / name)


def report(out: Path, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {}
    arms = [arm for arm in ARMS if (out / arm / "eval.json").exists()]
    if len(arms) < len(ARMS):
        print(f"report: only {arms} finished; the report needs every arm ({list(ARMS)})")
        return
    for arm in arms:
        records = read_jsonl(out / arm / "metrics.jsonl")
        train = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval"]
        data[arm] = {"train": [{"iteration": r["iteration"], **{k: r[k] for k in TRAIN_KEYS if k in r}} for r in train],
                     "eval": [{k: e[k] for k in ("label", "split", "iteration", "accuracy_t1", "accuracy_t2", "delta_t1_t2") if k in e}
                              for e in evals],
                     "train_seconds": sum(r["seconds_iteration"] for r in train)}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "overlap.json").write_text(json.dumps(data, indent=1))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for arm, d in data.items():
        val = [e for e in d["eval"] if e["split"] == "val"]
        axes[0].plot([e["iteration"] for e in val], [e["accuracy_t2"] for e in val], marker="o", label=f"{arm}: Accuracy@t2")
        axes[0].plot([e["iteration"] for e in val], [e["accuracy_t1"] for e in val], marker="x", ls="--", label=f"{arm}: Accuracy@t1")
        it = [r["iteration"] for r in d["train"]]
        axes[1].plot(it, [r["mismatch_mean_abs_attempt2"] for r in d["train"]], label=f"{arm}: mean |log-prob mismatch|, attempt 2")
        axes[2].plot(it, [r.get("is_weight_mean_attempt2", float("nan")) for r in d["train"]], label=f"{arm}: importance weight, attempt 2")
    axes[0].set(title="validation (50 problems, greedy)", xlabel="iteration", ylabel="accuracy")
    axes[1].set(title="learner vs sampler, per token", xlabel="iteration", ylabel="nats")
    axes[2].set(title="truncated importance weight (mean)", xlabel="iteration")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest / "overlap.png", dpi=100)
    lines = ["| iteration | " + " | ".join(f"{arm} val Acc@t1 / Acc@t2" for arm in ARMS) + " |", "| --- |" + " --- |" * len(ARMS)]
    for arm_evals in zip(*(data[arm]["eval"] for arm in ARMS)):
        cells = [f"{e['accuracy_t1']:.2f} / {e['accuracy_t2']:.2f} ({e['label']}, {e['split']})" for e in arm_evals]
        lines.append(f"| {arm_evals[0]['iteration']} | " + " | ".join(cells) + " |")
    (dest / "overlap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for arm, d in data.items():
        tr = d["train"]
        mean = lambda k: sum(r.get(k, 0.0) for r in tr[1:]) / max(1, len(tr) - 1)  # noqa: E731
        print(f"{arm}: {d['train_seconds'] / 60:.1f} min of iterations; from iteration 2: {mean('seconds_iteration'):.1f} s/iteration, "
              f"staleness {mean('staleness'):.2f}, learner waits {mean('learner_wait_seconds'):.1f} s, generators wait "
              f"{mean('generator_wait_seconds'):.1f} s, overlapped {mean('overlap_saved_seconds'):.1f} s, "
              f"mismatch a2 {mean('mismatch_mean_abs_attempt2'):.4f}, IS weight a2 {mean('is_weight_mean_attempt2'):.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/overlap-comparison")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--arms", nargs="*", default=list(ARMS))
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    if not args.report_only:
        for arm in args.arms:
            run_arm(out, arm)
    report(out, DEST)
    return 0


if __name__ == "__main__":
    sys.exit(main())
