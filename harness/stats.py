"""Statistics that decide whether a candidate world model may replace the baseline.

Each KPI is measured once per training seed for both arms.  For every KPI we

1. turn the per-seed values into a *badness-oriented* effect ``d`` (positive means
   the candidate is worse), on a log axis (ratios) or a linear axis (differences);
2. test three one-sided claims about the mean of ``d`` against the KPI's margin ``m``:

   ============  ===================  =======================================
   claim         alternative (H1)     meaning
   ============  ===================  =======================================
   non-inferior  mean d < m           confidently not worse than the margin
   improved      mean d < 0           confidently better than the baseline
   regressed     mean d > m           confidently worse than the margin
   ============  ===================  =======================================

   (plus ``p_worse``, H1: mean d > 0, "worse at all": with an estimate beyond the margin it holds up a PASS);
3. attach an estimate with the confidence interval that is dual to those tests: the
   two-sided (1 - 2 alpha) t interval of the mean effect (90% at alpha = 0.05).  Its worse
   end lies inside the margin exactly when the non-inferiority test rejects at alpha, and it
   excludes "no change" on the better side exactly when the improvement test does, so the
   interval shown and the verdict never disagree (Holm only makes "regressed" stricter).

Seeds are paired when both arms have the same seeds (paired t-test on ``d``); arms on
disjoint seeds get Welch's unpaired t-test (the gate refuses arms that share only some).
Steps-to-target KPIs are right-censored (``inf`` = never reached the target) and use rank
tests instead.

Bit-identical arms (every paired difference exactly zero: a shared stage, or ties in a
quantised KPI) carry no evidence either way: they get the verdict "identical", no p values,
and stay out of the Holm family.

Tiers (harness.types.TIERS): a *blocking* KPI must be non-inferior for a PASS and FAILs the merge when
regressed; a *guard* KPI only FAILs it when regressed (it need not be shown non-inferior for a PASS: a KPI that
varies too much between seeds to ever show non-inferiority at the gate's seeds, which can still catch a large
regression); an *informational* one decides nothing.

A PASS never contradicts its own intervals: a guard whose interval lies wholly beyond its margin (its own
one-sided test rejects "within the margin" at alpha) but which is not regressed after the Holm correction is
INCONCLUSIVE (Why.BEYOND_MARGIN) and holds up the PASS: evidence of a regression too weak to FAIL the merge,
too strong to let it through. So does one that is significantly worse than the baseline at all (its one-sided
test of "no worse", ``p_worse``, rejects at alpha, before Holm) with its estimate beyond its margin (Why.WORSE): the best
guess is a regression the margin calls meaningful, and the seeds say it is not chance. More seeds settle either.

Multiplicity: the "regressed" claims are Holm-adjusted across the blocking and guard KPIs together,
because a single false "regressed" of either fails the PR.  When several candidates are compared
with one baseline in one report (`compare_all`, a leaderboard), the family is every
candidate's blocking and guard KPIs: one false "regressed" in any candidate fails the whole gate.
PASS needs *every* blocking KPI to be non-inferior; that is an intersection-union test,
whose size is already at most alpha without any adjustment, so non-inferiority p values
are reported raw.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from harness.power import MIN_SEEDS, resolution, seeds_to_settle
from harness.types import (
    NAN,
    ArmSummary,
    Comparison,
    Effect,
    Finding,
    HypothesisTest,
    KpiComparison,
    KpiRule,
    KpiVerdict,
    Reason,
    Resolution,
    Verdict,
    Why,
    count_missing,
)

__all__ = ["Comparison", "ComparisonArms", "KpiComparison", "KpiRule", "compare", "compare_all", "compare_kpi",
           "floor_log_scale", "holm_adjust", "iqm_interval"]

MIN_VALUES_PER_ARM = MIN_SEEDS


# --------------------------------------------------------------------------- data preparation


@dataclass(frozen=True)
class _Arm:
    """The usable values of one arm of one KPI, keyed by seed, on the raw (user) scale."""

    by_seed: dict[int, float]

    @property
    def values(self) -> np.ndarray:
        return np.array(list(self.by_seed.values()), dtype=float)

    @property
    def n(self) -> int:
        return len(self.by_seed)


def _usable_values(rule: KpiRule, values: Mapping[int, float], censored: bool, arm: str) -> _Arm:
    """Drop missing (NaN) values and reject values the analysis cannot use."""
    usable: dict[int, float] = {}
    for seed, raw in values.items():
        value = float(raw)
        if math.isnan(value):
            continue
        if math.isinf(value) and not (censored and value > 0):
            hint = " (pass the KPI as censored if inf means 'never reached')" if value > 0 else ""
            raise ValueError(f"KPI {rule.name!r}, {arm} seed {seed}: value {value} is not allowed{hint}")
        if rule.scale == "log" and value <= 0:
            raise ValueError(
                f"KPI {rule.name!r}, {arm} seed {seed}: value {value} <= 0 on a log-scale KPI; use scale='linear'"
            )
        usable[int(seed)] = value
    return _Arm(usable)


LOG_SCALE_FLOOR = 1e-12  # a log-scale KPI at 0 (a collapsed encoder's variance) is read as this


def floor_log_scale(rule: KpiRule, values: Mapping[int, float]) -> tuple[dict[int, float], int]:
    """The values as the KPI's scale can compare them, and how many were floored: on a log scale a value <= 0
    has no ratio, so it is read as LOG_SCALE_FLOOR and a collapse shows as a huge change (linear: unchanged)."""
    low = [seed for seed, value in values.items() if value <= 0] if rule.scale == "log" else []
    return {**values, **dict.fromkeys(low, LOG_SCALE_FLOOR)}, len(low)


def _to_analysis_axis(rule: KpiRule, values: np.ndarray) -> np.ndarray:
    """Log for ratio KPIs (inf stays inf), unchanged for linear ones."""
    return np.log(values) if rule.scale == "log" else values


def _to_user_scale(rule: KpiRule, badness: float) -> float:
    """Map a badness-axis quantity back to the user-facing ratio / difference."""
    oriented = rule.badness_sign * badness
    return float(np.exp(oriented)) if rule.scale == "log" else float(oriented)


# --------------------------------------------------------------------------- small statistics


def interquartile_mean(values: np.ndarray) -> float:
    """Mean of the middle 50% (IQM), robust to a stray seed."""
    if len(values) == 0:
        return NAN
    with _quiet():
        return float(stats.trim_mean(values, 0.25))


IQM_RESAMPLES = 2000  # bootstrap resamples of an arm's IQM: its interval's ends move by < 1% of its width


def iqm_interval(values: np.ndarray, level: float, resamples: int = IQM_RESAMPLES) -> tuple[float, float]:
    """The percentile bootstrap interval of an arm's IQM at `level` (two-sided), as rliable gives for an aggregate
    over runs (one task: no strata). The resamples come from a fixed seed, so a report is reproducible; with fewer
    than MIN_VALUES_PER_ARM values there is no interval (NaN, NaN). Sorted first: the same values in any order (two
    arms sharing a stage list their seeds differently) give the same interval."""
    values = np.sort(np.asarray(values, dtype=float))
    if len(values) < MIN_VALUES_PER_ARM:
        return NAN, NAN
    rng = np.random.default_rng(0)
    samples = values[rng.integers(0, len(values), size=(resamples, len(values)))]  # [resamples, n]
    with _quiet():
        iqms = stats.trim_mean(samples, 0.25, axis=1)
    tail = (1.0 - level) / 2.0
    if np.isinf(iqms).any():  # censored runs (never reached): interpolating between inf and inf is undefined
        return float(np.quantile(iqms, tail, method="lower")), float(np.quantile(iqms, 1.0 - tail, method="higher"))
    low, high = np.quantile(iqms, [tail, 1.0 - tail])
    return float(low), float(high)


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else NAN


def _hedges_correction(df: int) -> float:
    """Hedges' small-sample correction J = 1 - 3 / (4 df - 1) (the usual approximation)."""
    return 1.0 - 3.0 / (4.0 * df - 1.0) if df >= 1 else NAN


