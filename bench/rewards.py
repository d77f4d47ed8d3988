"""Rewards benchmark: grading throughput through the pool, and the sandbox's cost per run.

    python -m bench rewards [--tiny]

- gradings/s for math and for code through the RewardPool, against grading the same requests
  in one process with no Ray (the pool's ratio shows what the actors add or win);
- seconds per sandboxed run against a bare ``python -c`` subprocess, in the same run.
"""

from __future__ import annotations

import subprocess
import time

from bench.common import BenchResult, Measurement
from rewards.pool import GradeRequest, RewardPool, grade_one
from rewards.sandbox import SandboxLimits, _interpreter, run_python

ADD = "```python\ndef add(a, b):\n    return a + b\n```"


def _requests(kind: str, n: int) -> list[GradeRequest]:
    if kind == "math":
        return [GradeRequest("math", f"So {i} + 1 = {i + 1}. The answer is {i + 1 + i % 2}.", str(i + 1)) for i in range(n)]
    return [GradeRequest("code", ADD, f"assert add({i}, 1) == {i + 1}") for i in range(n)]


def run(tiny: bool = False) -> BenchResult:
    import ray

    n_math, n_code, n_runs = (20, 8, 5) if tiny else (400, 100, 40)
    actors, concurrency = 2, 2
    result = BenchResult("rewards", settings={"math_requests": n_math, "code_requests": n_code,
                                              "sandbox_runs": n_runs, "actors": actors, "max_concurrency": concurrency})
    limits = SandboxLimits(timeout_s=10.0, memory_mb=512)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    pool = RewardPool(num_actors=actors, max_concurrency=concurrency, limits=limits, name_prefix="reward-bench")
    try:
        for kind, n in (("math", n_math), ("code", n_code)):
            reqs = _requests(kind, n)
            pool.grade(reqs[: min(4, n)])  # warm the actors
            start = time.perf_counter()
            pool.grade(reqs)
            pooled = n / (time.perf_counter() - start)
            start = time.perf_counter()
            for req in reqs:
                grade_one(req, limits)
            inline = n / (time.perf_counter() - start)
            result.measurements.append(
                Measurement(f"{kind} gradings/s (pool)", pooled, "1/s", "in-process, sequential", inline)
            )
    finally:
        pool.shutdown()
        if started_ray:
            ray.shutdown()

    source = "print(sum(range(1000)))"
    python = _interpreter()
    start = time.perf_counter()
    for _ in range(n_runs):
        subprocess.run([python, "-I", "-S", "-c", source], capture_output=True, check=True)
    bare = (time.perf_counter() - start) / n_runs
    start = time.perf_counter()
    for _ in range(n_runs):
        assert run_python(source, timeout_s=10).status == "ok"
    sandboxed = (time.perf_counter() - start) / n_runs
    result.measurements.append(
        Measurement("sandbox seconds/run", sandboxed, "s", "bare python -c subprocess", bare, higher_is_better=False)
    )
    return result
