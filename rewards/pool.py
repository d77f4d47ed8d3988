"""A pool of Ray actors that grade attempts for the driver.

Every request gets exactly one result. Requests go out one task each, with at most
``max_concurrency`` in flight per actor (backpressure: the rest wait in the driver), so a slow
program never blocks the grading of another. An actor that dies is restarted by Ray
(``max_restarts=-1``) and its requests are sent again, to any live actor, as are requests that
came back ``sandbox_error`` (a sandbox killed with its dying actor, say); a request that keeps
failing, or that raises inside the grader, ends as a ``sandbox_error`` result with reward 0.
Verdict counters and grading latency are exported through ``ray.util.metrics``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal

import ray
from ray.util.metrics import Counter as MetricCounter
from ray.util.metrics import Histogram

from common.logs import setup_logging
from common.teardown import tear_down
from rewards.code import run_tests
from rewards.extract import extract_program
from rewards.sandbox import STATUSES, SandboxLimits

log = logging.getLogger(__name__)

GradeKind = Literal["math", "code"]


@dataclass(frozen=True)
class GradeRequest:
    """One thing to grade: a model response and the ground truth its task carries."""

    kind: GradeKind
    response: str
    gold: str  # math: the answer; code: the test program


@dataclass(frozen=True)
class GradeResult:
    """The reward for one request and how it was reached."""

    reward: float
    verdict: str  # math: "correct"/"wrong"; code: a sandbox status
    latency_s: float
    attempts: int = 1


def grade_one(req: GradeRequest, limits: SandboxLimits, allow_weak_isolation: bool = False) -> GradeResult:
    """Grade in this process (what each reward actor runs)."""
    start = time.monotonic()
    if req.kind == "math":
        from rewards.math import grade as grade_math  # math-verify pulls in sympy: loaded by graders that need it

        reward = grade_math(req.response, req.gold)
        verdict = "correct" if reward else "wrong"
    elif req.kind == "code":
        result = run_tests(
            extract_program(req.response), req.gold, limits=limits, allow_weak_isolation=allow_weak_isolation
        )
        reward, verdict = (1.0 if result.status == "ok" else 0.0), result.status
    else:
        raise ValueError(f"unknown grading kind {req.kind!r}")
    return GradeResult(reward, verdict, time.monotonic() - start)


@ray.remote(num_cpus=0.25, max_restarts=-1, max_task_retries=0)
class RewardWorker:
    """One grading actor: owns nothing but its limits and its metric handles."""

    def __init__(self, limits: SandboxLimits, allow_weak_isolation: bool = False):
        setup_logging()  # this worker's messages at the driver's level ($SCORE_LOG_LEVEL)
        self.limits = limits
        self.allow_weak_isolation = allow_weak_isolation
        self.verdicts = MetricCounter(
            "score_reward_verdicts_total", "Graded attempts by verdict", tag_keys=("kind", "verdict")
        )
        self.latency = Histogram(
            "score_reward_latency_seconds",
            "Time to grade one attempt",
            boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
            tag_keys=("kind",),
        )

    def grade(self, req: GradeRequest) -> GradeResult:
        try:
            result = grade_one(req, self.limits, self.allow_weak_isolation)
        except Exception as err:  # noqa: BLE001 - a crashing grader never ends a run
            result = GradeResult(0.0, "sandbox_error", 0.0)
            log.warning("grader error (%s): %s: %s", req.kind, type(err).__name__, err)
        self.verdicts.inc(1, tags={"kind": req.kind, "verdict": result.verdict})
        self.latency.observe(result.latency_s, tags={"kind": req.kind})
        return result

    def ping(self) -> bool:
        return True


@dataclass
class PoolStats:
    """What the pool did over its lifetime."""

    verdicts: Counter = field(default_factory=Counter)
    resubmitted: int = 0
    gave_up: int = 0


class RewardPool:
    """Grades batches through ``num_actors`` RewardWorker actors (named ``reward-<i>``)."""

    def __init__(
        self,
        num_actors: int = 2,
        max_concurrency: int = 4,
        limits: SandboxLimits | None = None,
        allow_weak_isolation: bool = False,
        max_attempts: int = 3,
        request_timeout_s: float | None = None,
        name_prefix: str = "reward",
        num_cpus: float = 0.25,
    ):
        self.limits = limits or SandboxLimits()
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        # A request can wait for a restart and then run to its sandbox deadline.
        self.request_timeout_s = request_timeout_s or (self.limits.timeout_s * 3 + 60)
        self.stats = PoolStats()
        self.actors = [
            RewardWorker.options(
                name=f"{name_prefix}-{i}",
                max_concurrency=max_concurrency,
                num_cpus=num_cpus,
                get_if_exists=True,
            ).remote(self.limits, allow_weak_isolation)
            for i in range(num_actors)
        ]
        ray.get([a.ping.remote() for a in self.actors], timeout=120)

    def grade(self, requests: list[GradeRequest]) -> list[GradeResult]:
        """One result per request, in order."""
        results: list[GradeResult | None] = [None] * len(requests)
        attempts = [0] * len(requests)
        pending = deque(range(len(requests)))
        in_flight: dict[ray.ObjectRef, tuple[int, int, float]] = {}  # ref -> (index, actor, sent)
        load = [0] * len(self.actors)
        capacity = self.max_concurrency

        def submit(index: int) -> None:
            actor = min(range(len(self.actors)), key=lambda a: load[a])
            attempts[index] += 1
            ref = self.actors[actor].grade.remote(requests[index])
            in_flight[ref] = (index, actor, time.monotonic())
            load[actor] += 1

        while pending or in_flight:
            while pending and min(load) < capacity:
                submit(pending.popleft())
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            now = time.monotonic()
            for ref in done:
                index, actor, _sent = in_flight.pop(ref)
                load[actor] -= 1
                try:
                    result = ray.get(ref)
                    if result.verdict == "sandbox_error" and attempts[index] < self.max_attempts:
                        # not the program's fault (a dying actor, a broken sandbox): try elsewhere
                        self._retry_or_fail(index, attempts, pending, results)
                        continue
                    results[index] = GradeResult(result.reward, result.verdict, result.latency_s, attempts[index])
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                        ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError):
                    self._retry_or_fail(index, attempts, pending, results)
            for ref, (index, actor, sent) in list(in_flight.items()):
                if now - sent > self.request_timeout_s:  # a hung actor: give the request to another
                    in_flight.pop(ref)
                    load[actor] -= 1
                    ray.cancel(ref)  # force=True is refused for actor tasks
                    self._retry_or_fail(index, attempts, pending, results)
        assert all(r is not None for r in results)
        for r in results:
            self.stats.verdicts[r.verdict] += 1
        return results  # type: ignore[return-value]

    def _retry_or_fail(self, index: int, attempts: list[int], pending: deque, results: list) -> None:
        if attempts[index] < self.max_attempts:
            self.stats.resubmitted += 1
            pending.append(index)
        else:
            self.stats.gave_up += 1
            results[index] = GradeResult(0.0, "sandbox_error", 0.0, attempts[index])

    def shutdown(self) -> None:
        tear_down(self.actors)


__all__ = ["GradeRequest", "GradeResult", "RewardPool", "RewardWorker", "STATUSES", "grade_one"]