def hedges_g_paired(differences: np.ndarray) -> float:
    """d_z = mean/sd of per-seed differences times J(n - 1), i.e. J = 1 - 3/(4n - 5)."""
    n = len(differences)
    if n < 2:
        return NAN
    if _has_no_spread(differences):  # a standardised effect needs noise to standardise by
        return NAN
    return float(np.mean(differences) / np.std(differences, ddof=1) * _hedges_correction(n - 1))


def hedges_g_unpaired(candidate: np.ndarray, baseline: np.ndarray) -> float:
    """(mean c - mean b) / pooled sd times J(n_c + n_b - 2)."""
    n_c, n_b = len(candidate), len(baseline)
    if n_c < 2 or n_b < 2:
        return NAN
    if _has_no_spread(candidate, baseline):
        return NAN
    pooled_var = ((n_c - 1) * np.var(candidate, ddof=1) + (n_b - 1) * np.var(baseline, ddof=1)) / (n_c + n_b - 2)
    return float((np.mean(candidate) - np.mean(baseline)) / math.sqrt(pooled_var) * _hedges_correction(n_c + n_b - 2))


def probability_of_improvement(rule: KpiRule, candidate: np.ndarray, baseline: np.ndarray) -> float:
    """rliable's probability of improvement P(C > B): the share of all n_c * n_b (candidate run,
    baseline run) pairs in which the candidate is better, ties counting 1/2 (the Mann-Whitney U
    statistic over n_c * n_b).  Every pair counts, also when the seeds are paired."""
    c, b = candidate[:, None], baseline[None, :]
    better = c < b if rule.direction == "lower" else c > b
    return float(np.mean(better + 0.5 * (c == b)))


