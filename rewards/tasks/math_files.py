"""Math word-problem tasks read from files: GSM8K and MATH (JSONL or Parquet, or hub names)."""

from __future__ import annotations

from typing import Any

from rewards.extract import gsm8k_answer, last_boxed
from rewards.tasks.base import MATH_INSTRUCTION, FileTask, Problem, TaskDataError, require_str


class FileMathTask(FileTask):
    """Math problems from a train file and an eval file; each row is parsed by :meth:`parse_row`."""

    grader = "math"
    default_instruction = MATH_INSTRUCTION
    answer_format = "Give the final answer on the last line as 'The answer is N.'"

    def question_text(self, text: str) -> str:
        return f"{text.strip()}\n{self.answer_format}"


class GSM8KTask(FileMathTask):
    """GSM8K: rows with ``question`` and ``answer`` (a worked solution ending in ``#### N``)."""

    name = "gsm8k"

    def parse_row(self, row: dict[str, Any], uid: str) -> Problem:
        question = require_str(row, "question")
        gold = gsm8k_answer(require_str(row, "answer"))
        if not gold:
            raise TaskDataError("field 'answer' has no '#### <answer>' line")
        return Problem(uid=f"gsm8k-{uid}", question=self.question_text(question), gold=gold)


class MATHTask(FileMathTask):
    """MATH (Hendrycks et al.): rows with ``problem`` and ``answer``, or a ``solution`` with ``\\boxed{}``."""

    name = "math"
    answer_format = "Put the final answer in \\boxed{}."

    def parse_row(self, row: dict[str, Any], uid: str) -> Problem:
        problem = require_str(row, "problem")
        if isinstance(row.get("answer"), str) and row["answer"].strip():
            gold = row["answer"].strip()
        else:
            gold = last_boxed(require_str(row, "solution"))
            if not gold:
                raise TaskDataError("row has no 'answer' and its 'solution' has no \\boxed{}")
        return Problem(uid=f"math-{uid}", question=self.question_text(problem), gold=gold)
