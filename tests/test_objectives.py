"""The SCoRe objectives on hand-made tensors, against hand computations."""

import math

import pytest
import torch

from learner.objectives import (
    AttemptTensors,
    kl_penalty,
    leave_one_out_advantages,
    policy_gradient_loss,
    shaped_reward,
    stage1_loss,
    stage2_loss,
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
    with pytest.raises(ValueError):
        leave_one_out_advantages(r, k=1)
    with pytest.raises(ValueError):
        leave_one_out_advantages(r, k=4)


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0], abs=TOL)
    d = [-0.5, 1.0]
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx([math.exp(x) - x - 1 for x in d], abs=TOL)


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


def _attempt(logp, ref, mask):
    logp = torch.tensor(logp, requires_grad=True)
    return AttemptTensors(logp, logp.detach().clone(), torch.tensor(ref), torch.tensor(mask))


def _kl3(lp, rf, m):
    per_seq = []
    for lrow, rrow, mrow in zip(lp, rf, m):
        vals = [math.exp(r - l) - (r - l) - 1 for l, r, mm in zip(lrow, rrow, mrow) if mm]
        per_seq.append(sum(vals) / max(len(vals), 1))
    return sum(per_seq) / len(per_seq)


LP1 = [[-1.0, -2.0], [-0.5, -0.1]]
RF1 = [[-1.2, -1.5], [-0.7, -0.3]]
M1 = [[1.0, 1.0], [1.0, 0.0]]
LP2 = [[-0.3, -0.9], [-1.1, -0.4]]
RF2 = [[-0.2, -1.0], [-1.0, -0.9]]
M2 = [[1.0, 0.0], [1.0, 1.0]]


def test_stage1_by_hand():
    a1, a2 = _attempt(LP1, RF1, M1), _attempt(LP2, RF2, M2)
    r2 = torch.tensor([1.0, 0.0])  # one problem, k = 2
    out = stage1_loss(a1, a2, r2, k=2, beta1=0.01, beta2=0.1)
    adv = [1.0, -1.0]  # leave-one-out with k = 2
    # on-policy: ratio = 1, so the surrogate is -A per token
    pg = -((adv[0] * 1) / 1 + (adv[1] * 2) / 2) / 2
    kl1, kl2 = _kl3(LP1, RF1, M1), _kl3(LP2, RF2, M2)
    assert out.pg_loss.item() == pytest.approx(pg, abs=TOL)
    assert out.kl1.item() == pytest.approx(kl1, abs=TOL) and out.kl2.item() == pytest.approx(kl2, abs=TOL)
    assert out.loss.item() == pytest.approx(pg + 0.1 * kl1 + 0.01 * kl2, abs=TOL)
    out.loss.backward()
    # attempt 1 gets only the KL gradient (beta2 * d k3 / d logp = beta2 * (1 - exp(ref - logp)) / n_tokens / N)
    g = (1 - math.exp(RF1[0][0] - LP1[0][0])) / 2 / 2 * 0.1
    assert a1.logp.grad[0, 0].item() == pytest.approx(g, abs=TOL)


def test_stage2_by_hand():
    a1, a2 = _attempt(LP1, RF1, M1), _attempt(LP2, RF2, M2)
    r1, r2 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    alpha, beta1 = 10.0, 0.01
    out = stage2_loss(a1, a2, r1, r2, k=2, alpha=alpha, beta1=beta1)
    r2_hat = [1 + alpha * 1, 1 + alpha * 0]  # [11, 1]
    ret1 = [0 + 11, 1 + 1]  # return to go of attempt 1: [11, 2]
    adv1 = [ret1[0] - ret1[1], ret1[1] - ret1[0]]
    adv2 = [r2_hat[0] - r2_hat[1], r2_hat[1] - r2_hat[0]]
    pg1 = -(adv1[0] + adv1[1]) / 2  # every sequence has ratio 1
    pg2 = -(adv2[0] + adv2[1]) / 2
    kl1, kl2 = _kl3(LP1, RF1, M1), _kl3(LP2, RF2, M2)
    assert out.pg_loss.item() == pytest.approx(pg1 + pg2, abs=TOL)
    assert out.loss.item() == pytest.approx(pg1 + pg2 + beta1 * (kl1 + kl2), abs=TOL)
    assert out.shaped_reward.item() == pytest.approx(sum(r2_hat) / 2, abs=TOL)
    out.loss.backward()
    # d loss / d logp2[0,0] = -adv2[0] / (1 token) / (2 sequences) + beta1 * k3'
    k3_grad = (1 - math.exp(RF2[0][0] - LP2[0][0])) / 1 / 2
    assert a2.logp.grad[0, 0].item() == pytest.approx(-adv2[0] / 2 + beta1 * k3_grad, abs=TOL)


def test_shaping_direction_in_stage2():
    """One SGD step raises wrong->right more than right->right, and lowers right->wrong."""
    torch.manual_seed(0)
    vocab, k = 5, 4
    r1 = torch.tensor([0.0, 1.0, 1.0, 0.0])  # wrong->right, right->right, right->wrong, wrong->wrong
    r2 = torch.tensor([1.0, 1.0, 0.0, 0.0])
    tokens = torch.tensor([0, 1, 2, 3])
    logits1 = torch.zeros(k, vocab)
    logits2 = torch.zeros(k, vocab, requires_grad=True)

    def logp2():
        return torch.log_softmax(logits2, -1).gather(1, tokens[:, None])

    before = logp2().detach().squeeze(1)
    lp1 = torch.log_softmax(logits1, -1).gather(1, tokens[:, None])
    a1 = AttemptTensors(lp1, lp1.detach(), lp1.detach(), torch.ones(k, 1))
    lp2 = logp2()
    a2 = AttemptTensors(lp2, lp2.detach(), lp2.detach(), torch.ones(k, 1))
    stage2_loss(a1, a2, r1, r2, k=k, alpha=10.0, beta1=0.01).loss.backward()
    with torch.no_grad():
        logits2 -= 0.1 * logits2.grad
    change = (logp2().detach().squeeze(1) - before).tolist()
    w2r, r2r, r2w, _ = change
    assert w2r > r2r > 0 > r2w
    assert shaped_reward(r1, r2, 10.0).tolist() == [11.0, 1.0, -10.0, 0.0]
