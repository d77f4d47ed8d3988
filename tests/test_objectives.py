"""The SCoRe objectives on hand-made tensors: what one gradient step teaches, exact expectations of
the KL estimators' gradients by enumeration, hand computations of the aggregation modes."""

import math

import pytest
import torch

from learner.objectives import (
    Aggregation,
    AttemptTensors,
    ObjectiveSettings,
    informative_groups,
    kl_penalty,
    leave_one_out_advantages,
    logprob_mismatch,
    policy_gradient_loss,
    score_advantages,
    sequence_kl_penalty,
    shaped_reward,
    stage1_loss,
    stage2_loss,
    truncated_importance_weight,
    whole_batch_loss,
    zero_variance_fraction,
)

TOL = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _float64():
    """Hand computations in double precision; the global default is restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_leave_one_out_baseline():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # two problems, k = 3
    adv = leave_one_out_advantages(r, k=3)
    expected = [1 - 0.0, 0 - 0.5, 0 - 0.5, 1 - 1.0, 1 - 1.0, 1 - 1.0]
    assert adv.tolist() == pytest.approx(expected, abs=TOL)
    norm = leave_one_out_advantages(r, k=3, normalize=True)
    std = torch.tensor(expected).std().item()
    assert norm.tolist() == pytest.approx([e / (std + 1e-6) for e in expected], abs=TOL)
    assert zero_variance_fraction(r, 3) == 0.5  # the second problem's rewards are all equal
    with pytest.raises(ValueError):
        leave_one_out_advantages(r, k=1)
    with pytest.raises(ValueError):
        leave_one_out_advantages(r, k=4)


def test_kl_estimator_values_and_clamp():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    d = [0.5, -1.0]  # log pi - log pi_ref
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx(d, abs=TOL)
    assert kl_penalty(logp, ref, "k2").tolist() == pytest.approx([x * x / 2 for x in d], abs=TOL)
    k3 = [math.exp(-x) + x - 1 for x in d]
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx(k3, abs=TOL)
    assert kl_penalty(logp, ref, "k3+").tolist() == pytest.approx(k3, abs=TOL)  # k3's value ...
    lp = logp.clone().requires_grad_(True)
    kl_penalty(lp, ref, "k3+").sum().backward()
    assert lp.grad.tolist() == pytest.approx(d, abs=TOL)  # ... with k2's gradient d
    far = kl_penalty(torch.tensor([0.0]), torch.tensor([-500.0]), "k3")  # exp(500) would overflow
    assert torch.isfinite(far).all() and far.item() == pytest.approx(math.exp(-10) + 10 - 1)
    with pytest.raises(ValueError, match="k3\\+"):
        kl_penalty(logp, ref, "k4")


def test_clipped_ratio():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1 against old logp 0
    old = torch.zeros(1, 3)
    mask = torch.ones(1, 3)
    pos, frac = policy_gradient_loss(logp, old, torch.tensor([2.0]), mask, clip_ratio=0.2)
    # A > 0: min(r*A, clip(r)*A) = [1.2*2, 0.5*2, 1.1*2]
    assert pos.item() == pytest.approx(-(2.4 + 1.0 + 2.2) / 3, abs=TOL)
    assert frac.item() == pytest.approx(1 / 3, abs=TOL)
    neg, frac = policy_gradient_loss(logp, old, torch.tensor([-1.0]), mask, clip_ratio=0.2)
    # A < 0: min(-r, -clip(r)) = [-1.5, -0.8, -1.1]
    assert neg.item() == pytest.approx((1.5 + 0.8 + 1.1) / 3, abs=TOL)
    assert frac.item() == pytest.approx(1 / 3, abs=TOL)
    unclipped, frac = policy_gradient_loss(logp, old, torch.tensor([2.0]), mask)
    assert unclipped.item() == pytest.approx(-(3.0 + 1.0 + 2.2) / 3, abs=TOL) and frac.item() == 0


def test_ratio_is_one_against_the_learners_own_detached_logprobs():
    lp = torch.tensor([[-0.3, -2.0, -0.7]], requires_grad=True)
    loss, frac = policy_gradient_loss(lp, lp.detach(), torch.tensor([1.5]), torch.ones(1, 3), clip_ratio=0.2)
    assert loss.item() == -1.5 and frac.item() == 0  # exp(0) * A, nothing clipped
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([-0.5, -0.5, -0.5], abs=TOL)  # -A * grad logp / 3 tokens


def test_truncated_importance_weight():
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    rollout = torch.tensor([[-1.5, -0.5, -1.0]])
    w = truncated_importance_weight(old, rollout, cap=1.5)
    assert w[0].tolist() == pytest.approx([1.5, math.exp(-0.5), 1.0], abs=TOL)  # exp(0.5) = 1.65 is capped
    lp = old.clone().requires_grad_(True)
    loss, _ = policy_gradient_loss(lp, old, torch.tensor([1.0]), torch.ones(1, 3), is_weight=w)
    assert loss.item() == pytest.approx(-(1.5 + math.exp(-0.5) + 1.0) / 3, abs=TOL)


def test_aggregation_modes_by_hand_and_across_micro_batches():
    v = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert Aggregation("token_mean")(v, m).item() == pytest.approx(10 / 4)
    assert Aggregation("seq_mean_token_mean")(v, m).item() == pytest.approx((2 + 4) / 2)
    assert Aggregation("seq_mean_token_sum_norm", length=8)(v, m).item() == pytest.approx(10 / (2 * 8))
    # one row per micro-batch, batch denominators divided by the 2 micro-batches: the mean of the
    # micro losses (what gradient accumulation computes) equals the whole batch's aggregate
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        whole = Aggregation(mode, length=8)(v, m)
        per_micro = Aggregation(mode, tokens=4 / 2, sequences=2 / 2, length=8)
        accumulated = (per_micro(v[:1], m[:1]) + per_micro(v[1:], m[1:])) / 2
        assert accumulated.item() == pytest.approx(whole.item()), mode
    with pytest.raises(ValueError, match="token_mean"):
        Aggregation("mean")


def test_logprob_mismatch():
    learner = torch.tensor([[-1.0, -2.0, -3.0]])
    rollout = torch.tensor([[-1.1, -2.0, -2.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = logprob_mismatch(learner, rollout, mask)
    assert out["mean_abs"] == pytest.approx(0.05) and out["max_abs"] == pytest.approx(0.1)
    assert out["kl"] == pytest.approx((math.exp(0.1) - 0.1 - 1) / 2)


# --------------------------------------------------------------------------- one gradient step


def _independent_rows(k: int, vocab: int = 5, seed: int = 0):
    """k sequences of one token, each with its own logits (so one step moves each row by its own advantage)."""
    gen = torch.Generator().manual_seed(seed)
    logits = (0.1 * torch.randn(k, vocab, generator=gen)).requires_grad_(True)
    tokens = torch.arange(k) % vocab
    return logits, tokens


def _logp(logits, tokens):
    return torch.log_softmax(logits, -1).gather(1, tokens[:, None])


def _step_change(stage, r1, r2, settings, lr=0.5):
    """One SGD step on the SCoRe loss; returns the change of each row's log-prob, for attempt 1 and 2."""
    k = len(r1)
    logits1, tok1 = _independent_rows(k, seed=1)
    logits2, tok2 = _independent_rows(k, seed=2)
    before1, before2 = _logp(logits1, tok1).detach(), _logp(logits2, tok2).detach()
    lp1, lp2 = _logp(logits1, tok1), _logp(logits2, tok2)
    mask = torch.ones(k, 1)
    # the reference is the current policy: KL and its gradient start at zero
    a1 = AttemptTensors(lp1, lp1.detach(), lp1.detach(), mask)
    a2 = AttemptTensors(lp2, lp2.detach(), lp2.detach(), mask)
    loss = (stage1_loss if stage == 1 else stage2_loss)(a1, a2, torch.tensor(r1), torch.tensor(r2), settings)
    loss.loss.backward()
    with torch.no_grad():
        for logits in (logits1, logits2):
            if logits.grad is not None:
                logits -= lr * logits.grad
    return (_logp(logits1, tok1).detach() - before1).squeeze(1).tolist(), (_logp(logits2, tok2).detach() - before2).squeeze(1).tolist(), loss


