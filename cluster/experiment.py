"""The self-correction experiment of docs/RESULTS.md: five arms x seeds, one result file per run, a report.

    python -m cluster.experiment run    --out runs/experiment [--commit]   # trains and evaluates every arm
    python -m cluster.experiment status --out runs/experiment              # which runs are done, running, left
    python -m cluster.experiment report                                     # tables, intervals, curves

Arms (the paper's ablations, Table 4, and its Figure 5 baseline):
  (a) base         the base model prompted to self-correct (evaluation only);
  (b) score        Stage I, then Stage II;
  (c) stage2_only  Stage II only, for the same total number of iterations;
  (d) no_shaping   Stage I, then Stage II with alpha = 0;
  (e) plain_rl     plain two-turn RL: no Stage I, alpha = 0, both attempts rewarded (the paper's Figure 5).

Invariants:
- every arm evaluates on the same held-out problems (``task.data_seed`` is fixed); the seed changes
  the order of training problems and the sampling; periodic evaluations use the validation split;
- each run is a separate ``python -m cluster.main`` process, so a crash loses one run;
- a finished run writes ``<results>/<run>.json`` (per-problem outcomes, curves, examples, wall time);
  those files are the experiment's record: ``run`` skips runs that have one, ``--commit`` commits each
  as it appears, and ``report`` is rebuilt from them alone, at any time, on any machine;
- an unfinished run that left a checkpoint continues from it (``--resume``); a finished one keeps its
  exported model (``hf_model``) and, unless ``--keep-checkpoints``, drops its DeepSpeed checkpoints
  (1.8 GiB each for the embedded model: thirteen runs would not fit on a small disk otherwise);
- every run (the base model too) is also evaluated on a second held-out set, the *transfer set*
  (``Plan.transfer``: the same task with numbers up to 20 by default), written to
  ``<results>/transfer/<run>.json``; on it the trained models stay below the ceiling they reach on
  the training distribution, so Δ(t1,t2) there still has room to show self-correction.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cluster.config import TaskConfig, load_config
from cluster.evaluate import LABELS, METRICS, metric_array
from common.logs import setup_logging
from rewards.tasks import Problem, build_task

log = logging.getLogger("cluster.experiment")  # not __name__: see cluster.main

ARMS = ("base", "score", "stage2_only", "no_shaping", "plain_rl")
TRAINED = ARMS[1:]
RUN_ORDER = ("score", "plain_rl", "stage2_only", "no_shaping")  # per seed: the arms the goal compares first
ARM_TITLES = {"base": "(a) base, prompted", "score": "(b) SCoRe", "stage2_only": "(c) Stage II only",
              "no_shaping": "(d) SCoRe, α = 0", "plain_rl": "(e) plain two-turn RL"}
EXAMPLES_PER_RUN = 5
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

    def shared_sets(self, attempts: int) -> list[str]:
        """The overrides every run shares: the fixed held-out problems, the evaluation, the user's ``--set``."""
        return [f"run.output_dir={self.out}", "task.data_seed=0", f"task.eval_size={self.problems}",
                f"eval.num_problems={self.problems}", f"eval.attempts={attempts}", "eval.before=false",
                "run.progress=false", *self.overrides]

    def common(self, arm: str) -> list[str]:
        # attempts beyond two cost minutes per run (each one's prompt holds all before it): the paper's
        # Figure 8 comparison needs them for the base model and SCoRe only
        return _as_sets(self.shared_sets(self.attempts if arm in MANY_ATTEMPTS else 2))

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
                "--out", str(where / "transfer"), *_as_sets(sets)]

    def transfer_problems(self) -> list[Problem]:
        cfg = load_config(self.config, [*self.shared_sets(2), *self.transfer])
        return build_task(cfg.task, seed=cfg.run.seed).problems("eval")[: cfg.eval.num_problems]

    def commands(self) -> list[tuple[str, Path, list[str]]]:
        """(name, run directory, command) for every run, in the order they run."""
        py = [sys.executable, "-m", "cluster.main"]
        runs = []
        if "base" in self.arms:
            runs.append(("base", self.out / "base", [*py, "eval", "--config", self.config, "--model", "embedded", "--out", str(self.out / "base"),
                                                     *self.common("base"), "--set", "run.name=base"]))
        for seed in self.seeds:
            for arm in (a for a in RUN_ORDER if a in self.arms):
                name = f"{arm}-seed{seed}"
                sets = [*self.arm_sets(arm), f"run.seed={seed}", f"run.name={name}"]
                runs.append((name, self.out / name, [*py, "train", "--overwrite", "--config", self.config, *self.common(arm),
                                                     *_as_sets(sets)]))
        return runs


