"""The experiment's arms and its plan: which runs exist, in which order, with which overrides.

Invariants: every run shares the fixed held-out problems (``task.data_seed=0``) and the user's ``--set``;
the arms differ only by the overrides of :meth:`Plan.arm_sets`; (c), (e) and (f) train as many iterations as
(b) and (d) have in both stages together; (c) and (d) keep every setting chosen for (b) (``Plan.score_sets``; (c) those
that act in Stage II, since it has no Stage I), (f) only its share of base-model first attempts, (e) none.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from cluster.config import ConfigError, load_config
from cluster.experiment.branch import keep_sets
from rewards.tasks import Problem, build_task

ARMS = ("base", "score", "stage2_only", "no_shaping", "plain_rl", "plain_rl_base_first")
TRAINED = ARMS[1:]
# the first design (docs/RESULTS.md 1.2) had no (f); the second adds it (issue #34): plain two-turn RL with the same
# share of base-model first attempts as (b), the control that tells SCoRe's stages and shaping from the mixed-in
# first attempts alone
DESIGN_ARMS = {1: ARMS[:5], 2: ARMS}
BASE_SHARE = "algorithm.stage2_base_first_attempts"
STAGE1_ONLY = ("algorithm.beta2_target_kl",)  # settings that act in Stage I alone: (c), which has none, leaves them out
RUN_ORDER = ("score", "plain_rl", "plain_rl_base_first", "stage2_only", "no_shaping")  # per seed: the arms the goal compares first
ARM_TITLES = {"base": "(a) base, prompted", "score": "(b) SCoRe", "stage2_only": "(c) Stage II only",
              "no_shaping": "(d) SCoRe, α = 0", "plain_rl": "(e) plain two-turn RL",
              "plain_rl_base_first": "(f) plain RL, base first attempts"}
MANY_ATTEMPTS = ("base", "score")  # the arms evaluated with Plan.attempts attempts; the others with two
# the transfer set: one step, as in training, on numbers up to 20 instead of 9. Chosen on the validation
# split (docs/results/transfer_calibration.json): the trained models of seed 0 score 63% and 76% there,
# against 100% and 86-88% on the training distribution, and difficulty 3 (two steps) floors them at 4-8%
TRANSFER = ("task.max_operand=20",)
BASE_SAMPLES = "base_samples.parquet"  # the base model's saved attempts, committed beside the result files


def base_share(score_sets: tuple[str, ...] | list[str]) -> float:
    """(b)'s ``algorithm.stage2_base_first_attempts`` among the settings chosen for it (0 where they have none)."""
    shares = [s.split("=", 1)[1] for s in score_sets if s.split("=", 1)[0] == BASE_SHARE]
    try:
        return float(shares[-1]) if shares else 0.0
    except ValueError:
        raise ConfigError(f"{BASE_SHARE} must be a number in [0, 1], got {shares[-1]!r}") from None


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
    arms: tuple[str, ...] = field(default=DESIGN_ARMS[1])  # (f) only where score_sets mix in base first attempts
    transfer: tuple[str, ...] = TRANSFER  # overrides that make the transfer set; empty: no transfer evaluation
    keep_checkpoints: bool = False
    allow_mixed_dtype: bool = False  # add runs computed in another dtype than the finished ones (grid.check_same_dtype)
    # the settings the pilots chose for SCoRe (e.g. its share of base first attempts, an adaptive β2): (b), (c) and (d)
    # take every one of them, (f) only the share of base first attempts, (e) none
    score_sets: tuple[str, ...] = ()
    # also evaluate every run on the held-out problems at the training temperature (two attempts, one sample each):
    # the first design saw SCoRe's shaping act on sampled second attempts but not under greedy decoding
    sampled: bool = False

    def __post_init__(self) -> None:
        if "plain_rl_base_first" in self.arms and not self.base_share():
            raise ConfigError(f"arm plain_rl_base_first needs SCoRe's share of base first attempts above 0: pass "
                              f"--score-set {BASE_SHARE}=0.5 (or leave the arm out)")

    def base_share(self) -> float:
        return base_share(self.score_sets)

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
        chosen = list(self.score_sets)
        stage2_chosen = [s for s in chosen if s.split("=", 1)[0] not in STAGE1_ONLY]
        plain = ["algorithm.stage1_iterations=0", f"algorithm.stage2_iterations={s1 + s2}", "algorithm.alpha=0"]
        return {
            "score": [f"algorithm.stage1_iterations={s1}", f"algorithm.stage2_iterations={s2}", *chosen],
            "stage2_only": ["algorithm.stage1_iterations=0", f"algorithm.stage2_iterations={s1 + s2}", *stage2_chosen],
            "no_shaping": [f"algorithm.stage1_iterations={s1}", f"algorithm.stage2_iterations={s2}", *chosen, "algorithm.alpha=0"],
            "plain_rl": plain,
            "plain_rl_base_first": [*plain, f"{BASE_SHARE}={self.base_share():g}"],
        }[arm]

    def side_evals(self) -> tuple[str, ...]:
        """The evaluations each finished run (the base model's included) gets besides its final one: ``transfer``
        (the transfer set, greedy) and ``sampled`` (the held-out problems at the training temperature)."""
        return (*(("transfer",) if self.transfer else ()), *(("sampled",) if self.sampled else ()))

    def side_eval_sets(self, kind: str) -> list[str]:
        if kind == "transfer":
            return list(self.transfer)
        return [f"eval.temperature={self.training_temperature():g}"]

    def training_temperature(self) -> float:
        return load_config(self.config, self.shared_sets(2)).rollout.attempt1.temperature

    def side_eval_command(self, kind: str, name: str, where: Path) -> list[str]:
        """Evaluate a finished run's exported model (the base model for ``base``), two attempts, into ``where/kind``."""
        model = "embedded" if name == "base" else str(where / "hf_model")
        sets = [*self.shared_sets(2), *self.side_eval_sets(kind), f"run.name={name}-{kind}"]
        return [sys.executable, "-m", "cluster.main", "eval", "--config", self.config, "--model", model,
                "--out", str(where / kind), *as_sets(sets)]

    def side_eval_problems(self, kind: str) -> list[Problem]:
        cfg = load_config(self.config, [*self.shared_sets(2), *self.side_eval_sets(kind)])
        return build_task(cfg.task, seed=cfg.run.seed).problems("eval")[: cfg.eval.num_problems]

    def transfer_command(self, name: str, where: Path) -> list[str]:
        """Evaluate a finished run's exported model (the base model for ``base``) on the transfer set, two attempts."""
        return self.side_eval_command("transfer", name, where)

    def base_first_attempts(self) -> Path:
        """The base model's first attempts on the held-out problems: what its evaluation (the ``base`` arm) saved,
        or the copy committed beside the result files (``base_samples.parquet``), which a grid continued on another
        machine reads: evaluating the base model again there could give other first attempts (another dtype)."""
        kept = self.results / BASE_SAMPLES
        return kept if kept.exists() else self.out / "base" / "samples.parquet"

    def fixed_first_command(self, name: str, where: Path) -> list[str]:
        """A finished run's exported model writing attempt 2 on the base model's first attempts (``eval --first-attempts``)."""
        sets = [*self.shared_sets(2), f"run.name={name}-fixed-first"]
        return [sys.executable, "-m", "cluster.main", "eval", "--config", self.config, "--model", str(where / "hf_model"),
                "--first-attempts", str(self.base_first_attempts()), "--out", str(where / "fixed_first"), *as_sets(sets)]

    def transfer_problems(self) -> list[Problem]:
        return self.side_eval_problems("transfer")

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


