"""The memory plan: each GPU's bytes, estimated from the model's config and the run's, before anything starts.

``python -m cluster.main plan --config ...`` prints it; ``train`` on a GPU cluster refuses a config that does
not fit, in one line naming the largest item and what to change. The numbers are estimates with stated
rules (below), checked in the tests against hand computation for the 135M and a 7B config and against the
CPU learner's measured peak; treat a GPU within ~10% of full as not fitting.

Per learner rank (N parameters, W ranks, ``p`` bytes per parameter in the model's dtype):

- ZeRO-2: parameters ``p*N``, gradients ``p*N / W`` plus DeepSpeed's reduce bucket (``p * min(5e8, N)``),
  fp32 master weights ``4N / W`` (DeepSpeed keeps its own fp32 partition in float32 runs too), Adam moments
  ``8N / W``.
- ZeRO-3: parameters ``p*N / W``, gradients, bucket, masters and moments as ZeRO-2, and the parameters gathered
  at once (``p * min(1e9, N)``, ``stage3_max_live_parameters``). Without ``zero.Init``
  DeepSpeed first moves the whole model onto the GPU and then partitions it: a start-up peak of ``p*N`` plus
  the reference.
- The frozen reference (``learner.reference_placement: learner``): ``p*N`` on every rank.
- Activations per micro-batch of ``b`` rows of ``s`` tokens (hidden ``h``, ``L`` layers, flash attention):
  ``34*s*b*h`` bytes per layer (Korthikanti et al., 2022) without gradient checkpointing; with it, each
  layer's input (``2*s*b*h``) plus one layer's ``34*s*b*h``. ``s`` is ``rollout.max_model_len`` (an upper bound).
- The log-probs head: ``3 * 4 * V`` bytes per position scored at once (fp32 logits, their softmax and gradient),
  ``min(learner.logprob_chunk_positions, b * (max_tokens1 + max_tokens2))`` positions.
- Weight sync: rank 0 keeps two bucket buffers (``rollout.sync_bucket_mb``); so does every vLLM worker.
- CUDA context, NCCL and allocator slack: 2 GiB per process.

Per generator GPU: vLLM takes ``rollout.gpu_memory_utilization`` of the GPU for its weights (``p*N / TP``) and KV
cache; the weights must fit in that share with room for one ``max_model_len`` sequence of KV cache
(``2 * L * kv_heads * head_dim * p`` bytes per token). Colocated, a GPU holds a learner rank and a generator:
during generation the learner's states and reference stay (unless offloaded) beside vLLM's share; during the
update vLLM sleeps (weights to CPU, KV cache freed) and the learner's activations take the room.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cluster.config import ConfigError, ScoreConfig

GiB = 1 << 30
CONTEXT_BYTES = 2 * GiB
REDUCE_BUCKET = 500_000_000  # DeepSpeed 0.19's default zero_optimization.reduce_bucket_size (elements)
MAX_LIVE_PARAMETERS = 1_000_000_000  # and stage3_max_live_parameters
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model: parameter count and the shapes that size activations and the KV cache."""

    parameters: int
    hidden: int
    layers: int
    vocab: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """From a transformers config: the parameters counted on a model built on the meta device (no memory)."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(parameters=sum(p.numel() for p in model.parameters()), hidden=text.hidden_size, layers=text.num_hidden_layers,
                   vocab=text.vocab_size, kv_heads=getattr(text, "num_key_value_heads", None) or heads, head_dim=head_dim)

    @classmethod
    def of(cls, model_path: str) -> ModelShape:
        from transformers import AutoConfig

        return cls.from_config(AutoConfig.from_pretrained(model_path))


@dataclass
class DevicePlan:
    """One kind of GPU in the run (a learner rank's, a generator's, a colocated pair's) and its items in bytes."""

    name: str
    count: int
    items: dict[str, float] = field(default_factory=dict)
    peak_note: str = ""

    @property
    def total(self) -> float:
        return sum(self.items.values())

    def largest(self) -> tuple[str, float]:
        return max(self.items.items(), key=lambda kv: kv[1])


@dataclass
class MemoryPlan:
    """Every GPU kind of a run against one GPU's capacity, the ZeRO-3 start-up peak and one sequence's KV cache."""

    capacity: float
    devices: list[DevicePlan]
    startup: float = 0.0
    kv_needed: float = 0.0

    def over(self) -> list[DevicePlan]:
        return [d for d in self.devices if d.total > self.capacity]

    def table(self) -> str:
        lines = [f"memory plan, per GPU of {self.capacity / GiB:.0f} GiB (run.gpu_memory_gb)"]
        if self.startup:
            lines.append(f"ZeRO-3 start-up peak per learner GPU (the whole model before partitioning): {self.startup / GiB:.1f} GiB")
        for d in self.devices:
            state = "fits" if d.total <= self.capacity else "DOES NOT FIT"
            lines.append(f"\n{d.name} (x{d.count}): {d.total / GiB:.1f} GiB, {state}{' - ' + d.peak_note if d.peak_note else ''}")
            lines += [f"  {name:<58} {value / GiB:8.2f} GiB" for name, value in d.items.items()]
        return "\n".join(lines)


def learner_items(cfg: ScoreConfig, shape: ModelShape, dtype: str) -> dict[str, float]:
    """One learner rank's items during an update (see the module docstring)."""
    l, r = cfg.learner, cfg.rollout
    n, w, p = shape.parameters, l.num_ranks, DTYPE_BYTES[dtype]
    items: dict[str, float] = {}
    items["parameters" + (" (ZeRO-3 shard)" if l.zero_stage == 3 else "")] = p * n / (w if l.zero_stage == 3 else 1)
    items["gradients (shard)"] = p * n / w
    items["gradient reduce bucket (reduce_bucket_size, 5e8 elements)"] = p * min(REDUCE_BUCKET, n)
    if l.zero_stage == 3:
        items["gathered parameters (stage3_max_live_parameters, 1e9)"] = p * min(MAX_LIVE_PARAMETERS, n)
    items["fp32 master weights (shard)"] = 4 * n / w  # DeepSpeed keeps its own fp32 partition, in float32 runs too
    items["Adam moments, fp32 (shard)"] = 8 * n / w
    if l.reference_placement == "learner":
        items["frozen reference policy"] = p * n
    s, b, h = r.max_model_len, l.micro_batch_size, shape.hidden
    per_layer = 34 * s * b * h
    items["activations, one micro-batch" + (" (checkpointed)" if l.gradient_checkpointing else "")] = (
        shape.layers * 2 * s * b * h + per_layer if l.gradient_checkpointing else shape.layers * per_layer)
    positions = b * (r.attempt1.max_tokens + (cfg.algorithm.attempts - 1) * r.attempt2.max_tokens)
    if l.logprob_chunk_positions:
        positions = min(positions, l.logprob_chunk_positions)
    items["log-probs head, fp32 logits"] = 3 * 4 * shape.vocab * positions
    items["weight-sync bucket buffers (rank 0)"] = 2 * r.sync_bucket_mb * (1 << 20)
    items["CUDA context, NCCL, allocator slack"] = CONTEXT_BYTES
    return items


def generator_items(cfg: ScoreConfig, shape: ModelShape, dtype: str, capacity: float) -> dict[str, float]:
    r = cfg.rollout
    p = DTYPE_BYTES[dtype]
    share = r.gpu_memory_utilization * capacity
    weights = p * shape.parameters / r.tensor_parallel_size
    kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * p / r.tensor_parallel_size
    return {"vLLM weights (per TP worker)": weights,
            "vLLM KV cache (the rest of gpu_memory_utilization's share)": max(share - weights, 0.0),
            "weight-sync bucket buffers": 2 * r.sync_bucket_mb * (1 << 20),
            "CUDA context, NCCL, allocator slack": CONTEXT_BYTES,
            "_kv_needed": kv_per_token * r.max_model_len}


def memory_plan(cfg: ScoreConfig, shape: ModelShape, dtype: str, capacity_gb: float | None = None) -> MemoryPlan:
    """Every GPU kind of the run, with its items; ``capacity_gb`` defaults to ``run.gpu_memory_gb``."""
    capacity = (capacity_gb or cfg.run.gpu_memory_gb) * GiB
    learner = learner_items(cfg, shape, dtype)
    gen = generator_items(cfg, shape, dtype, capacity)
    kv_needed = gen.pop("_kv_needed")
    n, p = shape.parameters, DTYPE_BYTES[dtype]
    devices = []
    startup = (p * n + learner.get("frozen reference policy", 0.0) + CONTEXT_BYTES) if cfg.learner.zero_stage == 3 else 0.0
    if cfg.rollout.colocate_with_learner:
        resident = {k: v for k, v in learner.items() if not k.startswith(("activations", "log-probs"))}
        if cfg.learner.offload_states_during_generation:
            resident = {k: v for k, v in resident.items() if not k.startswith(("gradients", "fp32 master", "Adam"))}
        generating = {**{f"learner: {k}": v for k, v in resident.items()},
                      **{f"vLLM: {k}": v for k, v in gen.items() if not k.startswith(("CUDA", "weight-sync"))}}
        updating = {f"learner: {k}": v for k, v in learner.items()}
        worst = max((generating, updating), key=lambda items: sum(items.values()))
        devices.append(DevicePlan("colocated learner rank + generator", cfg.learner.num_ranks, worst,
                                  "while generating" if worst is generating else "during the update (vLLM asleep)"))
    else:
        devices.append(DevicePlan("learner rank", cfg.learner.num_ranks, learner))
        devices.append(DevicePlan("generator GPU", cfg.rollout.num_generators * cfg.rollout.tensor_parallel_size, gen))
    if cfg.learner.reference_placement == "separate":
        devices.append(DevicePlan("reference actor", cfg.learner.reference_actors,
                                  {"frozen reference policy": p * n, "activations, one batch": shape.layers * 34 * cfg.rollout.max_model_len * 8 * shape.hidden,
                                   "CUDA context, NCCL, allocator slack": CONTEXT_BYTES}))
    return MemoryPlan(capacity, devices, startup, kv_needed)


def check_fits(plan: MemoryPlan) -> None:
    """Raise :class:`ConfigError` (one line) for the first GPU kind that does not fit, naming its largest item."""
    cap = plan.capacity
    for d in plan.devices:
        if d.total > cap:
            name, value = d.largest()
            raise ConfigError(
                f"the {d.name} GPU needs about {d.total / GiB:.1f} GiB of {cap / GiB:.0f} GiB (run.gpu_memory_gb); the largest item is "
                f"{name} ({value / GiB:.1f} GiB): {_advice(d, name)}; see `python -m cluster.main plan`")
        kv = d.items.get("vLLM KV cache (the rest of gpu_memory_utilization's share)")
        if kv is not None and kv < plan.kv_needed:
            raise ConfigError(f"vLLM's share of the {d.name} GPU (rollout.gpu_memory_utilization) leaves {kv / GiB:.1f} GiB for the KV cache "
                              f"after the weights, less than one rollout.max_model_len sequence needs "
                              f"({plan.kv_needed / GiB:.2f} GiB): raise it or use tensor parallelism")
    if plan.startup > cap:
        raise ConfigError(f"ZeRO-3 start-up moves the whole model (and the reference) onto each learner GPU before partitioning: "
                          f"{plan.startup / GiB:.1f} GiB of {cap / GiB:.0f} GiB; use GPUs with more memory or learner.reference_placement=separate")


def _advice(device: DevicePlan, item: str) -> str:
    if item.startswith(("learner: frozen", "frozen")):
        return "set learner.reference_placement=separate (the reference on GPUs of its own), or use GPUs with more memory"
    if "Adam" in item or "master" in item or "gradients" in item or "parameters" in item:
        return "use more learner ranks, learner.zero_stage=3, or GPUs with more memory"
    if "activations" in item:
        return "lower learner.micro_batch_size or rollout.max_model_len, or set learner.gradient_checkpointing=true"
    if "log-probs" in item:
        return "lower learner.logprob_chunk_positions"
    if "vLLM" in item:
        return "lower rollout.gpu_memory_utilization, or raise rollout.tensor_parallel_size"
    return "use GPUs with more memory"
