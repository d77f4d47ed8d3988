"""First attempts written by the frozen base model, for Stage II's offline prompts.

The paper (Section 5.3) names, as an option against collapse, Stage II first attempts sampled from
the base model instead of the current policy: attempt 2 then keeps learning to correct the kind of
mistakes the base model makes, however good (or drifted) the policy's own first attempts become.
``algorithm.stage2_base_first_attempts: p`` gives that share of each Stage II batch's problems
base-written first attempts; the current policy writes attempt 2 on them as on every row.

Where they come from: a cache filled once, before the first update, while the generators still hold
the base weights (version 0). The problems are known in advance, because the draw of every
iteration is a seeded permutation (:meth:`cluster.trainer.ScoreTrainer.draw`): the first
``round(p * P)`` problems of each Stage II iteration's first sampling round are the base ones. No
generator is kept on old weights and no weights are swapped back and forth; the cost is the
generation of those first attempts, moved from each Stage II iteration to the start (``bench
iteration`` measures it).

Invariants: the cache file is written whole (beside it, then renamed) before any update, so a run
that has a checkpoint has its cache, and ``--resume`` reads the very attempts the run trained on;
a cache whose plan (iterations and problems) is not the run's is refused, never silently reused.
Rows of the cache carry the base model's version 0 in ``a1_version``; in the learner's batch they
are marked by ``a1_base`` (:data:`actors.batch.A1_BASE`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors.batch import ATTEMPT1_SCHEMA
from cluster.config import ConfigError

log = logging.getLogger(__name__)
FILE = "base_first_attempts.parquet"


def base_share(p: float, problems_per_iteration: int) -> int:
    """How many of an iteration's problems get base first attempts."""
    return round(p * problems_per_iteration)


class BaseFirstAttempts:
    """Owns the cache of base-model first attempts: which Stage II problems get them, and the attempts."""

    def __init__(self, run_dir: Path, plan: dict[int, list[str]]):
        """``plan``: Stage II iteration (0-based) -> the uids of its base problems, in draw order."""
        self.path = run_dir / FILE
        self.plan = plan
        self.table: pa.Table | None = None
        self.seconds = 0.0  # spent filling the cache (0 when it was read)

    @property
    def ready(self) -> bool:
        return self.table is not None

    def load(self) -> bool:
        """Read the cache if the run has one; refuse one written for another plan."""
        if not self.path.exists():
            return False
        table = pq.read_table(self.path)
        stored = {}
        for it, uid, j in zip(table["iteration"].to_pylist(), table["uid"].to_pylist(), table["sample_index"].to_pylist()):
            if j == 0:
                stored.setdefault(it, []).append(uid)
        if stored != {it: uids for it, uids in self.plan.items() if uids}:
            raise ConfigError(f"{self.path} holds base first attempts for other iterations or problems than this run draws "
                              "(algorithm.stage2_base_first_attempts, the batch or the seed changed): delete it to refill it, "
                              "before the run's first update")
        self.table = table
        return True

    def fill(self, fleet, first_turn, problems_by_uid: dict[str, Any], k: int, sampling: dict[str, Any]) -> None:
        """Sample k first attempts per planned problem with the fleet's current (base) weights, then write the cache."""
        if fleet.version != 0:
            raise ConfigError(f"base first attempts must be sampled before the first update, but the generators hold weight "
                              f"version {fleet.version} and {self.path} is missing (was it deleted?)")
        entries = [(it, uid) for it, uids in sorted(self.plan.items()) for uid in uids]
        items = [{"uid": uid, "problem_index": i, "messages": first_turn(problems_by_uid[uid])} for i, (_, uid) in enumerate(entries)]
        t0 = time.monotonic()
        log.info(f"sampling {len(items)} x {k} base-model first attempts for Stage II (algorithm.stage2_base_first_attempts)")
        first = fleet.first_attempts(items, k, sampling)
        self.seconds = time.monotonic() - t0
        iteration = [entries[i][0] for i in first["problem_index"].to_pylist()]
        table = first.append_column("iteration", pa.array(iteration, pa.int32()))
        tmp = self.path.with_name(self.path.name + ".partial")
        pq.write_table(table, tmp)
        os.replace(tmp, self.path)
        self.table = table

    def rows(self, iteration: int) -> pa.Table:
        """The cached first attempts of one iteration's base problems (k rows each, in plan order), as attempt-1 rows."""
        if self.table is None:
            raise RuntimeError("the base first attempts were neither loaded nor filled")
        mask = pc.equal(self.table["iteration"], iteration)
        return self.table.filter(mask).select(ATTEMPT1_SCHEMA.names)
