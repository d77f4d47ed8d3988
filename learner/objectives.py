"""The SCoRe objectives as pure functions of tensors (no model, no distributed state).

Shapes: token tensors are ``[N, T]`` (N sequences = problems x k samples, grouped problem-major:
rows ``p*k .. p*k+k-1`` belong to problem ``p``); rewards are ``[N]``; masks are 1.0 on the
response tokens that are actions and 0.0 elsewhere (prompt, attempt-1 text inside the attempt-2
context, the instruction, padding).

Losses are averaged over each sequence's action tokens, then over sequences, so a long response
does not weigh more than a short one.

- Stage I: policy gradient on attempt 2 with the attempt-2 reward; KL to the reference on
  attempt 1 with the strong weight beta2 and on attempt 2 with beta1. Attempt 1 gets no policy
  gradient: Stage I only teaches correction while keeping the first attempt at the base model.
- Stage II: policy gradient on both attempts with the shaped attempt-2 reward
  ``r2_hat = r2 + alpha * (r2 - r1)``; attempt 1 is credited with its return to go
  ``r1 + r2_hat`` (it also causes attempt 2), attempt 2 with ``r2_hat``; KL with beta1 on both.
- Estimator: REINFORCE with a leave-one-out baseline over the k samples of a problem, optional
  advantage normalisation, and optional PPO-style clipping of the ratio to the sampling policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

KLEstimator = Literal["k1", "k3"]


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


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.

    k1: ``logp - ref_logp`` (unbiased, can be negative); k3: ``exp(d) - d - 1`` with
    ``d = ref_logp - logp`` (unbiased, never negative, lower variance).
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        d = ref_logp - logp
        return torch.exp(d) - d - 1
    raise ValueError(f"unknown KL estimator {estimator!r}")


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's masked tokens, then over sequences (empty sequences count as 0)."""
    per_seq = (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
    return per_seq.mean()


def policy_gradient_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE surrogate ``-ratio * A`` (its gradient at ratio 1 is ``-A * grad logp``).

    With ``clip_ratio`` set, PPO's pessimistic clipped surrogate. Returns the loss and the
    fraction of action tokens whose ratio was clipped.
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    surrogate = ratio * adv
    clipped_frac = torch.zeros((), dtype=logp.dtype)
    if clip_ratio is not None:
        clipped = torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio) * adv
        took_clip = (clipped < surrogate).to(logp.dtype)
        surrogate = torch.minimum(surrogate, clipped)
        clipped_frac = (took_clip * mask).sum() / mask.sum().clamp(min=1)
    return -sequence_mean(surrogate, mask), clipped_frac.detach()


@dataclass
class AttemptTensors:
    """One attempt's per-token tensors, ``[N, T]`` each."""

    logp: torch.Tensor  # current policy (requires grad)
    old_logp: torch.Tensor  # sampling policy (vLLM's log-probs)
    ref_logp: torch.Tensor  # frozen reference policy
    mask: torch.Tensor  # 1.0 on action tokens


@dataclass
class ScoreLoss:
    """The loss to minimise and its parts (detached) for logging."""

    loss: torch.Tensor
    pg_loss: torch.Tensor
    kl1: torch.Tensor
    kl2: torch.Tensor
    shaped_reward: torch.Tensor
    clipped_frac: torch.Tensor


def attempt_kl(attempt: AttemptTensors, estimator: KLEstimator) -> torch.Tensor:
    """The attempt's KL to the reference, averaged over its action tokens."""
    return sequence_mean(kl_penalty(attempt.logp, attempt.ref_logp, estimator), attempt.mask)


def shaped_reward(r1: torch.Tensor, r2: torch.Tensor, alpha: float) -> torch.Tensor:
    """``r2 + alpha * (r2 - r1)``: a bonus for changing a wrong answer to a right one."""
    return r2 + alpha * (r2 - r1)


def stage1_loss(
    a1: AttemptTensors,
    a2: AttemptTensors,
    r2: torch.Tensor,
    k: int,
    beta1: float,
    beta2: float,
    kl_estimator: KLEstimator = "k3",
    clip_ratio: float | None = None,
    normalize_advantages: bool = False,
) -> ScoreLoss:
    """Stage I: ``-E[r2] + beta2 * KL(attempt 1) + beta1 * KL(attempt 2)``."""
    adv2 = leave_one_out_advantages(r2, k, normalize_advantages)
    pg, clipped = policy_gradient_loss(a2.logp, a2.old_logp, adv2, a2.mask, clip_ratio)
    kl1, kl2 = attempt_kl(a1, kl_estimator), attempt_kl(a2, kl_estimator)
    loss = pg + beta2 * kl1 + beta1 * kl2
    return ScoreLoss(loss, pg.detach(), kl1.detach(), kl2.detach(), r2.float().mean(), clipped)


def stage2_loss(
    a1: AttemptTensors,
    a2: AttemptTensors,
    r1: torch.Tensor,
    r2: torch.Tensor,
    k: int,
    alpha: float,
    beta1: float,
    kl_estimator: KLEstimator = "k3",
    clip_ratio: float | None = None,
    normalize_advantages: bool = False,
) -> ScoreLoss:
    """Stage II: ``-E[r1 + r2_hat] + beta1 * (KL(attempt 1) + KL(attempt 2))``."""
    r2_hat = shaped_reward(r1, r2, alpha)
    adv1 = leave_one_out_advantages(r1 + r2_hat, k, normalize_advantages)
    adv2 = leave_one_out_advantages(r2_hat, k, normalize_advantages)
    pg1, clipped1 = policy_gradient_loss(a1.logp, a1.old_logp, adv1, a1.mask, clip_ratio)
    pg2, clipped2 = policy_gradient_loss(a2.logp, a2.old_logp, adv2, a2.mask, clip_ratio)
    kl1, kl2 = attempt_kl(a1, kl_estimator), attempt_kl(a2, kl_estimator)
    pg = pg1 + pg2
    loss = pg + beta1 * (kl1 + kl2)
    return ScoreLoss(loss, pg.detach(), kl1.detach(), kl2.detach(), r2_hat.float().mean(), (clipped1 + clipped2) / 2)