# --------------------------------------------------------------------------- hypothesis tests


@dataclass(frozen=True)
class _PValues:
    improved: float  # H1: d < 0
    noninferior: float  # H1: d < margin
    worse: float  # H1: d > 0
    regressed: float  # H1: d > margin


ROUNDING = 1e-12  # relative: values that differ by less than this times their magnitude differ by float rounding


def _deterministic_p(effect: float, margin: float, scale: float) -> _PValues:
    """Zero spread (e.g. a bit-for-bit deterministic pipeline): the sign decides, and ties reject nothing. An
    effect within float rounding of the values (`scale`: their magnitude) of 0 or the margin is a tie: a
    constant ratio of 1.1 against a 10% margin computes to 0.0953101798043249 or a hair above it."""
    tolerance = ROUNDING * scale

    def below(bound: float) -> float:
        return 0.0 if effect < bound - tolerance else 1.0

    def above(bound: float) -> float:
        return 0.0 if effect > bound + tolerance else 1.0

    return _PValues(improved=below(0.0), noninferior=below(margin), worse=above(0.0), regressed=above(margin))


def _magnitude(*samples: np.ndarray) -> float:
    return max(float(np.max(np.abs(s))) if len(s) else 0.0 for s in samples)


def _has_no_spread(*samples: np.ndarray, scale: float | None = None) -> bool:
    """Every sample constant up to float rounding of values of magnitude `scale` (default: the samples' own):
    differences of values near 1 that differ by 1e-17 have no spread, tiny values that differ by half have."""
    scale = _magnitude(*samples) if scale is None else scale
    return all(np.ptp(s) <= ROUNDING * scale for s in samples)


def _one_sided_p_values(statistic: np.ndarray, df: np.ndarray) -> _PValues:
    """Both one-sided p values from a two-column t-test (columns: vs 0, vs the margin).

    t.cdf / t.sf of the statistic is exactly what scipy's ``alternative="less"/"greater"``
    computes; one scipy call instead of four keeps the simulations fast.
    """
    less = stats.t.cdf(statistic, df)
    greater = stats.t.sf(statistic, df)
    return _PValues(float(less[0]), float(less[1]), float(greater[0]), float(greater[1]))


def ci_level(alpha: float) -> float:
    """Two-sided level of the interval dual to one-sided tests at `alpha`: its ends are the one-sided bounds."""
    return 1.0 - 2.0 * alpha


def _paired_t_test(d: np.ndarray, margin: float, alpha: float,
                   scale: float) -> tuple[_PValues, tuple[float, float]]:
    """One-sample t-tests of mean d against 0 and the margin, plus the dual t interval of mean d; `scale` is the
    magnitude of the values d are differences of (what float rounding is relative to)."""
    if _has_no_spread(d, scale=scale):
        mean = float(np.mean(d))
        return _deterministic_p(mean, margin, scale), (mean, mean)
    result = stats.ttest_1samp(np.column_stack([d, d]), [[0.0, margin]])
    low, high = result.confidence_interval(ci_level(alpha))
    return _one_sided_p_values(result.statistic, result.df), (float(low[0]), float(high[0]))


def _welch_t_test(candidate: np.ndarray, baseline: np.ndarray, margin: float,
                  alpha: float) -> tuple[_PValues, tuple[float, float]]:
    """Welch tests of mean(c) - mean(b) against 0 and the margin (the candidate shifted by it), plus the dual
    t interval."""
    scale = _magnitude(candidate, baseline)
    if _has_no_spread(candidate, baseline, scale=scale):
        difference = float(np.mean(candidate) - np.mean(baseline))
        return _deterministic_p(difference, margin, scale), (difference, difference)
    shifted = np.column_stack([candidate, candidate - margin])
    result = stats.ttest_ind(shifted, baseline[:, None], equal_var=False)
    low, high = result.confidence_interval(ci_level(alpha))
    return _one_sided_p_values(result.statistic, result.df), (float(low[0]), float(high[0]))


