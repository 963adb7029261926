"""Sequential gating: how much of the gate's alpha each look at a growing number of seeds may spend."""
from __future__ import annotations

import numpy as np
from scipy import stats

def alpha_spending(looks: int, total_alpha: float = 0.05, information: list[float] | None = None) -> list[float]:
    """Per-look alpha for `looks` interim analyses, equally spaced unless `information` gives each look's
    information fraction (e.g. seeds so far / most seeds: increasing, the last 1).

    O'Brien-Fleming-type Lan-DeMets spending: alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)),
    and look k gets alpha(k/K) - alpha((k-1)/K): tiny early, most of it at the end.  Using
    the increments as nominal per-look levels is conservative: by Bonferroni the chance of
    any false claim over all looks is at most their sum, total_alpha.
    """
    if looks < 1:
        raise ValueError(f"looks must be >= 1, got {looks}")
    if not 0 < total_alpha < 1:
        raise ValueError(f"total_alpha must be in (0, 1), got {total_alpha}")
    if information is None:
        information = list(np.arange(1, looks + 1) / looks)
    fractions = np.asarray(information, dtype=float)
    if len(fractions) != looks or not (np.all(np.diff(fractions) > 0) and fractions[0] > 0 and fractions[-1] == 1):
        raise ValueError(f"information must be {looks} increasing fractions in (0, 1] ending at 1, got {information}")
    information = fractions
    spent = 2.0 * stats.norm.sf(stats.norm.isf(total_alpha / 2) / np.sqrt(information))
    return [float(a) for a in np.diff(spent, prepend=0.0)]
