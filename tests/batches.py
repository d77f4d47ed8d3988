"""Hand-built rollout batches from the real tokenizer (for learner tests without a generator)."""

from __future__ import annotations

import json

import pyarrow as pa
import torch

from actors.batch import ROLLOUT_SCHEMA, with_attempt
from actors.prompts import ChatFormatter
from rewards.tasks.base import MATH_INSTRUCTION


def build_batch(model_path: str, problems: list[tuple[str, list[tuple]]], version: int = 0, device: str = "cpu") -> pa.Table:
    """``problems``: ``(question, [(attempt1_text, r1, attempt2_text, r2, ...), ...])`` with k entries each; every
    entry has the same number of (text, reward) pairs, one per attempt (two, or ``algorithm.attempts``). Attempt t's
    prompt is built from attempt t-1's tokens as the generators build it.

    Sampling log-probs are the base model's own (an on-policy batch at temperature 1), computed on ``device``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    fmt = ChatFormatter(tok)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    rows = []
    n = len(problems[0][1][0]) // 2
    for p, (question, samples) in enumerate(problems):
        messages = [{"role": "user", "content": question}]
        for j, sample in enumerate(samples):
            row = {"uid": f"p{p}", "problem_index": p, "sample_index": j, "generator": "hand", "a1_messages": json.dumps(messages)}
            x = fmt.first_prompt_ids(messages)
            for t, (text, reward) in enumerate(zip(sample[::2], sample[1::2]), 1):
                if t > 1:
                    x = fmt.second_prompt_ids(x, y, messages, MATH_INSTRUCTION)
                y = fmt.encode(text) + [eot]
                with torch.no_grad():
                    logits = model(torch.tensor([x + y], device=device)).logits[0, len(x) - 1 : -1].float().cpu()
                lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(y).unsqueeze(-1)).squeeze(-1).tolist()
                row.update({f"a{t}_prompt_ids": x, f"a{t}_response_ids": y, f"a{t}_logprobs": lp, f"a{t}_finish_reason": "stop",
                            f"a{t}_length": len(y), f"a{t}_text": text, f"a{t}_version": version, f"r{t}": reward})
            rows.append(row)
    schema = ROLLOUT_SCHEMA
    for t in range(3, n + 1):
        schema = with_attempt(schema, t)
    for t in range(1, n + 1):
        schema = schema.append(pa.field(f"r{t}", pa.float32()))
    return pa.Table.from_pylist(rows, schema=schema)


ONE_REWARDED = [
    ("Tom has 3 apples and buys 4 more apples. How many apples does Tom have now?",
     [("Tom has 7 apples.", 1.0, "Tom has 7 apples.", 1.0), ("Tom has 8 apples.", 0.0, "Tom has 9 apples.", 0.0)]),
    ("Anna has 5 books and loses 2 books. How many books does Anna have now?",
     [("Anna has 4 books.", 0.0, "Anna has 3 books.", 1.0), ("Anna has 6 books.", 0.0, "Anna has 6 books.", 0.0)]),
]


# Attempt 2 never repeats attempt 1's text, so a step on attempt 2 moves attempt 1's log-probs little: what
# moves them is attempt 1's own policy gradient (or, for base-written first attempts, nothing).
DISTINCT_ATTEMPTS = [
    ("Tom has 3 apples and buys 4 more apples. How many apples does Tom have now?",
     [("Tom has 7 apples.", 1.0, "Seven.", 1.0), ("Tom has 8 apples.", 0.0, "Nine.", 0.0)]),
    ("Anna has 5 books and loses 2 books. How many books does Anna have now?",
     [("Anna has 3 books.", 1.0, "Three.", 1.0), ("Anna has 6 books.", 0.0, "Six.", 0.0)]),
]


# Two problems whose responses differ about fourfold in length: on two ranks (one problem each) the ranks'
# action-token counts are unequal, so a per-rank token mean would weigh their tokens differently.
UNEQUAL = [
    ("Tom has 3 apples and buys 4 more apples. How many apples does Tom have now?",
     [("7", 1.0, "7", 1.0), ("8", 0.0, "9", 0.0)]),
    ("Anna has 5 books and loses 2 books. How many books does Anna have now?",
     [("Anna starts with 5 books. She loses 2 of them, so she has 5 - 2 = 4 books left. The answer is 4 books.", 0.0,
       "Let me check again. Anna starts with 5 books and loses 2 books, so 5 - 2 = 3. Anna has 3 books now.", 1.0),
      ("Anna starts with 5 books. Losing 2 books leaves her with 5 + 2 = 7 books, so Anna has 7 books now.", 0.0,
       "Checking the work: 5 + 2 = 7 books. I believe the answer is right, so Anna has 7 books now in total.", 0.0)]),
]


# Three attempts (algorithm.attempts=3), every one a distinct text: attempt 2's reward favours the first sibling of
# each problem, attempt 3's the second, so a step that trains each attempt on its own reward moves them apart.
THREE_ATTEMPTS = [
    ("Tom has 3 apples and buys 4 more apples. How many apples does Tom have now?",
     [("Tom has 7 apples.", 0.0, "Seven.", 1.0, "It is 7.", 0.0), ("Tom has 8 apples.", 0.0, "Nine.", 0.0, "It is 8.", 1.0)]),
    ("Anna has 5 books and loses 2 books. How many books does Anna have now?",
     [("Anna has 3 books.", 0.0, "Three.", 1.0, "It is 3.", 0.0), ("Anna has 6 books.", 0.0, "Six.", 0.0, "It is 6.", 1.0)]),
]
