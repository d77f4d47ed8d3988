"""The learner's end of the weight transport: one transport per learner rank, replaced (closed
first) whenever the manager rebuilds; a rank without one gathers and discards (ZeRO-3 needs every
rank to iterate the full weights)."""

from __future__ import annotations

from typing import Iterable

import torch

from weight_sync.buckets import Plan
from weight_sync.transports import SyncEndpoint, Transport, open_transport


class WeightSender:
    """Owns a learner rank's transport (rank 0 of a broadcast group, or the owner of shared buffers)."""

    def __init__(self):
        self.transport: Transport | None = None

    def open(self, endpoint: SyncEndpoint, capacity: int = 0, device: torch.device | None = None) -> None:
        self.close()
        self.transport = open_transport(endpoint, 0, capacity=capacity, device=device)

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], plan: Plan) -> int:
        if self.transport is None:
            for _ in named_tensors:  # take part in the gathers all the same
                pass
            return 0
        return self.transport.send(named_tensors, plan)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.transport = None
