"""An adaptive beta2: the attempt-1 KL weight of Stage I, steered so that attempt 1's KL to the base
model tracks a target.

SCoRe's Stage I keeps attempt 1 near the base model with a strong KL weight beta2 while attempt 2
learns (Kumar et al., 2024, Section 5.1). A fixed beta2 has to be tuned per model and task: too weak
and attempt 1 drifts, which undoes the decoupling Stage I exists for; too strong and the penalty
swamps attempt 2's policy loss. The paper names an adaptive beta2 that balances the two as an option
(Section 5.3). This is the proportional controller of Ziegler et al. (2019, "Fine-Tuning Language
Models from Human Preferences", Section 2.2), the one OpenRLHF's and TRL's ``AdaptiveKLController``
implement for their single KL weight:

    e     = clip(KL / target - 1, -0.2, 0.2)
    beta2 = beta2 * (1 + gain * e)

after every Stage I iteration, with KL the batch's per-token attempt-1 KL estimate (``kl_attempt1``
of :meth:`learner.core.LearnerCore.update`). Ziegler et al. scale the gain by the batch size over a
horizon; here it is one number per iteration (``algorithm.beta2_kl_gain``), since an iteration is the
unit the trainer logs and checkpoints.

Invariants: beta2 stays positive (each step multiplies it by at least 1 - 0.2 * gain, and gain < 5);
a non-finite KL (an empty batch) leaves it unchanged; ``state()`` / ``from_state()`` round-trip
exactly, so a resumed run continues the same sequence of weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

CLIP = 0.2  # Ziegler et al.'s bound on the proportional error


@dataclass
class AdaptiveBeta2:
    """Owns the current beta2 and moves it toward the weight at which attempt 1's KL is ``target_kl``."""

    value: float
    target_kl: float
    gain: float = 0.1
    steps: int = 0

    def __post_init__(self) -> None:
        if not (self.value > 0 and self.target_kl > 0 and 0 < self.gain < 1 / CLIP):
            raise ValueError(f"AdaptiveBeta2 needs value > 0, target_kl > 0 and 0 < gain < {1 / CLIP:g}, got "
                             f"value={self.value}, target_kl={self.target_kl}, gain={self.gain}")

    def update(self, kl: float) -> float:
        """One controller step after an iteration whose attempt-1 KL was ``kl``; returns the new beta2."""
        if math.isfinite(kl):
            error = min(max(kl / self.target_kl - 1.0, -CLIP), CLIP)
            self.value *= 1.0 + self.gain * error
            self.steps += 1
        return self.value

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "AdaptiveBeta2":
        return cls(**{key: state[key] for key in ("value", "target_kl", "gain", "steps")})
