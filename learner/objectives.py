"""The SCoRe objectives as pure functions of tensors (no model, no distributed state).

Source: Kumar et al., "Training Language Models to Self-Correct via Reinforcement Learning"
(arXiv 2409.12917, ICLR 2025 version), Section 5 (Stage I, Stage II), Appendix A.4 (the policy
gradient uses "only the instantaneous reward ... equivalent to returns with discount factor
gamma = 0"), Figure 9 ("the first attempt is always multiplied by its own correctness reward in
Stage 2 and the reward shaping is only applied to the second attempt. In Stage 1, the first attempt
response is constrained to that of the base model, while the second attempt is trained to optimize
its own correctness reward") and Table 8 (alpha 10, beta1 0.01, beta2 0.1 MATH / 0.25 MBPP).

Shapes: token tensors are ``[N, T]`` (N sequences = problems x k samples, grouped problem-major:
rows ``p*k .. p*k+k-1`` belong to problem ``p``); rewards are ``[N]``; masks are 1.0 on the
response tokens that are actions and 0.0 elsewhere (prompt, attempt-1 text inside the attempt-2
context, the instruction, padding).

Invariants:

- Credit: each attempt's tokens carry that attempt's own return. Stage I trains attempt 2 on
  ``r2`` and gives attempt 1 no task reward, only its KL pin (weight ``beta2``). Stage II trains
  attempt 1 on ``r1 + gamma * r2_hat`` (``gamma = 0``, the paper's setting, by default) and attempt
  2 on ``r2_hat = r2 + alpha * (r2 - r1)``; the shaping bonus never reaches attempt 1 unless
  ``gamma > 0`` asks for it (``gamma = 1`` is the return-to-go that pays a wrong first attempt at
  ``alpha > 1``; the paper's gamma = 0.8 ablation collapsed).
- More than two attempts (``algorithm.attempts``, this project's extension in the paper's spirit: the
  paper trains two and leaves more to future work): Stage I trains each attempt t >= 2 on ``r_t``
  with attempt 1 pinned by ``beta2``; Stage II trains attempt 1 on ``r1`` and each attempt t >= 2 on
  ``r_hat_t = r_t + alpha * (r_t - r_{t-1})`` (gamma = 0; gamma > 0 adds gamma times the next
  attempt's return). Every function takes its attempts as lists, in order.
- Old policy: the ratio's denominator is the learner's own log-prob (detached, or from a no-grad
  pass before the first of several optimiser steps), so on the first step the ratio is exactly 1.
  The sampler's (vLLM's) log-probs enter only through the truncated importance weight
  ``min(pi_learner / pi_sampler, cap)`` and the mismatch metrics.
- KL: every estimator pulls toward the reference. ``k1`` is a reward-side penalty (its loss form
  has zero expected gradient), ``k2``, ``k3`` and ``k3+`` are losses; each names the divergence its
  gradient minimises. The log-ratio is clamped to ``+-LOG_RATIO_CLAMP``.
- Aggregation (``loss_agg``) is one of ``token_mean`` (every action token weighs the same),
  ``seq_mean_token_mean`` (each sequence's token mean, then the mean over sequences: short
  sequences weigh more per token) and ``seq_mean_token_sum_norm`` (token sums divided by a constant
  length, Dr. GRPO). Denominators may be given for the whole batch a micro-batch belongs to, so
  that gradient accumulation yields the batch-level aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3", "k3+"]
LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3", "k3+")
LOSS_AGGS: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
REWARD_SIDE_KL = frozenset({"k1"})
LOG_RATIO_CLAMP = 10.0


# --------------------------------------------------------------------------- advantages


def leave_one_out_advantages(rewards: torch.Tensor, k: int, normalize: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """``r_i - mean(r_j, j != i)`` within each group of k samples of one problem."""
    if k < 2:
        raise ValueError("a leave-one-out baseline needs at least 2 samples per problem")
    if rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of k={k}")
    groups = rewards.reshape(-1, k).to(torch.float64)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)
    adv = groups - baseline
    if normalize:
        adv = adv / (adv.std() + eps) if adv.numel() > 1 else adv
    return adv.reshape(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def zero_variance_fraction(returns: torch.Tensor, k: int) -> float:
    """Fraction of problem groups whose k returns are all equal: their advantages are all zero."""
    groups = returns.detach().reshape(-1, k)
    return float((groups.max(dim=1).values == groups.min(dim=1).values).float().mean())


def shaped_reward(r1: torch.Tensor, r2: torch.Tensor, alpha: float) -> torch.Tensor:
    """``r2 + alpha * (r2 - r1)``: a bonus for changing a wrong answer to a right one (attempt 2 only)."""
    return r2 + alpha * (r2 - r1)


# --------------------------------------------------------------------------- KL to the reference


def clamped_log_ratio(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``log pi - log pi_ref`` per token, clamped to ``+-LOG_RATIO_CLAMP`` (no exp() overflow)."""
    return torch.clamp(logp - ref_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token KL estimates from tokens sampled from pi, ``d = log pi - log pi_ref`` (clamped).

    - ``k1 = d``: an unbiased *value* of KL(pi || pi_ref); as a loss its expected gradient is zero
      (``E_pi[grad log pi] = 0``), so it is used on the reward side only
      (:func:`sequence_kl_penalty`), where the score-function gradient of ``-beta * sum d``
      is ``-beta * grad KL(pi || pi_ref)``.
    - ``k2 = d^2 / 2``: as a loss, its expected gradient ``E_pi[d grad log pi]`` is
      ``grad KL(pi || pi_ref)``.
    - ``k3 = exp(-d) + d - 1`` (non-negative, low variance): as a loss, its expected gradient
      ``E_pi[(1 - pi_ref/pi) grad log pi]`` is ``grad KL(pi_ref || pi)``, the reverse KL.
    - ``k3+``: the value of ``k3`` with the gradient of ``k2`` (straight-through): a low-variance
      value and the gradient of KL(pi || pi_ref).
    """
    d = clamped_log_ratio(logp, ref_logp)
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "k3":
        return torch.exp(-d) + d - 1
    if estimator == "k3+":
        k2 = 0.5 * d.square()
        return (torch.exp(-d) + d - 1).detach() + k2 - k2.detach()
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


def sequence_kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reward-side KL of each sequence: ``sum_t d_t`` over its action tokens, detached ``[N]``.

    Subtracted (times beta) from the attempt's reward before the leave-one-out baseline; its
    policy gradient is then ``-beta * grad KL(pi(.|x) || pi_ref(.|x))`` of the whole response.
    """
    return (clamped_log_ratio(logp, ref_logp) * mask).sum(dim=-1).detach()


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class Aggregation:
    """How per-token values become one loss.

    ``tokens`` and ``sequences`` are the denominators; ``None`` means "this tensor's own" (its mask
    sum, its row count). The learner passes the whole batch's counts divided by the number of
    micro-batches, because DeepSpeed divides each micro-batch loss by that number again.
    ``length`` is the constant of ``seq_mean_token_sum_norm`` (default: the tensor's width).
    """

    mode: LossAgg = "token_mean"
    tokens: float | None = None
    sequences: float | None = None
    length: float | None = None

    def __post_init__(self):
        if self.mode not in LOSS_AGGS:
            raise ValueError(f"unknown loss aggregation {self.mode!r}; choose one of {', '.join(LOSS_AGGS)}")

    def __call__(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        masked = values * mask
        if self.mode == "token_mean":
            denom = self.tokens if self.tokens is not None else mask.sum().clamp(min=1)
            return masked.sum() / denom
        sequences = self.sequences if self.sequences is not None else values.shape[0]
        if self.mode == "seq_mean_token_mean":
            return (masked.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)).sum() / sequences
        length = self.length if self.length is not None else values.shape[-1]
        return masked.sum() / (sequences * length)


# --------------------------------------------------------------------------- policy gradient


def truncated_importance_weight(old_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """``min(pi_learner / pi_sampler, cap)`` per token, detached (OpenRLHF's vLLM IS correction)."""
    return torch.exp(torch.clamp(old_logp - rollout_logp, max=LOG_RATIO_CLAMP)).clamp(max=cap).detach()


def policy_gradient_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float | None = None,
    agg: Aggregation = Aggregation(),
    is_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE surrogate ``-ratio * A`` (its gradient at ratio 1 is ``-A * grad logp``).

    ``old_logp`` is the learner's own log-prob before this batch's first step. With ``clip_ratio``
    set, PPO's pessimistic clipped surrogate; ``is_weight`` (detached) multiplies each token's
    surrogate. Returns the loss and the fraction of action tokens whose ratio was clipped.
    """
    ratio = torch.exp(torch.clamp(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    adv = advantages.unsqueeze(-1).to(logp.dtype)
    surrogate = ratio * adv
    clipped_frac = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if clip_ratio is not None:
        clipped = torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio) * adv
        took_clip = (clipped < surrogate).to(logp.dtype)
        surrogate = torch.minimum(surrogate, clipped)
        clipped_frac = (took_clip * mask).sum() / mask.sum().clamp(min=1)
    if is_weight is not None:
        surrogate = surrogate * is_weight
    return -agg(surrogate, mask), clipped_frac.detach()


# --------------------------------------------------------------------------- the two stages


@dataclass
class AttemptTensors:
    """One attempt's per-token tensors, ``[N, T]`` each, and its aggregation."""

    logp: torch.Tensor  # current policy (requires grad)
    old_logp: torch.Tensor  # the learner's own log-probs before this batch's first step (detached)
    ref_logp: torch.Tensor  # frozen reference policy
    mask: torch.Tensor  # 1.0 on action tokens
    rollout_logp: torch.Tensor | None = None  # the sampler's (vLLM's); only for the IS weight
    agg: Aggregation = field(default_factory=Aggregation)


@dataclass(frozen=True)
class ObjectiveSettings:
    """The SCoRe hyperparameters one loss needs (defaults: the paper's MATH settings, gamma = 0)."""

    k: int
    alpha: float = 10.0
    beta1: float = 0.01
    beta2: float = 0.1
    gamma: float = 0.0
    kl_estimator: KLEstimator = "k3+"
    clip_ratio: float | None = None
    normalize_advantages: bool = False
    is_cap: float | None = None  # truncated importance weight against the sampler; None: off

    def __post_init__(self):
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"unknown KL estimator {self.kl_estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


@dataclass
class ScoreLoss:
    """The loss to minimise and its parts (detached) for logging."""

    loss: torch.Tensor
    pg_loss: torch.Tensor
    kl: list[torch.Tensor]  # per attempt: its aggregated per-token KL estimate
    clipped_frac: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)  # IS weights (and, whole-batch, the advantages' stats)

    @property
    def kl1(self) -> torch.Tensor:
        return self.kl[0]

    @property
    def kl2(self) -> torch.Tensor:
        return self.kl[1]


@dataclass
class Advantages:
    """Per-row advantages of every attempt over a whole batch (grouped problem-major), computed before it is
    cut into micro-batches. ``per_attempt[0]`` is None when attempt 1 has no policy-gradient term (Stage I
    with a loss-side KL)."""

    per_attempt: list[torch.Tensor | None]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def attempt1(self) -> torch.Tensor | None:
        return self.per_attempt[0]

    @property
    def attempt2(self) -> torch.Tensor:
        return self.per_attempt[1]


def kl_weights(stage: int, s: ObjectiveSettings, attempts: int = 2) -> list[float]:
    """Each attempt's KL weight: attempt 1 ``beta2`` and every later one ``beta1`` in Stage I; ``beta1`` for all in Stage II."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    return [s.beta2 if stage == 1 else s.beta1] + [s.beta1] * (attempts - 1)


def shaped_rewards(rewards: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
    """``[r1, r_hat_2, ..., r_hat_N]`` with ``r_hat_t = r_t + alpha * (r_t - r_{t-1})``: each later attempt's bonus
    for improving on the attempt before it (Stage II)."""
    rewards = [r.float() for r in rewards]
    return [rewards[0]] + [shaped_reward(prev, r, alpha) for prev, r in zip(rewards, rewards[1:])]


def _returns_to_go(immediate: list[torch.Tensor], gamma: float) -> list[torch.Tensor]:
    """``u_t = x_t + gamma * u_{t+1}`` (``u_N = x_N``): with gamma = 0 each attempt keeps its own value."""
    out = [immediate[-1]]
    for x in reversed(immediate[:-1]):
        out.insert(0, x + gamma * out[0])
    return out


def task_returns(stage: int, rewards: list[torch.Tensor], alpha: float, gamma: float) -> list[torch.Tensor | None]:
    """Each attempt's return from the task rewards alone (no KL), for ``rewards = [r1, ..., rN]``.

    Stage I: ``[None, r2, ..., rN]``: attempt 1 has no task reward (its KL pin holds it), every later attempt
    is trained on its own reward. Stage II: ``r_hat_1 = r1`` and ``r_hat_t = r_t + alpha * (r_t - r_{t-1})``,
    each attempt credited with its own shaped reward, plus ``gamma`` times the next attempt's return (gamma = 0,
    the paper's setting: ``(r1, r2_hat)`` for two attempts). More than two attempts in training is this
    project's extension in the paper's spirit: the paper trains two (Section 5), evaluates up to ten
    (Appendix A.1) and leaves training more to future work (its limitations section).
    """
    if len(rewards) < 2:
        raise ValueError(f"SCoRe trains at least 2 attempts, got {len(rewards)}")
    if stage == 1:
        return [None, *(r.float() for r in rewards[1:])]
    return _returns_to_go(shaped_rewards(rewards, alpha), gamma)


def informative_groups(stage: int, rewards: list[torch.Tensor], alpha: float, gamma: float, k: int,
                       attempt1_context: list[bool] | None = None) -> list[bool]:
    """Per problem group of k rows: does some trained attempt's task return vary within it?

    A group where none varies has zero policy-gradient advantage at every attempt and teaches
    only the KL term; DAPO's dynamic sampling (Yu et al., 2025, Section 3.2) replaces such groups.
    ``attempt1_context``: per group, whether attempt 1 was written by the base model (then it is not
    trained, and only the later attempts' returns count; r1 still enters them through the shaping bonus).
    """
    n_groups = rewards[0].numel() // k
    varies = torch.zeros(n_groups, dtype=torch.bool)
    trained1 = ~torch.tensor(attempt1_context, dtype=torch.bool) if attempt1_context is not None else torch.ones(n_groups, dtype=torch.bool)
    for a, u in enumerate(task_returns(stage, rewards, alpha, gamma)):
        if u is not None:
            groups = u.reshape(-1, k)
            spread = groups.max(dim=1).values != groups.min(dim=1).values
            varies |= spread & trained1 if a == 0 else spread
    return varies.tolist()


def score_advantages(stage: int, rewards: list[torch.Tensor], s: ObjectiveSettings,
                     kl_seqs: list[torch.Tensor] | None = None) -> Advantages:
    """Each attempt's return and its leave-one-out advantage (Section 5, Appendix A.4, Figure 9).

    Returns: :func:`task_returns`. With the reward-side ``k1`` estimator, ``kl_seqs`` (:func:`sequence_kl_penalty`
    of each row, per attempt) enter each attempt's own reward times its KL weight before the returns are formed,
    so attempt 1 then has a return in Stage I too: ``-beta2 * kl_seq1``.
    """
    n = len(rewards)
    betas = kl_weights(stage, s, n)
    u = task_returns(stage, rewards, s.alpha, s.gamma)
    metrics: dict[str, float] = {} if stage == 1 else {"shaped_reward": float(u[-1].mean())}  # the last attempt's r_hat
    if s.kl_estimator in REWARD_SIDE_KL:
        if kl_seqs is None or len(kl_seqs) != n:
            raise ValueError(f"the reward-side KL estimator {s.kl_estimator!r} needs each attempt's sequence KL (kl_seqs)")
        pens = [-b * kl.float() for b, kl in zip(betas, kl_seqs)]
        if stage == 1:
            u = [pens[0]] + [ut + p for ut, p in zip(u[1:], pens[1:])]
        else:
            u = _returns_to_go([x + p for x, p in zip(shaped_rewards(rewards, s.alpha), pens)], s.gamma)
    out: list[torch.Tensor | None] = []
    for t, ut in enumerate(u, 1):
        if ut is None:
            out.append(None)
            continue
        adv = leave_one_out_advantages(ut, s.k, s.normalize_advantages)
        metrics.update({f"advantage_mean_attempt{t}": float(adv.mean()), f"advantage_abs_mean_attempt{t}": float(adv.abs().mean()),
                        f"zero_variance_groups_attempt{t}": zero_variance_fraction(ut, s.k)})
        out.append(adv)
    return Advantages(out, metrics)


def score_loss(stage: int, attempts: list[AttemptTensors], advantages: list[torch.Tensor | None], s: ObjectiveSettings) -> ScoreLoss:
    """The loss of one micro-batch: the policy-gradient term of each attempt that has advantages (rows of
    :func:`score_advantages`' output, in the micro-batch's order), plus each attempt's KL loss term (none for
    ``k1``, which lives in the returns)."""
    betas = kl_weights(stage, s, len(attempts))
    kls = [a.agg(kl_penalty(a.logp, a.ref_logp, s.kl_estimator), a.mask) for a in attempts]
    pg = torch.zeros((), dtype=attempts[-1].logp.dtype, device=attempts[-1].logp.device)
    clipped, metrics = [], {}
    for t, (a, adv) in enumerate(zip(attempts, advantages), 1):
        if adv is None:
            continue
        is_w = None
        if s.is_cap is not None and a.rollout_logp is not None:
            is_w = truncated_importance_weight(a.old_logp, a.rollout_logp, s.is_cap)
            metrics[f"is_weight_mean_attempt{t}"] = float((is_w * a.mask).sum() / a.mask.sum().clamp(min=1))
        pg_a, clip_a = policy_gradient_loss(a.logp, a.old_logp, adv, a.mask, s.clip_ratio, a.agg, is_w)
        pg = pg + pg_a
        clipped.append(clip_a)
    loss = pg if s.kl_estimator in REWARD_SIDE_KL else pg + sum(b * kl for b, kl in zip(betas, kls))
    return ScoreLoss(loss, pg.detach(), [kl.detach() for kl in kls], torch.stack(clipped).mean(), metrics)


def whole_batch_loss(stage: int, attempts: list[AttemptTensors], rewards: list[torch.Tensor], s: ObjectiveSettings) -> ScoreLoss:
    """The loss of one whole batch of any number of attempts: :func:`score_advantages`, then :func:`score_loss`."""
    kl_seqs = [sequence_kl_penalty(a.logp, a.ref_logp, a.mask) for a in attempts] if s.kl_estimator in REWARD_SIDE_KL else None
    adv = score_advantages(stage, rewards, s, kl_seqs)
    out = score_loss(stage, attempts, adv.per_attempt, s)
    out.metrics = {**adv.metrics, **out.metrics}
    return out


def stage1_loss(a1: AttemptTensors, a2: AttemptTensors, r1: torch.Tensor, r2: torch.Tensor, s: ObjectiveSettings) -> ScoreLoss:
    """Stage I (Section 5.1) on one whole batch: ``max E[r2] - beta2 * KL(attempt 1) - beta1 * KL(attempt 2)``.

    Attempt 1 has no task reward: it is held at the base model by the strong KL weight ``beta2``.
    """
    return whole_batch_loss(1, [a1, a2], [r1, r2], s)


def stage2_loss(a1: AttemptTensors, a2: AttemptTensors, r1: torch.Tensor, r2: torch.Tensor, s: ObjectiveSettings) -> ScoreLoss:
    """Stage II (Section 5.2) on one whole batch: ``max E[r1 + r2_hat] - beta1 * (KL(attempt 1) + KL(attempt 2))``.

    Attempt 1's return is ``r1 + gamma * r2_hat`` (gamma = 0: its own reward, Appendix A.4 and
    Figure 9); attempt 2's is ``r2_hat = r2 + alpha * (r2 - r1)``.
    """
    return whole_batch_loss(2, [a1, a2], [r1, r2], s)


# --------------------------------------------------------------------------- sampler mismatch


def logprob_mismatch(learner_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the sampler's log-probs are from the learner's on the same tokens.

    ``mean_abs`` and ``max_abs`` of the per-token difference over action tokens, and ``kl``: the
    k3 estimate of KL(pi_sampler || pi_learner) from the sampler's own tokens (non-negative).
    """
    m = mask.bool()
    if not bool(m.any()):
        return {"mean_abs": 0.0, "max_abs": 0.0, "kl": 0.0}
    d = (learner_logp.detach() - rollout_logp)[m].double()  # log(pi_learner / pi_sampler)
    kl = torch.exp(d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)) - d - 1
    return {"mean_abs": float(d.abs().mean()), "max_abs": float(d.abs().max()), "kl": float(kl.mean())}
