import json
import random
import string
import threading

import pytest

from rewards.extract import extract_program, final_answer, gsm8k_answer, last_boxed
from rewards.math import grade


@pytest.mark.parametrize(
    "response, gold, expected",
    [
        ("Sam has 6 + 8 = 14 stickers.\n\nIn total, Sam has 14 stickers.", "14", 1.0),
        ("The answer is \\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
        ("So the share is 50%.", "0.5", 1.0),
        ("Work...\n#### 1,000", "1000", 1.0),
        ("The answer is 14 stickers.", "14", 1.0),
        ("The interval is \\boxed{[1,2)}", "[1,2)", 1.0),
        ("\\boxed{5 \\text{ dollars}}", "5", 1.0),
        ("first \\boxed{3} then \\boxed{4}", "4", 1.0),  # the last boxed answer counts
        ("first \\boxed{3} then \\boxed{4}", "3", 0.0),
        ("The answer is 15.", "14", 0.0),
        ("The answer is 15 or 14.", "14", 0.0),  # never pick among several numbers
        ("I don't know.", "3", 0.0),
        ("", "3", 0.0),
        ("\\boxed{", "3", 0.0),
        ("\\boxed{(1,2]}", "[1,2)", 0.0),
    ],
)
def test_equivalence(response, gold, expected):
    assert grade(response, gold) == expected


def test_extractors():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "x^{2}"
    assert gsm8k_answer("foo\n#### 1,234") == "1234"
    assert final_answer("no numbers") is None
    assert extract_program("text\n```python\ndef f():\n    return 1\n```\nmore") == "def f():\n    return 1\n"
    assert extract_program("def g(): pass") == "def g(): pass"


def test_never_raises_on_any_input():
    rng = random.Random(0)
    alphabet = string.printable + "\\{}$^_αβ∫√"
    weird = ["\\boxed{" * 50, "}" * 100, "\\frac{1}{0}", "9" * 5000, "\\boxed{\\sqrt{-1}}", "\x00\x01", "1e999999"]
    weird += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200))) for _ in range(200)]
    for text in weird:
        assert grade(text, "3") in (0.0, 1.0)
        assert grade("3", text) in (0.0, 1.0)
    assert grade(None, "3") == 0.0  # type: ignore[arg-type]


def test_grading_off_the_main_thread():
    results = []
    threads = [threading.Thread(target=lambda: results.append(grade("\\boxed{3/4}", "0.75"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [1.0] * 4


def test_gsm8k_gold_solutions(gsm8k_dir):
    rows = [json.loads(line) for line in (gsm8k_dir / "gsm8k_test.jsonl").open()]
    golds = [gsm8k_answer(r["answer"]) for r in rows]
    assert all(grade(r["answer"], g) == 1.0 for r, g in zip(rows, golds))
    others = [(r["answer"], golds[(i + 1) % len(rows)]) for i, r in enumerate(rows)]
    others = [(a, g) for (a, g), mine in zip(others, golds) if float(g) != float(mine)]
    assert len(others) > 1200
    assert all(grade(a, g) == 0.0 for a, g in others)