def _as_sets(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def run(plan: Plan, dry_run: bool = False, commit: bool = False) -> int:
    plan.out.mkdir(parents=True, exist_ok=True)
    todo = plan.commands()
    failed = 0
    for i, (name, where, cmd) in enumerate(todo, 1):
        step = f"[{i}/{len(todo)}] {name}"
        rc = _run_one(plan, step, name, where, cmd, dry_run, commit)
        if rc in (130, 143):  # interrupted: stop the grid too
            return rc
        if rc == 0 and plan.transfer and (plan.results / f"{name}.json").exists():  # finished (not just planned by a dry run)
            rc = _run_transfer(plan, step, name, where, dry_run, commit)
            if rc in (130, 143):
                return rc
        failed += rc != 0
    return 1 if failed else 0


def _run_one(plan: Plan, step: str, name: str, where: Path, cmd: list[str], dry_run: bool, commit: bool) -> int:
    """Train (or evaluate) one run unless its result file exists, then write and commit that file."""
    result_file = plan.results / f"{name}.json"
    if result_file.exists():
        log.info(f"{step}: done already ({result_file})")
    else:
        if finished(name, where):  # the run ended but its record was not written (the runner was stopped)
            log.info(f"{step}: finished earlier; writing its record")
            if not dry_run:
                _record_stopped_attempt(plan.out, plan.out / f"{name}.attempt.json")
            rc, took = 0, 0.0
        else:
            if "--overwrite" in cmd and _checkpoint_iterations(where):
                cmd = [("--resume" if c == "--overwrite" else c) for c in cmd]  # an unfinished run continues from its checkpoint
            log.info(f"{step}: {' '.join(cmd)}")
            if dry_run:
                return 0
            rc, took = run_attempt(plan.out, name, cmd)
        if dry_run:
            return 0
        if rc != 0:
            log.warning(f"    FAILED (exit {rc}) after {took / 60:.1f} min, see {plan.out / name}.log; `run` again continues it")
            return rc
        summary = summarize_run(name, where, _wall_seconds(plan.out, name, where))
        _write_record(result_file, summary, commit, f"experiment: {name} finished")
        f = summary["final"]
        log.info(f"    finished in {took / 60:.1f} min: Accuracy@t1 {f['accuracy_t1']:.3f}, Accuracy@t2 {f['accuracy_t2']:.3f}, "
                 f"Δ {f['delta_t1_t2']:+.3f}")
    if not dry_run and not plan.keep_checkpoints and (where / "checkpoints").is_dir() and (where / "hf_model").is_dir():
        size = sum(f.stat().st_size for f in (where / "checkpoints").rglob("*") if f.is_file())
        shutil.rmtree(where / "checkpoints")
        log.info(f"    removed {name}'s checkpoints ({size / 2**30:.1f} GiB); its exported model stays in {where / 'hf_model'}")
    return 0


def _run_transfer(plan: Plan, step: str, name: str, where: Path, dry_run: bool, commit: bool) -> int:
    """Evaluate a finished run on the transfer set unless its transfer record exists."""
    record = plan.results / "transfer" / f"{name}.json"
    if record.exists():
        return 0
    if name != "base" and not (where / "hf_model").is_dir():
        log.warning(f"{step}, transfer set: {where / 'hf_model'} is missing (the run finished on another machine?); skipped")
        return 0
    cmd = plan.transfer_command(name, where)
    log.info(f"{step}, transfer set: {' '.join(cmd)}")
    if dry_run:
        return 0
    rc, took = run_attempt(plan.out, f"{name}.transfer", cmd)
    if rc != 0:
        log.warning(f"    FAILED (exit {rc}) after {took / 60:.1f} min, see {plan.out / name}.transfer.log; `run` again repeats it")
        return rc
    summary = summarize_run(name, where / "transfer", took, eval_only=True, problems=plan.transfer_problems()) | {"overrides": list(plan.transfer)}
    _write_record(record, summary, commit, f"experiment: {name} on the transfer set")
    f = summary["final"]
    log.info(f"    transfer set in {took / 60:.1f} min: Accuracy@t1 {f['accuracy_t1']:.3f}, Accuracy@t2 {f['accuracy_t2']:.3f}, "
             f"Δ {f['delta_t1_t2']:+.3f}")
    return 0


def _write_record(path: Path, summary: dict[str, Any], commit: bool, message: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    log.info(f"    wrote {path}")
    if commit:
        f = summary["final"]
        _commit(path, f"{message} (Δ(t1,t2) {100 * f['delta_t1_t2']:+.1f} points on {f['num_problems']} problems)")


def run_attempt(out: Path, name: str, cmd: list[str], beat_s: float = 30.0) -> tuple[int, float]:
    """Run one attempt at a run; returns (exit code, seconds). Every attempt's time goes to ``timings.jsonl``,
    a stopped one's too: while it runs, a heartbeat file holds its time so far, and an attempt that left one
    behind (the machine or the session stopped it) is recorded when the run is next attempted."""
    beat = out / f"{name}.attempt.json"
    _record_stopped_attempt(out, beat)
    t0 = time.monotonic()
    with (out / f"{name}.log").open("a") as run_log:
        proc = subprocess.Popen(cmd, stdout=run_log, stderr=subprocess.STDOUT)
        while True:
            try:
                rc = proc.wait(timeout=beat_s)
                break
            except subprocess.TimeoutExpired:
                beat.write_text(json.dumps({"run": name, "seconds": time.monotonic() - t0}))
    took = time.monotonic() - t0
    with (out / "timings.jsonl").open("a") as f:
        f.write(json.dumps({"run": name, "seconds": took, "rc": rc}) + "\n")
    beat.unlink(missing_ok=True)
    return rc, took


def _record_stopped_attempt(out: Path, beat: Path) -> None:
    if beat.exists():
        last = json.loads(beat.read_text())
        with (out / "timings.jsonl").open("a") as f:
            f.write(json.dumps({"run": last["run"], "seconds": last["seconds"], "rc": "stopped"}) + "\n")
        beat.unlink()


def _checkpoint_iterations(where: Path) -> list[int]:
    """Iterations of the run's checkpoint folders that were completely written (not ``.partial``)."""
    return [int(c.name.split("_")[1]) for c in (where / "checkpoints").glob("iter_*") if not c.name.endswith(".partial")]


def finished(name: str, where: Path) -> bool:
    """Did the run complete its final evaluation (and export)? Then only its record is missing."""
    if name == "base":
        return (where / "eval.json").exists() and (where / "samples.parquet").exists()
    metrics = where / "metrics.jsonl"
    if not metrics.exists() or not (where / "hf_model").is_dir():
        return False
    return any(json.loads(line).get("label") == "final" for line in metrics.read_text().splitlines() if line.strip())


def _wall_seconds(out: Path, name: str, where: Path) -> float:
    """All the time a run took, over every attempt at it (an interrupted run is continued later; a stopped
    attempt counts up to its last heartbeat, within ``run_attempt``'s 30 s). Without the runner's timings
    (it was stopped while the run went on), the run's own span: from its config, written at start-up, to
    its last record."""
    path = out / "timings.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    seconds = float(sum(r["seconds"] for r in rows if r["run"] == name))
    metrics = where / "metrics.jsonl"
    if seconds == 0 and metrics.exists() and (where / "config.yaml").exists():
        last = json.loads(metrics.read_text().splitlines()[-1])["time"]
        seconds = last - (where / "config.yaml").stat().st_mtime
    return seconds


def _commit(path: Path, message: str) -> None:
    """Commit one result file, nothing else that may be staged; a failure is reported, never fatal."""
    repo = path.resolve().parent
    for cmd in (["git", "add", "--", path.name], ["git", "commit", "-q", "-m", message, "--", path.name]):
        done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
        if done.returncode != 0:
            log.warning(f"    could not commit {path}: {done.stderr.strip() or done.stdout.strip()}")
            return
    log.info(f"    committed {path}")


def status(plan: Plan, now: float | None = None, fresh_s: float = 120.0) -> list[dict[str, Any]]:
    """Where the grid stands, from the files alone (the runner need not be alive): per run, ``done``,
    ``running`` (its heartbeat is fresher than ``fresh_s``), ``stopped`` (a stale heartbeat or a checkpoint
    left behind) or ``pending``; the iteration it has reached; whether its transfer record exists."""
    now = time.time() if now is None else now
    rows = []
    for name, where, _ in plan.commands():
        total = 0 if name == "base" else plan.stage1 + plan.stage2
        record = plan.results / f"{name}.json"
        beat = plan.out / f"{name}.attempt.json"
        metrics = where / "metrics.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
        reached = max((r["iteration"] for r in records if r.get("kind") == "train"), default=0)
        checkpoints = _checkpoint_iterations(where)
        if record.exists():
            state, reached = "done", total
        elif beat.exists() and now - beat.stat().st_mtime < fresh_s:
            state = "running"
        elif beat.exists() or checkpoints:
            state = "stopped"
        else:
            state = "pending"
        rows.append({"run": name, "state": state, "iteration": reached, "iterations": total,
                     "resumes_from": max(checkpoints, default=0) if state in ("running", "stopped") else None,
                     "transfer": (plan.results / "transfer" / f"{name}.json").exists() if plan.transfer else None})
    return rows


def print_status(plan: Plan) -> int:
    rows = status(plan)
    print(f"{'run':<20} {'state':<8} {'iteration':<24} transfer")
    for r in rows:
        it = "—" if not r["iterations"] else f"{r['iteration']}/{r['iterations']}"
        if r["resumes_from"] is not None:
            it += f" (checkpoint {r['resumes_from']})" if r["resumes_from"] else " (no checkpoint yet)"
        print(f"{r['run']:<20} {r['state']:<8} {it:<24} {'—' if r['transfer'] is None else 'done' if r['transfer'] else 'pending'}")
    seconds = [row["seconds_iteration"] for path in plan.results.glob("*.json") for row in json.loads(path.read_text()).get("train", [])
               if row.get("seconds_iteration")]
    left = sum(r["iterations"] - (r["iteration"] if r["state"] == "running" else r["resumes_from"] or 0) for r in rows if r["state"] != "done")
    done = sum(r["state"] == "done" for r in rows)
    line = f"{done} of {len(rows)} runs done; {left} training iterations left"
    if seconds and left:
        line += f", about {left * float(np.median(seconds)) / 3600:.1f} h of training at the finished runs' median {np.median(seconds):.0f} s per iteration (evaluations not counted)"
    print(line)
    return 0


# -- one run's record ---------------------------------------------------------------------------

def _bits(values: list[float]) -> str:
    return "".join("1" if v >= 0.5 else "0" for v in values)


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
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        final = [r for r in records if r["kind"] == "eval" and r["label"] == "final"][-1]
        samples = sorted((run_dir / "samples").glob("eval_iter*.parquet"))[-1]
        cfg_path = run_dir / "config.yaml"
    table = pq.read_table(samples).sort_by("problem_index")
    rewards = {c: _bits(table[c].to_pylist()) for c in table.column_names if c.startswith("r") and c[1:].isdigit()}
    # only the sections the record needs, read as data: a run written by an older version stays readable
    saved = yaml.safe_load(cfg_path.read_text()) if cfg_path else None
    train = [r for r in records if r["kind"] == "train"]
    curves = [r for r in records if r["kind"] == "eval" and r.get("split") == "val"]
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
        "train": [{k: r.get(k) for k in ("iteration", "stage", "reward_attempt1", "reward_attempt2", "answer_changed", "zero_variance_groups",
                                          "seconds_iteration")} for r in train],
    }
    if saved is not None:
        alg, roll = saved["algorithm"], saved["rollout"]
        out["settings"] = {**{k: alg[k] for k in ("stage1_iterations", "stage2_iterations", "alpha", "beta1", "beta2")}, "lr": saved["learner"]["lr"],
                           **{k: roll.get(k) for k in ("problems_per_iteration", "samples_per_problem", "skip_zero_variance_groups")},
                           "temperature": roll["attempt1"]["temperature"], "checkpoint_select": saved["checkpoint"].get("select"),
                           "difficulty": saved["task"]["difficulty"], "dtype": saved["model"]["dtype"]}
        problems = build_task(TaskConfig.model_validate(saved["task"]), seed=saved["run"]["seed"]).problems("eval")
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


# -- the report ------------------------------------------------------------------------------

def load_results(results: Path) -> dict[str, list[dict[str, Any]]]:
    """Result files by arm, arms in the order of ``ARMS``, seeds in order."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results.glob("*.json")):
        rec = json.loads(path.read_text())
        by_arm.setdefault(rec["arm"], []).append(rec)
    for recs in by_arm.values():
        recs.sort(key=lambda r: -1 if r["seed"] is None else r["seed"])
    return {arm: by_arm[arm] for arm in sorted(by_arm, key=lambda a: ARMS.index(a) if a in ARMS else len(ARMS))}


def outcomes(rec: dict[str, Any], attempt: int) -> np.ndarray:
    return np.frombuffer(rec["per_problem"][f"r{attempt}"].encode(), dtype=np.uint8) == ord("1")


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
        stats[arm] = metric_array(r1[rows, cols], r2[rows, cols]).mean(1)
    out: dict[str, Any] = {}
    for arm, runs in results.items():
        point = np.mean([metric_array(a, b) for a, b in runs], 0)
        lo, hi = np.percentile(stats[arm], [2.5, 97.5], 0)
        per_seed = [dict(zip(METRICS, map(float, metric_array(a, b)))) for a, b in runs]
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


def _pct(s: dict[str, float], signed: bool) -> str:
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(100 * s['mean'])} [{f.format(100 * s['lo'])}, {f.format(100 * s['hi'])}]"


def markdown_table(summary: dict[str, Any]) -> str:
    head = "| arm | seeds | " + " | ".join(LABELS[m] for m in METRICS) + " |"
    lines = [head, "|" + " --- |" * (len(METRICS) + 2)]
    for arm in ARMS:
        if arm in summary:
            s = summary[arm]
            lines.append(f"| {ARM_TITLES[arm]} | {s['seeds']} | " + " | ".join(_pct(s[m], m.startswith("delta")) for m in METRICS) + " |")
    return "\n".join(lines)


def _examples(by_arm: dict[str, list[dict[str, Any]]], where: str, n: int = 3) -> tuple[list[dict[str, Any]], list[str]]:
    """The first ``n`` corrections SCoRe's runs recorded, and their quotation in full."""
    examples = [ex | {"run": r["name"]} for r in by_arm.get("score", []) for ex in r.get("corrections", [])][:n]
    lines = ["", f"{where} where SCoRe's attempt 2 corrects its attempt 1 (greedy, quoted in full):"] if examples else []
    for ex in examples:
        lines += ["", f"**{ex['run']}, problem {ex['problem_index']}** (gold: {ex['gold']})", "",
                  *[f"> {label}: {text}" for label, text in (("problem", ex["problem"]), ("attempt 1", ex["attempt1"]),
                                                              ("attempt 2", ex["attempt2"]))]]
    return examples, lines


def _differences(summary: dict[str, Any]) -> list[str]:
    return [f"- Δ(t1,t2) of SCoRe minus {ARM_TITLES[arm]}: {100 * d['mean']:+.1f} points [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
            for arm, d in summary.get("score_minus", {}).items()]


MIN_EPISODES, MIN_SEEDS = 2400, 3  # the scale: episodes per trained run, seeds per trained arm


def goal_check(summary: dict[str, Any], scale: bool = True) -> list[dict[str, Any]]:
    """The experiment's goal (docs/RESULTS.md 1.1), clause by clause, read off a summary of one problem set.

    Each clause is ``{"clause", "value", "met"}``; ``met`` is None while an arm it needs has no run yet.
    SCoRe's Δ(t1,t2) must be positive with its interval above 0, larger than every other arm's with the
    paired interval above 0, and its Δ_c→i at most half of its Δ_i→c; with ``scale`` also the run sizes.
    """
    checks: list[dict[str, Any]] = []
    score = summary.get("score")

    def add(clause: str, value: str, met: bool | None) -> None:
        checks.append({"clause": clause, "value": value, "met": met})

    positive = "SCoRe's Δ(t1,t2) > 0, interval above 0"
    if score is None:
        add(positive, "no SCoRe run yet", None)
    else:
        add(positive, _pct(score["delta_t1_t2"], True), score["delta_t1_t2"]["lo"] > 0)
    for arm in (a for a in ARMS if a != "score"):
        diff = summary.get("score_minus", {}).get(arm)
        clause = f"SCoRe's Δ minus that of {ARM_TITLES[arm]}, interval above 0"
        add(clause, _pct(diff, True) if diff else "needs both runs", None if diff is None else diff["lo"] > 0)
    if score is not None:
        i2c, c2i = score["delta_i_to_c"]["mean"], score["delta_c_to_i"]["mean"]
        add("SCoRe's Δ_c→i at most half of its Δ_i→c", f"{100 * c2i:.1f} vs {100 * i2c:.1f}", c2i <= i2c / 2)
    if scale:
        episodes = summary.get("training_episodes_per_run", 0)
        add(f"at least {MIN_EPISODES} training episodes per run", str(episodes), episodes >= MIN_EPISODES if episodes else None)
        seeds = {arm: summary[arm]["seeds"] for arm in TRAINED if arm in summary}
        add(f"at least {MIN_SEEDS} seeds per trained arm", ", ".join(f"{ARM_TITLES[a]} {n}" for a, n in seeds.items()) or "none",
            len(seeds) == len(TRAINED) and min(seeds.values()) >= MIN_SEEDS)
    return checks


def goal_lines(checks: list[dict[str, Any]]) -> list[str]:
    mark = {True: "met", False: "**not met**", None: "open"}
    return [f"- {c['clause']}: {c['value']} — {mark[c['met']]}" for c in checks]


def attempts_table(by_arm: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, list[float]]]:
    """Accuracy@t1 ... @tN per arm (mean over seeds), as far as every run of the arm has attempts."""
    rows, data = [], {}
    for arm in ARMS:
        recs = by_arm.get(arm, [])
        if not recs:
            continue
        n = min(sum(1 for c in r["per_problem"] if c[1:].isdigit()) for r in recs)
        data[arm] = [float(np.mean([outcomes(r, t).mean() for r in recs])) for t in range(1, n + 1)]
    width = max((len(v) for v in data.values()), default=0)
    head = "| arm | " + " | ".join(f"Accuracy@t{t}" for t in range(1, width + 1)) + " |"
    rows = [head, "|" + " --- |" * (width + 1)]
    for arm, accs in data.items():
        rows.append(f"| {ARM_TITLES[arm]} | " + " | ".join(f"{100 * a:.1f}" for a in accs) + " |" + " — |" * (width - len(accs)))
    return "\n".join(rows), data


