"""The paper's self-correction metrics, and evaluating a model's attempts on held-out problems.

Accuracy@t1 and Accuracy@t2 are the fractions right at each attempt; Δ(t1,t2) is their
difference; Δ_i→c is the fraction of problems wrong at attempt 1 and right at attempt 2, and
Δ_c→i the fraction right at attempt 1 and wrong at attempt 2 (so Δ = Δ_i→c − Δ_c→i).

The collapse diagnostic of the paper's Figure 5b: ``answer_changed`` is the fraction of problems
whose attempt 2 gives a different final answer from attempt 1 (a model that collapsed to
repeating itself drives it towards 0), ``text_identical`` the fraction whose attempt-2 text is
attempt 1's verbatim. With ``attempts`` N > 2 the self-correction instruction is repeated after
every attempt (the paper's Figure 8) and Accuracy@t3 … Accuracy@tN are added.

Correction on fixed first attempts (the paper's diagnostic of distribution shift, Figure 5 of its ICLR
version): given first attempts saved by an earlier evaluation (:func:`load_first_attempts`), the model
under test writes only the attempts after the first, so models are compared on the same mistakes,
apart from how good their own first attempts are. ``fix_rate`` is the share of wrong first attempts
made right, ``break_rate`` the share of right ones made wrong (:func:`correction_rates`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from actors.batch import ATTEMPT1_SCHEMA, check_complete
from rewards.extract import extract_program, final_answer

METRICS = ("accuracy_t1", "accuracy_t2", "delta_t1_t2", "delta_i_to_c", "delta_c_to_i")
LABELS = {"accuracy_t1": "Accuracy@t1", "accuracy_t2": "Accuracy@t2", "delta_t1_t2": "Δ(t1,t2)",
          "delta_i_to_c": "Δ_i→c", "delta_c_to_i": "Δ_c→i"}


def metric_array(right1: np.ndarray, right2: np.ndarray) -> np.ndarray:
    """The five ``METRICS`` over the last axis (problems) of two boolean arrays (attempt right or not);
    leading axes (seeds, bootstrap draws) are kept."""
    right1, right2 = np.asarray(right1, dtype=bool), np.asarray(right2, dtype=bool)
    acc1, acc2 = right1.mean(-1), right2.mean(-1)
    return np.stack([acc1, acc2, acc2 - acc1, (~right1 & right2).mean(-1), (right1 & ~right2).mean(-1)], -1)


def self_correction_metrics(r1: Sequence[float], r2: Sequence[float]) -> dict[str, float]:
    """The five metrics from per-problem rewards of attempt 1 and attempt 2 (1 = right)."""
    if len(r1) != len(r2) or not r1:
        raise ValueError("need the same, non-zero number of attempt-1 and attempt-2 rewards")
    values = metric_array(np.asarray(r1) >= 0.5, np.asarray(r2) >= 0.5)
    return {**dict(zip(METRICS, map(float, values))), "num_problems": len(r1)}


def final_answer_of(grader: str, text: str) -> str:
    """What a response answers, for comparing two attempts: the extracted final answer (math) or program (code)."""
    found = final_answer(text) if grader == "math" else extract_program(text)
    return (found or "").strip()


def collapse_metrics(grader: str, a1_texts: Sequence[str], a2_texts: Sequence[str]) -> dict[str, float]:
    """``answer_changed`` and ``text_identical`` over paired attempt-1 and attempt-2 responses."""
    n = max(1, len(a1_texts))
    changed = sum(final_answer_of(grader, a) != final_answer_of(grader, b) for a, b in zip(a1_texts, a2_texts))
    identical = sum(a.strip() == b.strip() for a, b in zip(a1_texts, a2_texts))
    return {"answer_changed": changed / n, "text_identical": identical / n}


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (centre - half, centre + half)


def correction_rates(r1: Sequence[float], r2: Sequence[float]) -> dict[str, Any]:
    """``fix_rate`` (right at attempt 2 among the wrong first attempts) and ``break_rate`` (wrong at attempt 2
    among the right ones), each with its 95% Wilson interval and its denominator (``wrong_first_attempts``,
    ``right_first_attempts``); a rate with an empty denominator is None."""
    right1, right2 = np.asarray(r1) >= 0.5, np.asarray(r2) >= 0.5
    out: dict[str, Any] = {}
    for name, of, among, event in (("fix_rate", "wrong", ~right1, right2), ("break_rate", "right", right1, ~right2)):
        n = int(among.sum())
        rate = float((among & event).sum() / n) if n else None
        out.update({name: rate, f"{name}_ci": list(wilson_interval(rate, n)) if n else None, f"{of}_first_attempts": n})
    return out


def load_first_attempts(path: str | Path, task, formatter) -> tuple[list, pa.Table]:
    """The problems and first attempts of an evaluation's saved samples (``samples/eval_*.parquet`` of a run,
    ``samples.parquet`` of ``eval``), in the file's order and renumbered 0..n-1 as :func:`evaluate` takes them.

    Refused, in one line each: a file that is not such a table, one that holds more than one sample of a
    problem, problems the task does not have, and first attempts tokenized otherwise than ``formatter``
    (the model under test's chat template) tokenizes them, since attempt 2's prompt is built from their ids.
    """
    import json

    import pyarrow.parquet as pq

    from cluster.config import ConfigError

    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise ConfigError(f"--first-attempts {path}: not a readable parquet file ({err})") from None
    missing = [name for name in ATTEMPT1_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ConfigError(f"--first-attempts {path} has no column {missing[0]}: it must be the samples of an evaluation "
                          "(a run's samples/eval_*.parquet or eval's samples.parquet)")
    uids = table["uid"].to_pylist()
    if len(set(uids)) != len(uids):
        raise ConfigError(f"--first-attempts {path} holds several samples of a problem: one first attempt per problem "
                          "(an evaluation's samples) is what it takes")
    known = {p.uid: p for split in ("train", "val", "eval") for p in task.problems(split)}
    unknown = [u for u in uids if u not in known]
    if unknown:
        raise ConfigError(f"--first-attempts {path}: problem {unknown[0]} is not one of task '{task.name}' "
                          "(evaluate with the task config the file was written with)")
    for messages, prompt_ids in zip(table["a1_messages"].to_pylist(), table["a1_prompt_ids"].to_pylist()):
        if formatter.first_prompt_ids(json.loads(messages)) != prompt_ids:
            raise ConfigError(f"--first-attempts {path}: its prompts were tokenized differently from the model under test's "
                              "chat template; first attempts carry over only between models with the same tokenizer and template")
    table = table.select(ATTEMPT1_SCHEMA.names).cast(ATTEMPT1_SCHEMA)
    table = table.set_column(table.schema.get_field_index("problem_index"), "problem_index",
                             pa.array(range(table.num_rows), pa.int32()))
    return [known[u] for u in uids], table


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


def format_correction(record: dict[str, Any]) -> str:
    """One line per rate: ``fix rate 3/8 = 37.5% [13.7%, 69.4%]`` (or ``no wrong first attempts``)."""
    lines = []
    for name, among in (("fix_rate", "wrong"), ("break_rate", "right")):
        n, rate = record[f"{among}_first_attempts"], record[name]
        if rate is None:
            lines.append(f"{name.replace('_', ' ')}: no {among} first attempts")
        else:
            lo, hi = record[f"{name}_ci"]
            lines.append(f"{name.replace('_', ' ')}: {round(rate * n)}/{n} {among} first attempts = {100 * rate:.1f}% "
                         f"[{100 * lo:.1f}%, {100 * hi:.1f}%]")
    return "\n".join(lines)


def evaluate(fleet, pool, task, problems, *, temperature: float, max_tokens: int, attempts: int = 2,
             first: pa.Table | None = None) -> tuple[dict[str, float], Any]:
    """``attempts`` attempts, one sample each, on ``problems``; returns the metrics and the graded batch.

    The batch has the rollout columns of every attempt with rewards ``r1`` ... ``r{attempts}``; attempt t+1 is
    conditioned on attempt t's exact tokens, built as training builds it (:meth:`actors.fleet.GeneratorFleet.later_attempts`).
    ``first``: fixed first attempts (:func:`load_first_attempts`, row i for ``problems[i]``); the fleet
    then writes attempts 2 and later only, and attempt 1 keeps the version of the model that wrote it.
    """
    from rewards.pool import GradeRequest  # imports Ray: only where an evaluation runs, not for the metrics

    if attempts < 2:
        raise ValueError(f"attempts must be at least 2, got {attempts}")
    sampling = {"temperature": temperature, "max_tokens": max_tokens}
    fixed = first is not None
    if not fixed:
        items = [{"uid": p.uid, "problem_index": i, "messages": task.first_turn(p)} for i, p in enumerate(problems)]
        first = fleet.first_attempts(items, 1, sampling)
    elif first.num_rows != len(problems):
        raise ValueError(f"{first.num_rows} first attempts for {len(problems)} problems")
    batch = fleet.second_attempts(first, task.instruction, sampling)
    for t in range(3, attempts + 1):  # the same prompt builder as training's later attempts
        batch = fleet.later_attempts(batch, t, task.instruction, sampling)
    check_complete(batch.drop_columns(["a1_version"]) if fixed else batch, len(problems), 1, fleet.version)
    golds = [problems[i].gold for i in batch["problem_index"].to_pylist()]
    texts = [batch[f"a{t}_text"].to_pylist() for t in range(1, attempts + 1)]
    rewards = [[g.reward for g in pool.grade([GradeRequest(task.grader, t, gold) for t, gold in zip(ts, golds)])] for ts in texts]
    for t, rs in enumerate(rewards, 1):
        batch = batch.append_column(f"r{t}", pa.array(rs, pa.float32()))
    metrics = self_correction_metrics(rewards[0], rewards[1])
    metrics.update(collapse_metrics(task.grader, texts[0], texts[1]))
    for t, rs in enumerate(rewards[2:], 3):
        metrics[f"accuracy_t{t}"] = sum(r >= 0.5 for r in rs) / len(rs)
    return metrics, batch
