"""Online per-(cohort, signal) baselines on river, with two horizons and warm-up.

Each baseline keeps tiny bounded state and follows river's split: ``score_one`` reads,
``learn_one`` updates and returns ``None``. Deciding what is anomalous is not their job
(see ``detector.core.scoring``).
"""

from __future__ import annotations

__all__ = ["fading_factor"]


def fading_factor(half_life: float) -> float:
    """The weight of a new value for an exponentially weighted mean with this half-life.

    >>> round(fading_factor(1.0), 3)
    0.5
    """
    return 1.0 - 0.5 ** (1.0 / half_life)
