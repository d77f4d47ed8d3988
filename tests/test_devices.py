"""The dtype decision: ``auto`` follows the CPU's bf16 instructions, a forced dtype is kept."""

import pytest

from common import devices


def test_auto_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16", "amx_tile"}))
    assert devices.resolve_dtype("auto", gpu=False) == "bfloat16"
    assert "amx_bf16" in devices.dtype_choice("auto", gpu=False)
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert devices.resolve_dtype("auto", gpu=False) == "bfloat16"
    assert not devices.bf16_emulated("bfloat16", gpu=False) and "emulated" not in devices.dtype_choice("bfloat16", gpu=False)
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert devices.resolve_dtype("auto", gpu=False) == "float32"
    assert "none of amx_bf16, avx512_bf16" in devices.dtype_choice("auto", gpu=False)
    # forcing bf16 there is allowed, and said to be slow; forcing it on a GPU or a bf16 CPU is not
    assert devices.bf16_emulated("bfloat16", gpu=False) and not devices.bf16_emulated("auto", gpu=False)
    assert "bf16 is emulated here" in devices.dtype_choice("bfloat16", gpu=False)
    assert devices.other_dtype("float32") == "bfloat16" and devices.other_dtype("bfloat16") == "float32"
    assert not devices.bf16_emulated("bfloat16", gpu=True) and devices.dtype_choice("float32", gpu=False) == "model.dtype float32 (set in the config)"
    assert devices.resolve_dtype("auto", gpu=True) == "bfloat16"
    assert devices.resolve_dtype("float32", gpu=True) == "float32" and devices.resolve_dtype("bfloat16", gpu=False) == "bfloat16"
    with pytest.raises(ValueError, match="unknown dtype"):
        devices.resolve_dtype("fp8")


def test_this_machine():
    """On this machine, auto is bf16 exactly when /proc/cpuinfo lists amx_bf16 or avx512_bf16."""
    text = open("/proc/cpuinfo").read()
    native = "amx_bf16" in text or "avx512_bf16" in text
    assert devices.resolve_dtype("auto", gpu=False) == ("bfloat16" if native else "float32")
