"""Moving weights from the learner to the generators: bucket plans and one broadcast group.

One process group spans the publisher (rank 0, on learner rank 0) and every vLLM worker
(ranks 1..N): NCCL on GPUs, gloo on CPU, and the same code otherwise. The group is built from a
private ``TCPStore`` and a backend ``ProcessGroup`` object, so it never touches the default
``torch.distributed`` group that DeepSpeed or vLLM already own in the same process.

Weights move in buckets: parameters of one dtype are packed into a flat tensor of at most
``bucket_bytes`` (a parameter larger than that travels alone), and each bucket is one broadcast.
The publisher keeps up to two broadcasts in flight, so packing the next bucket overlaps sending
the previous one where the backend allows. The plan (names, shapes, dtypes, bucket boundaries)
travels once per publish as plain Python data over Ray; only tensors go through the group.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator

import torch

DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64)}


@dataclass(frozen=True)
class ParamSpec:
    """One tensor in a publish: its name as the generator's loader expects it, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=DTYPES[self.dtype]).element_size()


def spec_of(name: str, tensor: torch.Tensor) -> ParamSpec:
    return ParamSpec(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))


def plan_buckets(specs: Iterable[ParamSpec], bucket_bytes: int) -> list[list[ParamSpec]]:
    """Group parameters, in order, into buckets of one dtype and at most ``bucket_bytes`` each."""
    if bucket_bytes <= 0:
        raise ValueError("bucket_bytes must be positive")
    buckets: list[list[ParamSpec]] = []
    current: list[ParamSpec] = []
    size = 0
    for spec in specs:
        if spec.dtype not in DTYPES:
            raise ValueError(f"cannot publish {spec.name}: unsupported dtype {spec.dtype}")
        if current and (size + spec.nbytes > bucket_bytes or spec.dtype != current[0].dtype):
            buckets.append(current)
            current, size = [], 0
        current.append(spec)
        size += spec.nbytes
    if current:
        buckets.append(current)
    return buckets


def plan_to_wire(plan: list[list[ParamSpec]]) -> list[list[tuple[str, list[int], str]]]:
    """The plan as plain lists (msgpack- and Ray-friendly)."""
    return [[(s.name, list(s.shape), s.dtype) for s in bucket] for bucket in plan]


def plan_from_wire(wire: list[list[tuple[str, list[int], str]]]) -> list[list[ParamSpec]]:
    return [[ParamSpec(n, tuple(shape), dt) for n, shape, dt in bucket] for bucket in wire]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - fall back to loopback outside Ray
        pass
    return "127.0.0.1"


def actor_placement() -> dict:
    """Where Ray put the calling actor: node, placement group, assigned resources (colocation checks)."""
    import ray

    ctx = ray.get_runtime_context()
    return {"node": ctx.get_node_id(), "placement_group": ctx.get_placement_group_id(), "resources": ctx.get_assigned_resources()}


@dataclass(frozen=True)
class SyncEndpoint:
    """Where a sync group meets: the publisher hosts the store at ``host:port``."""

    host: str
    port: int
    world_size: int
    backend: str  # "gloo" or "nccl"
    timeout_s: float = 300.0


class SyncGroup:
    """One member of a weight-broadcast group (rank 0 publishes, the others receive)."""

    def __init__(self, endpoint: SyncEndpoint, rank: int):
        import torch.distributed as dist

        self.endpoint, self.rank = endpoint, rank
        timeout = timedelta(seconds=endpoint.timeout_s)
        store = dist.TCPStore(
            endpoint.host, endpoint.port, endpoint.world_size, is_master=(rank == 0), timeout=timeout
        )
        store = dist.PrefixStore(f"score-weights-{endpoint.port}", store)
        if endpoint.backend == "gloo":
            self.pg = dist.ProcessGroupGloo(store, rank, endpoint.world_size, timeout)
            self.device = torch.device("cpu")
        elif endpoint.backend == "nccl":
            self.pg = dist.ProcessGroupNCCL(store, rank, endpoint.world_size)
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            raise ValueError(f"unknown sync backend {endpoint.backend!r}")
        self._store = store  # keep the store alive as long as the group

    def broadcast(self, tensor: torch.Tensor):
        return self.pg.broadcast(tensor, 0)

    def close(self) -> None:
        self.pg = None


