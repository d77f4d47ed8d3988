"""The learner core: one rank of a DeepSpeed ZeRO group running the SCoRe update.

It owns the policy (a DeepSpeed engine: ZeRO stage 2 or 3, bf16 on GPU, float32 with the CPU
accelerator and gloo on CPU), the frozen reference policy (a copy of the initial weights on the
same rank), the optimiser and learning-rate schedule, and the code that turns a rollout batch
into Stage I / Stage II updates (:mod:`learner.objectives`). It also gathers full weights for
publishing and export, and saves and loads the whole training state.

Invariants: every pass of the policy goes through the engine (:mod:`learner.policy`); the loss's
denominators are the whole batch's over every rank (action tokens all-reduced), so any number of
ranks and micro-batches gives the one-rank, one-micro-batch gradient.

The core does not need Ray: build it with ``rank=0, world_size=1`` to measure a lone device.
:mod:`learner.group` wraps one core per Ray actor.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import torch

from common.devices import on_gpu, torch_dtype
from common.network import free_port
from learner.batch import (AttemptInputs, JointInputs, attempt_inputs, attempt_prefixes, base_rows, joint_inputs, length_sorted_micro_batches,
                           num_micro_batches, rewards)
from learner.policy import PolicyLogprobs, check_head
from learner.objectives import (REWARD_SIDE_KL, Aggregation, AttemptTensors, ObjectiveSettings, logprob_mismatch, score_advantages,
                               score_loss, sequence_kl_penalty)
from weight_sync.buckets import ParamSpec, plan_buckets

if TYPE_CHECKING:
    from cluster.config import ScoreConfig

log = logging.getLogger(__name__)


@dataclass
class LearnerSettings:
    """Everything one rank needs to build its engine and run updates."""

    model_path: str
    zero_stage: int = 2
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    rows_per_micro_batch: int = 4
    rows_per_rank: int = 32  # sequences per rank per update (problems x k / ranks)
    k: int = 4
    gradient_checkpointing: bool = False
    max_grad_norm: float = 1.0
    updates_per_batch: int = 1
    threads_per_rank: int = 1
    alpha: float = 10.0
    beta1: float = 0.01
    beta2: float = 0.1
    gamma: float = 0.0  # attempt 1's return in Stage II: r1 + gamma * r2_hat (the paper: 0)
    kl_estimator: str = "k3+"
    loss_agg: str = "token_mean"
    normalize_advantages: bool = False
    clip_ratio: float | None = None
    vllm_is: str = "auto"  # truncated importance weight against the sampler: on, off, auto (on when not float32 or off-policy)
    off_policy_steps: int = 0  # rollout.off_policy_steps: batches may be this many weight versions behind the learner
    vllm_is_cap: float = 2.0
    temperature1: float = 1.0
    temperature2: float = 1.0
    max_tokens1: int = 256  # the constant length of loss_agg=seq_mean_token_sum_norm
    max_tokens2: int = 256
    attempts: int = 2  # attempts per sample (algorithm.attempts); every one after the first samples like attempt 2
    seed: int = 0
    dtype: str = "auto"
    joint_forward: bool = True  # one pass for both attempts when attempt 2 extends attempt 1
    reference_placement: str = "learner"  # "separate": the batch carries a*_ref_logprobs from a ReferenceGroup
    logprob_chunk_positions: int | None = 2048  # the head scores this many positions at a time (learner.policy)

    @property
    def temperatures(self) -> list[float]:
        """Each attempt's sampling temperature: attempt 1's, then attempt 2's for every later attempt."""
        return [self.temperature1] + [self.temperature2] * (self.attempts - 1)

    @property
    def max_tokens(self) -> list[float]:
        return [self.max_tokens1] + [self.max_tokens2] * (self.attempts - 1)

    @property
    def gradient_accumulation_steps(self) -> int:
        return num_micro_batches(self.rows_per_rank, self.rows_per_micro_batch)

    @classmethod
    def from_config(cls, cfg: ScoreConfig, model_path: str, dtype: str) -> LearnerSettings:
        """The settings of a run: the learner and algorithm sections, the batch shape and the sampling temperatures."""
        learner, alg, rollout = cfg.learner, cfg.algorithm, cfg.rollout
        return cls(
            model_path=model_path, dtype=dtype, seed=cfg.run.seed, k=rollout.samples_per_problem,
            rows_per_rank=rollout.problems_per_iteration * rollout.samples_per_problem // learner.num_ranks,
            rows_per_micro_batch=learner.micro_batch_size,
            **{f: getattr(learner, f) for f in ("zero_stage", "lr", "weight_decay", "warmup_steps", "gradient_checkpointing", "max_grad_norm",
                                                 "updates_per_batch", "threads_per_rank", "reference_placement",
                                                 "logprob_chunk_positions")},
            **{f: getattr(alg, f) for f in ("alpha", "beta1", "beta2", "gamma", "kl_estimator", "loss_agg", "normalize_advantages",
                                             "clip_ratio", "vllm_is", "vllm_is_cap")},
            attempts=alg.attempts, off_policy_steps=rollout.off_policy_steps,
            temperature1=rollout.attempt1.temperature, temperature2=rollout.attempt2.temperature,
            max_tokens1=rollout.attempt1.max_tokens, max_tokens2=rollout.attempt2.max_tokens,
        )


