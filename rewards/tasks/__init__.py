"""Tasks: where problems come from, how they are prompted, and what a grader needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rewards.tasks.arithmetic import ArithmeticTask
from rewards.tasks.base import LoadReport, Problem, Task, TaskDataError
from rewards.tasks.code import HumanEvalTask, MBPPTask
from rewards.tasks.math_files import GSM8KTask, MATHTask

if TYPE_CHECKING:
    from cluster.config import TaskConfig

__all__ = ["LoadReport", "Problem", "Task", "TaskDataError", "build_task", "TASKS"]

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (ArithmeticTask, GSM8KTask, MATHTask, HumanEvalTask, MBPPTask)
}


def build_task(cfg: "TaskConfig", seed: int = 0) -> Task:
    """The task named by a validated :class:`cluster.config.TaskConfig`."""
    common = {"instruction": cfg.instruction, "skip_malformed": cfg.skip_malformed, "val_size": cfg.val_size}
    if cfg.name == "arithmetic":
        data_seed = seed if cfg.data_seed is None else cfg.data_seed
        return ArithmeticTask(cfg.difficulty, cfg.train_size, cfg.eval_size, seed=data_seed, max_operand=cfg.max_operand,
                              show_steps=cfg.show_steps, **common)
    if cfg.name == "humaneval":
        return HumanEvalTask(**common)
    return TASKS[cfg.name](cfg.train_path, cfg.eval_path, **common)