def _step_change_n(stage, rewards, settings, lr=0.5, pinned_ref=None):
    """:func:`_step_change` for any number of attempts (``algorithm.attempts``): one SGD step on
    :func:`whole_batch_loss`; returns each attempt's per-row change of log-prob. ``pinned_ref``: attempt 1's
    reference log-probs (default: the current policy's, so that its KL starts at zero)."""
    k = len(rewards[0])
    rows = [_independent_rows(k, seed=t + 1) for t in range(len(rewards))]
    before = [_logp(lg, tok).detach() for lg, tok in rows]
    tensors = []
    for t, (lg, tok) in enumerate(rows):
        lp = _logp(lg, tok)
        ref = pinned_ref if t == 0 and pinned_ref is not None else lp.detach()
        tensors.append(AttemptTensors(lp, lp.detach(), ref, torch.ones(k, 1)))
    out = whole_batch_loss(stage, tensors, [torch.tensor(r) for r in rewards], settings)
    out.loss.backward()
    with torch.no_grad():
        for lg, _ in rows:
            if lg.grad is not None:
                lg -= lr * lg.grad
    return [(_logp(lg, tok).detach() - b).squeeze(1).tolist() for (lg, tok), b in zip(rows, before)], out


def test_three_attempts_stage1_trains_attempts_2_and_3_and_pins_attempt_1():
    """N = 3, Stage I (this project's extension of Section 5.1): attempts 2 and 3 each follow their own reward,
    attempt 1 gets no task-reward gradient at all, only the pull of beta2 back to the base model."""
    r1, r2, r3 = [1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]
    changes, out = _step_change_n(1, [r1, r2, r3], ObjectiveSettings(k=4))
    assert changes[0] == pytest.approx([0.0] * 4, abs=1e-12)  # at the reference: no gradient from r1, r2 or r3
    assert changes[1][0] > 0 and changes[1][1] > 0 and changes[1][2] < 0 and changes[1][3] < 0  # follows r2
    assert changes[2][0] < 0 and changes[2][1] > 0 and changes[2][2] > 0 and changes[2][3] < 0  # follows r3, not r2
    assert "advantage_mean_attempt1" not in out.metrics and len(out.kl) == 3
    # attempt 1 moved away from its base model: the step pulls it back toward it (beta2), whatever the rewards say
    k = 4
    drifted = _logp(*_independent_rows(k, seed=1)).detach()
    changes, _ = _step_change_n(1, [r1, r2, r3], ObjectiveSettings(k=4, beta2=1.0), pinned_ref=drifted + 0.5)
    assert all(c > 0 for c in changes[0])  # toward the reference, which gives each token more probability


