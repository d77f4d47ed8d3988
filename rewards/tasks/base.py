"""What a task is: problem rows, prompt formatting, ground truth, and the self-correction turn."""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

Split = Literal["train", "val", "eval"]
SPLITS = ("train", "val", "eval")
GraderKind = Literal["math", "code"]

MATH_INSTRUCTION = (
    "There might be an error in the solution above because of lack of understanding of the "
    "question. Please correct the error, if any, and rewrite the solution."
)
CODE_INSTRUCTION = (
    "There might be an error in the code above because of lack of understanding of the "
    "question. Please correct the error, if any, and rewrite the solution. Only output the "
    "final correct Python program!"
)


class TaskDataError(ValueError):
    """A data file or row that cannot be turned into problems; the message names file and line."""


@dataclass(frozen=True)
class Problem:
    """One problem: the text the model sees, and what a grader needs to score an answer.

    ``gold`` is the final answer for math tasks and the test program for code tasks.
    """

    uid: str
    question: str
    gold: str
    entry_point: str | None = None


@dataclass
class LoadReport:
    """How many rows a source gave and how many malformed ones were skipped (and why)."""

    source: str
    rows: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.source}: {self.rows} problems"
        if self.skipped:
            text += f", {self.skipped} malformed rows skipped (first: {self.reasons[0]})"
        return text


class Task(ABC):
    """A source of problems together with how to prompt for them and how they are graded.

    Subclasses implement :meth:`_load`; formatting of both turns is shared.
    """

    name: str
    grader: GraderKind
    default_instruction: str
    answer_format: str = ""  # appended to math questions and to the self-correction turn

    def __init__(self, instruction: str | None = None, skip_malformed: bool = False, val_size: int = 0):
        self.val_size = val_size
        self.instruction = instruction or self.default_instruction
        if self.answer_format and not instruction:
            self.instruction = f"{self.instruction} {self.answer_format}"
        self.skip_malformed = skip_malformed
        self.reports: list[LoadReport] = []
        self._cache: dict[str, list[Problem]] = {}

    # -- problems -----------------------------------------------------------------
    def problems(self, split: Split) -> list[Problem]:
        """All problems of a split (loaded once).

        ``val`` is carved out of the training problems: ``val_size`` of them, drawn with a fixed
        seed, which ``train`` then no longer contains. It exists to choose settings and to watch
        training without touching ``eval``, the held-out problems that results are reported on.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._cache:
            if split == "eval":
                self._cache["eval"] = self._load("eval")
            else:
                self._cache["train"], self._cache["val"] = self._split_off_validation(self._load("train"))
        return self._cache[split]

    def _split_off_validation(self, train: list[Problem]) -> tuple[list[Problem], list[Problem]]:
        if not self.val_size:
            return train, []
        if self.val_size >= len(train):
            raise TaskDataError(f"task.val_size ({self.val_size}) must be smaller than the {len(train)} training problems")
        picked = set(random.Random(f"validation-{len(train)}").sample(range(len(train)), self.val_size))
        self.reports.append(LoadReport(f"validation split (taken out of the {len(train)} training problems)", rows=self.val_size))
        return [p for i, p in enumerate(train) if i not in picked], [train[i] for i in sorted(picked)]

    @abstractmethod
    def _load(self, split: Split) -> list[Problem]:
        """Build the problems of a split."""

    # -- prompts -------------------------------------------------------------------
    def first_turn(self, problem: Problem) -> list[dict[str, str]]:
        """The chat messages for attempt 1."""
        return [{"role": "user", "content": problem.question}]

    # -- row parsing helpers -------------------------------------------------------
    def _rows_to_problems(
        self,
        source: str,
        rows: Iterator[tuple[int, Any]],
        parse: Callable[[dict[str, Any], int], Problem],
    ) -> list[Problem]:
        """Parse rows, failing on the first malformed one or (if allowed) counting the skips."""
        report = LoadReport(source)
        problems = []
        for line_no, row in rows:
            try:
                if isinstance(row, Exception):
                    raise row
                if not isinstance(row, dict):
                    raise TaskDataError(f"expected a JSON object, got {type(row).__name__}")
                problems.append(parse(row, line_no))
            except (TaskDataError, KeyError, TypeError, ValueError) as err:
                reason = f"{source}:{line_no}: {_describe(err)}"
                if not self.skip_malformed:
                    raise TaskDataError(
                        f"malformed row {reason} (set task.skip_malformed=true to skip and count such rows)"
                    ) from None
                report.skipped += 1
                report.reasons.append(reason)
        report.rows = len(problems)
        if not problems:
            raise TaskDataError(f"{source}: no usable problems")
        self.reports.append(report)
        return problems


class FileTask(Task):
    """A task whose train and eval problems are rows of a file (JSONL/Parquet) or of a hub dataset;
    subclasses turn one row into a :class:`Problem` (:meth:`parse_row`)."""

    def __init__(self, train_path: str | None, eval_path: str | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.paths = {"train": train_path, "eval": eval_path}

    def _load(self, split: Split) -> list[Problem]:
        path = self.paths[split]
        if not path:
            raise TaskDataError(f"task '{self.name}' has no {split} data: set task.{split}_path")
        rows = read_rows(path) if looks_like_file(path) else read_hub_dataset(path, split)
        return self._rows_to_problems(path, rows, lambda row, n: self.parse_row(row, f"{split}-{n}"))

    @abstractmethod
    def parse_row(self, row: dict[str, Any], uid: str) -> Problem:
        """One problem from one row; ``uid`` is ``<split>-<line or row number>``."""


def _describe(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"missing field {err.args[0]!r}"
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON ({err.msg})"
    return str(err)


def require_str(row: dict[str, Any], key: str) -> str:
    """A non-empty string field of a row."""
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise TaskDataError(f"field {key!r} must be a non-empty string")
    return value


def read_rows(path: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_or_row_number, row)`` from a JSONL or Parquet file.

    A line that is not valid JSON is yielded as the exception so that the caller can
    report or skip it with its line number.
    """
    p = Path(path)
    if not p.is_file():
        raise TaskDataError(f"data file not found: {path}")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq  # heavy-ish: only for Parquet files

        table = pq.read_table(p)
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
        return
    if p.suffix not in (".jsonl", ".json"):
        raise TaskDataError(f"{path}: unsupported data format (use .jsonl or .parquet)")
    with p.open() as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                yield line_no, err


def read_hub_dataset(name: str, split: Split) -> Iterator[tuple[int, Any]]:
    """Rows of a Hugging Face dataset (clusters with hub access only)."""
    try:
        import datasets  # noqa: F401  (optional: part of the gpu extra)
    except ImportError:
        raise TaskDataError(
            f"{name!r} is neither a file nor loadable: hub datasets need the 'datasets' package"
        ) from None
    hub_split = "train" if split == "train" else "test"
    ds = datasets.load_dataset(name, split=hub_split)
    for i, row in enumerate(ds, start=1):
        yield i, dict(row)


def looks_like_file(path: str) -> bool:
    """True for anything that names a local file rather than a hub dataset."""
    return Path(path).suffix in (".jsonl", ".json", ".parquet") or path.startswith((".", "/", "~"))
