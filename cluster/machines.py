"""Which machines a run computed on, and the number format it computed in.

A run that is stopped may be continued on another machine, and an experiment's runs may come from
several. The number format is what changes results: ``model.dtype: auto`` is bfloat16 on a CPU with
native bf16 and float32 on one without (``common.devices``), so a checkpoint written in bfloat16 and
continued in float32 would mix both in one run without a word. ``check_resume`` refuses that in one line.

Invariants:
- ``<run>/machines.jsonl`` gets one line per start of a training run (fresh or ``--resume``), before its
  first iteration: the iteration it starts from and ``common.devices.machine_record`` with the resolved
  dtype. A start drops the lines of starts at or after its own iteration, whose work it redoes (as
  ``RunLog.truncate_after`` drops their metrics): the file names the machines that computed what the run kept.
- Every checkpoint manifest written since this module exists carries the dtype it was trained in; a
  manifest without one (older checkpoints) is not checked.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cluster.config import ConfigError
from common.jsonl import read_jsonl, write_jsonl

MACHINES = "machines.jsonl"


def note_start(run_dir: Path, iteration: int, dtype: str) -> dict[str, Any]:
    """Add this machine to ``<run_dir>/machines.jsonl``: the run (re)starts here at ``iteration``."""
    from common.devices import machine_record  # imports torch; the experiment's report and status need none

    entry = {"iteration": iteration, "time": time.time(), **machine_record(dtype)}
    path = run_dir / MACHINES
    write_jsonl(path, [*(m for m in read_jsonl(path) if m["iteration"] < iteration), entry])
    return entry


def machines(run_dir: Path) -> list[dict[str, Any]]:
    """The machines a run computed on, in the order it started on them ([] for a run before this module)."""
    return read_jsonl(run_dir / MACHINES)


def check_resume(checkpoint: str, trained_in: str | None, dtype: str, why: str) -> None:
    """Refuse to continue ``checkpoint`` (trained in ``trained_in``) in another number format. ``why``:
    the line saying how ``dtype`` was chosen here (``common.devices.dtype_choice``)."""
    if trained_in is None or trained_in == dtype:
        return
    raise ConfigError(f"--resume: {checkpoint} was trained in {trained_in}, but here {why}; continuing would change the number format "
                      f"mid-run. Continue on a machine that computes {trained_in} natively, or pass --set model.dtype={trained_in} "
                      f"to continue here anyway")