def test_three_attempts_stage2_credits_attempt_3_with_its_own_shaped_reward():
    """N = 3, Stage II: attempt 3's advantage is the leave-one-out of r3 + alpha (r3 - r2), not of r3 alone nor of
    anything involving r1; attempt 1 keeps r1. A group where r3 is equal everywhere still teaches attempt 3
    through the bonus: the row that fixed attempt 2 rises, the row that kept a right attempt 2 falls."""
    r1 = [0.0, 1.0, 1.0, 0.0]
    r2 = [0.0, 1.0, 0.0, 1.0]
    r3 = [1.0, 1.0, 1.0, 1.0]  # same r3: only r3 + alpha (r3 - r2) = [11, 1, 11, 1] tells the rows apart
    settings = ObjectiveSettings(k=4, alpha=10.0)
    changes, out = _step_change_n(2, [r1, r2, r3], settings)
    assert changes[2][0] > 0 and changes[2][2] > 0 and changes[2][1] < 0 and changes[2][3] < 0
    # exactly: the gradient on attempt 3's log-prob is -advantage / tokens, with the advantage of r3_hat
    adv = score_advantages(2, [torch.tensor(r) for r in (r1, r2, r3)], settings)
    r3_hat = shaped_reward(torch.tensor(r2), torch.tensor(r3), 10.0)
    assert adv.per_attempt[2].tolist() == pytest.approx(leave_one_out_advantages(r3_hat, 4).tolist(), abs=TOL)
    assert adv.per_attempt[1].tolist() == pytest.approx(leave_one_out_advantages(shaped_reward(torch.tensor(r1), torch.tensor(r2), 10.0), 4).tolist(), abs=TOL)
    assert adv.per_attempt[0].tolist() == pytest.approx(leave_one_out_advantages(torch.tensor(r1), 4).tolist(), abs=TOL)
    assert changes[0][1] > 0 and changes[0][2] > 0 and changes[0][0] < 0  # attempt 1 follows r1
    assert out.metrics["shaped_reward"] == pytest.approx(float(r3_hat.mean()))
    # with two attempts the general loss is exactly the paper's Stage II
    two = whole_batch_loss(2, [AttemptTensors(torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4, 1), torch.ones(4, 1))] * 2,
                           [torch.tensor(r1), torch.tensor(r2)], settings)
    assert two.loss.item() == pytest.approx(stage2_loss(*[AttemptTensors(torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4, 1),
                                                                         torch.ones(4, 1))] * 2, torch.tensor(r1), torch.tensor(r2), settings).loss.item())


