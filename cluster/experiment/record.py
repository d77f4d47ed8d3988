"""One finished run's result file: written from its run folder, read back by the report.

The record is small enough to commit (per-problem outcomes as bit strings, curves, settings, quoted
corrections) and is read as data: a record written by an older version stays readable.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cluster.config import TaskConfig
from cluster.experiment.arms import ARMS
from cluster.experiment.branch import BRANCHED_FROM
from cluster.machines import machines
from common.jsonl import read_jsonl
from rewards.tasks import Problem, build_task

EXAMPLES_PER_RUN = 5


def _bits(values: list[float]) -> str:
    return "".join("1" if v >= 0.5 else "0" for v in values)


def sampled_corrections(run_dir: Path) -> dict[int, dict[str, float]]:
    """Per training iteration, the shares of generated samples whose attempt 2 fixed a wrong attempt 1 and
    broke a right one (from ``samples/train_iter*.parquet``): what the Stage II shaping bonus α(r2 − r1)
    pays and charges for, which the validation curves (greedy) do not show."""
    import pyarrow.parquet as pq

    out = {}
    for path in sorted((run_dir / "samples").glob("train_iter*.parquet")):
        t = pq.read_table(path, columns=["r1", "r2"])
        r1, r2 = np.asarray(t["r1"].to_pylist()) >= 0.5, np.asarray(t["r2"].to_pylist()) >= 0.5
        if len(r1):
            out[int(path.stem.removeprefix("train_iter"))] = {"fixed": float((~r1 & r2).mean()), "broken": float((r1 & ~r2).mean())}
    return out


def summarize_run(name: str, run_dir: Path, wall_seconds: float, eval_only: bool = False,
                  problems: list[Problem] | None = None) -> dict[str, Any]:
    """Everything the report needs from one finished run, small enough to commit. ``eval_only``: ``run_dir``
    holds one ``cluster.main eval`` (the base model's run, or any run's transfer evaluation). The quoted
    corrections need the evaluated problems: a trained run's come from its saved config, an evaluation's
    from ``problems``."""
    import pyarrow.parquet as pq  # heavy-ish, and only for summarising; `report` reads JSON alone

    arm = name.split("-seed")[0]
    if eval_only or arm == "base":
        final = json.loads((run_dir / "eval.json").read_text())
        samples = run_dir / "samples.parquet"
        cfg_path = None
        records: list[dict[str, Any]] = []
    else:
        records = read_jsonl(run_dir / "metrics.jsonl")
        final = [r for r in records if r["kind"] == "eval" and r["label"] == "final"][-1]
        # a pilot's final evaluation read the validation split (eval.split=val): its samples are named apart
        samples = sorted((run_dir / "samples").glob(f"{final.get('samples_split', 'eval')}_iter*.parquet"))[-1]
        cfg_path = run_dir / "config.yaml"
    table = pq.read_table(samples).sort_by("problem_index")
    rewards = {c: _bits(table[c].to_pylist()) for c in table.column_names if c.startswith("r") and c[1:].isdigit()}
    # only the sections the record needs, read as data: a run written by an older version stays readable
    saved = yaml.safe_load(cfg_path.read_text()) if cfg_path else None
    train = [r for r in records if r["kind"] == "train"]
    sampled = sampled_corrections(run_dir) if train else {}
    curves = [r for r in records if r["kind"] == "eval" and r.get("split") == "val" and r["label"] not in ("base", "final")]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    out: dict[str, Any] = {
        "name": name, "arm": arm, "seed": int(name.split("-seed")[1]) if "-seed" in name else None, "commit": commit,
        "wall_seconds": wall_seconds,
        "final": {k: v for k, v in final.items() if isinstance(v, (int, float)) and k not in ("iteration", "version", "seconds", "time", "step")},
        "selected_iteration": final.get("selected_iteration"),
        "per_problem": rewards,
        "training_episodes": int(sum(r.get("episodes_trained", 0) for r in train)),
        "generated_episodes": int(sum(r.get("groups_generated", 0) for r in train) * (saved["rollout"]["samples_per_problem"] if saved else 0)),
        "curves": [{k: r[k] for k in ("iteration", "accuracy_t1", "accuracy_t2", "delta_t1_t2", "answer_changed", "text_identical")} for r in curves],
        "train": [{**{k: r.get(k) for k in ("iteration", "stage", "reward_attempt1", "reward_attempt2", "answer_changed", "zero_variance_groups",
                                             "seconds_iteration")}, **sampled.get(r["iteration"], {})} for r in train],
    }
    # where it computed, in which dtype: one entry per start of a trained run, the one machine of an evaluation
    out["machines"] = machines(run_dir) if records else [final["machine"]] if "machine" in final else []
    if (run_dir / BRANCHED_FROM).exists():  # its Stage I is another run's (cluster.experiment.branch)
        out["branched_from"] = json.loads((run_dir / BRANCHED_FROM).read_text())
    if saved is not None:
        alg, roll = saved["algorithm"], saved["rollout"]
        out["settings"] = {**{k: alg[k] for k in ("stage1_iterations", "stage2_iterations", "alpha", "beta1", "beta2")}, "lr": saved["learner"]["lr"],
                           **{k: roll.get(k) for k in ("problems_per_iteration", "samples_per_problem", "skip_zero_variance_groups")},
                           "temperature": roll["attempt1"]["temperature"], "checkpoint_select": saved["checkpoint"].get("select"),
                           "difficulty": saved["task"]["difficulty"], "dtype": saved["model"]["dtype"],
                           "vllm_is": alg.get("vllm_is"),
                           # the second design's anti-collapse options (absent from older records: read with .get)
                           **{k: alg.get(k) for k in ("stage2_base_first_attempts", "beta2_target_kl", "attempts")}}
        problems = build_task(TaskConfig.model_validate(saved["task"]), seed=saved["run"]["seed"]).problems(final.get("split") or "eval")
    if problems is not None:
        idx = table["problem_index"].to_pylist()
        r1, r2 = table["r1"].to_pylist(), table["r2"].to_pylist()
        fixed = [i for i, (a, b) in enumerate(zip(r1, r2)) if a < 0.5 <= b][:EXAMPLES_PER_RUN]
        asked = [json.loads(table["a1_messages"][i].as_py())[0]["content"] for i in fixed]
        if any(q != problems[idx[i]].question for q, i in zip(asked, fixed)):
            raise ValueError(f"{name}: the evaluated problems are not the ones rebuilt from its settings")
        out["corrections"] = [{"problem_index": idx[i], "problem": problems[idx[i]].question, "attempt1": table["a1_text"][i].as_py(),
                               "attempt2": table["a2_text"][i].as_py(), "gold": problems[idx[i]].gold} for i in fixed]
    return out


def load_results(results: Path) -> dict[str, list[dict[str, Any]]]:
    """Result files by arm, arms in the order of ``ARMS``, seeds in order."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results.glob("*.json")):
        rec = json.loads(path.read_text())
        by_arm.setdefault(rec["arm"], []).append(rec)
    for recs in by_arm.values():
        recs.sort(key=lambda r: -1 if r["seed"] is None else r["seed"])
    return {arm: by_arm[arm] for arm in sorted(by_arm, key=lambda a: ARMS.index(a) if a in ARMS else len(ARMS))}


def dtypes_of(rec: dict[str, Any]) -> list[str]:
    """The number formats a run computed in, from its record's ``machines`` ([] for a record without them)."""
    return sorted({m["dtype"] for m in rec.get("machines", []) if m.get("dtype")})


def outcomes(rec: dict[str, Any], attempt: int) -> np.ndarray:
    return np.frombuffer(rec["per_problem"][f"r{attempt}"].encode(), dtype=np.uint8) == ord("1")