def _replace_infinities(values: np.ndarray) -> np.ndarray:
    """Swap +-inf for +-(a number beyond every finite value) so rank tests rank them last
    (all censored runs tie) without doing arithmetic on infinities."""
    finite = values[np.isfinite(values)]
    beyond = 2.0 * (float(np.max(np.abs(finite))) if finite.size else 0.0) + 1.0
    return np.where(np.isposinf(values), beyond, np.where(np.isneginf(values), -beyond, values))


def _signed_rank_p(d: np.ndarray, alternative: str) -> float:
    """Wilcoxon signed-rank on per-seed differences; zero differences (ties) carry no evidence."""
    if not np.any(d != 0):
        return 1.0
    return float(stats.wilcoxon(_replace_infinities(d), alternative=alternative).pvalue)


def _censored_differences(candidate: np.ndarray, baseline: np.ndarray, shift: float) -> np.ndarray:
    """(c - shift) - b per seed, where two censored runs tie (inf - inf -> 0)."""
    both_censored = np.isposinf(candidate) & np.isposinf(baseline)
    with _quiet():
        d = (candidate - shift) - baseline
    return np.where(both_censored, 0.0, d)


def _wilcoxon_p_values(candidate: np.ndarray, baseline: np.ndarray, margin: float) -> _PValues:
    plain = _censored_differences(candidate, baseline, 0.0)
    shifted = _censored_differences(candidate, baseline, margin)
    return _PValues(
        improved=_signed_rank_p(plain, "less"),
        noninferior=_signed_rank_p(shifted, "less"),
        worse=_signed_rank_p(plain, "greater"),
        regressed=_signed_rank_p(shifted, "greater"),
    )


def _mann_whitney_p(candidate: np.ndarray, baseline: np.ndarray, alternative: str) -> float:
    pooled = _replace_infinities(np.concatenate([candidate, baseline]))
    c, b = pooled[: len(candidate)], pooled[len(candidate) :]
    if _has_no_spread(pooled):
        return 1.0
    return float(stats.mannwhitneyu(c, b, alternative=alternative).pvalue)


def _mann_whitney_p_values(candidate: np.ndarray, baseline: np.ndarray, margin: float) -> _PValues:
    shifted = candidate - margin  # inf stays inf: a censored run is worst after any shift
    return _PValues(
        improved=_mann_whitney_p(candidate, baseline, "less"),
        noninferior=_mann_whitney_p(shifted, baseline, "less"),
        worse=_mann_whitney_p(candidate, baseline, "greater"),
        regressed=_mann_whitney_p(shifted, baseline, "greater"),
    )


# --------------------------------------------------------------------------- per-KPI analysis


@dataclass(frozen=True)
class _KpiAnalysis:
    """Everything about one KPI that does not depend on alpha or the other KPIs."""

    rule: KpiRule
    given_baseline: dict[int, float]
    given_candidate: dict[int, float]
    baseline: _Arm
    candidate: _Arm
    common_seeds: list[int]
    paired: bool
    censored: bool
    enough_data: bool
    method: str = ""
    effect: float = NAN  # badness axis
    ci: tuple[float, float] = (NAN, NAN)  # badness axis
    sd_d: float = NAN  # spread of a single seed's effect, for power analysis
    p: _PValues = _PValues(NAN, NAN, NAN, NAN)
    hedges_g: float = NAN
    prob_improvement: float = NAN
    censored_baseline: int = 0  # runs that never reached the target, in the analysed seeds
    censored_candidate: int = 0
    identical: bool = False  # paired and every per-seed difference exactly zero (a shared stage, or ties)


def _analyse(
    rule: KpiRule,
    baseline: Mapping[int, float],
    candidate: Mapping[int, float],
    censored: bool,
    alpha: float,
) -> _KpiAnalysis:
    """Prepare the arms, then test them: rank tests when censored, else a paired or an unpaired t-test."""
    analysis = _prepare(rule, baseline, candidate, censored)
    if not analysis.enough_data:
        return analysis
    b_raw, c_raw = _tested_values(analysis)
    prob = probability_of_improvement(rule, c_raw, b_raw)
    if analysis.paired and np.array_equal(c_raw, b_raw):
        # Bit-identical arms: no test, no p values (so no place in Holm's family), no interval.
        censored_runs = int(np.isinf(b_raw).sum())
        return replace(analysis, method="none (bit-identical arms)", effect=0.0, ci=(0.0, 0.0), sd_d=0.0,
                       prob_improvement=prob, identical=True, censored_baseline=censored_runs,
                       censored_candidate=censored_runs)
    # Badness orientation: positive = candidate worse.
    b = rule.badness_sign * _to_analysis_axis(rule, b_raw)
    c = rule.badness_sign * _to_analysis_axis(rule, c_raw)
    if censored:
        return _analyse_censored(analysis, c, b, prob, rule.analysis_margin)
    if analysis.paired:
        return _analyse_paired(analysis, c, b, prob, alpha)
    return _analyse_unpaired(analysis, c, b, prob, alpha)