def _bars(ax: Any, summary: dict[str, Any], title: str) -> None:
    """The five metrics per arm with their intervals."""
    arms = [a for a in ARMS if a in summary]
    width = 0.8 / len(METRICS)
    for j, m in enumerate(METRICS):
        means = [100 * summary[a][m]["mean"] for a in arms]
        err = [[100 * (summary[a][m]["mean"] - summary[a][m]["lo"]) for a in arms], [100 * (summary[a][m]["hi"] - summary[a][m]["mean"]) for a in arms]]
        ax.bar(np.arange(len(arms)) + (j - (len(METRICS) - 1) / 2) * width, means, width, yerr=err, capsize=2, label=LABELS[m])
    ax.set_xticks(np.arange(len(arms)), [ARM_TITLES[a] for a in arms], fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("% of problems (95% CI)")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)


def seed_band(recs: list[dict[str, Any]], metric: str) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """A curve's mean over seeds and its range (min, max), at the iterations every seed evaluated."""
    by_seed = [{p["iteration"]: p[metric] for p in r["curves"]} for r in recs if r["curves"]]
    its = sorted(set.intersection(*map(set, by_seed))) if by_seed else []
    if not its:
        empty = np.zeros(0)
        return [], empty, empty, empty
    values = np.array([[c[i] for i in its] for c in by_seed])
    return its, values.mean(0), values.min(0), values.max(0)