def test_three_attempts_dynamic_sampling_counts_every_trained_attempt():
    """A group whose only varying return is attempt 3's shaped reward is informative; one where nothing varies is not."""
    t = torch.tensor
    r1, r2 = t([1.0, 1.0, 0.0, 0.0]), t([1.0, 1.0, 0.0, 0.0])
    r3 = t([1.0, 0.0, 0.0, 0.0])  # group 0 varies at attempt 3 only; group 1 nowhere
    assert informative_groups(2, [r1, r2, r3], alpha=10, gamma=0, k=2) == [True, False]
    assert informative_groups(1, [r1, r2, r3], alpha=10, gamma=0, k=2) == [True, False]
    with pytest.raises(ValueError, match="at least 2 attempts"):
        informative_groups(2, [r1], alpha=10, gamma=0, k=2)


def test_stage2_credits_attempt1_with_its_own_reward():
    """The group {(right, right) x3, (wrong, right)}: a step raises the right first attempts and lowers the
    wrong one (the defect paid attempt 1 with r1 + r2_hat and did the opposite); attempt 2 follows r2_hat."""
    r1, r2 = [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]
    change1, change2, out = _step_change(2, r1, r2, ObjectiveSettings(k=4, alpha=10.0))
    assert all(c > 0 for c in change1[:3]) and change1[3] < 0
    # r2_hat = [1, 1, 1, 11]: the corrected attempt 2 rises, the others fall
    assert change2[3] > 0 and all(c < 0 for c in change2[:3])
    assert out.metrics["shaped_reward"] == pytest.approx((1 + 1 + 1 + 11) / 4)
    assert out.metrics["advantage_abs_mean_attempt1"] > 0 and out.metrics["zero_variance_groups_attempt2"] == 0.0


def test_stage2_shaping_direction():
    """A step raises wrong->right more than right->right, and lowers right->wrong (attempt 2)."""
    r1, r2 = [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]  # wrong->right, right->right, right->wrong, wrong->wrong
    _, change2, _ = _step_change(2, r1, r2, ObjectiveSettings(k=4, alpha=10.0))
    w2r, r2r, r2w, _ = change2
    assert w2r > r2r > 0 > r2w
    assert shaped_reward(torch.tensor(r1), torch.tensor(r2), 10.0).tolist() == [11.0, 1.0, -10.0, 0.0]


def test_stage1_trains_attempt2_only_and_logs_no_shaped_reward():
    r1, r2 = [1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]
    change1, change2, out = _step_change(1, r1, r2, ObjectiveSettings(k=4))
    assert change1 == pytest.approx([0.0] * 4, abs=1e-12)  # no task reward, KL gradient zero at the reference
    assert change2[0] > 0 and change2[1] > 0 and change2[2] < 0 and change2[3] < 0
    assert "shaped_reward" not in out.metrics and "advantage_mean_attempt1" not in out.metrics


