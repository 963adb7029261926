"""Curve KPIs: the smoothed training loss and the steps it takes to reach a target, from a logged loss curve."""
from __future__ import annotations

import math

import numpy as np

SMOOTHING_FRACTION = 0.1  # the trailing window of the smoothed loss, as a fraction of the stage's budget


def smoothed_loss(steps: np.ndarray, losses: np.ndarray, fraction: float = SMOOTHING_FRACTION) -> np.ndarray:
    """Trailing moving average of a loss curve over a window of `fraction` of the budget, in steps.

    The budget is the last logged step (a finished stage always logs its last step) and the
    window is W = round(fraction * budget) steps, at least 1: the value at a log point is the
    mean of the logged losses whose step lies in (step - W, step].  Its last value is the
    stage's final_loss, so the window does not depend on how often a stage logs.
    """
    steps = np.asarray(steps, dtype=float)
    losses = np.asarray(losses, dtype=float)
    if steps.shape != losses.shape or steps.ndim != 1 or len(steps) == 0:
        raise ValueError("steps and losses must be non-empty 1-D arrays of the same length")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    window = max(1, round(fraction * steps[-1]))
    first_in_window = np.searchsorted(steps, steps - window, side="right")  # [n] index where each window starts
    return np.array([losses[first : i + 1].mean() for i, first in enumerate(first_in_window)])  # [n]


def steps_to_target(steps: np.ndarray, losses: np.ndarray, target: float) -> float:
    """First logged step from which the smoothed loss (`smoothed_loss`) stays <= target until the end.

    A dip below the target that does not last does not count.  A run whose final_loss (the
    last smoothed value) is <= target always reaches it; one that ends above it, or logged a
    non-finite loss, never does and gets inf (censored).
    """
    losses = np.asarray(losses, dtype=float)
    if len(losses) == 0 or not np.all(np.isfinite(losses)):
        return math.inf
    smoothed = smoothed_loss(steps, losses)  # [n]
    above = np.flatnonzero(~(smoothed <= target))  # log points where the smoothed loss is above target
    if above.size and above[-1] == len(smoothed) - 1:
        return math.inf
    first_below_for_good = above[-1] + 1 if above.size else 0
    return float(np.asarray(steps, dtype=float)[first_below_for_good])