def plot(summary: dict[str, Any], by_arm: dict[str, list[dict[str, Any]]], out: Path) -> Path:
    """Final metrics with intervals, on the held-out and the transfer set; validation accuracy and Δ over training
    (mean over seeds, their range shaded); the collapse diagnostic over training; accuracy over five attempts
    (the paper's Figure 8)."""
    import matplotlib  # heavy: only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(19, 8.5))
    _bars(axes[0, 0], summary, f"final evaluation, {summary['num_problems']} held-out problems, greedy")
    if "transfer" in summary:
        t = summary["transfer"]
        _bars(axes[0, 2], t, f"transfer set ({', '.join(t['overrides'])}), {t['num_problems']} problems, greedy")
    else:
        axes[0, 2].set_axis_off()
    ax = axes[1, 2]  # the paper's Figure 8: accuracy over more attempts than were trained
    for arm, accs in summary.get("accuracy_by_attempt", {}).items():
        if len(accs) > 2:
            ax.plot(range(1, len(accs) + 1), [100 * a for a in accs], marker="o", color=f"C{ARMS.index(arm)}", label=ARM_TITLES[arm])
    ax.set_xticks(range(1, 1 + max((len(v) for v in summary.get("accuracy_by_attempt", {}).values()), default=2)))
    ax.set_xlabel("attempt")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Accuracy@t1 ... @tN, mean over seeds", fontsize=9)
    ax.legend(fontsize=7)
    panels = [(axes[0, 1], "accuracy_t2", "validation Accuracy@t2 (%), seeds: mean and range"),
              (axes[1, 0], "delta_t1_t2", "validation Δ(t1,t2) (points), seeds: mean and range"),
              (axes[1, 1], "answer_changed", "validation: attempt 2 changes the answer (%), seeds: mean and range")]
    # where Stage II begins for the arms that have a Stage I (the same length for all of them)
    stage2 = sorted({r["settings"]["stage1_iterations"] for arm in TRAINED for r in by_arm.get(arm, [])
                     if r.get("settings", {}).get("stage1_iterations")})
    base = by_arm.get("base")
    for bx, metric, title in panels:
        for arm in TRAINED:
            its, mean, lo, hi = seed_band(by_arm.get(arm, []), metric)
            if its:
                color = f"C{ARMS.index(arm)}"
                bx.plot(its, 100 * mean, color=color, marker="o", ms=2.5, label=ARM_TITLES[arm])
                if (lo < hi).any():
                    bx.fill_between(its, 100 * lo, 100 * hi, color=color, alpha=0.15, lw=0)
        if base and metric in base[0]["final"]:
            bx.axhline(100 * base[0]["final"][metric], color="C0", ls="--", lw=0.8, label="(a) base (held-out)")
        for x in stage2:
            bx.axvline(x, color="grey", ls=":", lw=0.8, label="Stage II begins" if x == stage2[0] else None)
        bx.axhline(0, color="grey", lw=0.5)
        bx.set_xlabel("iteration")
        bx.set_title(title, fontsize=9)
        bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def correction_rates(runs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """How often attempt 2 fixes a wrong attempt 1, and breaks a right one, pooled over seeds.

    Δ_i→c and Δ_c→i are shares of all problems, so they shrink as attempt 1 improves: a model at 90%
    has few wrong first attempts left to fix. These rates divide by the first attempts that could
    change, so arms at different Accuracy@t1 compare as self-correctors.
    """
    r1 = np.concatenate([a for a, _ in runs])
    r2 = np.concatenate([b for _, b in runs])
    wrong, right = int((~r1).sum()), int(r1.sum())
    return {"wrong_t1": wrong, "right_t1": right,
            "fixed": float((~r1 & r2).sum() / wrong) if wrong else None,
            "broken": float((r1 & ~r2).sum() / right) if right else None}


def _rates_table(rates: dict[str, dict[str, Any]]) -> str:
    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.1f}%"

    lines = ["| arm | wrong attempts 1 (all seeds) | of them right at attempt 2 | right attempts 1 | of them wrong at attempt 2 |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {ARM_TITLES[arm]} | {r['wrong_t1']} | {pct(r['fixed'])} | {r['right_t1']} | {pct(r['broken'])} |"
              for arm in ARMS if (r := rates.get(arm))]
    return "\n".join(lines)