def _prepare(rule: KpiRule, baseline: Mapping[int, float], candidate: Mapping[int, float],
             censored: bool) -> _KpiAnalysis:
    """The usable values of both arms, and whether they are paired and enough to test."""
    if censored and rule.direction != "lower":
        raise ValueError(f"KPI {rule.name!r}: censored (steps-to-target) KPIs must have direction 'lower'")
    base_arm = _usable_values(rule, baseline, censored, "baseline")
    cand_arm = _usable_values(rule, candidate, censored, "candidate")
    common = sorted(set(base_arm.by_seed) & set(cand_arm.by_seed))
    # Paired only when both arms have the same seeds: pairing a partial overlap would drop the other runs.
    same_seeds = set(base_arm.by_seed) == set(cand_arm.by_seed)
    return _KpiAnalysis(
        rule=rule,
        given_baseline={int(s): float(v) for s, v in baseline.items()},
        given_candidate={int(s): float(v) for s, v in candidate.items()},
        baseline=base_arm,
        candidate=cand_arm,
        common_seeds=common,
        paired=same_seeds and len(common) >= MIN_VALUES_PER_ARM,
        censored=censored,
        enough_data=min(base_arm.n, cand_arm.n) >= MIN_VALUES_PER_ARM,
    )


def _tested_values(analysis: _KpiAnalysis) -> tuple[np.ndarray, np.ndarray]:
    """(baseline, candidate) raw values the tests use: the common seeds, in order, when paired; else every value."""
    if analysis.paired:
        seeds = analysis.common_seeds
        return (np.array([analysis.baseline.by_seed[s] for s in seeds]),
                np.array([analysis.candidate.by_seed[s] for s in seeds]))
    return analysis.baseline.values, analysis.candidate.values


def _analyse_paired(analysis: _KpiAnalysis, c: np.ndarray, b: np.ndarray, prob: float, alpha: float) -> _KpiAnalysis:
    """A paired t-test of the per-seed effects d = c - b (badness axis)."""
    rule = analysis.rule
    d = c - b
    p_values, interval = _paired_t_test(d, rule.analysis_margin, alpha, _magnitude(c, b))
    return replace(
        analysis,
        method="paired t-test",
        effect=float(np.mean(d)),
        ci=interval,
        sd_d=float(np.std(d, ddof=1)),
        p=p_values,
        hedges_g=hedges_g_paired(rule.badness_sign * d),
        prob_improvement=prob,
    )


def _analyse_unpaired(analysis: _KpiAnalysis, c: np.ndarray, b: np.ndarray, prob: float,
                      alpha: float) -> _KpiAnalysis:
    """Arms on disjoint seeds: Welch's t-test of the arms as independent samples (badness axis)."""
    rule = analysis.rule
    p_values, interval = _welch_t_test(c, b, rule.analysis_margin, alpha)
    return replace(
        analysis,
        method="Welch t-test (unpaired)",
        effect=float(np.mean(c) - np.mean(b)),
        ci=interval,
        # A future paired design would see roughly this per-seed spread (arms uncorrelated).
        sd_d=float(math.sqrt(np.var(c, ddof=1) + np.var(b, ddof=1))),
        p=p_values,
        hedges_g=hedges_g_unpaired(rule.badness_sign * c, rule.badness_sign * b),
        prob_improvement=prob,
    )


def _analyse_censored(
    analysis: _KpiAnalysis, c: np.ndarray, b: np.ndarray, prob: float, margin: float
) -> _KpiAnalysis:
    """Rank tests for steps-to-target: a run that never reached the target (inf) ranks worst.

    The estimate is a Hodges-Lehmann style median: of per-seed differences (paired) or of
    all pairwise differences (unpaired), where two censored runs tie.  No CI, no effect
    size and no power analysis: with censoring those would need a survival model.
    """
    if analysis.paired:
        method, differences, p = ("Wilcoxon signed-rank", _censored_differences(c, b, 0.0),
                                  _wilcoxon_p_values(c, b, margin))
    else:
        method, differences, p = ("Mann-Whitney U", _censored_differences(c[:, None], b[None, :], 0.0).ravel(),
                                  _mann_whitney_p_values(c, b, margin))
    return replace(analysis, method=f"{method} (censored ranked worst)", effect=_median(differences), p=p,
                   prob_improvement=prob, censored_baseline=int(np.isinf(b).sum()),
                   censored_candidate=int(np.isinf(c).sum()))


