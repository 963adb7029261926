"""What a number of seeds can resolve: power of the gate's one-sided t-tests, and the seeds a KPI needs.

The gate's tests are one-sided t-tests on per-seed effects (harness.stats). For a true mean effect
`delta` and a per-seed spread `sd`, a one-sided one-sample t-test at level alpha over n seeds rejects
with probability

    power = P(T > t_{1 - alpha, n - 1}),   T ~ noncentral t(df = n - 1, nc = delta / sd * sqrt(n)),

which is exact for normal effects (scipy.stats.nct). Two questions follow, both asked of the spread the
seeds showed:

- **resolution**: the smallest true difference the test detects with TARGET_POWER at n seeds. A KPI
  *settles* at n seeds when its resolution is within its margin: a change that truly makes no
  difference is then shown non-inferior with at least TARGET_POWER, and only a change worse than
  margin + resolution is FAILed with that power.
- **seeds needed**: the smallest n at which a zero true difference is shown non-inferior with
  TARGET_POWER (the margin is the distance the test has to cover), capped at MAX_RECOMMENDED_SEEDS.
- **failable regression**: the smallest true worsening the regression test (H1: d > margin) FAILs with
  TARGET_POWER at n seeds, margin + resolution. What a guard KPI (harness.types.TIERS), which never has
  to show non-inferiority, can still catch.

Unpaired arms (Welch) are sized as a paired design whose per-seed spread is sqrt(var_c + var_b): Welch's
test has more degrees of freedom, so this errs on the side of more seeds.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy import optimize, stats

from harness.types import Resolution

TARGET_POWER = 0.8
MIN_SEEDS = 2  # a t-test needs two values
LARGEST_EFFECT_SIZE = 1e3  # per-seed sds; a difference beyond it is "not detectable" (inf)
# Seed recommendations are capped here; a value equal to the cap means "this many or more".
MAX_RECOMMENDED_SEEDS = 200


def t_test_power(effect_size: float | np.ndarray, seeds: int | np.ndarray, alpha: float) -> np.ndarray:
    """Power of a one-sided one-sample t-test at level alpha for a true effect of `effect_size` sds.

    Args:
        effect_size: true mean effect / per-seed sd, in the direction the test looks (>= 0 to be useful).
        seeds: number of per-seed effects, >= 2 (broadcasts with effect_size).
        alpha: one-sided level.
    Returns:
        The rejection probability, same shape as the broadcast inputs.
    """
    seeds = np.asarray(seeds, dtype=float)
    df = seeds - 1
    critical = stats.t.isf(alpha, df)
    return stats.nct.sf(critical, df, np.asarray(effect_size, dtype=float) * np.sqrt(seeds))


def seeds_for_power(effect_size: float, alpha: float, power: float = TARGET_POWER) -> int:
    """Smallest n in [MIN_SEEDS, MAX_RECOMMENDED_SEEDS] at which the test reaches `power` (the cap if none)."""
    if math.isnan(effect_size) or effect_size <= 0:
        return MAX_RECOMMENDED_SEEDS
    if math.isinf(effect_size):
        return MIN_SEEDS
    candidates = np.arange(MIN_SEEDS, MAX_RECOMMENDED_SEEDS + 1)
    enough = np.flatnonzero(t_test_power(effect_size, candidates, alpha) >= power)
    return int(candidates[enough[0]]) if enough.size else MAX_RECOMMENDED_SEEDS


@functools.cache  # pure, and asked for the same few (seeds, alpha) by every KPI of every comparison
def detectable_effect_size(seeds: int, alpha: float, power: float = TARGET_POWER) -> float:
    """The true effect, in per-seed sds, that the test at `seeds` seeds detects with `power`; inf beyond
    LARGEST_EFFECT_SIZE sds (two seeds at an early sequential look's tiny alpha)."""
    if seeds < MIN_SEEDS or t_test_power(LARGEST_EFFECT_SIZE, seeds, alpha) < power:
        return math.inf
    return float(optimize.brentq(lambda size: t_test_power(size, seeds, alpha) - power, 1e-9, LARGEST_EFFECT_SIZE))


def detectable_difference(spread: float, seeds: int, alpha: float) -> float:
    """The smallest true difference (on the statistics' axis) a one-sided test at `seeds` seeds whose per-seed
    effects spread by `spread` (sd) detects with TARGET_POWER: 0 without spread, inf where the spread is unknown
    or there are too few seeds."""
    if spread == 0:
        return 0.0
    if not (math.isfinite(spread) and spread > 0 and seeds >= MIN_SEEDS):
        return math.inf
    return detectable_effect_size(seeds, alpha) * spread


def failable_regression(spread: float, seeds: int, margin: float, alpha: float) -> float:
    """The smallest true worsening (on the statistics' axis) that the regression test, H1: mean d > margin at
    level alpha, FAILs with TARGET_POWER at `seeds` seeds: the margin plus the detectable difference. Before Holm:
    the blocking and guard KPIs' regression claims are adjusted together, so among several a regression must be
    somewhat larger than this to FAIL."""
    return margin + detectable_difference(spread, seeds, alpha)


def resolution(spread: float, seeds: int, margin: float, alpha: float) -> Resolution:
    """The resolution of a comparison whose per-seed effects spread by `spread` (sd), at `seeds` seeds."""
    detectable = detectable_difference(spread, seeds, alpha)
    if spread == 0:
        needed = MIN_SEEDS
    elif math.isinf(detectable) or margin <= 0:
        needed = MAX_RECOMMENDED_SEEDS
    else:
        needed = seeds_for_power(margin / spread, alpha)
    return Resolution(seeds, spread, detectable, needed, margin, failable_regression(spread, seeds, margin, alpha))


def recommended_seeds(sd_d: float, margin: float, alpha: float = 0.05, power: float = TARGET_POWER) -> int:
    """Seeds for a paired one-sided t-test to detect a true effect equal to the margin (vs 0).

    `sd_d` and `margin` are on the analysis axis: log-ratios for log-scale KPIs (use
    ``rule.analysis_margin``), plain differences otherwise.  Capped at MAX_RECOMMENDED_SEEDS.
    """
    if not (sd_d > 0 and margin > 0):
        raise ValueError("sd_d and margin must be > 0")
    return seeds_for_power(margin / sd_d, alpha, power)


def seeds_to_settle(mean_d: float, sd_d: float, margin: float, alpha: float) -> int | None:
    """Seeds for TARGET_POWER if the observed mean effect were the truth (None without a spread).

    Below the margin this sizes the non-inferiority test, at or beyond it the regression test.
    The Holm adjustment is ignored, so with several KPIs this is slightly optimistic.
    """
    if not (math.isfinite(mean_d) and math.isfinite(sd_d) and sd_d > 0):
        return None
    return seeds_for_power(abs(margin - mean_d) / sd_d, alpha)

