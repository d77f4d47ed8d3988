"""The batch generated ahead: with ``rollout.off_policy_steps: 1`` the generators sample iteration i+1's batch
with weight version i while the learner trains on iteration i's batch (one-step off-policy, as verl's
one_step_off_policy recipe).

Invariants:
- a :class:`RolloutAhead` is the learner's batch of exactly one iteration, everything generated for it and
  what that took, as :meth:`cluster.trainer.ScoreTrainer.collect` returned it;
- it is sampled with the weights the generators held, never more than ``off_policy_steps`` versions behind
  the learner that trains on it (the trainer checks this from the batch's version columns);
- a checkpoint written while one is in flight holds it (``<checkpoint>/rollout_ahead/``), because the
  checkpoint's weights are one version newer than those that sampled it: a resumed run trains the same batch
  an uninterrupted run would have, instead of regenerating it with other weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actors.batch import A1_BASE, num_attempts

FOLDER = "rollout_ahead"


@dataclass
class RolloutAhead:
    """Owns one iteration's batch sampled before that iteration began: the learner's rows, everything generated
    (set-aside groups of dynamic sampling included) and the rollout's statistics."""

    iteration: int  # the 0-based iteration it was drawn and generated for
    batch: pa.Table
    generated: pa.Table
    stats: dict[str, Any]

    def save(self, checkpoint: Path) -> None:
        folder = checkpoint / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.batch, folder / "batch.parquet")
        pq.write_table(self.generated, folder / "generated.parquet")
        (folder / "rollout.json").write_text(json.dumps({"iteration": self.iteration, "stats": self.stats}, indent=1))

    @classmethod
    def load(cls, checkpoint: Path) -> RolloutAhead | None:
        """The batch a checkpoint holds, or None when it was written with nothing in flight."""
        folder = checkpoint / FOLDER
        if not (folder / "rollout.json").exists():
            return None
        meta = json.loads((folder / "rollout.json").read_text())
        return cls(int(meta["iteration"]), pq.read_table(folder / "batch.parquet"), pq.read_table(folder / "generated.parquet"), meta["stats"])


def sampled_version(batch: pa.Table) -> int:
    """The oldest weight version that wrote a trained token of ``batch``: every later attempt, and attempt 1 where
    the policy wrote it (rows whose attempt 1 is the base model's, ``a1_base``, keep version 0 and are context)."""
    base = batch[A1_BASE].to_pylist() if A1_BASE in batch.column_names else [False] * batch.num_rows
    versions = [v for v, b in zip(batch["a1_version"].to_pylist(), base) if not b]
    for t in range(2, num_attempts(batch) + 1):
        versions += batch[f"a{t}_version"].to_pylist()
    return min(versions)
