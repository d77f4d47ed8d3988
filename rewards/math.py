"""Math grading: is the final answer of a response equivalent to the gold answer?

The final answer is the last ``\\boxed{...}``, else the task's answer pattern (``#### 42`` or
"The answer is 42"), else the last number (``rewards.extract.final_answer``). Equivalence is
math-verify's (fractions, LaTeX, intervals, units, percentages). math-verify guards sympy with
``signal.alarm``, which works only in a main thread: there we keep its timeouts; elsewhere we
turn them off and bound the work instead by capping the answer's length.
"""

from __future__ import annotations

import logging
import threading

from math_verify import parse, verify

from rewards.extract import final_answer, numbers

# math-verify warns on every call made with its signal timeouts off (off the main thread).
logging.getLogger("math_verify").setLevel(logging.ERROR)

MAX_ANSWER_CHARS = 256
TIMEOUT_S = 5


def _timeout() -> int | None:
    """math-verify's signal timeout where signals work (the main thread), else none."""
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse_answer(answer: str, parsing_timeout: int | None):
    return parse(f"\\boxed{{{answer}}}", parsing_timeout=parsing_timeout, raise_on_error=False)


def grade(response: str, gold: str) -> float:
    """1.0 when the final answer in ``response`` is equivalent to ``gold``, else 0.0. Never raises."""
    try:
        if not isinstance(response, str) or not isinstance(gold, str):
            return 0.0
        answer = final_answer(response)
        if not answer or len(answer) > MAX_ANSWER_CHARS:
            return 0.0
        timeout = _timeout()
        gold_parsed = _parse_answer(gold.strip(), timeout)
        if not gold_parsed:
            return 0.0
        candidates = [answer]
        found = numbers(answer)
        if len(found) == 1 and found[0] != answer:  # "14 stickers" -> "14"; never pick among several
            candidates.append(found[0])
        for candidate in candidates:
            pred_parsed = _parse_answer(candidate, timeout)
            if pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=timeout, raise_on_error=False):
                return 1.0
        return 0.0
    except BaseException as err:  # noqa: BLE001 - a grader must never end a training run
        if isinstance(err, KeyboardInterrupt):
            raise
        return 0.0