# --------------------------------------------------------------------------- verdicts


def _verdict(analysis: _KpiAnalysis, p_regressed_adjusted: float, alpha: float,
             hold_alpha: float) -> tuple[KpiVerdict, Why]:
    """The KPI's verdict and the rule that gave it, in the order the rules apply."""
    p = analysis.p
    # A censored KPI can only pass if the candidate misses the target no more often than the baseline: as a
    # share of its runs, since unpaired arms may differ in size.
    censoring_ok = (analysis.censored_candidate * analysis.baseline.n
                    <= analysis.censored_baseline * analysis.candidate.n)
    missing = count_missing(analysis.given_baseline) + count_missing(analysis.given_candidate)
    if not analysis.enough_data:
        return KpiVerdict.INCONCLUSIVE, Why.TOO_FEW_VALUES
    if p_regressed_adjusted < alpha:
        return KpiVerdict.REGRESSED, Why.REGRESSED
    if missing:
        # A run that finished but has no value (its evaluation broke) never helps a KPI pass: missing
        # data must not shrink the sample until what is left looks fine.
        return KpiVerdict.INCONCLUSIVE, Why.NO_VALUE
    if p.regressed < hold_alpha:
        return KpiVerdict.INCONCLUSIVE, Why.BEYOND_MARGIN
    if analysis.identical:
        return KpiVerdict.IDENTICAL, Why.IDENTICAL
    if p.improved < alpha and censoring_ok:
        return KpiVerdict.IMPROVED, Why.IMPROVED
    if p.noninferior < alpha and censoring_ok:
        return KpiVerdict.NON_INFERIOR, Why.NON_INFERIOR
    if p.worse < hold_alpha and analysis.effect > analysis.rule.analysis_margin:
        return KpiVerdict.INCONCLUSIVE, Why.WORSE
    return KpiVerdict.INCONCLUSIVE, Why.UNSETTLED


def _arm_summary(given: dict[int, float], arm: _Arm, censored: int) -> ArmSummary:
    return ArmSummary(values=given, n=arm.n, median=_median(arm.values), iqm=interquartile_mean(arm.values),
                      censored=censored)


def _effect(analysis: _KpiAnalysis, alpha: float) -> Effect:
    """The analysis' effect and interval mapped back from the badness axis to the user's scale."""
    rule = analysis.rule
    estimate = _to_user_scale(rule, analysis.effect) if not math.isnan(analysis.effect) else NAN
    ci_ends = sorted(_to_user_scale(rule, end) for end in analysis.ci) if not math.isnan(analysis.ci[0]) else [NAN, NAN]
    return Effect(
        estimate=estimate,
        ci_low=float(ci_ends[0]),
        ci_high=float(ci_ends[1]),
        ci_level=ci_level(alpha) if math.isfinite(ci_ends[0]) else NAN,
        margin=_to_user_scale(rule, rule.analysis_margin),
        hedges_g=analysis.hedges_g,
        prob_improvement=analysis.prob_improvement,
    )


# A guard inconclusive for one of these holds up a PASS: the evidence says it got worse, too weakly to FAIL.
_EVIDENCE_OF_HARM = (Why.BEYOND_MARGIN, Why.WORSE)


def _judge(analysis: _KpiAnalysis, p_regressed_adjusted: float, alpha: float, hold_alpha: float) -> KpiComparison:
    rule, p = analysis.rule, analysis.p
    verdict, why = _verdict(analysis, p_regressed_adjusted, alpha, hold_alpha)
    seeds_needed = (seeds_to_settle(analysis.effect, analysis.sd_d, rule.analysis_margin, alpha)
                    if why in (Why.UNSETTLED, *_EVIDENCE_OF_HARM) else None)
    return KpiComparison(
        name=rule.name,
        rule=rule,
        baseline=_arm_summary(analysis.given_baseline, analysis.baseline, analysis.censored_baseline),
        candidate=_arm_summary(analysis.given_candidate, analysis.candidate, analysis.censored_candidate),
        effect=_effect(analysis, alpha),
        test=HypothesisTest(
            method=analysis.method,
            paired=analysis.paired,
            n_paired=len(analysis.common_seeds),
            p_noninferior=p.noninferior,
            p_improved=p.improved,
            p_regressed=p.regressed,
            p_regressed_adjusted=float(p_regressed_adjusted),
            p_worse=p.worse,
        ),
        verdict=verdict,
        why=why,
        recommended_seeds=seeds_needed,
        resolution=_resolution(analysis, alpha),
    )


