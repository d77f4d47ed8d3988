"""The rollout batch: one pyarrow row per sample, with every attempt's tokens and log-probs.

Columns per attempt (prefix ``a1_``, ``a2_``, ... ``aN_``, ``algorithm.attempts``): ``prompt_ids`` and
``response_ids`` (exact token ids; for attempt t >= 2 the prompt already contains attempt t-1's prompt
and response and the instruction, so the conversation so far), ``logprobs`` (the
sampling log-prob of each response token), ``finish_reason``, ``length``, ``text`` and
``version`` (the weight version that produced it). Shared columns: ``uid``, ``problem_index``,
``sample_index`` and ``generator``. Rows of one problem are contiguous (problem-major), which is
what the learner's leave-one-out baseline expects.

The trainer adds the graded rewards ``r1`` ... ``rN`` and ``a1_base`` (:data:`A1_BASE`): true where
attempt 1 was written by the frozen base model (``algorithm.stage2_base_first_attempts``), whose
tokens are then context for attempt 2, not the policy's actions; a batch without the column has
none. A problem's k rows are all base rows or none.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

A1_BASE = "a1_base"

ATTEMPT_FIELDS = [
    ("prompt_ids", pa.list_(pa.int32())),
    ("response_ids", pa.list_(pa.int32())),
    ("logprobs", pa.list_(pa.float32())),
    ("finish_reason", pa.string()),
    ("length", pa.int32()),
    ("text", pa.string()),
    ("version", pa.int64()),
]
KEY_FIELDS = [
    ("uid", pa.string()),
    ("problem_index", pa.int32()),
    ("sample_index", pa.int32()),
    ("generator", pa.string()),
]


def attempt_schema(prefix: str) -> list[tuple[str, pa.DataType]]:
    return [(f"{prefix}_{name}", typ) for name, typ in ATTEMPT_FIELDS]


ATTEMPT1_SCHEMA = pa.schema(KEY_FIELDS + [("a1_messages", pa.string())] + attempt_schema("a1"))
ROLLOUT_SCHEMA = pa.schema(list(ATTEMPT1_SCHEMA) + [pa.field(n, t) for n, t in attempt_schema("a2")])


def with_attempt(schema: pa.Schema, attempt: int) -> pa.Schema:
    """``schema`` with attempt ``attempt``'s columns added (a batch of attempts 1..attempt-1 becomes one of 1..attempt)."""
    return pa.schema([f for f in schema if not f.name.startswith(f"a{attempt}_")] + [pa.field(n, t) for n, t in attempt_schema(f"a{attempt}")])


def num_attempts(table: pa.Table) -> int:
    """How many attempts a batch holds: its ``a1_`` ... ``aN_`` columns."""
    n = 1
    while f"a{n + 1}_response_ids" in table.column_names:
        n += 1
    return n


def from_rows(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def sort_problem_major(table: pa.Table) -> pa.Table:
    return table.sort_by([("problem_index", "ascending"), ("sample_index", "ascending")])


def check_complete(table: pa.Table, num_problems: int, k: int, version: int | None = None) -> None:
    """Raise if the batch is short, duplicated, or mixes weight versions."""
    expected = num_problems * k
    if table.num_rows != expected:
        raise RuntimeError(f"rollout batch has {table.num_rows} rows, expected {expected} ({num_problems} problems x {k})")
    keys = set(zip(table["problem_index"].to_pylist(), table["sample_index"].to_pylist()))
    if len(keys) != expected:
        raise RuntimeError("rollout batch has duplicated or missing (problem, sample) pairs")
    for col in (c for c in table.column_names if c.startswith("a") and c.endswith("_version")):  # a1_version ... aN_version
        versions = set(table[col].to_pylist())
        if len(versions) != 1 or (version is not None and versions != {version}):
            raise RuntimeError(f"rollout batch mixes or misses weight versions: {col}={sorted(versions)}, expected {version}")