def token_logprobs(model: torch.nn.Module, inputs: AttemptInputs, temperature: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probs ``[N, L-1]`` of each target token under ``model`` at the sampling temperature.

    ``model`` is a :class:`learner.policy.PolicyLogprobs` or the DeepSpeed engine around one: the call
    goes through the engine's ``forward`` (ZeRO-3 counts micro-steps there). With ``keep`` (a ``[N, L-1]``
    mask of the targets that matter, the action tokens), the LM head and the softmax run only at those
    positions and the others are 0: the vocabulary projection (49k columns for the embedded model) is
    then paid for response tokens only, not for the prompt, the instruction and the padding.
    """
    return model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, targets=inputs.targets, keep=keep,
                 temperature=temperature)


def _take(inputs: AttemptInputs, rows: torch.Tensor, device: torch.device) -> AttemptInputs:
    """Rows (indices) of a padded batch, trimmed to their longest sequence."""
    rows = torch.as_tensor(list(rows), dtype=torch.long) if not torch.is_tensor(rows) else rows
    length = int(inputs.attention_mask[rows].sum(dim=1).max())
    return AttemptInputs(
        inputs.input_ids[rows, :length].to(device),
        inputs.attention_mask[rows, :length].to(device),
        inputs.targets[rows, : length - 1].to(device),
        inputs.action_mask[rows, : length - 1].to(device),
        inputs.old_logp[rows, : length - 1].to(device),
        inputs.ref_logp[rows, : length - 1].to(device) if inputs.ref_logp is not None else None,
    )


@dataclass
class MicroBatch:
    """One micro-batch on the device: the batch rows it holds (``rows``, an index tensor), the inputs of
    one joint pass (``joint``) or of one pass per attempt (``passes``), and per attempt the action mask, the
    sampler's log-probs and, when a separate reference group scored the batch, the reference log-probs,
    all in the layout of its pass."""

    rows: torch.Tensor
    joint: AttemptInputs | None
    passes: list[AttemptInputs] | None
    masks: tuple[torch.Tensor, ...]
    rollout: tuple[torch.Tensor, ...]
    given_ref: tuple[torch.Tensor, ...] | None

    @property
    def num_tokens(self) -> int:
        return self.joint.num_tokens if self.joint is not None else sum(p.num_tokens for p in self.passes)

    @property
    def computed_positions(self) -> int:
        """Positions the forward pass computes, padding included."""
        passes = (self.joint,) if self.joint is not None else self.passes
        return sum(p.input_ids.numel() for p in passes)


def micro_batch(rows, device: torch.device, joint: JointInputs | None = None, per_attempt: list[AttemptInputs] | None = None) -> MicroBatch:
    """Cut ``rows`` (indices) out of the batch's joint layout, or out of its per-attempt layouts."""
    rows = torch.as_tensor(list(rows), dtype=torch.long) if not torch.is_tensor(rows) else rows
    if joint is not None:
        seq = _take(joint.inputs, rows, device)
        width = seq.action_mask.shape[1]
        cut = lambda ts: tuple(t[rows, :width].to(device) for t in ts)  # noqa: E731
        given = cut(joint.ref_logps) if joint.ref_logps is not None else None
        return MicroBatch(rows, seq, None, cut(joint.masks), cut(joint.old_logps), given)
    passes = [_take(a, rows, device) for a in per_attempt]
    given = tuple(p.ref_logp for p in passes) if all(p.ref_logp is not None for p in passes) else None
    return MicroBatch(rows, None, passes, tuple(p.action_mask for p in passes), tuple(p.old_logp for p in passes), given)