def _resolution(analysis: _KpiAnalysis, alpha: float) -> Resolution | None:
    """What the analysed seeds can tell apart (harness.power); None where no t-test ran (censored, too few)."""
    if analysis.censored or not analysis.enough_data:
        return None
    seeds = len(analysis.common_seeds) if analysis.paired else min(analysis.baseline.n, analysis.candidate.n)
    return resolution(analysis.sd_d, seeds, analysis.rule.analysis_margin, alpha)


# The verdicts of a KPI whose values are missing (failed evaluations, NaN): they say nothing about the change.
_MISSING_DATA = (Why.TOO_FEW_VALUES, Why.NO_VALUE)


def _merge_verdict(kpis: list[KpiComparison], failures_baseline: int,
                   failures_candidate: int) -> tuple[Verdict, list[Reason], int | None]:
    """The merge verdict from the blocking and guard KPIs and the failed runs: (verdict, its reasons in order, and
    for INCONCLUSIVE the most seeds any unsettled blocking KPI asks for).

    FAIL: a blocking or guard KPI regressed, or the candidate failed more often. PASS: every blocking KPI
    improved, non-inferior or identical, every guard KPI has its data and is not beyond its margin, and no
    candidate run failed. A guard that is merely unsettled does not hold up a PASS (Comparison.unresolved_guards
    names it); one without its data does, as a blocking KPI's would (a guard that was not measured guards
    nothing), and so does one whose interval lies beyond its margin before the Holm correction, or that is
    significantly worse than the baseline with its estimate beyond its margin."""
    blocking_kpis = [k for k in kpis if k.rule.blocking]
    regressed = [k for k in kpis if k.rule.can_fail and k.verdict == KpiVerdict.REGRESSED]
    unsettled = [k for k in kpis if k.rule.can_fail and k.verdict == KpiVerdict.INCONCLUSIVE
                 and (k.rule.blocking or k.why in _MISSING_DATA or k.why in _EVIDENCE_OF_HARM)]
    more_failures = failures_candidate > failures_baseline

    reasons = [Reason(Finding.KPI, k.name) for k in regressed]
    if more_failures:
        reasons.append(Reason(Finding.MORE_FAILURES))
    if regressed or more_failures:
        return Verdict.FAIL, reasons, None
    reasons += [Reason(Finding.KPI, k.name) for k in unsettled]
    if failures_candidate > 0:
        reasons.append(Reason(Finding.CANDIDATE_FAILURES))
    if not blocking_kpis:
        reasons.append(Reason(Finding.NO_BLOCKING_KPI))
    if not reasons:
        return Verdict.PASS, [Reason(Finding.ALL_BLOCKING_OK)], None
    recommendations = [k.recommended_seeds for k in unsettled if k.recommended_seeds is not None]
    return Verdict.INCONCLUSIVE, reasons, max(recommendations, default=None)


