"""Stage I branch points: (d), SCoRe with α = 0, continues from (b)'s checkpoint at the end of Stage I.

Why this is exact, not an approximation: α enters only the Stage II reward, and a run is a deterministic
function of its config and seed, resume included (the per-iteration sampling seeds and the problem order
come from ``run.seed``). With the same seed, (d)'s first ``stage1`` iterations reproduced (b)'s bit for bit
(docs/RESULTS.md 1.3: every sampled reward and the validation curve, seeds 0 and 1), so running them again
costs about half of (d)'s time and changes nothing.

Invariants:
- (b) keeps its checkpoint at iteration ``stage1`` (``checkpoint.keep_iterations``); when (b) finishes, it is
  linked (not copied) into ``<b's run>/stage1_branch/`` with (b)'s log up to that iteration and the shared
  settings it ran with, unless (d) of that seed is done already.
- (d) branches only when it has no checkpoint of its own and the branch point's settings are exactly (d)'s
  besides α, the run name and the evaluation's attempt count (which does not touch training). Its log up to
  ``stage1`` is (b)'s, and so are the lines of ``machines.jsonl`` that computed it; ``branched_from.json`` in
  its run folder says so; the result file carries it.
- With ``checkpoint.select: best_train_reward``, (d) also needs the best weights as of iteration ``stage1``: (b)
  keeps its checkpoints at the ends of the selection windows inside Stage I too (``keep_sets``), and the branch
  point links the one whose window was best by iteration ``stage1`` (replayed from (b)'s log, as the trainer
  chose), which (d) starts with as ``checkpoints/best``. Where that checkpoint is missing (a (b) run that kept
  only ``stage1``, or a window end that was no checkpoint iteration), (d) trains from iteration 0.
- Every file is a hard link where the file system allows (a copy otherwise) and none is written through a
  link: a manifest is replaced, never rewritten in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from cluster.base_attempts import FILE as BASE_ATTEMPTS
from cluster.checkpoints import BEST, MANIFEST
from cluster.config import load_config
from cluster.machines import MACHINES, machines
from cluster.run_log import final_attempt_reward
from common.files import replace_text
from common.jsonl import read_jsonl, write_jsonl

log = logging.getLogger("cluster.experiment")

BRANCHES = {"no_shaping": "score"}  # arm -> the arm whose Stage I it shares
BRANCH_DIR = "stage1_branch"
BRANCHED_FROM = "branched_from.json"


def _link_file(a: str | Path, b: str | Path) -> None:
    try:
        os.link(a, b)
    except OSError:
        shutil.copy2(a, b)


def _link_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=_link_file)


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:06d}"


def _checkpointing(plan: Any, arm: str) -> Any:
    """``arm``'s checkpoint settings in ``plan`` (its selection of the best weights among them)."""
    return load_config(plan.config, [*plan.shared_sets(2), *plan.arm_sets(arm)]).checkpoint


def keep_sets(plan: Any, arm: str) -> list[str]:
    """The override (b) needs for (d) to branch from it: keep the checkpoint at the end of Stage I and, with
    ``checkpoint.select: best_train_reward``, those at the ends of the selection windows before it (one of them
    holds the best weights as of the end of Stage I; the rest go when (b) finishes)."""
    if not plan.stage1 or not any(BRANCHES.get(a) == arm for a in plan.arms):
        return []
    c = _checkpointing(plan, arm)
    ends = range(c.select_window, plan.stage1, c.select_window) if c.select == "best_train_reward" else ()
    return [f"checkpoint.keep_iterations=[{','.join(str(i) for i in (*ends, plan.stage1))}]"]


