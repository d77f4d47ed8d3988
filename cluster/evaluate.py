"""The paper's self-correction metrics, and evaluating a model's two attempts on held-out problems.

Accuracy@t1 and Accuracy@t2 are the fractions right at each attempt; Δ(t1,t2) is their
difference; Δ_i→c is the fraction of problems wrong at attempt 1 and right at attempt 2, and
Δ_c→i the fraction right at attempt 1 and wrong at attempt 2 (so Δ = Δ_i→c − Δ_c→i).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

METRICS = ("accuracy_t1", "accuracy_t2", "delta_t1_t2", "delta_i_to_c", "delta_c_to_i")
LABELS = {"accuracy_t1": "Accuracy@t1", "accuracy_t2": "Accuracy@t2", "delta_t1_t2": "Δ(t1,t2)",
          "delta_i_to_c": "Δ_i→c", "delta_c_to_i": "Δ_c→i"}


def self_correction_metrics(r1: Sequence[float], r2: Sequence[float]) -> dict[str, float]:
    """The five metrics from per-problem rewards of attempt 1 and attempt 2 (1 = right)."""
    if len(r1) != len(r2) or not r1:
        raise ValueError("need the same, non-zero number of attempt-1 and attempt-2 rewards")
    n = len(r1)
    right1 = [x >= 0.5 for x in r1]
    right2 = [x >= 0.5 for x in r2]
    acc1, acc2 = sum(right1) / n, sum(right2) / n
    i2c = sum((not a) and b for a, b in zip(right1, right2)) / n
    c2i = sum(a and (not b) for a, b in zip(right1, right2)) / n
    return {"accuracy_t1": acc1, "accuracy_t2": acc2, "delta_t1_t2": acc2 - acc1, "delta_i_to_c": i2c, "delta_c_to_i": c2i, "num_problems": n}


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (centre - half, centre + half)


def format_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A plain-text table: one row per (label, metrics)."""
    head = ["", *[LABELS[m] for m in METRICS], "problems"]
    lines = [head]
    for label, m in rows:
        lines.append([label, *[f"{100 * m[k]:+.1f}%" if k.startswith("delta") else f"{100 * m[k]:.1f}%" for k in METRICS], str(m["num_problems"])])
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def evaluate(fleet, pool, task, problems, *, temperature: float, max_tokens: int) -> tuple[dict[str, float], Any]:
    """Both attempts, one sample each, on ``problems``; returns the metrics and the graded batch."""
    import pyarrow as pa

    from rewards.pool import GradeRequest

    sampling = {"temperature": temperature, "max_tokens": max_tokens}
    items = [{"uid": p.uid, "problem_index": i, "messages": task.first_turn(p)} for i, p in enumerate(problems)]
    first = fleet.first_attempts(items, 1, sampling)
    batch = fleet.second_attempts(first, task.instruction, sampling, num_problems=len(problems), k=1)
    golds = [problems[i].gold for i in batch["problem_index"].to_pylist()]
    r1 = [g.reward for g in pool.grade([GradeRequest(task.grader, t, gold) for t, gold in zip(batch["a1_text"].to_pylist(), golds)])]
    r2 = [g.reward for g in pool.grade([GradeRequest(task.grader, t, gold) for t, gold in zip(batch["a2_text"].to_pylist(), golds)])]
    batch = batch.append_column("r1", pa.array(r1, pa.float32())).append_column("r2", pa.array(r2, pa.float32()))
    return self_correction_metrics(r1, r2), batch
