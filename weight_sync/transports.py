"""The two ways weights travel, behind one interface: ``send(named_tensors, plan)`` on the learner's
side, ``receive(plan)`` on the generator's, ``close()`` on both.

- :class:`BroadcastTransport`: one process group spans the sender (rank 0, on learner rank 0) and
  every vLLM worker (ranks 1..N): NCCL on GPUs, gloo on CPU. It is built from a private
  ``TCPStore`` and a backend ``ProcessGroup`` object, so it never touches the default
  ``torch.distributed`` group that DeepSpeed or vLLM own in the same process. Every collective has
  a deadline (the group's timeout, and each wait's), NCCL included. Each end keeps two bucket
  buffers between syncs: the sender packs bucket i+1 while bucket i goes, and a receiver takes
  bucket i+1 while its consumer loads bucket i.
- :class:`SharedBufferTransport`: a one-to-one channel for a colocated learner rank and generator:
  two bucket buffers in shared memory (CUDA IPC on a GPU), handed over once through a store.

Invariant: a transport is closed before its replacement is opened, on every side (no leaked
communicators); :class:`weight_sync.manager.WeightSync` rebuilds whenever membership changes.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.reduction import ForkingPickler
from typing import Iterable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp  # also registers the rebuild functions open_handle needs

from weight_sync.buckets import Plan, bucket_view, largest_bucket_bytes, pack, unpack

BROADCAST_BACKENDS = ("gloo", "nccl")
SHARED = "shared"


@dataclass(frozen=True)
class SyncEndpoint:
    """Where a transport meets: the sender hosts the store at ``host:port``."""

    host: str
    port: int
    world_size: int
    backend: str  # "gloo", "nccl" or "shared"
    timeout_s: float = 300.0

    @property
    def timeout(self) -> timedelta:
        return timedelta(seconds=self.timeout_s)


class TransportError(RuntimeError):
    """A transfer failed because the other side went away (a peer process died, the group was torn down)."""


class Transport(ABC):
    """One side of a weight transport: the sender sends every bucket of a plan, receivers stream them."""

    @abstractmethod
    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], plan: Plan) -> int:
        """Send every bucket of ``plan``; tensors arrive in plan order. Returns the bytes sent."""

    @abstractmethod
    def receive(self, plan: Plan) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Yield each bucket as a list of ``(name, view)`` as it arrives. The views point into a
        buffer that a later bucket reuses: they are valid until the next bucket is requested."""

    @abstractmethod
    def close(self) -> None:
        """Release the communicator or buffers; the transport cannot be used afterwards."""


