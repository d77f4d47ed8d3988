"""From a rollout batch (pyarrow) to the learner's tensors, without re-tokenising anything.

For each attempt a sequence is ``prompt_ids + response_ids``; the model predicts token ``i`` from
positions ``< i``, so per-token tensors have one fewer column than the inputs. The action mask is
1.0 exactly on response tokens: for attempt t >= 2 the prompt already holds every earlier attempt
and the instructions, which are context and carry no loss. Attempt 1 of a row the base model wrote
(``a1_base``, :data:`actors.batch.A1_BASE`) is context too: its mask is 0 at every position.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch

from actors.batch import A1_BASE, num_attempts


@dataclass
class AttemptInputs:
    """Padded inputs of one attempt for ``N`` sequences: ``input_ids``/``attention_mask`` are
    ``[N, L]``; ``targets``/``action_mask``/``old_logp`` are ``[N, L-1]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    action_mask: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor | None = None  # when a separate reference group scored the batch

    @property
    def num_action_tokens(self) -> int:
        return int(self.action_mask.sum())

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def base_rows(table: pa.Table) -> list[bool]:
    """Per row: was attempt 1 written by the base model (context, not the policy's action)?"""
    return table[A1_BASE].to_pylist() if A1_BASE in table.column_names else [False] * table.num_rows


def attempt_inputs(table: pa.Table, prefix: str, pad_id: int = 0) -> AttemptInputs:
    context = base_rows(table) if prefix == "a1" else [False] * table.num_rows
    prompts = table[f"{prefix}_prompt_ids"].to_pylist()
    responses = table[f"{prefix}_response_ids"].to_pylist()
    logprobs = table[f"{prefix}_logprobs"].to_pylist()
    refs = table[f"{prefix}_ref_logprobs"].to_pylist() if f"{prefix}_ref_logprobs" in table.column_names else None
    n = len(prompts)
    length = max(len(p) + len(r) for p, r in zip(prompts, responses))
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    action = torch.zeros((n, length - 1), dtype=torch.float32)
    old = torch.zeros((n, length - 1), dtype=torch.float32)
    ref = torch.zeros((n, length - 1), dtype=torch.float32) if refs is not None else None
    for i, (p, r, lp) in enumerate(zip(prompts, responses, logprobs)):
        seq = p + r
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[i, : len(seq)] = 1
        # response token j sits at input position len(p)+j and is predicted at target column len(p)+j-1
        start = len(p) - 1
        action[i, start : start + len(r)] = 0.0 if context[i] else 1.0
        old[i, start : start + len(r)] = torch.tensor(lp, dtype=torch.float32)
        if ref is not None:
            ref[i, start : start + len(r)] = torch.tensor(refs[i], dtype=torch.float32)
    return AttemptInputs(input_ids, attention, input_ids[:, 1:].clone(), action, old, ref)


def rewards(table: pa.Table, column: str) -> torch.Tensor:
    return torch.tensor(table[column].to_pylist(), dtype=torch.float32)


def num_micro_batches(num_rows: int, rows_per_micro: int) -> int:
    """How many micro-batches of at most ``rows_per_micro`` rows a batch of ``num_rows`` takes."""
    if rows_per_micro < 1:
        raise ValueError(f"rows_per_micro must be at least 1, got {rows_per_micro}")
    return -(-num_rows // rows_per_micro)


def length_sorted_micro_batches(lengths: list[int], rows_per_micro: int) -> list[list[int]]:
    """Row indices in micro-batches of similar length: rows sorted by length (longest first), then cut
    into ``num_micro_batches`` consecutive chunks, so each micro-batch pads little to its longest row.

    Advantages are computed over the whole batch before it is cut (problem groups need not stay
    together), so any order is allowed.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s : s + rows_per_micro] for s in range(0, len(order), rows_per_micro)]


def padded_fraction(lengths: list[int], micros: list[list[int]]) -> float:
    """The share of computed positions that are padding when each micro-batch pads to its longest row."""
    computed = sum(len(m) * max(lengths[i] for i in m) for m in micros)
    return 1.0 - sum(lengths) / computed if computed else 0.0


def attempt_prefixes(table: pa.Table) -> list[str]:
    """``["a1", ..., "aN"]``: the attempts a rollout batch holds (``algorithm.attempts``)."""
    return [f"a{t}" for t in range(1, num_attempts(table) + 1)]


@dataclass
class JointInputs:
    """Every attempt in one sequence per row: the last attempt's ``x_N + y_N`` starts with every earlier
    attempt's ``x_t + y_t``.

    One forward pass then gives the log-probs of each attempt at its ``y_t`` positions; ``inputs`` is
    the last attempt's layout, and ``masks``/``old_logps``/``ref_logps`` hold each attempt's, in order
    (the last ones are ``inputs``' own).
    """

    inputs: AttemptInputs
    masks: list[torch.Tensor]
    old_logps: list[torch.Tensor]
    ref_logps: list[torch.Tensor] | None = None


def joint_inputs(table: pa.Table, pad_id: int = 0) -> JointInputs | None:
    """The shared-prefix layout, or None when some row's last prompt does not extend an earlier attempt's ``x + y``."""
    prefixes = attempt_prefixes(table)
    last = prefixes[-1]
    finals = table[f"{last}_prompt_ids"].to_pylist()
    earlier = [(table[f"{a}_prompt_ids"].to_pylist(), table[f"{a}_response_ids"].to_pylist()) for a in prefixes[:-1]]
    for xs, ys in earlier:
        for x, y, xn in zip(xs, ys, finals):
            if len(xn) < len(x) + len(y) or xn[: len(x) + len(y)] != x + y:
                return None
    inputs = attempt_inputs(table, last, pad_id)
    has_ref = all(f"{a}_ref_logprobs" in table.column_names for a in prefixes)
    masks, olds, refs = [], [], [] if has_ref else None
    for t, (a, (xs, ys)) in enumerate(zip(prefixes, earlier)):
        context = base_rows(table) if t == 0 else [False] * table.num_rows
        mask, old = torch.zeros_like(inputs.action_mask), torch.zeros_like(inputs.old_logp)
        ref = torch.zeros_like(inputs.old_logp) if has_ref else None
        lps = table[f"{a}_logprobs"].to_pylist()
        ref_rows = table[f"{a}_ref_logprobs"].to_pylist() if has_ref else None
        for i, (x, y, lp) in enumerate(zip(xs, ys, lps)):
            start = len(x) - 1
            mask[i, start : start + len(y)] = 0.0 if context[i] else 1.0
            old[i, start : start + len(y)] = torch.tensor(lp, dtype=torch.float32)
            if ref is not None:
                ref[i, start : start + len(y)] = torch.tensor(ref_rows[i], dtype=torch.float32)
        masks.append(mask)
        olds.append(old)
        if refs is not None:
            refs.append(ref)
    masks.append(inputs.action_mask)
    olds.append(inputs.old_logp)
    if refs is not None:
        refs.append(inputs.ref_logp)
    return JointInputs(inputs, masks, olds, refs)


def response_values(values: torch.Tensor, prompt_len: int, response_len: int) -> list[float]:
    """The per-target values of one row's response tokens (the inverse of the layout above)."""
    start = prompt_len - 1
    return values[start : start + response_len].tolist()
