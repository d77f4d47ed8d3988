"""The driver's side of weight sync: one call, ``WeightSync.push(version)``, brings every live
generator to the learner's current weights.

It owns what the learner and the fleet must not know about each other:
- the bucket plan (asked of the source once);
- membership: which generators are in the current transport; a change (a generator died, Ray
  restarted it) rebuilds the transport;
- the lifecycle: every rebuild closes the old transport on every side before opening the new one,
  and every wait has a deadline that names what it waited for;
- versions: only generators that acknowledged a version are marked as holding it
  (``fleet.adopt``), and rollouts go only to those;
- the retry: a generator that dies mid-sync fails the attempt; the transport is rebuilt with the
  live generators (a restarted one included, once its engine is back) and the push is repeated.

The source yields ``(name, tensor)`` buckets: :class:`learner.group.LearnerGroup` on a cluster,
:class:`LocalSource` in tests and benchmarks. The fleet only joins, receives and reports.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Protocol

import ray
import torch
from ray.exceptions import RayError

from actors.fleet import GenerationError
from common.network import free_port, node_ip
from weight_sync.buckets import WirePlan, largest_bucket_bytes, plan_buckets, plan_from_wire, plan_to_wire, spec_of
from weight_sync.loading import check_load_mode
from weight_sync.transports import SHARED, SyncEndpoint, TransportError, open_transport

log = logging.getLogger(__name__)

Pending = Callable[[float], Any]  # wait for a started call, at most this many seconds; returns its result


class WeightSource(Protocol):
    """What the manager needs from the side that holds the weights. A ``Pending`` raises
    ``TimeoutError`` past its deadline, a transport fails with ``TransportError`` when a receiver
    goes away (both retried, like a generator's death); any other error, such as a dead learner
    rank, ends the push."""

    def wire_plan(self, bucket_bytes: int) -> WirePlan: ...
    def address(self) -> tuple[str, int]: ...
    def start_open(self, endpoint: SyncEndpoint) -> Pending: ...
    def host_shared(self, wire_plan: WirePlan, timeout_s: float, count: int) -> list[tuple[str, int]]: ...
    def start_send(self, wire_plan: WirePlan) -> Pending: ...
    def close_transport(self) -> None: ...


class WeightSync:
    """Owns the push of weights from one source to one generator fleet (see the module docstring)."""

    def __init__(self, source: WeightSource, fleet, bucket_bytes: int, attempts: int = 3, timeout_s: float = 300.0,
                 backend: str | None = None, load: str = "inplace"):
        self.source, self.fleet, self.load = source, fleet, check_load_mode(load)
        self.bucket_bytes, self.attempts, self.timeout_s = bucket_bytes, attempts, timeout_s
        settings = fleet.settings
        # colocated generators take weights through their learner rank's shared buffers, the others through one broadcast group
        self.backend = backend or (SHARED if settings.colocated else ("nccl" if settings.gpus else "gloo"))
        self.transport = ("cuda-ipc" if settings.gpus else "shared-memory") if self.backend == SHARED else self.backend
        self.members: tuple[int, ...] = ()  # generators in the current transport
        self._wire: WirePlan | None = None
        self.rebuilds = 0
        self.events: list[str] = []

    def push(self, version: int) -> dict[str, Any]:
        """Send the source's weights as ``version`` to every live generator; retried when a generator dies."""
        for attempt in range(1, self.attempts + 1):
            try:
                return self._push_once(version)
            except (GenerationError, RayError, TimeoutError, TransportError) as err:
                self.events.append(f"sync of version {version}, attempt {attempt}: {type(err).__name__}: {err}")
                self._teardown()
                if attempt == self.attempts:
                    raise GenerationError(f"weight sync of version {version} failed {self.attempts} times; last: {err}") from None
                log.warning("weight sync of version %d failed (%s); rebuilding the transport with the live generators and retrying",
                            version, type(err).__name__)
        raise AssertionError("unreachable")

    def _push_once(self, version: int) -> dict[str, Any]:
        start = time.monotonic()
        if self._wire is None:
            self._wire = self.source.wire_plan(self.bucket_bytes)
        live = tuple(self.fleet.live())
        if not live:
            raise GenerationError("no live generator to receive weights")
        if live != self.members:
            self._rebuild(live)
        fleet = self.fleet
        receiving = {fleet.names[g]: fleet.actors[g].receive_weights.remote(self._wire, version, self.load) for g in self.members}
        sent = self.source.start_send(self._wire)(self.timeout_s)
        reports = list(fleet.wait(receiving, self.timeout_s, f"generators receiving weight version {version}").values())
        fleet.adopt(self.members, version)
        return {"seconds": time.monotonic() - start, "bytes": sent, "buckets": len(self._wire), "generators": len(reports), "reports": reports,
                "version": version, "transport": self.transport, "rebuilds": self.rebuilds}

    def _rebuild(self, live: tuple[int, ...]) -> None:
        """Close the current transport everywhere, then open one for ``live``."""
        self._teardown()
        fleet, t = self.fleet, self.timeout_s
        if self.backend == SHARED:
            if live != tuple(range(len(fleet.actors))):
                dead = sorted(set(range(len(fleet.actors))) - set(live))
                raise GenerationError(f"colocated weight sync needs every generator; {', '.join(fleet.names[g] for g in dead)} did not come back")
            endpoints = self.source.host_shared(self._wire, t, len(live))
            if len(endpoints) != len(live):
                raise GenerationError(f"{len(endpoints)} learner ranks for {len(live)} colocated generators")
            joins = {fleet.names[g]: fleet.actors[g].join_weights.remote(host, port, 2, SHARED, 1, t) for g, (host, port) in zip(live, endpoints)}
            fleet.wait(joins, t, "generators opening the learner's shared buffers")
        else:
            tp = fleet.settings.tensor_parallel_size
            host, port = self.source.address()
            world = 1 + tp * len(live)
            joins = {fleet.names[g]: fleet.actors[g].join_weights.remote(host, port, world, self.backend, 1 + pos * tp, t)
                     for pos, g in enumerate(live)}
            opened = self.source.start_open(SyncEndpoint(host, port, world, self.backend, t))
            fleet.wait(joins, t, "generators joining the weight-sync group")
            opened(t)
        self.members = live
        self.rebuilds += 1

    def _teardown(self) -> None:
        """Close the transport on the source and on every member that still answers (best effort)."""
        fleet = self.fleet
        closing = [fleet.actors[g].close_weights.remote() for g in self.members]
        try:
            ray.wait(closing, num_returns=len(closing), timeout=30)
        except Exception:  # noqa: BLE001 - a dead member has nothing left to close
            pass
        try:
            self.source.close_transport()
        except Exception as err:  # noqa: BLE001 - reported; the next open replaces it anyway
            log.warning("closing the sender's transport: %s", err)
        self.members = ()

    def shutdown(self) -> None:
        """Close the transport everywhere (the end of a run)."""
        self._teardown()


class LocalSource:
    """This process as the sender (tests and benchmarks): ``named_tensors()`` yields the weights in order.
    Colocated (shared buffers), it owns one channel per generator, as each learner rank owns its generator's."""

    def __init__(self, named_tensors: Callable[[], Iterable[tuple[str, torch.Tensor]]], device: torch.device | None = None):
        self.named_tensors, self.device = named_tensors, device or torch.device("cpu")
        self.transports: list = []
        self._pool = ThreadPoolExecutor(1)

    def wire_plan(self, bucket_bytes: int) -> WirePlan:
        return plan_to_wire(plan_buckets([spec_of(n, t) for n, t in self.named_tensors()], bucket_bytes))

    def address(self) -> tuple[str, int]:
        return node_ip(), free_port()

    def _start(self, fn) -> Pending:
        future = self._pool.submit(fn)
        return lambda timeout: future.result(timeout)

    def start_open(self, endpoint: SyncEndpoint) -> Pending:
        return self._start(lambda: self.transports.append(open_transport(endpoint, 0)))

    def host_shared(self, wire_plan: WirePlan, timeout_s: float, count: int) -> list[tuple[str, int]]:
        capacity = largest_bucket_bytes(plan_from_wire(wire_plan))
        endpoints = [SyncEndpoint(node_ip(), free_port(), 2, SHARED, timeout_s) for _ in range(count)]
        self.transports = [open_transport(e, 0, capacity=capacity, device=self.device) for e in endpoints]
        return [(e.host, e.port) for e in endpoints]

    def start_send(self, wire_plan: WirePlan) -> Pending:
        plan = plan_from_wire(wire_plan)
        return self._start(lambda: max(t.send(self.named_tensors(), plan) for t in self.transports))

    def close_transport(self) -> None:
        for t in self.transports:
            t.close()
        self.transports = []
