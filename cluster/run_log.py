"""Where a run's numbers go: the trackers of ``run.loggers`` (metrics.jsonl, TensorBoard, the console, W&B,
MLflow: cluster/trackers.py), the Ray dashboard, and a plot.

The Ray side is a small named actor, ``driver``, that owns the run's ``ray.util.metrics`` gauges
(the dashboard and the metrics export endpoint show them as ``score_*``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from common.jsonl import read_jsonl, write_jsonl


def final_attempt_reward(record: dict[str, Any]) -> float:
    """A training record's mean reward at its last attempt (2, or ``algorithm.attempts``) on the policy's own first
    attempts (what ``checkpoint.select`` ranks), or on the base model's where every first attempt was the base model's."""
    prefix = "" if "reward_attempt2" in record else "base_"
    last = max(int(k.removeprefix(f"{prefix}reward_attempt")) for k in record if k.startswith(f"{prefix}reward_attempt"))
    return record[f"{prefix}reward_attempt{last}"]


@ray.remote(num_cpus=0, max_restarts=-1)
class RunMetrics:
    """The run's dashboard metrics (named ``driver``): gauges tagged by run, attempt and phase."""

    def __init__(self, run_name: str):
        from ray.util.metrics import Gauge

        self.run = run_name
        self.gauges: dict[str, Any] = {}
        self.Gauge = Gauge

    def record(self, values: dict[str, float], tags: dict[str, str] | None = None) -> None:
        tags = dict(tags or {})
        for name, value in values.items():
            key = (name, tuple(sorted(tags)))
            if key not in self.gauges:
                self.gauges[key] = self.Gauge(f"score_{name}", f"SCoRe {name}", tag_keys=("run", *sorted(tags)))
            self.gauges[key].set(float(value), tags={"run": self.run, **tags})


class RunLog:
    """Owns where the run's numbers go: the trackers ``run.loggers`` names (cluster/trackers.py; metrics.jsonl
    always) and the dashboard gauges. The one place the trainer hands its records, config and final results to."""

    DASHBOARD_KEYS = {
        "iteration": "iteration", "stage": "stage", "version": "weight_version",
        "reward_attempt1": "reward_attempt1", "reward_attempt2": "reward_attempt2", "shaped_reward": "shaped_reward",
        "tokens_per_second": "learner_tokens_per_second", "generation_tokens_per_second": "generation_tokens_per_second",
        # rollout.off_policy_steps: how far the batch lagged the learner, each side's wait for the other, the time overlapped
        "staleness": "staleness", "learner_wait_seconds": "learner_wait_seconds", "generator_wait_seconds": "generator_wait_seconds",
        "overlap_saved_seconds": "overlap_saved_seconds",
    }

    def __init__(self, run_dir: Path, run_cfg: Any, dashboard: bool = True):
        """``run_cfg``: the config's ``run`` section (its name, ``loggers``, ``wandb`` and ``mlflow``)."""
        from cluster.trackers import build_trackers

        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.trackers = build_trackers(run_cfg.loggers, run_dir, run_cfg)
        self.sink = None
        if dashboard:
            self.sink = RunMetrics.options(name="driver", get_if_exists=True).remote(run_cfg.name)

    def start(self, params: dict[str, Any], machine: dict[str, Any]) -> None:
        """The resolved config (the run's parameters) and the machine record, once per (re)start."""
        for tracker in self.trackers:
            tracker.start(params, machine)

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log(kind, step, values)
        if self.sink is not None:
            dash = {self.DASHBOARD_KEYS[k]: v for k, v in values.items() if k in self.DASHBOARD_KEYS and isinstance(v, (int, float))}
            phases = {k.removeprefix("seconds_"): v for k, v in values.items() if k.startswith("seconds_")}
            if kind == "eval":
                dash.update({k: v for k, v in values.items() if k.startswith(("accuracy", "delta"))})
            self.sink.record.remote(dash)
            for phase, seconds in phases.items():
                self.sink.record.remote({"phase_seconds": seconds}, {"phase": phase})

    def finish(self, table: str, lines: list[str], plot: Path, samples: list[Path]) -> None:
        """The end of a finished run: the final table, the lines saying where its files are, the plot and the
        evaluated samples (the console prints the first two; W&B and MLflow keep all of them)."""
        for tracker in self.trackers:
            tracker.finish(table, lines, plot, samples)

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def truncate_after(self, step: int) -> None:
        """On resume: drop records of iterations after the checkpoint (they will be redone)."""
        kept = [r for r in self.records() if r["step"] <= step]
        write_jsonl(self.path, kept)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def plot_run(records: list[dict[str, Any]], path: Path) -> Path:
    """Evaluation metrics and training rewards over iterations, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("accuracy_t1", "Accuracy@t1"), ("accuracy_t2", "Accuracy@t2"), ("delta_t1_t2", "Δ(t1,t2)"),
                       ("delta_i_to_c", "Δ_i→c"), ("delta_c_to_i", "Δ_c→i")):
        ax1.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=label)
    ax1.set(title="Held-out evaluation", xlabel="iteration")
    ax1.axhline(0, color="grey", lw=0.5)
    ax1.legend(fontsize=8)
    for key, label in (("reward_attempt1", "reward, attempt 1"), ("reward_attempt2", "reward, attempt 2"), ("shaped_reward", "shaped reward (Stage II)")):
        pts = [(r["step"], r[key]) for r in train if key in r and (key != "shaped_reward" or r.get("stage") == 2)]
        if pts:
            ax2.plot(*zip(*pts), marker=".", label=label)
    ax2.set(title="Training rewards", xlabel="iteration")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