def attempt_logprobs(model: torch.nn.Module, mb: MicroBatch, temperatures: list[float]) -> list[torch.Tensor]:
    """Per-token log-probs of every attempt: one pass over the last attempt's sequence (which holds the others),
    or one pass per attempt."""
    if mb.joint is not None:
        lp = token_logprobs(model, mb.joint, temperatures[-1], keep=sum(mb.masks) > 0)
        return [lp] * len(mb.masks)
    return [token_logprobs(model, p, t, keep=m > 0) for p, t, m in zip(mb.passes, temperatures, mb.masks)]


class LearnerCore:
    """One rank: the DeepSpeed policy engine, the reference policy, the update and the state."""

    def __init__(self, settings: LearnerSettings, rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1", master_port: int | None = None):
        import deepspeed  # heavy (and it builds ops on first use): loaded by the ranks, not by every importer
        from transformers import AutoModelForCausalLM  # heavy, like deepspeed

        self.settings, self.rank, self.world_size = settings, rank, world_size
        os.environ.update(
            RANK=str(rank), LOCAL_RANK="0" if not on_gpu() else os.environ.get("LOCAL_RANK", "0"),
            WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr, MASTER_PORT=str(master_port or free_port()),
        )
        # DeepSpeed JIT-builds a small op on first use (~45 s on CPU): keep it in a cached place.
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(os.environ.get("SCORE_CACHE_DIR", Path.home() / ".cache" / "score-on-ray")) / "torch_extensions"))
        if not on_gpu():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            torch.set_num_threads(settings.threads_per_rank)
        self.gpu = on_gpu()
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.gpu else torch.device("cpu")
        deepspeed.init_distributed(dist_backend="nccl" if self.gpu else "gloo", auto_mpi_discovery=False)
        self._seed_everything(settings.seed + rank)

        # bf16: DeepSpeed's bf16 mode, bf16 weights for compute and fp32 master weights and Adam state
        # in the ZeRO optimizer (small updates accumulate in fp32); the reference runs in bf16 too.
        dtype = torch_dtype(settings.dtype, self.gpu)
        self.dtype = dtype
        hf_policy = AutoModelForCausalLM.from_pretrained(settings.model_path, dtype=dtype)
        if settings.gradient_checkpointing:
            hf_policy.gradient_checkpointing_enable()
        chunk = settings.logprob_chunk_positions
        policy = PolicyLogprobs(hf_policy, chunk)  # DeepSpeed wraps the module whose forward returns the log-probs
        self.reference = None
        if settings.reference_placement == "learner":
            self.reference = PolicyLogprobs(AutoModelForCausalLM.from_pretrained(settings.model_path, dtype=dtype), chunk).to(self.device).eval()
            self.reference.requires_grad_(False)
        self.pad_id = policy.config.pad_token_id if policy.config.pad_token_id is not None else 0

        optimizer = torch.optim.AdamW(policy.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        warm = max(0, settings.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warm) if warm else 1.0)
        ds_config = {
            "train_micro_batch_size_per_gpu": settings.rows_per_micro_batch,
            "gradient_accumulation_steps": settings.gradient_accumulation_steps,
            "gradient_clipping": settings.max_grad_norm,
            "zero_optimization": {"stage": settings.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
            "bf16": {"enabled": dtype == torch.bfloat16},
            "fp16": {"enabled": dtype == torch.float16},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, _, _, _ = deepspeed.initialize(model=policy, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
        check_head(self.engine.module, self.device)  # one line, before any training, for a head the learner cannot reproduce
        self.step_count = 0
        self.states_offloaded = False
        self._warned_two_passes = False

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            np.random.seed(seed)
        except ImportError:
            pass

    @property
    def zero3(self) -> bool:
        return self.settings.zero_stage == 3

    def _gathered(self, params: list[torch.nn.Parameter]):
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed  # heavy: see LearnerCore.__init__

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def _reference(self) -> torch.nn.Module:
        if self.reference is None:
            raise RuntimeError("learner.reference_placement is 'separate' but the batch has no a1_ref_logprobs/a2_ref_logprobs")
        return self.reference

    @property
    def hf_model(self) -> torch.nn.Module:
        """The Hugging Face model inside the engine (its parameter names are the weights' names)."""
        return self.engine.module.model

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self.hf_model.named_parameters())

    def param_specs(self):
        return [
            ParamSpec(n, tuple(getattr(p, "ds_shape", p.shape)) if self.zero3 else tuple(p.shape), str(p.dtype).removeprefix("torch."))
            for n, p in self.named_parameters()
        ]

    def full_weights(self, plan) -> Iterator[tuple[str, torch.Tensor]]:
        """Full tensors in plan order, gathered one bucket at a time under ZeRO-3 (all ranks must iterate)."""
        params = dict(self.named_parameters())
        for bucket in plan:
            group = [params[s.name] for s in bucket]
            with self._gathered(group):
                for spec, p in zip(bucket, group):
                    yield spec.name, p.data

    # -- the update ------------------------------------------------------------------------
    @property
    def objective(self) -> ObjectiveSettings:
        s = self.settings
        # auto: on where the sampler and the learner round differently, and where the batch lags the learner
        is_on = s.vllm_is == "on" or (s.vllm_is == "auto" and (self.dtype != torch.float32 or s.off_policy_steps > 0))
        return ObjectiveSettings(k=s.k, alpha=s.alpha, beta1=s.beta1, beta2=s.beta2, gamma=s.gamma, kl_estimator=s.kl_estimator,
                                 clip_ratio=s.clip_ratio, normalize_advantages=s.normalize_advantages,
                                 is_cap=s.vllm_is_cap if is_on else None)

    def device_micro_batches(self, shard: pa.Table) -> tuple[list[MicroBatch], float]:
        """The shard as device micro-batches of similar-length rows, in the joint layout when it applies,
        and the fraction of computed positions that are padding."""
        s = self.settings
        # The last attempt's sequence starts with every earlier one's: one forward pass serves all attempts
        # when they were sampled at the same temperature (the default); otherwise one pass per attempt.
        wanted = s.joint_forward and len(set(s.temperatures)) == 1
        joint = joint_inputs(shard, self.pad_id) if wanted else None
        if wanted and joint is None and not self._warned_two_passes:
            log.warning("some later attempts' prompts do not start with the earlier attempts' tokens (the chat template rewrites "
                        f"earlier turns): the learner scores the attempts in {'two passes' if s.attempts == 2 else 'a pass each'}, not one")
            self._warned_two_passes = True
        if joint is not None:
            layout, longest = {"joint": joint}, joint.inputs
        else:
            layout = {"per_attempt": [attempt_inputs(shard, a, self.pad_id) for a in attempt_prefixes(shard)]}
            longest = layout["per_attempt"][-1]
        groups = length_sorted_micro_batches(longest.attention_mask.sum(dim=1).tolist(), s.rows_per_micro_batch)
        micros = [micro_batch(g, self.device, **layout) for g in groups]
        computed = sum(mb.computed_positions for mb in micros)
        return micros, 1.0 - sum(mb.num_tokens for mb in micros) / max(computed, 1)

    def global_counts(self, micros: list[MicroBatch], shard: pa.Table) -> tuple[list[float], list[float]]:
        """Each attempt's action tokens and sequences in the whole batch: this rank's, summed over the ranks (one
        all-reduce). Attempt 1 of a base-written row (``a1_base``) is context: it counts for neither."""
        n = len(micros[0].masks)
        local = [sum(float(mb.masks[a].sum()) for mb in micros) for a in range(n)]
        local += [shard.num_rows - sum(base_rows(shard))] + [shard.num_rows] * (n - 1)
        counts = torch.tensor(local, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(counts)
        return counts[:n].tolist(), counts[n:].tolist()

    def _no_grad_logprobs(self, model: torch.nn.Module, mb: MicroBatch) -> list[torch.Tensor]:
        with torch.no_grad():
            return attempt_logprobs(model, mb, self.settings.temperatures)

    def update(self, shard: pa.Table, stage: int, beta2: float | None = None) -> dict[str, float]:
        """One SCoRe update on this rank's rows (whole problems, problem-major). Returns metrics.

        ``beta2``, where given, replaces the configured attempt-1 KL weight for this update (the
        trainer's adaptive controller, :class:`learner.kl_controller.AdaptiveBeta2`).

        Advantages are computed over the whole shard first (leave-one-out within each problem's k
        rows), then the rows are cut into micro-batches of similar length. The ratio's old policy is
        the learner's own: with one optimiser step per batch, the detached log-probs of the same pass
        (ratio exactly 1); with more, or with the reward-side KL, a no-grad pass before the first
        step. vLLM's log-probs feed only the truncated importance weight and the mismatch metrics.
        """
        s = self.settings
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        if shard.num_rows != s.rows_per_rank:
            raise ValueError(f"learner rank {self.rank} got {shard.num_rows} rows, built for {s.rows_per_rank}")
        prefixes = attempt_prefixes(shard)
        if len(prefixes) != s.attempts:
            raise ValueError(f"learner rank {self.rank} got a batch of {len(prefixes)} attempts, built for {s.attempts} (algorithm.attempts)")
        start = time.monotonic()
        self.reload_states()  # offloaded during generation (learner.offload_states_during_generation)
        objective = self.objective if beta2 is None else replace(self.objective, beta2=float(beta2))
        n = s.attempts
        rewards_all = [rewards(shard, f"r{t}") for t in range(1, n + 1)]
        micros, padded = self.device_micro_batches(shard)
        n_micro = len(micros)
        # Denominators of the whole batch over all ranks (verl's agg_loss with a global token count): DeepSpeed
        # divides each micro-batch loss by n_micro and averages the gradients over the ranks, so per micro-batch
        # the denominator is the batch's count / (ranks x n_micro) and every token of every rank weighs the same.
        action_tokens, sequences = self.global_counts(micros, shard)
        share = self.world_size * n_micro
        aggs = [Aggregation(s.loss_agg, tokens=max(action_tokens[a], 1.0) / share, sequences=max(sequences[a], 1) / share,
                            length=float(s.max_tokens[a])) for a in range(n)]
        self.engine.train()
        refs = [mb.given_ref or self._no_grad_logprobs(self._reference(), mb) for mb in micros]
        reward_side = s.kl_estimator in REWARD_SIDE_KL
        olds = [self._no_grad_logprobs(self.engine, mb) for mb in micros] if s.updates_per_batch > 1 or reward_side else None
        kl_seqs = None
        if reward_side:  # each row's sequence KL, in batch order, for the returns
            kl_seqs = [torch.zeros(shard.num_rows, device=self.device) for _ in range(n)]
            for mb, old, ref in zip(micros, olds, refs):
                for a in range(n):
                    kl_seqs[a][mb.rows.to(self.device)] = sequence_kl_penalty(old[a], ref[a], mb.masks[a])
        adv = score_advantages(stage, [r.to(self.device) for r in rewards_all], objective, kl_seqs)
        sums: dict[str, float] = {}
        firsts: list[list[torch.Tensor]] = []  # the policy's log-probs before any step, for the mismatch
        tokens = 0
        for update in range(s.updates_per_batch):
            for mi, mb in enumerate(micros):
                lps = attempt_logprobs(self.engine, mb, s.temperatures)
                old = olds[mi] if olds is not None else [lp.detach() for lp in lps]
                if update == 0:
                    firsts.append(old)
                tensors = [AttemptTensors(lps[a], old[a], refs[mi][a], mb.masks[a], mb.rollout[a], aggs[a]) for a in range(n)]
                rows = mb.rows.to(self.device)
                out = score_loss(stage, tensors, [u[rows] if u is not None else None for u in adv.per_attempt], objective)
                self.engine.backward(out.loss)
                self.engine.step()
                tokens += mb.num_tokens
                for key, value in (("loss", out.loss.detach()), ("pg_loss", out.pg_loss),
                                   *((f"kl_attempt{t}", kl) for t, kl in enumerate(out.kl, 1)),
                                   ("clipped_fraction", out.clipped_frac), *out.metrics.items()):
                    sums[key] = sums.get(key, 0.0) + float(value)
            self.step_count += 1
        seconds = time.monotonic() - start
        # the mean over micro-batches of losses with batch denominators / n_micro is the batch aggregate
        metrics = {key: value / (n_micro * s.updates_per_batch) for key, value in sums.items()}
        metrics.update(adv.metrics)
        for a, name in enumerate(f"attempt{t}" for t in range(1, n + 1)):
            learner = torch.cat([f[a][mb.masks[a].bool()] for f, mb in zip(firsts, micros)])
            rollout = torch.cat([mb.rollout[a][mb.masks[a].bool()] for mb in micros])
            for key, value in logprob_mismatch(learner, rollout, torch.ones_like(learner)).items():
                metrics[f"mismatch_{key}_{name}"] = value
        grad_norm = self.engine.get_global_grad_norm()
        metrics.update(
            **{f"reward_attempt{t}": float(r.mean()) for t, r in enumerate(rewards_all, 1)},
            grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
            tokens=tokens, padded_fraction=padded, seconds=seconds, tokens_per_second=tokens / max(seconds, 1e-9),
            lr=float(self.engine.lr_scheduler.get_last_lr()[0]), optimizer_steps=self.step_count,
        )
        self.release_cache()
        return metrics

    # -- device memory between updates -------------------------------------------------------
    def release_cache(self) -> None:
        """Return torch's cached, unused GPU blocks to the driver (no-op on CPU): after an update and after
        sending weights, so that a colocated vLLM engine waking up (its weights and KV cache are mapped outside
        torch's allocator) finds them free."""
        if self.gpu:
            torch.cuda.empty_cache()

    def offload_states(self) -> None:
        """Move the optimizer states (fp32 master weights, Adam moments, gradient buffers) to CPU memory while the
        generators run (OpenRLHF's ``--deepspeed_enable_sleep``); :meth:`reload_states` brings them back."""
        if not self.states_offloaded:
            self.engine.offload_states(pin_memory=self.gpu)
            self.states_offloaded = True
            self.release_cache()

    def reload_states(self) -> None:
        if self.states_offloaded:
            self.engine.reload_states()
            self.states_offloaded = False

    def sequence_logprob(self, shard: pa.Table, prefix: str = "a1") -> list[float]:
        """Sum of the policy's log-probs over each row's response tokens (for tests and diagnostics)."""
        inputs = attempt_inputs(shard, prefix, self.pad_id)
        self.engine.eval()
        with torch.no_grad():
            lp = token_logprobs(self.engine, _take(inputs, range(0, shard.num_rows), self.device), 1.0)
        mask = inputs.action_mask[:, : lp.shape[1]].to(lp.device)
        return (lp * mask).sum(dim=1).tolist()

    def close(self) -> None:
        """Free the engine, its optimiser state and the reference now: DeepSpeed keeps references that
        ``del`` alone leaves alive (about 2 GB per core of the embedded model in one process)."""
        if self.engine is not None:
            self.engine.destroy()
            self.engine.optimizer = None
            self.engine.module = None
        self.engine = self.reference = None
        gc.collect()

    # -- state -----------------------------------------------------------------------------
    def save(self, directory: str, client_state: dict[str, Any] | None = None) -> None:
        """All ranks: write model, optimiser, schedule and this rank's random state under ``directory``."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        state = dict(client_state or {}, step_count=self.step_count, settings=asdict(self.settings))
        self.engine.save_checkpoint(directory, tag="state", client_state=state)
        rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if self.gpu:
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, Path(directory) / f"rng_rank{self.rank}.pt")

    def load(self, directory: str) -> dict[str, Any]:
        path, client_state = self.engine.load_checkpoint(directory, tag="state")
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {directory}")
        rng = torch.load(Path(directory) / f"rng_rank{self.rank}.pt", weights_only=False)
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if self.gpu and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"])
        self.step_count = int(client_state.get("step_count", 0))
        return {k: v for k, v in client_state.items() if k not in ("settings",)}

    def export_hf(self, directory: str) -> str | None:
        """Rank 0 writes a Hugging Face folder of the policy (all ranks must call under ZeRO-3)."""
        from transformers import AutoTokenizer  # heavy: only for an export

        plan = plan_buckets(self.param_specs(), 256 << 20)
        state = {name: t.detach().to("cpu").clone() for name, t in self.full_weights(plan)}
        if self.rank != 0:
            return None
        out = Path(directory)
        tmp = out.with_name(out.name + ".partial")
        self.hf_model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        AutoTokenizer.from_pretrained(self.settings.model_path).save_pretrained(tmp)
        (tmp / "score_export.json").write_text(json.dumps({"optimizer_steps": self.step_count}))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return str(out)
