"""The experiment's arms and its plan: which runs exist, in which order, with which overrides.

Invariants: every run shares the fixed held-out problems (``task.data_seed=0``) and the user's ``--set``;
the arms differ only by the overrides of :meth:`Plan.arm_sets`; (c) and (e) train as many iterations as
(b) and (d) have in both stages together.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from cluster.config import load_config
from cluster.experiment.branch import keep_sets
from rewards.tasks import Problem, build_task

ARMS = ("base", "score", "stage2_only", "no_shaping", "plain_rl")
TRAINED = ARMS[1:]
RUN_ORDER = ("score", "plain_rl", "stage2_only", "no_shaping")  # per seed: the arms the goal compares first
ARM_TITLES = {"base": "(a) base, prompted", "score": "(b) SCoRe", "stage2_only": "(c) Stage II only",
              "no_shaping": "(d) SCoRe, α = 0", "plain_rl": "(e) plain two-turn RL"}
MANY_ATTEMPTS = ("base", "score")  # the arms evaluated with Plan.attempts attempts; the others with two
# the transfer set: one step, as in training, on numbers up to 20 instead of 9. Chosen on the validation
# split (docs/results/transfer_calibration.json): the trained models of seed 0 score 63% and 76% there,
# against 100% and 86-88% on the training distribution, and difficulty 3 (two steps) floors them at 4-8%
TRANSFER = ("task.max_operand=20",)


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
    results: Path = Path("docs/results/runs")
    attempts: int = 5
    arms: tuple[str, ...] = field(default=ARMS)
    transfer: tuple[str, ...] = TRANSFER  # overrides that make the transfer set; empty: no transfer evaluation
    keep_checkpoints: bool = False
    allow_mixed_dtype: bool = False  # add runs computed in another dtype than the finished ones (grid.check_same_dtype)

    def shared_sets(self, attempts: int) -> list[str]:
        """The overrides every run shares: the fixed held-out problems, the evaluation, the user's ``--set``."""
        return [f"run.output_dir={self.out}", "task.data_seed=0", f"task.eval_size={self.problems}",
                f"eval.num_problems={self.problems}", f"eval.attempts={attempts}", "eval.before=false",
                "run.progress=false", *self.overrides]

    def common(self, arm: str) -> list[str]:
        # attempts beyond two cost minutes per run (each one's prompt holds all before it): the paper's
        # Figure 8 comparison needs them for the base model and SCoRe only
        return as_sets(self.shared_sets(self.attempts if arm in MANY_ATTEMPTS else 2))

    def arm_sets(self, arm: str) -> list[str]:
        s1, s2 = self.stage1, self.stage2
        return {
            "score": [f"algorithm.stage1_iterations={s1}", f"algorithm.stage2_iterations={s2}"],
            "stage2_only": ["algorithm.stage1_iterations=0", f"algorithm.stage2_iterations={s1 + s2}"],
            "no_shaping": [f"algorithm.stage1_iterations={s1}", f"algorithm.stage2_iterations={s2}", "algorithm.alpha=0"],
            "plain_rl": ["algorithm.stage1_iterations=0", f"algorithm.stage2_iterations={s1 + s2}", "algorithm.alpha=0"],
        }[arm]

    def transfer_command(self, name: str, where: Path) -> list[str]:
        """Evaluate a finished run's exported model (the base model for ``base``) on the transfer set, two attempts."""
        model = "embedded" if name == "base" else str(where / "hf_model")
        sets = [*self.shared_sets(2), *self.transfer, f"run.name={name}-transfer"]
        return [sys.executable, "-m", "cluster.main", "eval", "--config", self.config, "--model", model,
                "--out", str(where / "transfer"), *as_sets(sets)]

    def base_first_attempts(self) -> Path:
        """The base model's first attempts on the held-out problems: what its evaluation (the ``base`` arm) saved."""
        return self.out / "base" / "samples.parquet"

    def fixed_first_command(self, name: str, where: Path) -> list[str]:
        """A finished run's exported model writing attempt 2 on the base model's first attempts (``eval --first-attempts``)."""
        sets = [*self.shared_sets(2), f"run.name={name}-fixed-first"]
        return [sys.executable, "-m", "cluster.main", "eval", "--config", self.config, "--model", str(where / "hf_model"),
                "--first-attempts", str(self.base_first_attempts()), "--out", str(where / "fixed_first"), *as_sets(sets)]

    def transfer_problems(self) -> list[Problem]:
        cfg = load_config(self.config, [*self.shared_sets(2), *self.transfer])
        return build_task(cfg.task, seed=cfg.run.seed).problems("eval")[: cfg.eval.num_problems]

    def run_order(self) -> tuple[str, ...]:
        """The trained arms in the order each seed runs them."""
        return RUN_ORDER

    def commands(self) -> list[tuple[str, Path, list[str]]]:
        """(name, run directory, command) for every run, in the order they run."""
        py = [sys.executable, "-m", "cluster.main"]
        runs = []
        if "base" in self.arms:
            runs.append(("base", self.out / "base", [*py, "eval", "--config", self.config, "--model", "embedded", "--out", str(self.out / "base"),
                                                     *self.common("base"), "--set", "run.name=base"]))
        for seed in self.seeds:
            for arm in (a for a in self.run_order() if a in self.arms):
                name = f"{arm}-seed{seed}"
                sets = [*self.arm_sets(arm), *keep_sets(self, arm), f"run.seed={seed}", f"run.name={name}"]
                runs.append((name, self.out / name, [*py, "train", "--overwrite", "--config", self.config, *self.common(arm),
                                                     *as_sets(sets)]))
        return runs


def as_sets(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


