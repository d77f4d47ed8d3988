"""The driver's handle on all generator actors: placement, sharded rollouts, failover.

Shards of a rollout go to the generators that hold the current weight version. When a generator
dies mid-batch, its shard is sent again to a survivor, so the batch comes back complete; if none
survives, :class:`GenerationError` says so and the iteration can be retried. Ray restarts a dead
generator (``max_restarts=-1``); it comes back with the initial weights, so it is used again only
after the next weight sync has brought it to the current version: :class:`weight_sync.manager.WeightSync`
owns the transport and its membership and tells the fleet who holds which version (:meth:`adopt`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.batch import ATTEMPT1_SCHEMA, check_complete, sort_problem_major
from actors.generator import Generator, StaleWeightsError
from common.teardown import tear_down


def shard_sampling(sampling: dict[str, Any], shard: int) -> dict[str, Any]:
    """The sampling parameters of shard ``shard`` of a rollout: its own seed, so that shards (on different
    generators) draw different noise. Shard 0 keeps the batch's seed (one generator samples as before); the
    seed follows the shard, not the generator, so a shard re-sent to a survivor samples the same."""
    seed = sampling.get("seed")
    if seed is None or shard == 0:
        return sampling
    mixed = int.from_bytes(hashlib.blake2b(f"{int(seed)}/{shard}".encode(), digest_size=4).digest(), "little") & 0x7FFFFFFF
    return {**sampling, "seed": mixed}


class GenerationError(RuntimeError):
    """No generator could finish a shard; the message says which and why. Retry the iteration."""


@dataclass
class FleetSettings:
    """How many generators, where, and how each engine is built."""

    num_generators: int = 1
    tensor_parallel_size: int = 1
    gpus: bool = False
    cpus_per_generator: float = 1.0
    cpu_threads: int | None = None  # CPU only: each engine's torch threads (None: every core of the node)
    seed: int = 0
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 1800.0  # deadline for one shard of a rollout
    start_timeout_s: float = 600.0
    namespace_prefix: str = "generator"
    # Colocated mode: generator i shares bundle i of the learner's placement group (and its GPU,
    # taking ``gpu_share`` of it), sleeps while the learner trains, and takes weights from learner
    # rank i through shared buffers (CUDA IPC) instead of the broadcast group.
    colocated: bool = False
    placement_group: Any = None
    gpu_share: float = 1.0
    env_vars: dict[str, str] = field(default_factory=dict)  # for every generator's process (e.g. vLLM's settings)


class GeneratorFleet:
    """Owns the generator actors, their placement group, and which of them hold the current weight version."""

    def __init__(self, model_path: str, settings: FleetSettings, wait: bool = True):
        """``wait=False``: return once the generators are placed and starting, so that other actors (the learner
        ranks) load their model meanwhile; :meth:`wait_started` then waits for the engines. A call on a generator
        that has not started queues behind its start-up, so nothing depends on that call being made."""
        self.settings = settings
        self.version = 0
        if settings.colocated and settings.tensor_parallel_size != 1:
            raise ValueError("colocated generators share one GPU with a learner rank: tensor_parallel_size must be 1")
        if settings.gpus:
            gpus = settings.gpu_share if settings.colocated else settings.tensor_parallel_size
            bundle = {"GPU": gpus, "CPU": 1}
        else:
            bundle = {"CPU": settings.cpus_per_generator}
        self.owns_pg = settings.placement_group is None
        self.pg = settings.placement_group or placement_group([dict(bundle) for _ in range(settings.num_generators)], strategy="PACK")
        try:
            ray.get(self.pg.ready(), timeout=settings.start_timeout_s)
        except GetTimeoutError:
            if self.owns_pg:
                remove_placement_group(self.pg)
            raise GenerationError(
                f"could not place {settings.num_generators} generators with {bundle} each within "
                f"{settings.start_timeout_s:.0f} s: not enough free resources in the cluster"
            ) from None
        self.names = [f"{settings.namespace_prefix}-{i}" for i in range(settings.num_generators)]
        self.actors = [
            Generator.options(
                name=name,
                num_cpus=bundle.get("CPU", 0),
                num_gpus=bundle.get("GPU", 0),
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
                **({"runtime_env": {"env_vars": dict(settings.env_vars)}} if settings.env_vars else {}),
            ).remote(model_path, name=name, seed=settings.seed + i, tensor_parallel_size=settings.tensor_parallel_size,
                     colocated=settings.colocated, expect_gpu=settings.gpus, cpu_threads=settings.cpu_threads, **settings.engine_kwargs)
            for i, name in enumerate(self.names)
        ]
        self.starting: dict[str, Any] | None = {name: a.ready.remote() for name, a in zip(self.names, self.actors)}
        self.current = set(range(len(self.actors)))  # generators holding self.version
        self.events: list[str] = []
        if wait:
            self.wait_started()

    def wait_started(self) -> None:
        """Wait for every engine built at construction (at most ``start_timeout_s``); at once if it was waited for."""
        if self.starting is not None:
            starting, self.starting = self.starting, None
            self.wait(starting, self.settings.start_timeout_s, "generator start-up")

    # -- waiting ----------------------------------------------------------------------------
    @staticmethod
    def wait(refs: dict[str, Any], timeout_s: float, what: str) -> dict[str, Any]:
        """``ray.get`` with a deadline whose error names what was awaited."""
        try:
            values = ray.get(list(refs.values()), timeout=timeout_s)
        except GetTimeoutError:
            raise GenerationError(f"timed out after {timeout_s:.0f} s waiting for {what} ({', '.join(refs)})") from None
        except RayActorError as err:
            raise GenerationError(f"a generator died while {what}: {type(err).__name__}") from None
        return dict(zip(refs, values))

    def info(self) -> list[dict[str, Any]]:
        return list(self.wait({n: a.info.remote() for n, a in zip(self.names, self.actors)}, 60, "generator info").values())

    # -- rollouts ---------------------------------------------------------------------------
    def _run_sharded(self, shards: list[Any], call: Callable[[Any, Any, int], Any], what: str) -> list[pa.Table]:
        """Run one call per shard (``call(actor, shard, shard_index)``) on the current generators, re-sending the
        shards of dead ones."""
        pending = list(enumerate(shards))
        results: dict[int, pa.Table] = {}
        while pending:
            alive = sorted(self.current)
            if not alive:
                raise GenerationError(f"no generator holds weight version {self.version}; {what} cannot finish ({'; '.join(self.events[-3:])})")
            inflight = {}
            for j, (idx, shard) in enumerate(pending):
                g = alive[j % len(alive)]
                inflight[call(self.actors[g], shard, idx)] = (idx, shard, g)
            pending = []
            deadline = time.monotonic() + self.settings.timeout_s
            remaining = list(inflight)
            while remaining:
                done, remaining = ray.wait(remaining, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not done:
                    names = sorted({self.names[inflight[r][2]] for r in remaining})
                    raise GenerationError(f"timed out after {self.settings.timeout_s:.0f} s waiting for {what} on {', '.join(names)}")
                ref = done[0]
                idx, shard, g = inflight[ref]
                try:
                    results[idx] = ray.get(ref)
                except RayActorError as err:
                    self.current.discard(g)
                    self.events.append(f"{self.names[g]} died during {what}: {type(err).__name__}")
                    pending.append((idx, shard))
                except RayTaskError as err:
                    if not isinstance(err.cause, StaleWeightsError):
                        raise
                    # it died between calls and Ray restarted it with the initial weights
                    self.current.discard(g)
                    self.events.append(f"{self.names[g]} came back with stale weights during {what}: {err.cause}")
                    pending.append((idx, shard))
        return [results[i] for i in range(len(shards))]

    def _shards(self, n: int) -> list[range]:
        parts = max(1, min(n, len(self.current)))
        bounds = [round(i * n / parts) for i in range(parts + 1)]
        return [range(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i] < bounds[i + 1]]

    def first_attempts(self, items: list[dict[str, Any]], k: int, sampling: dict[str, Any]) -> pa.Table:
        shards = [[items[i] for i in r] for r in self._shards(len(items))]
        version = self.version
        tables = self._run_sharded(shards, lambda a, s, i: a.first_attempts.remote(s, k, shard_sampling(sampling, i), version), "first attempts")
        return sort_problem_major(pa.concat_tables(tables))

    def later_attempts(self, previous: pa.Table, attempt: int, instruction: str, sampling: dict[str, Any],
                       num_problems: int | None = None, k: int | None = None) -> pa.Table:
        """Attempt ``attempt`` for every row of ``previous`` (:meth:`actors.generator.GeneratorCore.later_attempts`)."""
        shards = [previous.slice(r.start, len(r)) for r in self._shards(previous.num_rows)]
        version = self.version
        tables = self._run_sharded(shards, lambda a, s, i: a.later_attempts.remote(s, attempt, instruction, shard_sampling(sampling, i), version),
                                   "second attempts" if attempt == 2 else f"attempt-{attempt} samples")
        batch = sort_problem_major(pa.concat_tables(tables))
        if num_problems is not None and k is not None:
            check_complete(batch, num_problems, k, version)
        return batch

    def second_attempts(self, first: pa.Table, instruction: str, sampling: dict[str, Any], num_problems: int | None = None, k: int | None = None) -> pa.Table:
        return self.later_attempts(first.select(ATTEMPT1_SCHEMA.names).cast(ATTEMPT1_SCHEMA), 2, instruction, sampling, num_problems, k)

    # -- weight sync ------------------------------------------------------------------------
    def live(self) -> list[int]:
        """Generators whose process answers; waits for ones that Ray is restarting."""
        alive = []
        deadline = time.monotonic() + self.settings.start_timeout_s
        for i, actor in enumerate(self.actors):
            restarting = False
            while True:
                try:
                    ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                    alive.append(i)
                    break
                except ActorUnavailableError:  # restarting: its engine is loading again
                    if not restarting:
                        self.events.append(f"{self.names[i]} is restarting (its process or its engine died); waiting for it")
                        restarting = True
                    if time.monotonic() > deadline:
                        self.events.append(f"{self.names[i]} still restarting after {self.settings.start_timeout_s:.0f} s")
                        break
                    time.sleep(1.0)
                except (RayActorError, GetTimeoutError) as err:
                    self.events.append(f"{self.names[i]} unavailable for sync: {type(err).__name__}")
                    break
        return alive

    def sleep(self, timeout_s: float = 300.0) -> None:
        """Colocated mode: every generator releases its GPU memory for the learner (no-op on CPU)."""
        if self.settings.colocated:
            self.wait({self.names[g]: self.actors[g].sleep.remote() for g in sorted(self.current)}, timeout_s, "generators going to sleep")

    def adopt(self, members: tuple[int, ...], version: int) -> None:
        """``members`` acknowledged weight ``version``: rollouts go to them (and only them) from now on."""
        self.version = version
        self.current = set(members)

    def kill(self, index: int) -> None:
        """Kill one generator (for fault tests); Ray restarts it."""
        ray.kill(self.actors[index], no_restart=False)

    def shutdown(self) -> None:
        tear_down(self.actors, self.pg if self.owns_pg else None)