def _pack(flat: torch.Tensor, bucket: list[ParamSpec], tensors: Iterator[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """Copy the next ``len(bucket)`` tensors into ``flat`` in plan order (checking the order); returns ``flat``."""
    offset = 0
    for spec in bucket:
        name, tensor = next(tensors)
        if name != spec.name or tuple(tensor.shape) != spec.shape:
            raise RuntimeError(f"publish order broke: expected {spec.name}{spec.shape}, got {name}{tuple(tensor.shape)}")
        flat[offset : offset + spec.numel].copy_(tensor.detach().reshape(-1))
        offset += spec.numel
    return flat


def _unpack(flat: torch.Tensor, bucket: list[ParamSpec]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, view)`` for every parameter packed in ``flat``."""
    offset = 0
    for spec in bucket:
        yield spec.name, flat[offset : offset + spec.numel].view(spec.shape)
        offset += spec.numel


def publish(group: SyncGroup, named_tensors: Iterable[tuple[str, torch.Tensor]], plan: list[list[ParamSpec]]) -> int:
    """Rank 0: broadcast every bucket of ``plan``; tensors arrive in plan order. Returns bytes sent."""
    it = iter(named_tensors)
    in_flight: list = []
    sent = 0
    for bucket in plan:
        dtype = DTYPES[bucket[0].dtype]
        flat = _pack(torch.empty(sum(s.numel for s in bucket), dtype=dtype, device=group.device), bucket, it)
        in_flight.append((group.broadcast(flat), flat))
        sent += flat.numel() * flat.element_size()
        if len(in_flight) > 1:  # two buckets in flight: pack the next while this one goes
            work, _ = in_flight.pop(0)
            work.wait()
    for work, _ in in_flight:
        work.wait()
    return sent


def receive(group: SyncGroup, plan: list[list[ParamSpec]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Ranks 1..N: yield ``(name, tensor)`` as each bucket arrives (a stream for ``reload_weights``)."""
    for bucket in plan:
        flat = torch.empty(sum(s.numel for s in bucket), dtype=DTYPES[bucket[0].dtype], device=group.device)
        group.broadcast(flat).wait()
        yield from _unpack(flat, bucket)


# -- colocated mode: buckets through shared memory (CUDA IPC on a GPU) ---------------------------


def share_handle(tensor: torch.Tensor) -> bytes:
    """Bytes that another process on the same device turns back into ``tensor`` with :func:`open_handle`.

    torch's multiprocessing reductions do the work: CUDA tensors travel as CUDA IPC handles, CPU
    tensors move to shared memory and travel by file name (the ``file_system`` strategy: a plain
    name that can go through a store, unlike the default file-descriptor strategy, which only
    works between a process and its children). Plain ``pickle`` would copy the data instead.
    """
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing as mp

    if not tensor.is_cuda:
        mp.set_sharing_strategy("file_system")
    return bytes(ForkingPickler.dumps(tensor))


def open_handle(handle: bytes) -> torch.Tensor:
    """The tensor behind a :func:`share_handle` handle, in this process, on the same memory.

    For CUDA the device index travels in the handle; a colocated learner rank and generator sit in
    one placement-group bundle, so Ray shows both the same single GPU (``cuda:0``).
    """
    import pickle

    import torch.multiprocessing  # noqa: F401 - registers the rebuild functions

    return pickle.loads(handle)


class SharedBuckets:
    """A one-to-one channel for colocated learner and generator: two shared bucket buffers.

    The publisher (learner rank j) owns two byte buffers of ``capacity`` bytes on its device and
    hosts a ``TCPStore``; the receiver (the vLLM worker beside it) opens the buffers once through
    their handles. Per bucket, the publisher packs into a free buffer and sets ``ready-i``; the
    receiver copies the bucket out and sets ``ack-i``, which frees the buffer. So packing bucket
    i+1 overlaps the receiver's copy of bucket i, and no weights leave the device on a GPU.
    """

    def __init__(self, endpoint: SyncEndpoint, is_publisher: bool, capacity: int = 0, device: torch.device | None = None):
        import pickle

        import torch.distributed as dist

        self.endpoint, self.is_publisher = endpoint, is_publisher
        # The publisher must not wait for its receiver here: it returns the address first, then the receiver joins.
        store = dist.TCPStore(endpoint.host, endpoint.port, 2, is_master=is_publisher,
                              timeout=timedelta(seconds=endpoint.timeout_s), wait_for_workers=False)
        self.store = dist.PrefixStore(f"score-shared-{endpoint.port}", store)
        self.round = 0
        if is_publisher:
            self.buffers = [torch.empty(capacity, dtype=torch.uint8, device=device or torch.device("cpu")) for _ in range(2)]
            self.store.set("handles", pickle.dumps([share_handle(b) for b in self.buffers]))
        else:
            self.buffers = [open_handle(h) for h in pickle.loads(self.store.get("handles"))]
        self.capacity = self.buffers[0].numel()

    def _key(self, kind: str, i: int) -> str:
        return f"{self.round}-{kind}-{i}"

    def close(self) -> None:
        self.buffers = []


def shared_capacity(plan: list[list[ParamSpec]]) -> int:
    """Bytes one buffer needs for ``plan``: its largest bucket."""
    return max(sum(s.nbytes for s in bucket) for bucket in plan)


def _bucket_view(buffer: torch.Tensor, bucket: list[ParamSpec]) -> torch.Tensor:
    dtype = DTYPES[bucket[0].dtype]
    numel = sum(s.numel for s in bucket)
    return buffer[: numel * torch.empty((), dtype=dtype).element_size()].view(dtype)


def publish_shared(channel: SharedBuckets, named_tensors: Iterable[tuple[str, torch.Tensor]], plan: list[list[ParamSpec]]) -> int:
    """The publisher's side of :class:`SharedBuckets`: every bucket of ``plan``, two in flight. Returns bytes."""
    if shared_capacity(plan) > channel.capacity:
        raise ValueError(f"a bucket of {shared_capacity(plan)} bytes does not fit the {channel.capacity}-byte shared buffers")
    it = iter(named_tensors)
    sent = 0
    for i, bucket in enumerate(plan):
        if i >= 2:
            channel.store.get(channel._key("ack", i - 2))  # blocks until the receiver copied bucket i-2
        flat = _pack(_bucket_view(channel.buffers[i % 2], bucket), bucket, it)
        if flat.is_cuda:
            torch.cuda.current_stream(flat.device).synchronize()
        channel.store.set(channel._key("ready", i), "1")
        sent += flat.numel() * flat.element_size()
    for i in range(max(0, len(plan) - 2), len(plan)):
        channel.store.get(channel._key("ack", i))
    channel.round += 1
    return sent


def receive_shared(channel: SharedBuckets, plan: list[list[ParamSpec]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The receiver's side: yield ``(name, tensor)`` per parameter; each bucket is copied out before its ack."""
    for i, bucket in enumerate(plan):
        channel.store.get(channel._key("ready", i))
        flat = _bucket_view(channel.buffers[i % 2], bucket).clone()
        if flat.is_cuda:  # the copy is asynchronous: finish it before the publisher may overwrite the buffer
            torch.cuda.current_stream(flat.device).synchronize()
        channel.store.set(channel._key("ack", i), "1")
        yield from _unpack(flat, bucket)
    channel.round += 1
