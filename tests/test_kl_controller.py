"""The adaptive beta2 controller (learner/kl_controller.py): pure logic, no model. Whether the trainer feeds it
each Stage I iteration's attempt-1 KL and sends its weight to the update is tested in test_learner.py and
test_training.py."""

from __future__ import annotations

import math

import pytest

from learner.kl_controller import CLIP, AdaptiveBeta2


def test_beta2_rises_while_attempt_1_drifts_past_the_target_and_falls_while_it_stays_under():
    above, below = AdaptiveBeta2(0.1, target_kl=0.01), AdaptiveBeta2(0.1, target_kl=0.01)
    for _ in range(5):
        above.update(0.011)
        below.update(0.009)
    assert above.value > 0.1 > below.value
    # one step of a 10 % error at gain 0.1 moves beta2 by 1 %
    one = AdaptiveBeta2(0.1, target_kl=0.01)
    assert one.update(0.011) == pytest.approx(0.1 * 1.01)


def test_a_kl_far_from_the_target_moves_beta2_by_at_most_the_clipped_step():
    c = AdaptiveBeta2(1.0, target_kl=1e-3, gain=0.5)
    assert c.update(1.0) == pytest.approx(1.0 + 0.5 * CLIP)  # a thousandfold overshoot still moves it 10 %
    assert c.update(0.0) == pytest.approx((1.0 + 0.5 * CLIP) * (1.0 - 0.5 * CLIP))
    for _ in range(1000):  # never reaches 0, whatever the KL
        c.update(0.0)
    assert c.value > 0


def test_a_kl_that_is_not_a_number_leaves_beta2_and_its_step_count_alone():
    c = AdaptiveBeta2(0.1, target_kl=0.01)
    c.update(float("nan"))
    c.update(math.inf)
    assert (c.value, c.steps) == (0.1, 0)


def test_the_state_round_trips_so_a_resumed_run_continues_the_same_weights():
    a = AdaptiveBeta2(0.1, target_kl=0.01, gain=0.3)
    for kl in (0.02, 0.005, 0.013):
        a.update(kl)
    b = AdaptiveBeta2.from_state(a.state())
    for kl in (0.03, 0.001):
        assert a.update(kl) == b.update(kl)
    assert b.state() == a.state() and b.steps == 5


@pytest.mark.parametrize("kwargs", [dict(value=0.0, target_kl=0.01), dict(value=0.1, target_kl=0.0),
                                    dict(value=0.1, target_kl=0.01, gain=1 / CLIP)])
def test_a_controller_that_could_reach_zero_or_never_move_is_refused(kwargs):
    with pytest.raises(ValueError, match="AdaptiveBeta2 needs"):
        AdaptiveBeta2(**kwargs)
