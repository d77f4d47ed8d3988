import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.config import ConfigError, load_config
from rewards.tasks import TaskDataError, build_task
from rewards.tasks.arithmetic import DIFFICULTIES, ArithmeticTask
from rewards.tasks.base import CODE_INSTRUCTION, MATH_INSTRUCTION
from rewards.tasks.code import HumanEvalTask, MBPPTask
from rewards.tasks.math_files import GSM8KTask, MATHTask

_STEP = re.compile(r"(buys|finds|gets|gives away|loses|sells) (\d+)")


def _solve(question: str) -> int:
    """Independent reading of an arithmetic word problem."""
    total = int(re.search(r"has (\d+)", question).group(1))
    for verb, n in _STEP.findall(question):
        total += int(n) if verb in ("buys", "finds", "gets") else -int(n)
    return total


@pytest.mark.parametrize("difficulty", sorted(DIFFICULTIES))
def test_arithmetic_answers_are_right_and_splits_disjoint(difficulty):
    task = ArithmeticTask(difficulty, train_size=300, eval_size=100)
    train, evals = task.problems("train"), task.problems("eval")
    assert len(train) == 300 and len(evals) == 100
    assert not {p.question for p in train} & {p.question for p in evals}
    level = DIFFICULTIES[difficulty]
    for p in train + evals:
        assert int(p.gold) == _solve(p.question) >= 0
        assert len(_STEP.findall(p.question)) == level.steps
        assert p.question.endswith("Answer with a number.")


def test_validation_split_is_carved_out_of_train_and_apart_from_eval():
    task = ArithmeticTask(2, train_size=300, eval_size=100, val_size=40)
    train, val, evals = ({p.question for p in task.problems(s)} for s in ("train", "val", "eval"))
    assert len(train) == 260 and len(val) == 40 and len(evals) == 100
    assert not train & val and not val & evals and not train & evals
    again = ArithmeticTask(2, train_size=300, eval_size=100, val_size=40)
    assert [p.uid for p in again.problems("val")] == [p.uid for p in task.problems("val")]  # seeded
    assert {p.question for p in ArithmeticTask(2, train_size=300, eval_size=100).problems("train")} == train | val
    assert ArithmeticTask(2, train_size=300, eval_size=100).problems("val") == []
    with pytest.raises(TaskDataError, match="val_size"):
        ArithmeticTask(2, train_size=30, eval_size=10, val_size=30).problems("train")
    cfg = load_config(None, ["task.val_size=40", "task.train_size=300", "task.eval_size=100"])
    assert [p.uid for p in build_task(cfg.task).problems("val")] == [p.uid for p in task.problems("val")]


def test_max_operand_widens_the_numbers_and_leaves_the_level_alone():
    wide = ArithmeticTask(2, train_size=300, eval_size=100, max_operand=20)
    problems = wide.problems("train") + wide.problems("eval")
    numbers = [int(n) for p in problems for n in re.findall(r"\d+", p.question)]
    assert max(numbers) > 9 and max(numbers) <= 20  # the level's 9 is lifted to 20, not beyond
    for p in problems:
        assert int(p.gold) == _solve(p.question) >= 0
        assert len(_STEP.findall(p.question)) == DIFFICULTIES[2].steps
    # unset, the level's problems are exactly what they were (finished experiments evaluated on them)
    plain = ArithmeticTask(2, train_size=300, eval_size=100)
    assert plain.problems("eval") == ArithmeticTask(2, train_size=300, eval_size=100, max_operand=None).problems("eval")
    assert {p.question for p in plain.problems("eval")} != {p.question for p in wide.problems("eval")}
    cfg = load_config(None, ["task.max_operand=20", "task.train_size=300", "task.eval_size=100"])
    assert build_task(cfg.task).problems("eval") == wide.problems("eval")
    with pytest.raises(ValueError, match="max_operand"):
        ArithmeticTask(2, max_operand=1)


def test_arithmetic_is_seeded():
    a = ArithmeticTask(3, train_size=50, eval_size=20, seed=1).problems("train")
    b = ArithmeticTask(3, train_size=50, eval_size=20, seed=1).problems("train")
    c = ArithmeticTask(3, train_size=50, eval_size=20, seed=2).problems("train")
    assert a == b and a != c


def test_data_seed_fixes_the_problems_across_run_seeds():
    def questions(run_seed, overrides):
        cfg = load_config(None, overrides)
        return [p.question for p in build_task(cfg.task, seed=run_seed).problems("eval")]

    assert questions(0, []) != questions(1, [])  # by default the run seed picks the problems
    fixed = ["task.data_seed=7"]
    assert questions(0, fixed) == questions(1, fixed) == questions(2, fixed)


def test_the_self_correction_instruction_is_the_paper_s_unless_configured():
    task = build_task(load_config().task)
    assert task.instruction.startswith(MATH_INSTRUCTION) and task.instruction.endswith(task.answer_format)
    assert ArithmeticTask(instruction="Check again.").instruction == "Check again."
    assert build_task(load_config(None, ["task.instruction=Look again."]).task).instruction == "Look again."


def test_gsm8k_from_shared_data(gsm8k_dir):
    task = GSM8KTask(str(gsm8k_dir / "gsm8k_train.jsonl"), str(gsm8k_dir / "gsm8k_test.jsonl"))
    test = task.problems("eval")
    assert len(test) == 1319
    assert len(task.problems("train")) == 7473
    # Janet's ducks: the first GSM8K test problem
    assert test[0].gold == "18" and "Janet" in test[0].question
    assert all(re.fullmatch(r"-?[\d.]+", p.gold) for p in test)


