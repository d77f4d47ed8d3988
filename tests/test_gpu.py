"""Checks that need a CUDA device and nothing else of the stack (no Ray, no vLLM): they run on a lent GPU
machine (``scripts/gpu_check.sh``) and are skipped on CPU with a reason. The learner tests in
``tests/test_learner.py`` also run there: the learner core picks the GPU when one is visible."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.gpu
def test_cuda_ipc_handle_opens_the_same_gpu_memory():
    if not torch.cuda.is_available():
        pytest.skip("CUDA IPC needs a GPU; the same share/open code runs on CPU shared memory (tests/test_generation.py)")
    import torch.multiprocessing as mp

    from weight_sync.transports import share_handle

    t = torch.arange(8, dtype=torch.float32, device="cuda")
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        total = pool.apply(_sum_of_handle, (share_handle(t),))
    assert total == float(t.sum())


def _sum_of_handle(handle) -> float:
    from weight_sync.transports import open_handle

    return float(open_handle(handle).sum())
