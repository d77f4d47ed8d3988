"""The embedded default task: seeded multi-step arithmetic word problems.

Needs no data file, so the default run works on a machine with nothing but the
package. ``difficulty`` (1-5) sets the number of steps and the size of the
numbers; the default is tuned so that the embedded 135M model is right at
attempt 1 on roughly 30-60% of problems (see docs/TASKS.md for the measurement).
Train and eval problems come from different seeds and never share a question.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from rewards.tasks.base import MATH_INSTRUCTION, LoadReport, Problem, Split, Task


@dataclass(frozen=True)
class Difficulty:
    """How hard a problem is: how many operations and how large the numbers."""

    steps: int
    max_operand: int
    subtraction: bool


DIFFICULTIES = {
    1: Difficulty(steps=1, max_operand=9, subtraction=False),
    2: Difficulty(steps=1, max_operand=9, subtraction=True),
    3: Difficulty(steps=2, max_operand=9, subtraction=True),
    4: Difficulty(steps=2, max_operand=20, subtraction=True),
    5: Difficulty(steps=3, max_operand=50, subtraction=True),
}

_NAMES = ["Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Max", "Zoe", "Leo", "Emma", "Jack", "Nora"]
_ITEMS = ["apples", "marbles", "books", "stickers", "pencils", "cookies", "coins", "cards", "shells", "toys"]
_GAIN = ["buys {n} more {item}", "finds {n} more {item}", "gets {n} more {item}"]
_LOSS = ["gives away {n} {item}", "loses {n} {item}", "sells {n} {item}"]


def make_problem(rng: random.Random, level: Difficulty) -> tuple[str, int]:
    """One word problem and its answer; intermediate totals never go negative."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    first = total = rng.randint(2, level.max_operand)
    clauses = []
    for _ in range(level.steps):
        if level.subtraction and total > 1 and rng.random() < 0.5:
            n = rng.randint(1, min(total - 1, level.max_operand))
            clauses.append(rng.choice(_LOSS).format(n=n, item=item))
            total -= n
        else:
            n = rng.randint(1, level.max_operand)
            clauses.append(rng.choice(_GAIN).format(n=n, item=item))
            total += n
    if len(clauses) == 1:  # one compound sentence reads best for the small model
        story = f"{name} has {first} {item} and {clauses[0]}."
    else:
        story = f"{name} has {first} {item}. " + " ".join(f"Then {name} {c}." for c in clauses)
    return f"{story} How many {item} does {name} have now?", total


class ArithmeticTask(Task):
    """Seeded arithmetic word problems; ``train`` and ``eval`` are disjoint."""

    name = "arithmetic"
    grader = "math"
    default_instruction = MATH_INSTRUCTION
    answer_format = "Answer with a number."
    steps_format = "Write each step as an equation, then answer with a number."

    def __init__(self, difficulty: int | list[int] = 2, train_size: int = 2000, eval_size: int = 200, seed: int = 0,
                 max_operand: int | None = None, show_steps: bool = False, **kwargs: Any):
        levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
        if not levels or any(d not in DIFFICULTIES for d in levels) or len(set(levels)) < len(levels):
            raise ValueError(f"arithmetic difficulty must be one of {sorted(DIFFICULTIES)} or a list of distinct ones, got {difficulty}")
        if max_operand is not None and max_operand < 2:
            raise ValueError(f"arithmetic max_operand must be at least 2, got {max_operand}")
        if show_steps:
            self.answer_format = self.steps_format  # before the base class appends it to the instruction
        super().__init__(**kwargs)
        self.levels = [DIFFICULTIES[d] if max_operand is None else replace(DIFFICULTIES[d], max_operand=max_operand) for d in levels]
        self.difficulty = difficulty
        self.max_operand = max_operand
        # the level's own problems keep their seed; a mix or an operand override draws a different set
        self.label = "+".join(map(str, levels)) + ("" if max_operand is None else f"-max{max_operand}")
        self.sizes = {"train": train_size, "eval": eval_size}
        self.seed = seed

    def _generate(self, split: Split, exclude: set[str]) -> list[Problem]:
        # Distinct seeds per split; eval questions are also excluded from train.
        rng = random.Random(f"arithmetic-{self.seed}-{self.label}-{split}")
        problems, seen = [], set(exclude)
        attempts = 0
        while len(problems) < self.sizes[split]:
            attempts += 1
            if attempts > 50 * self.sizes[split]:
                raise ValueError(
                    f"arithmetic difficulty {self.label} cannot produce {self.sizes[split]} distinct problems"
                )
            # one level draws nothing from the stream for it, so its problems are the ones it always had
            level = self.levels[rng.randrange(len(self.levels))] if len(self.levels) > 1 else self.levels[0]
            story, answer = make_problem(rng, level)
            question = f"{story} {self.answer_format}"
            if question in seen:
                continue
            seen.add(question)
            problems.append(Problem(uid=f"arith-{split}-{len(problems)}", question=question, gold=str(answer)))
        return problems

    def _load(self, split: Split) -> list[Problem]:
        exclude = {p.question for p in self.problems("eval")} if split == "train" else set()
        problems = self._generate(split, exclude)
        self.reports.append(LoadReport(f"arithmetic(difficulty={self.label}, {split})", rows=len(problems)))
        return problems
