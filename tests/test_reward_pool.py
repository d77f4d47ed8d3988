"""1,000 gradings, mixed honest and hostile, through the reward actors while one actor is killed."""

import random
import threading
import time

import pytest

from rewards.pool import GradeRequest, RewardPool
from rewards.sandbox import SandboxLimits, bwrap_available

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable on this host")

ADD = "```python\ndef add(a, b):\n    return a + b\n```"
CASES = {
    # kind, response, gold -> expected verdict
    "math_right": ("math", "6 + 8 = 14. The answer is 14.", "14", "correct"),
    "math_wrong": ("math", "The answer is 15.", "14", "wrong"),
    "code_right": ("code", ADD, "assert add(2, 3) == 5", "ok"),
    "code_wrong": ("code", ADD.replace("a + b", "a - b"), "assert add(2, 3) == 5", "error"),
    "code_loop": ("code", "while True:\n    pass", "assert True", "timeout"),
    "code_memory": ("code", "x = bytearray(8 * 1024 ** 3)", "assert True", "memory"),
    "code_flood": ("code", "while True:\n    print('x' * 10000)", "", "killed"),
}
WEIGHTS = {"math_right": 350, "math_wrong": 250, "code_right": 200, "code_wrong": 150,
           "code_loop": 12, "code_memory": 19, "code_flood": 19}


def test_every_request_gets_exactly_one_result_while_an_actor_dies(ray_local):
    import ray

    names = [name for name, n in WEIGHTS.items() for _ in range(n)]
    random.Random(0).shuffle(names)
    assert len(names) == 1000
    requests = [GradeRequest(*CASES[n][:3]) for n in names]
    # Deadlines are wall-clock: keep sandboxes in flight near the core count, or honest code times out.
    limits = SandboxLimits(timeout_s=5.0, memory_mb=256, max_output_bytes=4096)
    pool = RewardPool(num_actors=3, max_concurrency=2, limits=limits, name_prefix="reward-test")
    killed = []

    def kill_one():
        time.sleep(3.0)
        ray.kill(pool.actors[1], no_restart=False)  # Ray restarts it; its in-flight requests are resent
        killed.append(time.monotonic())

    killer = threading.Thread(target=kill_one)
    killer.start()
    start = time.monotonic()
    results = pool.grade(requests)
    elapsed = time.monotonic() - start
    killer.join()
    try:
        assert killed and killed[0] - start < elapsed, "the kill must land while the batch runs"
        assert len(results) == len(requests)
        mismatched = [(n, r) for n, r in zip(names, results) if r.verdict != CASES[n][3]]
        assert not mismatched, mismatched[:5]
        for n, r in zip(names, results):
            assert r.reward == (1.0 if CASES[n][3] in ("correct", "ok") else 0.0)
        assert sum(pool.stats.verdicts.values()) == 1000
        assert pool.stats.resubmitted > 0, "the killed actor had requests in flight"
        assert pool.stats.gave_up == 0
        assert sum(r.attempts > 1 for r in results) == pool.stats.resubmitted
    finally:
        pool.shutdown()


def test_a_crashing_grader_becomes_a_counted_sandbox_error(ray_local):
    pool = RewardPool(num_actors=1, max_concurrency=2, limits=SandboxLimits(timeout_s=1.0), name_prefix="reward-crash")
    try:
        results = pool.grade([GradeRequest("chess", "e4", "e5"), GradeRequest("math", "\\boxed{2}", "2")])
        assert [r.verdict for r in results] == ["sandbox_error", "correct"]
        assert pool.stats.verdicts["sandbox_error"] == 1
    finally:
        pool.shutdown()


def test_a_request_that_hangs_past_its_deadline_is_retried_then_given_up(ray_local):
    limits = SandboxLimits(timeout_s=3.0, memory_mb=256)
    pool = RewardPool(num_actors=1, max_concurrency=2, limits=limits, request_timeout_s=0.5, max_attempts=2,
                      name_prefix="reward-hang")
    try:
        start = time.monotonic()
        (result,) = pool.grade([GradeRequest("code", "while True:\n    pass", "assert True")])
        assert time.monotonic() - start < 3.0, "the pool must not wait for the hung request"
        assert (result.verdict, result.reward, result.attempts) == ("sandbox_error", 0.0, 2)
        assert (pool.stats.resubmitted, pool.stats.gave_up) == (1, 1)
    finally:
        pool.shutdown()