@contextmanager
def _quiet() -> Iterator[None]:
    """Degenerate inputs are handled explicitly; keep numpy/scipy from warning about them."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        yield


# --------------------------------------------------------------------------- public entry points


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")


def compare_kpi(
    rule: KpiRule,
    baseline: Mapping[int, float],
    candidate: Mapping[int, float],
    alpha: float = 0.05,
    censored: bool = False,
) -> KpiComparison:
    """Compare one KPI on its own (no multiplicity adjustment: p_regressed_adjusted = p_regressed)."""
    _check_alpha(alpha)
    with _quiet():
        analysis = _analyse(rule, baseline, candidate, censored, alpha)
        return _judge(analysis, analysis.p.regressed, alpha, alpha)


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm step-down adjusted p values; NaN (no data) stays NaN and is not part of the family.

    Same numbers as statsmodels' ``multipletests(method="holm")`` (checked in the tests), but
    that function runs ``gc.collect()`` on every call (~40 ms in a loaded process), which
    made the calibration simulations crawl.  The procedure itself is three lines:
    the k-th smallest of m p values is multiplied by (m - k + 1), then a running maximum
    keeps the order, and everything is capped at 1.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), NAN)
    in_family = np.flatnonzero(~np.isnan(p))
    order = in_family[np.argsort(p[in_family], kind="stable")]
    m = len(order)
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    adjusted[order] = np.minimum(stepped, 1.0)
    return [float(x) for x in adjusted]


def _holm_within_families(rules: list[KpiRule], p_regressed: list[float]) -> list[float]:
    """Holm within the KPIs whose regression FAILs the merge (blocking and guard KPIs, one family); informational
    KPIs form their own family. `rules` may hold the KPIs of several candidates (compare_all): the families then
    span them all."""
    adjusted = [NAN] * len(rules)
    for can_fail in (True, False):
        family = [i for i, rule in enumerate(rules) if rule.can_fail == can_fail]
        for i, p in zip(family, holm_adjust([p_regressed[i] for i in family])):
            adjusted[i] = p
    return adjusted


@dataclass(frozen=True)
class ComparisonArms:
    """One candidate against the baseline, as `compare_all` takes it: the rules (a KPI's tier may differ
    between candidates, e.g. a timing KPI measured side by side for one and not another), kpi -> seed -> value for
    each arm, and each arm's failed (or missing) runs."""

    rules: list[KpiRule]
    baseline: Mapping[str, Mapping[int, float]]
    candidate: Mapping[str, Mapping[int, float]]
    failures_baseline: int = 0
    failures_candidate: int = 0


def compare(
    rules: list[KpiRule],
    baseline: Mapping[str, Mapping[int, float]],
    candidate: Mapping[str, Mapping[int, float]],
    *,
    failures_baseline: int = 0,
    failures_candidate: int = 0,
    censored_kpis: set[str] | frozenset[str] = frozenset(),
    alpha: float = 0.05,
    hold_alpha: float | None = None,
) -> Comparison:
    """Decide PASS / FAIL / INCONCLUSIVE for a candidate against the baseline.

    FAIL: a blocking or guard KPI regressed beyond its margin (Holm over the blocking and guard KPIs
    together), or the candidate had more failed runs than the baseline.  PASS: every blocking KPI
    improved, non-inferior or identical, no guard KPI lacks data and no candidate run failed.  Otherwise
    INCONCLUSIVE, with the number of seeds that would likely settle it (`_merge_verdict`).  In sequential
    mode pass the per-look alpha from `alpha_spending` as `alpha` and the gate's own as `hold_alpha`: the level
    at which a guard beyond its margin before Holm holds up a PASS (default `alpha`), so that an early look,
    whose spent alpha is small, never lets through a guard that a fixed-seed gate would hold up.
    """
    arms = ComparisonArms(rules, baseline, candidate, failures_baseline, failures_candidate)
    return compare_all([arms], censored_kpis=censored_kpis, alpha=alpha, hold_alpha=hold_alpha)[0]


def compare_all(
    candidates: list[ComparisonArms],
    *,
    censored_kpis: set[str] | frozenset[str] = frozenset(),
    alpha: float = 0.05,
    hold_alpha: float | None = None,
) -> list[Comparison]:
    """`compare` for each candidate against the same baseline, with Holm across every candidate's KPIs.

    A leaderboard gate FAILs when any candidate regresses, so the "regressed" claims of all candidates are one
    family (blocking and guard KPIs together, informational ones their own, as for one candidate): a change that
    harms nothing FAILs the leaderboard with probability at most alpha however many candidates it holds.
    """
    _check_alpha(alpha)
    for arms in candidates:
        names = [rule.name for rule in arms.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate KPI names in rules: {names}")

    with _quiet():
        analyses = [[_analyse(rule, arms.baseline.get(rule.name, {}), arms.candidate.get(rule.name, {}),
                              rule.name in censored_kpis, alpha) for rule in arms.rules] for arms in candidates]
        flat = [analysis for per_candidate in analyses for analysis in per_candidate]
        adjusted = iter(_holm_within_families([analysis.rule for analysis in flat],
                                              [analysis.p.regressed for analysis in flat]))
        hold = alpha if hold_alpha is None else hold_alpha
        judged = [[_judge(analysis, next(adjusted), alpha, hold) for analysis in per_candidate]
                  for per_candidate in analyses]
    comparisons = []
    for arms, kpis in zip(candidates, judged):
        verdict, reasons, seeds = _merge_verdict(kpis, arms.failures_baseline, arms.failures_candidate)
        comparisons.append(Comparison(verdict=verdict, reasons=reasons, kpis=kpis, recommended_seeds=seeds,
                                      alpha=float(alpha), failures_baseline=arms.failures_baseline,
                                      failures_candidate=arms.failures_candidate))
    return comparisons