def test_humaneval_from_the_package():
    task = HumanEvalTask()
    problems = task.problems("eval")
    assert len(problems) == 164
    first = problems[0]
    assert first.uid == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert "def has_close_elements" in first.question
    assert first.gold.rstrip().endswith("check(has_close_elements)")
    assert task.instruction == CODE_INSTRUCTION


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_mbpp_sanitized_jsonl(tmp_path):
    rows = [
        {
            "task_id": 2,
            "prompt": "Write a function to find the shared elements from the given two lists.",
            "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n",
            "test_imports": [],
            "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"],
        },
        {"task_id": 3, "prompt": "Identify non-prime numbers.", "test_imports": ["import math"],
         "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True"]},
    ]
    path = _write_jsonl(tmp_path / "mbpp.jsonl", rows)
    problems = MBPPTask(path, path).problems("train")
    assert [p.entry_point for p in problems] == ["similar_elements", "is_not_prime"]
    assert problems[1].gold == "import math\nassert is_not_prime(2) == False\nassert is_not_prime(10) == True\n"
    assert "assert is_not_prime(2) == False" in problems[1].question


def test_math_rows_with_boxed_solutions_and_parquet(tmp_path):
    table = pa.table({"problem": ["What is $1/2+1/4$?", "Solve $x+1=3$."],
                      "solution": ["We add: $\\boxed{\\frac{3}{4}}$.", "So $x=\\boxed{2}$."]})
    pq.write_table(table, tmp_path / "math.parquet")
    problems = MATHTask(str(tmp_path / "math.parquet"), None).problems("train")
    assert [p.gold for p in problems] == ["\\frac{3}{4}", "2"]
    assert problems[0].question.endswith("Put the final answer in \\boxed{}.")


def test_malformed_rows_name_file_and_line(tmp_path):
    good = {"question": "1+1?", "answer": "1+1=2\n#### 2"}
    path = _write_jsonl(tmp_path / "g.jsonl", [good, good, {"question": "no answer"}, "{not json", good])
    with pytest.raises(TaskDataError, match=r"g\.jsonl:3: missing field 'answer'"):
        GSM8KTask(path, None).problems("train")
    bad_json = _write_jsonl(tmp_path / "j.jsonl", [good, "{not json"])
    with pytest.raises(TaskDataError, match=r"j\.jsonl:2: invalid JSON"):
        GSM8KTask(bad_json, None).problems("train")
    no_marker = _write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(TaskDataError, match=r"m\.jsonl:1: field 'answer' has no '#### <answer>' line"):
        GSM8KTask(no_marker, None).problems("train")


def test_skipping_malformed_rows_is_counted(tmp_path):
    good = {"question": "1+1?", "answer": "#### 2"}
    path = _write_jsonl(tmp_path / "g.jsonl", [good, {"question": "x"}, "{bad", good])
    task = GSM8KTask(path, None, skip_malformed=True)
    assert len(task.problems("train")) == 2
    (report,) = task.reports
    assert (report.rows, report.skipped) == (2, 2)
    assert "2 malformed rows skipped" in report.summary() and "g.jsonl:2" in report.summary()


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(TaskDataError, match="data file not found"):
        GSM8KTask(str(tmp_path / "none.jsonl"), None).problems("train")
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n")
    with pytest.raises(TaskDataError, match="unsupported data format"):
        GSM8KTask(str(csv), None).problems("train")
    with pytest.raises(TaskDataError, match="no eval data"):
        GSM8KTask(str(csv), None).problems("eval")


def test_a_mix_of_levels_draws_each_problem_from_one_of_them():
    mixed = ArithmeticTask([2, 3], train_size=400, eval_size=100)
    problems = mixed.problems("train") + mixed.problems("eval")
    steps = [len(_STEP.findall(p.question)) for p in problems]
    for p in problems:
        assert int(p.gold) == _solve(p.question) >= 0
    # both levels' shapes, in a seeded mix near half and half (level 2: one step, level 3: two)
    assert set(steps) == {1, 2} and 0.35 < steps.count(2) / len(steps) < 0.65
    assert ArithmeticTask([2, 3], train_size=400, eval_size=100).problems("eval") == mixed.problems("eval")
    assert not {p.question for p in mixed.problems("train")} & {p.question for p in mixed.problems("eval")}
    # one level given as an int or a one-element list: the problems it always had
    assert ArithmeticTask([2], train_size=300, eval_size=100).problems("eval") == ArithmeticTask(2, train_size=300, eval_size=100).problems("eval")
    cfg = load_config(None, ["task.difficulty=[2,3]", "task.train_size=400", "task.eval_size=100"])
    assert build_task(cfg.task).problems("eval") == mixed.problems("eval")
    for bad in ("[2,2]", "[]", "[2,9]", "0"):
        with pytest.raises(ConfigError, match="task.difficulty"):
            load_config(None, [f"task.difficulty={bad}"])
    with pytest.raises(ValueError, match="difficulty"):
        ArithmeticTask([2, 6])


def test_show_steps_asks_for_written_steps_on_the_same_problems():
    plain = ArithmeticTask(3, train_size=100, eval_size=20)
    steps = ArithmeticTask(3, train_size=100, eval_size=20, show_steps=True)
    for a, b in zip(plain.problems("eval"), steps.problems("eval"), strict=True):
        assert a.gold == b.gold and b.question == a.question.replace(plain.answer_format, steps.steps_format)
    # the second turn asks for the same format as the first
    assert steps.instruction.endswith(steps.steps_format) and plain.instruction.endswith(plain.answer_format)
    cfg = load_config(None, ["task.difficulty=3", "task.show_steps=true", "task.train_size=100", "task.eval_size=20"])
    assert build_task(cfg.task).problems("eval") == steps.problems("eval")