def _summarize(by_arm: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Means and intervals per arm, the paired differences, the share of changed answers, and the correction
    rates, of one problem set."""
    runs = {arm: [(outcomes(r, 1), outcomes(r, 2)) for r in recs] for arm, recs in by_arm.items()}
    summary = bootstrap(runs)
    summary["num_problems"] = next(iter(summary.values()))["problems"]
    summary["answer_changed"] = {arm: float(np.mean([r["final"]["answer_changed"] for r in recs])) for arm, recs in by_arm.items()}
    summary["correction_rates"] = {arm: correction_rates(r) for arm, r in runs.items()}
    return summary


def report(results: Path, doc_dir: Path) -> int:
    by_arm = load_results(results)
    if not by_arm:
        print(f"error: no result files under {results}", file=sys.stderr)
        return 2
    summary = _summarize(by_arm)
    summary["wall_seconds"] = {r["name"]: r["wall_seconds"] for recs in by_arm.values() for r in recs}
    episodes = {r["name"]: r["training_episodes"] for arm in TRAINED for r in by_arm.get(arm, [])}
    summary["training_episodes_per_run"] = min(episodes.values()) if episodes else 0
    summary["training_episodes"] = episodes
    att_md, summary["accuracy_by_attempt"] = attempts_table(by_arm)
    doc_dir.mkdir(parents=True, exist_ok=True)
    lines = [markdown_table(summary), "", *_differences(summary)]
    summary["goal"] = goal_check(summary)
    lines += ["", "The goal, clause by clause (held-out set):", *goal_lines(summary["goal"])]
    lines += ["", "Attempt 2 gives a different final answer from attempt 1 (held-out, mean over seeds): "
              + ", ".join(f"{ARM_TITLES[a]} {100 * v:.1f}%" for a, v in summary["answer_changed"].items()), "",
              "Correction rates (held-out; Δ_i→c and Δ_c→i divided by the first attempts that could change):", "",
              _rates_table(summary["correction_rates"]), "", att_md, ""]
    # The runner's wall time covers every attempt it timed (before heartbeats, an attempt stopped with the session
    # left no timing); the iterations' own seconds cover every attempt, but not start-up or evaluations.
    lines.append("| run | training episodes | zero-variance groups (of generated, mean) | runner wall time (min) "
                 "| sum of iteration times (min) | selected iteration |")
    lines.append("| --- | --- | --- | --- | --- | --- |")
    summary["iteration_seconds"], summary["zero_variance_groups"] = {}, {}
    for recs in by_arm.values():
        for r in recs:
            train = r.get("train", [])
            its = sum(row.get("seconds_iteration", 0.0) for row in train)
            zero = [row["zero_variance_groups"] for row in train if row.get("zero_variance_groups") is not None]
            summary["iteration_seconds"][r["name"]] = its
            mean_zero = summary["zero_variance_groups"][r["name"]] = float(np.mean(zero)) if zero else None
            lines.append(f"| {r['name']} | {r['training_episodes']} | {'—' if mean_zero is None else f'{100 * mean_zero:.0f}%'} "
                         f"| {r['wall_seconds'] / 60:.0f} | {its / 60:.0f} | {r.get('selected_iteration') or '—'} |")
    summary["examples"], quoted = _examples(by_arm, "Held-out problems")
    lines += quoted
    transfer = load_results(results / "transfer")
    if transfer:
        t = summary["transfer"] = _summarize(transfer)
        overrides = t["overrides"] = sorted({o for recs in transfer.values() for r in recs for o in r.get("overrides", [])})
        t["goal"] = goal_check(t, scale=False)
        lines += ["", f"Transfer set: {t['num_problems']} held-out problems with {', '.join(overrides)} "
                  "(the selected checkpoint of every run, greedy, two attempts):", "", markdown_table(t), "", *_differences(t),
                  "", "The goal's clauses on the transfer set:", *goal_lines(t["goal"]),
                  "", "Attempt 2 gives a different final answer on the transfer set: "
                  + ", ".join(f"{ARM_TITLES[a]} {100 * v:.1f}%" for a, v in t["answer_changed"].items()),
                  "", "Correction rates on the transfer set:", "", _rates_table(t["correction_rates"])]
        t["examples"], quoted = _examples(transfer, "Transfer-set problems")
        lines += quoted
    (doc_dir / "self_correction.json").write_text(json.dumps(summary, indent=1))
    (doc_dir / "self_correction.md").write_text("\n".join(lines) + "\n")
    png = plot(summary, by_arm, doc_dir / "self_correction.png")
    print("\n".join(lines))
    print(f"wrote {doc_dir / 'self_correction.json'}, {doc_dir / 'self_correction.md'}, {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.experiment", description="SCoRe's ablations: five arms x seeds, and their report.")
    p.add_argument("command", choices=["run", "status", "report"], help="run the grid, show where it stands, or rebuild the report")
    p.add_argument("--out", default="runs/experiment", help="where the runs go (default: %(default)s)")
    p.add_argument("--config", default="configs/experiment_cpu.yaml", help="shared settings of every run (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="arms to run (default: all)")
    p.add_argument("--problems", type=int, default=500, help="held-out problems per final evaluation (default: %(default)s)")
    p.add_argument("--attempts", type=int, default=5, help="attempts in the final evaluation of (a) and (b); the others get 2 (default: %(default)s)")
    p.add_argument("--stage1", type=int, default=40, help="Stage I iterations of (b) and (d) (default: %(default)s)")
    p.add_argument("--stage2", type=int, default=40, help="Stage II iterations; (c) and (e) run stage1 + stage2 (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--results", default="docs/results/runs", help="one result file per finished run (default: %(default)s)")
    p.add_argument("--docs", default="docs/results", help="report output folder (default: %(default)s)")
    p.add_argument("--transfer", nargs="*", default=list(TRANSFER), metavar="KEY=VALUE",
                   help="overrides that make the transfer set every run is also evaluated on; none: skip it (default: %(default)s)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep a finished run's DeepSpeed checkpoints (default: drop them, keep hf_model)")
    p.add_argument("--commit", action="store_true", help="git-commit each run's result file as it is written")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    a = p.parse_args(argv)
    setup_logging()
    plan = Plan(Path(a.out), a.config, a.seeds, a.problems, a.stage1, a.stage2, a.overrides, Path(a.results), a.attempts, tuple(a.arms),
                tuple(a.transfer), a.keep_checkpoints)
    if a.command == "run":
        return run(plan, a.dry_run, a.commit)
    if a.command == "status":
        return print_status(plan)
    return report(plan.results, Path(a.docs))


if __name__ == "__main__":
    sys.exit(main())
