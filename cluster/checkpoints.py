"""Checkpoint folders of a run: atomic writes, detection of partial or corrupt ones, pruning.

A checkpoint is ``<run>/checkpoints/iter_NNNNNN/``: the learner's DeepSpeed state plus
``score_checkpoint.json`` (stage, iteration, weight version, the run's metric history length).
It is written under ``iter_NNNNNN.partial`` and renamed only when complete, so a crash mid-write
leaves a ``.partial`` folder that is never loaded. A folder whose manifest is missing or
unreadable, or whose DeepSpeed files are gone, is reported and skipped. ``checkpoints/best/`` holds
the checkpoint that ``checkpoint.select=best_train_reward`` chose so far, written the same way.
Pruning keeps the newest ``keep`` checkpoints and those at ``keep_iterations``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "score_checkpoint.json"
BEST = "best"  # the checkpoint chosen by checkpoint.select=best_train_reward; never pruned


@dataclass
class Checkpoint:
    path: Path
    manifest: dict[str, Any]

    @property
    def iteration(self) -> int:
        return int(self.manifest["iteration"])


class CheckpointStore:
    """Owns ``<run>/checkpoints``: writing, listing, validating and pruning checkpoints."""

    def __init__(self, run_dir: Path, keep: int = 2, keep_iterations: tuple[int, ...] | list[int] = ()):
        self.root = run_dir / "checkpoints"
        self.keep = keep
        self.keep_iterations = set(keep_iterations)  # never pruned
        self.root.mkdir(parents=True, exist_ok=True)

    def begin(self, iteration: int | None = None) -> Path:
        """A fresh ``.partial`` folder for the checkpoint of ``iteration``, or for the best one (``None``)."""
        tmp = self.root / (f"iter_{iteration:06d}.partial" if iteration is not None else f"{BEST}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        return tmp

    def commit(self, tmp: Path, manifest: dict[str, Any]) -> Path:
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        final = tmp.with_name(tmp.name.removesuffix(".partial"))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        self.prune()
        return final

    def best(self) -> Checkpoint | None:
        """The kept best checkpoint (``begin(None)`` ... ``commit``), if one is complete."""
        try:
            return Checkpoint(self.root / BEST, json.loads((self.root / BEST / MANIFEST).read_text()))
        except (OSError, ValueError):
            return None

    def valid(self) -> tuple[list[Checkpoint], list[str]]:
        """Complete checkpoints, oldest first, and one message per skipped folder."""
        good, problems = [], []
        for path in sorted(self.root.glob("iter_*")):
            if path.name.endswith(".partial"):
                problems.append(f"{path.name}: partial (interrupted while writing), skipped")
                continue
            try:
                manifest = json.loads((path / MANIFEST).read_text())
                int(manifest["iteration"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                problems.append(f"{path.name}: unreadable manifest ({type(err).__name__}), skipped")
                continue
            if not (path / "state").is_dir() or not any((path / "state").iterdir()):
                problems.append(f"{path.name}: learner state missing, skipped")
                continue
            good.append(Checkpoint(path, manifest))
        return sorted(good, key=lambda c: c.iteration), problems

    def latest(self) -> tuple[Checkpoint | None, list[str]]:
        good, problems = self.valid()
        return (good[-1] if good else None), problems

    def prune(self) -> None:
        good, _ = self.valid()
        for old in good[: -self.keep]:
            if old.iteration not in self.keep_iterations:
                shutil.rmtree(old.path, ignore_errors=True)
        for partial in self.root.glob("iter_*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