def test_gamma_one_reproduces_the_return_to_go_formula():
    """gamma = 1 gives attempt 1 the advantage of r1 + r2_hat = (1 - alpha) r1 + (1 + alpha) r2, exactly the
    earlier formula, so the paper's gamma ablation is one setting."""
    r1, r2 = torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0, 1.0])
    lp = torch.zeros(4, 1, requires_grad=True)
    a1 = AttemptTensors(lp, lp.detach(), lp.detach(), torch.ones(4, 1))
    a2 = AttemptTensors(torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4, 1), torch.ones(4, 1))
    stage2_loss(a1, a2, r1, r2, ObjectiveSettings(k=4, alpha=10.0, gamma=1.0)).loss.backward()
    old_adv = leave_one_out_advantages(r1 + shaped_reward(r1, r2, 10.0), 4)
    assert lp.grad.squeeze(1).tolist() == pytest.approx((-old_adv / 4).tolist(), abs=TOL)
    assert old_adv.tolist() == pytest.approx([-3.0, -3.0, -3.0, 9.0])  # the defect: right first attempts pushed down


def test_stage2_by_hand():
    lp1 = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    rf1 = torch.tensor([[-1.2, -1.5], [-0.7, -0.3]])
    m1 = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    lp2 = torch.tensor([[-0.3, -0.9], [-1.1, -0.4]], requires_grad=True)
    rf2 = torch.tensor([[-0.2, -1.0], [-1.0, -0.9]])
    m2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    a1, a2 = AttemptTensors(lp1, lp1.detach(), rf1, m1), AttemptTensors(lp2, lp2.detach(), rf2, m2)
    r1, r2 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    out = stage2_loss(a1, a2, r1, r2, ObjectiveSettings(k=2, alpha=10.0, beta1=0.01, kl_estimator="k3"))
    adv1 = [-1.0, 1.0]  # leave-one-out of r1 with k = 2
    adv2 = [10.0, -10.0]  # r2_hat = [11, 1]
    pg1 = -(adv1[0] * 2 + adv1[1] * 1) / 3  # token mean over attempt 1's 3 action tokens
    pg2 = -(adv2[0] * 1 + adv2[1] * 2) / 3

    def k3(lp, rf, m):
        return sum(math.exp(r - l) - (r - l) - 1 for lrow, rrow, mrow in zip(lp.tolist(), rf.tolist(), m.tolist())
                   for l, r, mm in zip(lrow, rrow, mrow) if mm) / m.sum().item()

    kl1, kl2 = k3(lp1, rf1, m1), k3(lp2, rf2, m2)
    assert out.pg_loss.item() == pytest.approx(pg1 + pg2, abs=TOL)
    assert out.kl1.item() == pytest.approx(kl1, abs=TOL) and out.kl2.item() == pytest.approx(kl2, abs=TOL)
    assert out.loss.item() == pytest.approx(pg1 + pg2 + 0.01 * (kl1 + kl2), abs=TOL)
    out.loss.backward()
    k3_grad = 1 - math.exp(rf2[0, 0].item() - lp2[0, 0].item())
    assert lp2.grad[0, 0].item() == pytest.approx((-adv2[0] + 0.01 * k3_grad) / 3, abs=TOL)


# --------------------------------------------------------------------------- KL gradients, exactly


def _categorical(seed: int, vocab: int = 6):
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(vocab, generator=gen).requires_grad_(True)
    ref = torch.log_softmax(torch.randn(vocab, generator=gen), -1)
    return theta, ref


def _kl(p_log, q_log):
    return float((p_log.exp() * (p_log - q_log)).sum())


def _expected_kl_gradient(theta, ref, estimator):
    """The exact expectation over y ~ pi of the per-sample gradient the learner would apply, by enumeration.

    Each token of the vocabulary is one sequence; mask = pi(y) (detached) turns the token-mean into
    the expectation. Loss-side estimators differentiate their value; k1 differentiates the policy-gradient
    surrogate with the reward-side penalty -sum_t d_t as the advantage (the learner's path)."""
    logp = torch.log_softmax(theta, -1)[:, None]  # [V, 1]: one sequence per token
    weight = logp.detach().exp()
    refc = ref[:, None]
    if estimator == "k1":
        adv = -sequence_kl_penalty(logp, refc, torch.ones_like(weight))
        loss, _ = policy_gradient_loss(logp, logp.detach(), adv, weight)
    else:
        loss = Aggregation("token_mean")(kl_penalty(logp, refc, estimator), weight)
    (grad,) = torch.autograd.grad(loss, theta)
    return grad