class BroadcastTransport(Transport):
    """One member of a weight-broadcast group (rank 0 sends, the others receive)."""

    def __init__(self, endpoint: SyncEndpoint, rank: int):
        self.endpoint, self.rank = endpoint, rank
        timeout = endpoint.timeout
        store = dist.TCPStore(endpoint.host, endpoint.port, endpoint.world_size, is_master=(rank == 0), timeout=timeout)
        store = dist.PrefixStore(f"score-weights-{endpoint.port}", store)
        if endpoint.backend == "gloo":
            self.pg = dist.ProcessGroupGloo(store, rank, endpoint.world_size, timeout)
            self.device = torch.device("cpu")
        elif endpoint.backend == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout  # NCCL's watchdog aborts a collective that outlives it
            self.pg = dist.ProcessGroupNCCL(store, rank, endpoint.world_size, options)
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            raise ValueError(f"unknown broadcast backend {endpoint.backend!r}")
        self._store = store  # keep the store alive as long as the group
        self._buffers: list[torch.Tensor] | None = None

    def _broadcast(self, tensor: torch.Tensor):
        if self.pg is None:
            raise TransportError("the weight-sync group was closed")
        try:
            return self.pg.broadcast(tensor, 0)
        except RuntimeError as err:  # gloo/NCCL: a peer went away
            raise TransportError(f"weight broadcast failed: {err}") from None

    def _wait(self, work) -> None:
        try:
            work.wait(self.endpoint.timeout)
        except RuntimeError as err:
            raise TransportError(f"weight broadcast failed: {err}") from None

    def _flats(self, plan: Plan) -> list[torch.Tensor]:
        """The two bucket buffers (kept between syncs: fresh memory per bucket costs page faults), grown to fit ``plan``."""
        need = largest_bucket_bytes(plan)
        if self._buffers is None or self._buffers[0].numel() < need:
            self._buffers = [torch.empty(need, dtype=torch.uint8, device=self.device) for _ in range(2)]
        return self._buffers

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], plan: Plan) -> int:
        it = iter(named_tensors)
        buffers = self._flats(plan)
        in_flight: list = []
        sent = 0
        for i, bucket in enumerate(plan):
            if len(in_flight) == 2:  # two buckets in flight: the older one's buffer is the one to fill next
                self._wait(in_flight.pop(0))
            flat = pack(bucket_view(buffers[i % 2], bucket), bucket, it)
            in_flight.append(self._broadcast(flat))
            sent += flat.numel() * flat.element_size()
        for work in in_flight:
            self._wait(work)
        return sent

    def receive(self, plan: Plan) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Bucket i+1 is already arriving (into the other buffer) while the consumer loads bucket i."""
        buffers = self._flats(plan)
        flats = [bucket_view(buffers[i % 2], bucket) for i, bucket in enumerate(plan)]
        pending = self._broadcast(flats[0]) if plan else None
        for i, bucket in enumerate(plan):
            self._wait(pending)
            pending = self._broadcast(flats[i + 1]) if i + 1 < len(plan) else None
            yield list(unpack(flats[i], bucket))

    def close(self) -> None:
        self._buffers = None
        pg, self.pg = self.pg, None
        if pg is not None and self.endpoint.backend == "nccl":
            for name in ("shutdown", "abort"):  # frees the NCCL communicator now rather than at garbage collection
                if hasattr(pg, name):
                    getattr(pg, name)()
                    break
        self._store = None


def share_handle(tensor: torch.Tensor) -> bytes:
    """Bytes that another process on the same device turns back into ``tensor`` with :func:`open_handle`.

    torch's multiprocessing reductions do the work: CUDA tensors travel as CUDA IPC handles, CPU
    tensors move to shared memory and travel by file name (the ``file_system`` strategy: a plain
    name that can go through a store, unlike the default file-descriptor strategy, which only
    works between a process and its children). Plain ``pickle`` would copy the data instead.
    """
    if not tensor.is_cuda:
        mp.set_sharing_strategy("file_system")
    return bytes(ForkingPickler.dumps(tensor))


def open_handle(handle: bytes) -> torch.Tensor:
    """The tensor behind a :func:`share_handle` handle, in this process, on the same memory.

    For CUDA the device index travels in the handle; a colocated learner rank and generator sit in
    one placement-group bundle, so Ray shows both the same single GPU (``cuda:0``).
    """
    return pickle.loads(handle)


class SharedBufferTransport(Transport):
    """A one-to-one channel for a colocated learner rank and generator: two shared bucket buffers.

    The sender owns two byte buffers of ``capacity`` bytes on its device and hosts a ``TCPStore``;
    the receiver (the vLLM worker beside it) opens the buffers once through their handles. Per
    bucket, the sender packs into a free buffer and sets ``ready-i``; the receiver loads the bucket
    straight from the buffer and sets ``ack-i`` when it asks for the next one, which frees the
    buffer. So packing bucket i+1 overlaps the receiver's load of bucket i, and no weights leave
    the device on a GPU.
    """

    def __init__(self, endpoint: SyncEndpoint, is_sender: bool, capacity: int = 0, device: torch.device | None = None):
        self.endpoint, self.is_sender = endpoint, is_sender
        # The sender must not wait for its receiver here: it returns the address first, then the receiver joins.
        store = dist.TCPStore(endpoint.host, endpoint.port, 2, is_master=is_sender, timeout=endpoint.timeout, wait_for_workers=False)
        self.store = dist.PrefixStore(f"score-shared-{endpoint.port}", store)
        self.round = 0
        if is_sender:
            self.buffers = [torch.empty(capacity, dtype=torch.uint8, device=device or torch.device("cpu")) for _ in range(2)]
            self.store.set("handles", pickle.dumps([share_handle(b) for b in self.buffers]))
        else:
            self.buffers = [open_handle(h) for h in pickle.loads(self.store.get("handles"))]
        self.capacity = self.buffers[0].numel()

    def _key(self, kind: str, i: int) -> str:
        return f"{self.round}-{kind}-{i}"

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], plan: Plan) -> int:
        if largest_bucket_bytes(plan) > self.capacity:
            raise ValueError(f"a bucket of {largest_bucket_bytes(plan)} bytes does not fit the {self.capacity}-byte shared buffers")
        it = iter(named_tensors)
        sent = 0
        for i, bucket in enumerate(plan):
            if i >= 2:
                self.store.get(self._key("ack", i - 2))  # blocks until the receiver loaded bucket i-2
            flat = pack(bucket_view(self.buffers[i % 2], bucket), bucket, it)
            if flat.is_cuda:
                torch.cuda.current_stream(flat.device).synchronize()
            self.store.set(self._key("ready", i), "1")
            sent += flat.numel() * flat.element_size()
        for i in range(max(0, len(plan) - 2), len(plan)):
            self.store.get(self._key("ack", i))
        self.round += 1
        return sent

    def receive(self, plan: Plan) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Views straight into the shared buffer (no copy); a bucket is acknowledged when the next is asked for."""
        for i, bucket in enumerate(plan):
            self.store.get(self._key("ready", i))
            flat = bucket_view(self.buffers[i % 2], bucket)
            yield list(unpack(flat, bucket))
            if flat.is_cuda:  # the consumer's copies are asynchronous: finish them before the sender may overwrite the buffer
                torch.cuda.current_stream(flat.device).synchronize()
            self.store.set(self._key("ack", i), "1")
        self.round += 1

    def close(self) -> None:
        self.buffers = []
        self.store = None


def open_transport(endpoint: SyncEndpoint, rank: int, capacity: int = 0, device: torch.device | None = None) -> Transport:
    """The transport ``endpoint.backend`` names; rank 0 is the sender (for ``shared``, the buffers' owner)."""
    if endpoint.backend == SHARED:
        return SharedBufferTransport(endpoint, is_sender=(rank == 0), capacity=capacity, device=device)
    return BroadcastTransport(endpoint, rank)
