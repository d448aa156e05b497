"""Summaries of training curves."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def updates_to_target(steps: Sequence[int], values: Sequence[float], target: float,
                      higher_is_better: bool = True, never: float = float("inf")) -> float:
    """The first evaluated step at which ``values`` reaches ``target``.

    Returns ``never`` (default ``inf``) when the curve never gets there. Pass a
    finite censoring value (e.g. the budget plus one eval interval) to compare
    such runs in seed statistics: a run that never converges then counts as
    slower than any run that does. No interpolation between eval points: the answer is
    exact to the eval interval.
    """
    steps, values = np.asarray(steps), np.asarray(values, dtype=float)
    if steps.shape != values.shape:
        raise ValueError("steps and values must have the same length")
    hit = values >= target if higher_is_better else values <= target
    idx = np.flatnonzero(hit)
    return float(steps[idx[0]]) if idx.size else float(never)
