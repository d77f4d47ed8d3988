"""The vLLM engine arguments each shipped config produces, on a GPU node and on a CPU node, as plain data
(pure logic: no engine is started; the CPU engines themselves start in tests/test_generation.py)."""

from pathlib import Path

import pytest

from actors.engine import engine_args
from cluster.config import load_config
from cluster.trainer import generator_engine_kwargs
from common.devices import resolve_dtype

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def _args(cfg, gpu):
    dtype = resolve_dtype(cfg.model.dtype, gpu=gpu)
    return engine_args("/models/m", gpu=gpu, seed=cfg.run.seed, tensor_parallel_size=cfg.rollout.tensor_parallel_size,
                       **generator_engine_kwargs(cfg, gpu, dtype))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_gpu_engines_of_every_config(path):
    cfg = load_config(path)
    args = _args(cfg, gpu=True)
    tp = cfg.rollout.tensor_parallel_size
    assert args["model"] == "/models/m" and args["tensor_parallel_size"] == tp and args["dtype"] in ("bfloat16", "float16", "float32")
    assert args["gpu_memory_utilization"] == cfg.rollout.gpu_memory_utilization and args["max_model_len"] == cfg.rollout.max_model_len
    # vLLM 0.32 would pick its ray executor for TP > 1 inside the actor's placement-group bundle and refuse it
    assert args.get("distributed_executor_backend") == ("mp" if tp > 1 else None)
    assert "kv_cache_memory_bytes" not in args and "enforce_eager" not in args


def test_a_tensor_parallel_config_gets_the_mp_executor():
    cfg = load_config(None, ["rollout.tensor_parallel_size=2"])
    assert _args(cfg, gpu=True)["distributed_executor_backend"] == "mp"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_cpu_engines_of_every_config(path):
    cfg = load_config(path)
    if cfg.rollout.tensor_parallel_size > 1:
        with pytest.raises(ValueError, match="tensor parallelism needs GPUs"):
            _args(cfg, gpu=False)
        return
    args = _args(cfg, gpu=False)
    assert args["enforce_eager"] is True and args["kv_cache_memory_bytes"] == int(cfg.rollout.cpu_kv_cache_gb * (1 << 30))
    assert "distributed_executor_backend" not in args and "gpu_memory_utilization" not in args and "tensor_parallel_size" not in args


# --------------------------------------------------------------------------- run.device: which stack a job builds


def test_the_gpus_a_run_places():
    from cluster.trainer import required_gpus

    assert required_gpus(load_config(Path(CONFIGS[0].parent / "math_7b_8gpu.yaml"))) == 8  # 4 learner ranks + 4 generators
    assert required_gpus(load_config(Path(CONFIGS[0].parent / "math_7b_8gpu_colocated.yaml"))) == 8  # 8 shared GPUs
    assert required_gpus(load_config(None, ["learner.num_ranks=2", "rollout.problems_per_iteration=8", "rollout.num_generators=2",
                                            "rollout.tensor_parallel_size=2", "learner.reference_placement=separate",
                                            "learner.reference_actors=3"])) == 2 + 4 + 3


def test_run_device_decides_the_stack_on_a_cluster_without_gpus(ray_local):
    """On this CPU-only local Ray: auto and cpu build the CPU stack; gpu asks for the GPUs, waits its deadline, and
    says in one line what it waited for."""
    import time

    from cluster.config import ConfigError
    from cluster.trainer import use_gpus

    assert use_gpus(load_config(None, ["run.device=auto"])) is False
    assert use_gpus(load_config(None, ["run.device=cpu"])) is False
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"run.device=gpu: waited 1 s for the 2 GPUs this run places .* the cluster has 0"):
        use_gpus(load_config(None, ["run.device=gpu", "run.gpu_wait_s=1"]), poll_s=0.2)
    assert time.monotonic() - start < 30
