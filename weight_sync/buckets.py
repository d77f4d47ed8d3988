"""Bucket plans: which parameters travel together, and packing them into one flat tensor.

Parameters of one dtype are packed, in order, into a flat tensor of at most ``bucket_bytes`` (a
parameter larger than that travels alone). The plan (names, shapes, dtypes, bucket boundaries)
travels once per sync as plain Python data; only the flat tensors go through a transport.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from common.devices import DTYPES


@dataclass(frozen=True)
class ParamSpec:
    """One tensor in a sync: its name as the generator's loader expects it, shape and dtype."""

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


Plan = list[list[ParamSpec]]
WirePlan = list[list[tuple[str, list[int], str]]]


def spec_of(name: str, tensor: torch.Tensor) -> ParamSpec:
    return ParamSpec(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))


def plan_buckets(specs: Iterable[ParamSpec], bucket_bytes: int) -> Plan:
    """Group parameters, in order, into buckets of one dtype and at most ``bucket_bytes`` each."""
    if bucket_bytes <= 0:
        raise ValueError("bucket_bytes must be positive")
    buckets: Plan = []
    current: list[ParamSpec] = []
    size = 0
    for spec in specs:
        if spec.dtype not in DTYPES:
            raise ValueError(f"cannot sync {spec.name}: unsupported dtype {spec.dtype}")
        if current and (size + spec.nbytes > bucket_bytes or spec.dtype != current[0].dtype):
            buckets.append(current)
            current, size = [], 0
        current.append(spec)
        size += spec.nbytes
    if current:
        buckets.append(current)
    return buckets


def plan_to_wire(plan: Plan) -> WirePlan:
    """The plan as plain lists (msgpack- and Ray-friendly)."""
    return [[(s.name, list(s.shape), s.dtype) for s in bucket] for bucket in plan]


def plan_from_wire(wire: WirePlan) -> Plan:
    return [[ParamSpec(n, tuple(shape), dt) for n, shape, dt in bucket] for bucket in wire]


def bucket_numel(bucket: list[ParamSpec]) -> int:
    return sum(s.numel for s in bucket)


def bucket_dtype(bucket: list[ParamSpec]) -> torch.dtype:
    return DTYPES[bucket[0].dtype]


def largest_bucket_bytes(plan: Plan) -> int:
    """Bytes one buffer needs to hold any bucket of ``plan``."""
    return max(sum(s.nbytes for s in bucket) for bucket in plan)


def bucket_view(buffer: torch.Tensor, bucket: list[ParamSpec]) -> torch.Tensor:
    """The first bytes of the byte tensor ``buffer`` as a flat tensor of the bucket's dtype and size."""
    dtype = bucket_dtype(bucket)
    return buffer[: bucket_numel(bucket) * torch.empty((), dtype=dtype).element_size()].view(dtype)


def pack(flat: torch.Tensor, bucket: list[ParamSpec], tensors: Iterator[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """Copy the next ``len(bucket)`` tensors into ``flat`` in plan order (checking the order); returns ``flat``."""
    offset = 0
    for spec in bucket:
        name, tensor = next(tensors)
        if name != spec.name or tuple(tensor.shape) != spec.shape:
            raise RuntimeError(f"sync order broke: expected {spec.name}{spec.shape}, got {name}{tuple(tensor.shape)}")
        flat[offset : offset + spec.numel].copy_(tensor.detach().reshape(-1))
        offset += spec.numel
    return flat


def unpack(flat: torch.Tensor, bucket: list[ParamSpec]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, view)`` for every parameter packed in ``flat``."""
    offset = 0
    for spec in bucket:
        yield spec.name, flat[offset : offset + spec.numel].view(spec.shape)
        offset += spec.numel
