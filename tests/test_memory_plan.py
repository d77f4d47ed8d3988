"""The memory plan (cluster/memory_plan.py): its numbers against hand computation for the embedded 135M model
and a 7B config, against the CPU learner's measured peak, and the refusal of configs that do not fit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cluster.config import ConfigError, load_config
from cluster.memory_plan import GiB, ModelShape, check_fits, learner_items, memory_plan
from tests.conftest import REPO

# SmolLM2-135M by hand: tied embedding 49152 x 576; 30 layers of q, o 576 x 576, k, v 576 x 192 (3 KV heads of 64),
# gate, up, down 576 x 1536, two norms; a final norm
N_135M = 49152 * 576 + 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576) + 576
# Qwen2.5-7B by hand: untied 152064 x 3584 embedding and head; 28 layers of q, o 3584^2 (+ q bias), k, v 3584 x 512
# (+ biases), MLP 3 x 3584 x 18944, two norms; a final norm
N_7B = 2 * 152064 * 3584 + 28 * (2 * 3584 * 3584 + 3584 + 2 * (3584 * 512 + 512) + 3 * 3584 * 18944 + 2 * 3584) + 3584


def _qwen7b():
    from transformers import Qwen2Config

    return ModelShape.from_config(Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                              num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False))


def test_the_parameter_count_is_the_models(model_path):
    shape = ModelShape.of(model_path)
    assert shape.parameters == N_135M == 134_515_008
    assert (shape.hidden, shape.layers, shape.vocab, shape.kv_heads, shape.head_dim) == (576, 30, 49152, 3, 64)
    assert _qwen7b().parameters == N_7B


def test_a_7b_learner_rank_under_zero3_as_computed_by_hand():
    """The audit's figure: 4 ZeRO-3 ranks hold (2 + 2 + 4 + 8) N / 4 bytes of states each (30 GB for 7.6B), and the
    bf16 reference 2N (15 GB) more: over the 40 GB of the A100s ray_cluster.yaml used to name, within 80 GB."""
    cfg = load_config(REPO / "configs" / "math_7b_8gpu.yaml")
    items = learner_items(cfg, _qwen7b(), "bfloat16")
    states = sum(v for k, v in items.items() if k.startswith(("parameters", "gradients (shard)", "fp32 master", "Adam")))
    assert states == pytest.approx(16 * N_7B / 4) and states / 1e9 == pytest.approx(30.46, abs=0.01)
    assert items["frozen reference policy"] == 2 * N_7B
    plan40, plan80 = memory_plan(cfg, _qwen7b(), "bfloat16", 40), memory_plan(cfg, _qwen7b(), "bfloat16", 80)
    assert plan40.startup == plan80.startup == pytest.approx(4 * N_7B + 2 * GiB)  # the whole model and the reference, before partitioning
    with pytest.raises(ConfigError, match=r"the learner rank GPU needs about \d+\.\d GiB of 40 GiB .* the largest item is") as err:
        check_fits(plan40)
    assert "\n" not in str(err.value)
    check_fits(plan80)


@pytest.mark.parametrize("name", ["math_7b_8gpu.yaml", "math_7b_8gpu_colocated.yaml", "code_mbpp_8gpu.yaml"])
def test_the_shipped_gpu_configs_fit_the_gpus_they_name(name):
    cfg = load_config(REPO / "configs" / name)
    plan = memory_plan(cfg, _qwen7b(), "bfloat16")
    check_fits(plan)
    assert all(d.total <= 0.9 * plan.capacity for d in plan.devices), plan.table()  # a tenth left for what the plan leaves out


def test_a_colocated_gpu_holds_the_learner_beside_vllm_while_generating():
    cfg = load_config(REPO / "configs" / "math_7b_8gpu_colocated.yaml")
    plan = memory_plan(cfg, _qwen7b(), "bfloat16")
    (gpu,) = plan.devices
    assert gpu.peak_note == "while generating"
    assert gpu.items["vLLM: vLLM weights (per TP worker)"] + gpu.items["vLLM: vLLM KV cache (the rest of gpu_memory_utilization's share)"] == \
        pytest.approx(cfg.rollout.gpu_memory_utilization * plan.capacity)
    assert "learner: Adam moments, fp32 (shard)" in gpu.items and not any("activations" in k for k in gpu.items)


def test_vllm_needs_room_for_one_sequence_of_kv_cache():
    cfg = load_config(REPO / "configs" / "math_7b_8gpu.yaml", ["rollout.gpu_memory_utilization=0.17"])
    with pytest.raises(ConfigError, match="leaves 0.0 GiB for the KV cache"):
        check_fits(memory_plan(cfg, _qwen7b(), "bfloat16"))


def _measure(model_path: str) -> tuple[float, float]:
    """In a fresh process: the CPU learner's peak resident memory over one update, and the plan's learner items."""
    import torch  # noqa: F401  (loaded before the measurement starts)

    from learner.core import LearnerCore, LearnerSettings
    from tests.batches import ONE_REWARDED, build_batch
    from common.memory import reset_peak_rss, status_mib

    batch = build_batch(model_path, ONE_REWARDED)
    reset_peak_rss()
    base = status_mib("VmRSS") * 2**20
    core = LearnerCore(LearnerSettings(model_path=model_path, lr=1e-5, rows_per_micro_batch=4, rows_per_rank=4, k=2, dtype="float32"))
    core.update(batch, 2)
    peak = status_mib("VmHWM") * 2**20 - base
    length = max(len(a) + len(b) for a, b in zip(batch["a2_prompt_ids"].to_pylist(), batch["a2_response_ids"].to_pylist()))
    cfg = load_config(None, ["learner.micro_batch_size=4", f"rollout.max_model_len={max(64, length)}", "rollout.attempt1.max_tokens=16",
                             "rollout.attempt2.max_tokens=16"])
    items = learner_items(cfg, ModelShape.of(model_path), "float32")
    planned = sum(v for k, v in items.items() if not k.startswith(("CUDA", "weight-sync")))  # no GPU, no sync here
    return peak, planned


def test_the_plan_is_within_a_third_of_the_cpu_learners_measured_peak(model_path):
    """One float32 ZeRO-2 update of the embedded model in a process of its own: the plan's learner items (without the
    GPU-only ones) against the peak resident memory. The CPU peak also holds what loading maps (the safetensors
    pages of the policy and the reference), which the plan does not count: measured 2026-12-02, plan 3.8 GiB,
    peak 4.7 GiB."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        peak, planned = pool.apply(_measure, (model_path,))
    assert 0.67 < planned / peak < 1.33, (planned / GiB, peak / GiB)


def test_the_plan_command_prints_the_table_and_says_what_does_not_fit():
    proc = subprocess.run([sys.executable, "-m", "cluster.main", "plan"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "learner rank (x1)" in proc.stdout and "Adam moments" in proc.stdout and "generator GPU (x1)" in proc.stdout
    small = subprocess.run([sys.executable, "-m", "cluster.main", "plan", "--gpu-memory-gb", "2"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert small.returncode == 1 and "DOES NOT FIT" in small.stdout and "does not fit: the learner rank GPU needs about" in small.stdout