def save_point(plan: Any, name: str, where: Path) -> Path | None:
    """After ``name`` (an arm others branch from) finished: keep its Stage I checkpoint and log for the arms
    that branch from it and have not run yet. Returns the branch folder, or None."""
    arm, seed = name.split("-seed")
    waiting = [a for a, src in BRANCHES.items() if src == arm and a in plan.arms and not (plan.results / f"{a}-seed{seed}.json").exists()]
    ckpt = where / "checkpoints" / checkpoint_name(plan.stage1)
    dst = where / BRANCH_DIR
    if not waiting or dst.exists():
        return dst if dst.exists() else None
    if not (ckpt / MANIFEST).exists():
        log.info(f"    {name} has no checkpoint at the end of Stage I ({ckpt}): "
                 f"{', '.join(f'{a}-seed{seed}' for a in waiting)} will train Stage I again")
        return None
    tmp = dst.with_name(BRANCH_DIR + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _link_tree(ckpt, tmp / ckpt.name)
    c = _checkpointing(plan, arm)
    rows = read_jsonl(where / "metrics.jsonl")
    best = _best_window(rows, plan.stage1, c.select_window) if c.select == "best_train_reward" else None
    if best is not None and best[0] != plan.stage1 and ((held := where / "checkpoints" / checkpoint_name(best[0])) / MANIFEST).exists():
        _link_tree(held, tmp / held.name)  # the best weights as of the end of Stage I
    if (where / BASE_ATTEMPTS).exists():  # Stage II's base first attempts (algorithm.stage2_base_first_attempts), shared too
        _link_file(where / BASE_ATTEMPTS, tmp / BASE_ATTEMPTS)
    write_jsonl(tmp / "metrics.jsonl", [r for r in rows if r["step"] <= plan.stage1])
    write_jsonl(tmp / MACHINES, [m for m in machines(where) if m["iteration"] < plan.stage1])  # those that computed Stage I
    (tmp / "branch.json").write_text(json.dumps({"run": name, "iteration": plan.stage1, **_identity(plan, int(seed))}, indent=1))
    tmp.rename(dst)
    log.info(f"    kept {name}'s Stage I checkpoint (iteration {plan.stage1}) in {dst} for {', '.join(f'{a}-seed{seed}' for a in waiting)}")
    return dst


def _identity(plan: Any, seed: int) -> dict[str, Any]:
    """What must be equal for a branch to be exact: the settings every run shares, the stage lengths, the seed."""
    return {"shared": plan.shared_sets(2), "stage1": plan.stage1, "stage2": plan.stage2, "seed": seed}


def _best_window(rows: list[dict[str, Any]], upto: int, window: int) -> tuple[int, float] | None:
    """``checkpoint.select=best_train_reward`` replayed on the log: the (end, mean attempt-2 reward) of the
    window it would hold as best at iteration ``upto`` (the earliest of equal means, as the trainer keeps)."""
    train = [r for r in rows if r["kind"] == "train"]
    best = None
    for end in range(window, upto + 1, window):
        vals = [final_attempt_reward(r) for r in train if end - window < r["step"] <= end]
        if not vals:
            return None
        score = sum(vals) / len(vals)
        if best is None or score > best[1]:
            best = (end, score)
    return best


def start_from_point(plan: Any, name: str, where: Path) -> bool:
    """Before ``name`` (an arm that branches) trains: set its run folder up to continue from the branch point
    (``--resume``) if one exists and is exact for it (module docstring). Returns whether it did."""
    arm, seed = name.split("-seed")
    if arm not in BRANCHES or any((where / "checkpoints").glob("iter_*")):
        return False
    src = plan.out / f"{BRANCHES[arm]}-seed{seed}" / BRANCH_DIR
    if not (src / "branch.json").exists():
        return False
    point = json.loads((src / "branch.json").read_text())
    if {k: point.get(k) for k in ("shared", "stage1", "stage2", "seed")} != _identity(plan, int(seed)):
        log.info(f"    {src} was kept with other settings than {name}'s; {name} trains from iteration 0")
        return False
    rows = read_jsonl(src / "metrics.jsonl")
    ckpt_src = src / checkpoint_name(point["iteration"])
    c = _checkpointing(plan, arm)
    best = None
    if c.select == "best_train_reward":
        best = _best_window(rows, point["iteration"], c.select_window)
        if best is None or not (src / checkpoint_name(best[0]) / MANIFEST).exists():
            log.info(f"    {point['run']}'s best training window before iteration {point['iteration']} ends at {best and best[0]}, "
                     f"whose weights were not kept; {name} trains from iteration 0")
            return False
    ckpts = where / "checkpoints"
    shutil.rmtree(ckpts, ignore_errors=True)
    ckpts.mkdir(parents=True)
    if best is not None:
        best_src = src / checkpoint_name(best[0])
        _link_tree(best_src, ckpts / f"{BEST}.partial")
        source = json.loads((best_src / MANIFEST).read_text())
        replace_text(ckpts / f"{BEST}.partial" / MANIFEST, json.dumps({"iteration": best[0], "version": source["version"], "train_reward": best[1],
                                                                   "window": c.select_window, "dtype": source.get("dtype"),
                                                                   "time": time.time()}, indent=1))
        (ckpts / f"{BEST}.partial").rename(ckpts / BEST)
    _link_tree(ckpt_src, ckpts / (ckpt_src.name + ".partial"))  # complete only once everything else is in place
    write_jsonl(where / "metrics.jsonl", rows)
    write_jsonl(where / MACHINES, read_jsonl(src / MACHINES))
    if (src / BASE_ATTEMPTS).exists():
        (where / BASE_ATTEMPTS).unlink(missing_ok=True)
        _link_file(src / BASE_ATTEMPTS, where / BASE_ATTEMPTS)
    (where / BRANCHED_FROM).write_text(json.dumps({"run": point["run"], "iteration": point["iteration"]}))
    (ckpts / (ckpt_src.name + ".partial")).rename(ckpts / ckpt_src.name)
    log.info(f"    {name} continues from {point['run']}'s checkpoint at iteration {point['iteration']} (the same Stage I; "
             f"{BRANCHED_FROM} in its run folder)")
    return True


def pending_point(plan: Any, name: str) -> tuple[str, int] | None:
    """For ``status``: (source run, iteration) where a run that has not started will likely continue from
    a kept branch point (``start_from_point`` makes the final check), else None."""
    arm, _, seed = name.partition("-seed")
    src = plan.out / f"{BRANCHES.get(arm, '')}-seed{seed}" / BRANCH_DIR / "branch.json"
    if arm not in BRANCHES or not src.exists():
        return None
    point = json.loads(src.read_text())
    return point["run"], point["iteration"]


def drop_point(plan: Any, name: str) -> None:
    """After ``name`` (an arm that branches) finished: the branch point it used is no longer needed."""
    arm, seed = name.split("-seed")
    if arm in BRANCHES and not plan.keep_checkpoints:
        src = plan.out / f"{BRANCHES[arm]}-seed{seed}" / BRANCH_DIR
        if src.exists() and all((plan.results / f"{a}-seed{seed}.json").exists() for a, s in BRANCHES.items() if s == BRANCHES[arm] and a in plan.arms):
            shutil.rmtree(src)
            log.info(f"    removed {src}")