@pytest.mark.parametrize("estimator,divergence", [("k1", "forward"), ("k2", "forward"), ("k3+", "forward"), ("k3", "reverse")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_kl_estimator_pulls_toward_the_reference(estimator, divergence, seed):
    theta, ref = _categorical(seed)
    grad = _expected_kl_gradient(theta, ref, estimator)
    logp = torch.log_softmax(theta.detach(), -1)
    # the expected gradient is the gradient of the divergence the docstring names
    target = (lambda t: (torch.log_softmax(t, -1).exp() * (torch.log_softmax(t, -1) - ref)).sum()) if divergence == "forward" \
        else (lambda t: (ref.exp() * (ref - torch.log_softmax(t, -1))).sum())
    t = theta.detach().clone().requires_grad_(True)
    (true_grad,) = torch.autograd.grad(target(t), t)
    assert grad.tolist() == pytest.approx(true_grad.tolist(), abs=1e-9)
    # and a small step lowers KL(pi || pi_ref)
    stepped = torch.log_softmax(theta.detach() - 0.05 * grad, -1)
    assert _kl(stepped, ref) < _kl(logp, ref)


def test_k1_as_a_loss_would_not_pull():
    """Why k1 is reward-side only: the expectation of grad (logp - ref) under pi is zero."""
    theta, ref = _categorical(0)
    logp = torch.log_softmax(theta, -1)[:, None]
    loss = Aggregation("token_mean")(kl_penalty(logp, ref[:, None], "k1"), logp.detach().exp())
    (grad,) = torch.autograd.grad(loss, theta)
    assert grad.abs().max().item() < 1e-12


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "k3+"])
def test_stage1_pins_attempt1_with_every_estimator(estimator):
    """Attempt 1 drifted from the reference: token 0 became likelier, token 1 less likely. Every estimator,
    k1 on the reward side included, pushes the step back (the beta2 pin cannot be configured away)."""
    ref = torch.log(torch.tensor([[0.3], [0.3]]))
    lp = torch.log(torch.tensor([[0.6], [0.1]])).requires_grad_(True)  # the two sampled first attempts
    a1 = AttemptTensors(lp, lp.detach(), ref, torch.ones(2, 1))
    z = torch.zeros(2, 1)
    a2 = AttemptTensors(z, z, z, torch.ones(2, 1))
    out = stage1_loss(a1, a2, torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), ObjectiveSettings(k=2, beta2=0.1, kl_estimator=estimator))
    out.loss.backward()
    assert lp.grad[0, 0] > 0 > lp.grad[1, 0]  # descent lowers the over-weighted token, raises the under-weighted one


def test_informative_groups_follow_each_stage_s_returns():
    """What dynamic sampling keeps: a group teaches the policy gradient iff some attempt's task return varies in it."""
    t = torch.tensor
    r1 = t([1, 0, 0, 0, 1, 1, 0, 0.0])  # groups of k=2: (1,0) (0,0) (1,1) (0,0)
    r2 = t([1, 1, 0, 1, 1, 1, 0, 0.0])  #                 (1,1) (0,1) (1,1) (0,0)
    # Stage I: only attempt 2's reward counts; a varying attempt 1 alone teaches nothing (it is only pinned)
    assert informative_groups(1, [r1, r2], alpha=10, gamma=0, k=2) == [False, True, False, False]
    # Stage II: attempt 1's own reward, and the shaped r2_hat (group 0: r2 equal, but 1 vs 1 + 10 after the bonus)
    assert informative_groups(2, [r1, r2], alpha=10, gamma=0, k=2) == [True, True, False, False]
    assert informative_groups(2, [r1, r2], alpha=0, gamma=0, k=2) == [True, True, False, False]
    # the groups it calls uninformative are exactly those whose advantages (the learner's) are all zero
    for stage in (1, 2):
        adv = score_advantages(stage, [r1, r2], ObjectiveSettings(k=2, alpha=10.0))
        nonzero = sum(a.reshape(-1, 2).abs().sum(1) for a in (adv.attempt1, adv.attempt2) if a is not None) > 0
        assert nonzero.tolist() == informative_groups(stage, [r1, r2], 10.0, 0.0, 2)
