"""Running the plan: one ``cluster.main`` process per run, resumed from its checkpoint, timed, recorded.

Invariants: a run with a result file is skipped; an unfinished run that left a checkpoint continues
from it (``--resume``); every attempt's time goes to ``timings.jsonl``, a stopped one's too (through a
heartbeat file); no run is added in another dtype than the finished ones' unless asked (``check_same_dtype``);
a finished run drops its DeepSpeed checkpoints unless ``keep_checkpoints`` and keeps its exported model
(SCoRe's Stage I checkpoint stays until (d) of its seed has branched from it: ``branch``); ``status`` reads
where the grid stands from the files alone.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from cluster.config import ConfigError, load_config
from cluster.evaluate import format_correction
from cluster.experiment import branch
from cluster.experiment.arms import BASE_SAMPLES, Plan
from cluster.experiment.record import dtypes_of, summarize_run
from common.files import replace_text
from common.jsonl import read_jsonl

log = logging.getLogger("cluster.experiment")  # not __name__: see cluster.main


def run(plan: Plan, dry_run: bool = False, commit: bool = False) -> int:
    """Every run of the plan in order, each followed by its side evaluations (``Plan.side_evals``) and, for a trained
    run, attempt 2 on the base model's first attempts; stops the grid when a run is
    interrupted (exit 130 or 143). Returns 1 if any run failed (the others still ran), else 0."""
    plan.out.mkdir(parents=True, exist_ok=True)
    todo = plan.commands()
    if not dry_run and any(not (plan.results / f"{name}.json").exists() for name, _, _ in todo):
        check_same_dtype(plan)
    failed = 0
    for i, (name, where, cmd) in enumerate(todo, 1):
        step = f"[{i}/{len(todo)}] {name}"
        rc = _run_one(plan, step, name, where, cmd, dry_run, commit)
        if rc in (130, 143):  # interrupted: stop the grid too
            return rc
        for kind in plan.side_evals():
            if rc == 0 and (plan.results / f"{name}.json").exists():  # finished (not just planned by a dry run)
                rc = _run_side_eval(plan, kind, step, name, where, dry_run, commit)
                if rc in (130, 143):
                    return rc
        if rc == 0 and name != "base" and "base" in plan.arms and (plan.results / f"{name}.json").exists():
            rc = _run_fixed_first(plan, step, name, where, dry_run, commit)
            if rc in (130, 143):
                return rc
        failed += rc != 0
    return 1 if failed else 0


def finished_dtypes(results: Path) -> dict[str, list[str]]:
    """The runs with a result file, by the dtype they computed in (``machines`` of the record; a record from
    before the field existed is left out)."""
    out: dict[str, list[str]] = {}
    for path in sorted(results.glob("*.json")):
        for dtype in dtypes_of(json.loads(path.read_text())):
            out.setdefault(dtype, []).append(path.stem)
    return out


def check_same_dtype(plan: Plan) -> None:
    """Refuse, in one line, to add runs computed in another dtype than the finished ones (``model.dtype: auto``
    follows the machine, and a grid is often continued on another one), unless ``plan.allow_mixed_dtype``."""
    from common.devices import dtype_choice, resolve_dtype  # imports torch: only when runs are left to train

    cfg = load_config(plan.config, plan.shared_sets(2))
    here = resolve_dtype(cfg.model.dtype)
    others = {d: runs for d, runs in finished_dtypes(plan.results).items() if d != here}
    if not others or plan.allow_mixed_dtype:
        return
    done = "; ".join(f"{len(runs)} in {d} ({', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''})" for d, runs in others.items())
    raise ConfigError(f"the finished runs computed in another dtype than this machine would: {done}, while here {dtype_choice(cfg.model.dtype)}. "
                      f"Continue the grid on a machine that computes {', '.join(others)}, or pass --allow-mixed-dtype to mix them")


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
            if "--overwrite" in cmd and not dry_run:
                branch.start_from_point(plan, name, where)  # (d) continues from (b)'s Stage I where that is exact
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
        if name == "base" and (where / "samples.parquet").exists():  # the first attempts every trained run corrects
            kept = plan.results / BASE_SAMPLES
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(where / "samples.parquet", kept)
            if commit:
                _commit(kept, "experiment: the base model's attempts, kept for the runs that correct its first attempts")
        summary = summarize_run(name, where, _wall_seconds(plan.out, name, where))
        _write_record(result_file, summary, commit, f"experiment: {name} finished")
        f = summary["final"]
        log.info(f"    finished in {took / 60:.1f} min: Accuracy@t1 {f['accuracy_t1']:.3f}, Accuracy@t2 {f['accuracy_t2']:.3f}, "
                 f"Δ {f['delta_t1_t2']:+.3f}")
    if dry_run or name == "base":
        return 0
    branch.save_point(plan, name, where)  # before its checkpoints go
    if not plan.keep_checkpoints and (where / "checkpoints").is_dir() and (where / "hf_model").is_dir():
        size = sum(f.stat().st_size for f in (where / "checkpoints").rglob("*") if f.is_file() and f.stat().st_nlink == 1)
        shutil.rmtree(where / "checkpoints")
        log.info(f"    removed {name}'s checkpoints ({size / 2**30:.1f} GiB); its exported model stays in {where / 'hf_model'}")
    branch.drop_point(plan, name)
    return 0


def _evaluation_step(plan: Plan, step: str, log_name: str, cmd: list[str], dry_run: bool) -> tuple[int, float]:
    """Run one evaluation of a finished run (logged as ``<out>/<log_name>.log``): its exit code and seconds."""
    log.info(f"{step}: {' '.join(cmd)}")
    if dry_run:
        return 0, 0.0
    rc, took = run_attempt(plan.out, log_name, cmd)
    if rc != 0:
        log.warning(f"    FAILED (exit {rc}) after {took / 60:.1f} min, see {plan.out / log_name}.log; `run` again repeats it")
    return rc, took


SIDE_EVAL_TITLES = {"transfer": "transfer set", "sampled": "held-out problems at the training temperature"}


def _run_side_eval(plan: Plan, kind: str, step: str, name: str, where: Path, dry_run: bool, commit: bool) -> int:
    """Evaluate a finished run on the transfer set or at the training temperature (``Plan.side_evals``) unless its
    record exists: ``<results>/<kind>/<name>.json``."""
    record = plan.results / kind / f"{name}.json"
    title = SIDE_EVAL_TITLES[kind]
    if record.exists():
        return 0
    if name != "base" and not (where / "hf_model").is_dir():
        log.warning(f"{step}, {title}: {where / 'hf_model'} is missing (the run finished on another machine?); skipped")
        return 0
    rc, took = _evaluation_step(plan, f"{step}, {title}", f"{name}.{kind}", plan.side_eval_command(kind, name, where), dry_run)
    if dry_run or rc != 0:
        return rc
    summary = summarize_run(name, where / kind, took, eval_only=True, problems=plan.side_eval_problems(kind))
    summary["overrides"] = plan.side_eval_sets(kind)
    _write_record(record, summary, commit, f"experiment: {name} on the {title}")
    f = summary["final"]
    log.info(f"    {title} in {took / 60:.1f} min: Accuracy@t1 {f['accuracy_t1']:.3f}, Accuracy@t2 {f['accuracy_t2']:.3f}, "
             f"Δ {f['delta_t1_t2']:+.3f}")
    return 0


FIXED_FIRST_KEYS = ("fix_rate", "fix_rate_ci", "wrong_first_attempts", "break_rate", "break_rate_ci", "right_first_attempts",
                    "accuracy_t1", "accuracy_t2", "answer_changed", "text_identical", "num_problems")


def _run_fixed_first(plan: Plan, step: str, name: str, where: Path, dry_run: bool, commit: bool) -> int:
    """A finished run corrects the base model's first attempts (the paper's Figure 5 diagnostic) unless its
    record exists: ``<results>/fixed_first/<name>.json`` with the fix and break rates."""
    record = plan.results / "fixed_first" / f"{name}.json"
    if record.exists():
        return 0
    for needed, what in ((plan.base_first_attempts(), "the base model's first attempts"), (where / "hf_model", "its exported model")):
        if not dry_run and not needed.exists():
            log.warning(f"{step}, base first attempts: {what} ({needed}) is missing (run on another machine?); skipped")
            return 0
    rc, took = _evaluation_step(plan, f"{step}, base first attempts", f"{name}.fixed_first", plan.fixed_first_command(name, where), dry_run)
    if dry_run or rc != 0:
        return rc
    done = json.loads((where / "fixed_first" / "eval.json").read_text())
    summary = {"run": name, "first_attempts": "base", "seconds": took, **{k: done[k] for k in FIXED_FIRST_KEYS}}
    rates = format_correction(done).replace("\n", "; ")
    _write_record(record, summary, commit, f"experiment: {name} on the base model's first attempts", detail=rates)
    log.info(f"    on the base model's first attempts in {took / 60:.1f} min: {rates}")
    return 0


def _write_record(path: Path, summary: dict[str, Any], commit: bool, message: str, detail: str | None = None) -> None:
    """``detail``: what the commit message says of the result (default: the final evaluation's Δ(t1,t2))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_text(path, json.dumps(summary, indent=1) + "\n")  # a crash leaves no half record for `run` to skip
    log.info(f"    wrote {path}")
    if commit:
        if detail is None:
            f = summary["final"]
            detail = f"Δ(t1,t2) {100 * f['delta_t1_t2']:+.1f} points on {f['num_problems']} problems"
        _commit(path, f"{message} ({detail})")


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
    return any(r.get("label") == "final" for r in read_jsonl(metrics))


def _wall_seconds(out: Path, name: str, where: Path) -> float:
    """All the time a run took, over every attempt at it (an interrupted run is continued later; a stopped
    attempt counts up to its last heartbeat, within ``run_attempt``'s 30 s). Without the runner's timings
    (it was stopped while the run went on), the run's own span: from its config, written at start-up, to
    its last record."""
    rows = read_jsonl(out / "timings.jsonl")
    seconds = float(sum(r["seconds"] for r in rows if r["run"] == name))
    metrics = where / "metrics.jsonl"
    if seconds == 0 and metrics.exists() and (where / "config.yaml").exists():
        last = read_jsonl(metrics)[-1]["time"]
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
        records = read_jsonl(metrics)
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
        point = branch.pending_point(plan, name) if state == "pending" else None
        rows.append({"run": name, "state": state, "iteration": reached, "iterations": total,
                     "resumes_from": max(checkpoints, default=0) if state in ("running", "stopped") else None,
                     "branches_from": point,
                     **{kind: (plan.results / kind / f"{name}.json").exists() if kind in plan.side_evals() else None
                        for kind in SIDE_EVAL_TITLES}})
    return rows


def print_status(plan: Plan) -> int:
    rows = status(plan)
    w = max([20, *(len(r["run"]) + 1 for r in rows)])
    print(f"{'run':<{w}} {'state':<8} {'iteration':<24} {'transfer':<9} sampled")
    for r in rows:
        it = "—" if not r["iterations"] else f"{r['iteration']}/{r['iterations']}"
        if r["resumes_from"] is not None:
            it += f" (checkpoint {r['resumes_from']})" if r["resumes_from"] else " (no checkpoint yet)"
        if r["branches_from"]:
            it += f" (from {r['branches_from'][0]}'s {r['branches_from'][1]})"
        side = ["—" if r[k] is None else "done" if r[k] else "pending" for k in SIDE_EVAL_TITLES]
        print(f"{r['run']:<{w}} {r['state']:<8} {it:<24} {side[0]:<9} {side[1]}")
    seconds = [row["seconds_iteration"] for path in plan.results.glob("*.json") for row in json.loads(path.read_text()).get("train", [])
               if row.get("seconds_iteration")]
    left = sum(r["iterations"] - (r["iteration"] if r["state"] == "running" else r["resumes_from"] or (r["branches_from"] or (0, 0))[1])
               for r in rows if r["state"] != "done")
    done = sum(r["state"] == "done" for r in rows)
    line = f"{done} of {len(rows)} runs done; {left} training iterations left"
    if seconds and left:
        line += f", about {left * float(np.median(seconds)) / 3600:.1f} h of training at the finished runs' median {np.median(seconds):.0f} s per iteration (evaluations not counted)"
    print(line)
    if done < len(rows):  # what a new session on another machine wants to know before it starts the runner
        try:
            check_same_dtype(plan)
        except ConfigError as err:
            print(f"note: `run` would stop on this machine: {err}")
    return 0


