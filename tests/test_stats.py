"""Tests for harness.stats, curves, power and sequential: hand-checked numbers, then simulations (calibration, power, coverage)."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import warnings

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from harness.curves import smoothed_loss, steps_to_target
from harness.power import detectable_effect_size, failable_regression, recommended_seeds, t_test_power
from harness.sequential import alpha_spending
from harness.stats import (
    LOG_SCALE_FLOOR,
    Comparison,
    KpiRule,
    compare,
    compare_kpi,
    floor_log_scale,
    holm_adjust,
    interquartile_mean,
    iqm_interval,
)
from harness.kpis import final_loss
from harness.types import Finding, Reason, RuleError, Why
from reports.text import (comparison_reasons, kpi_reason,  # the statistics return numbers; reports/ words them
                          resolution_text)

LOSS = KpiRule("loss", "lower", "log", 0.05)
LOG_MARGIN = math.log(1.05)


def by_seed(values, first_seed: int = 0) -> dict[int, float]:
    return {first_seed + i: float(v) for i, v in enumerate(values)}


# --------------------------------------------------------------------------- hand-checked numbers

PAIRED_BASE = by_seed([2.00, 2.10, 1.90, 2.05])
PAIRED_CAND = by_seed([2.02, 2.16, 1.93, 2.04])


def test_paired_t_matches_hand_formula_and_scipy():
    d = [math.log(PAIRED_CAND[s] / PAIRED_BASE[s]) for s in PAIRED_BASE]
    mean, sd, n = statistics.fmean(d), statistics.stdev(d), len(d)
    t_vs_margin = (mean - LOG_MARGIN) / (sd / math.sqrt(n))
    t_vs_zero = mean / (sd / math.sqrt(n))

    k = compare_kpi(LOSS, PAIRED_BASE, PAIRED_CAND)

    assert k.test.paired and k.test.n_paired == 4 and k.test.method == "paired t-test"
    assert k.test.p_noninferior == pytest.approx(stats.t.cdf(t_vs_margin, n - 1), rel=1e-9)
    assert k.test.p_noninferior == pytest.approx(stats.ttest_1samp(d, LOG_MARGIN, alternative="less").pvalue, rel=1e-9)
    assert k.test.p_regressed == pytest.approx(stats.t.sf(t_vs_margin, n - 1), rel=1e-9)
    assert k.test.p_improved == pytest.approx(stats.t.cdf(t_vs_zero, n - 1), rel=1e-9)
    assert k.test.p_worse == pytest.approx(stats.t.sf(t_vs_zero, n - 1), rel=1e-9)
    assert k.effect.estimate == pytest.approx(math.exp(mean))  # geometric-mean ratio c/b
    assert k.effect.margin == pytest.approx(1.05)
    assert k.effect.ci_low <= k.effect.estimate <= k.effect.ci_high


def test_higher_is_better_flips_the_claims_but_not_the_estimate():
    lower = compare_kpi(LOSS, PAIRED_BASE, PAIRED_CAND)
    higher = compare_kpi(KpiRule("acc", "higher", "log", 0.05), PAIRED_BASE, PAIRED_CAND)
    d = [math.log(PAIRED_CAND[s] / PAIRED_BASE[s]) for s in PAIRED_BASE]

    assert higher.effect.estimate == pytest.approx(lower.effect.estimate)  # user-facing ratio, not sign-flipped
    assert higher.test.p_improved == pytest.approx(lower.test.p_worse)
    assert higher.test.p_worse == pytest.approx(lower.test.p_improved)
    # Badness for "higher" is -d; not worse than a 5% drop means -d < log(1.05).
    expected = stats.ttest_1samp(-np.array(d), LOG_MARGIN, alternative="less").pvalue
    assert higher.test.p_noninferior == pytest.approx(expected, rel=1e-9)
    assert higher.effect.margin == pytest.approx(1 / 1.05)


def test_welch_fallback_when_fewer_than_two_common_seeds():
    base = by_seed([2.0, 2.2, 1.9, 2.1])
    cand = by_seed([2.3, 2.1, 2.4, 2.2, 2.35], first_seed=3)  # only seed 3 in common
    lb = np.log(list(base.values()))
    lc = np.log(list(cand.values()))

    k = compare_kpi(LOSS, base, cand)

    assert not k.test.paired and k.test.n_paired == 1 and k.baseline.n == 4 and k.candidate.n == 5
    var_c, var_b = lc.var(ddof=1) / len(lc), lb.var(ddof=1) / len(lb)
    t = (lc.mean() - LOG_MARGIN - lb.mean()) / math.sqrt(var_c + var_b)
    df = (var_c + var_b) ** 2 / (var_c**2 / (len(lc) - 1) + var_b**2 / (len(lb) - 1))
    assert k.test.p_noninferior == pytest.approx(stats.t.cdf(t, df), rel=1e-9)
    scipy_p = stats.ttest_ind(lc - LOG_MARGIN, lb, equal_var=False, alternative="less").pvalue
    assert k.test.p_noninferior == pytest.approx(scipy_p, rel=1e-9)
    assert k.test.p_regressed == pytest.approx(stats.t.sf(t, df), rel=1e-9)
    assert k.effect.estimate == pytest.approx(math.exp(lc.mean() - lb.mean()))  # ratio of geometric means


def test_holm_adjustment_by_hand():
    # Sorted: 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06.
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx(list(multipletests([0.01, 0.04, 0.03], method="holm")[1]))
    adjusted = holm_adjust([0.01, float("nan"), 0.04])  # NaN = no data: not in the family
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


# Candidate worse than the 0.1 margin with one-sided p around 0.04 (4 seeds, t ~ 2.6).
BORDERLINE_BASE = by_seed([1.0, 1.0, 1.0, 1.0])
BORDERLINE_CAND = by_seed([1.0 + 0.1 + x for x in (0.00357, 0.02357, 0.04357, 0.06357)])
LATENCY = KpiRule("latency", "lower", "linear", 0.1)


def test_holm_applies_across_blocking_and_guard_kpis_in_compare():
    """A regression of either FAILs the merge, so the blocking and guard KPIs are one family (fvd a guard here)."""
    alone = compare_kpi(LATENCY, BORDERLINE_BASE, BORDERLINE_CAND)
    assert 0.025 < alone.test.p_regressed < 0.05 and alone.verdict == "regressed"

    rules = [
        LATENCY,
        KpiRule("loss", "lower", "log", 0.05),
        KpiRule("fvd", "lower", "log", 0.05, blocking=False, guard=True),
        KpiRule("info", "lower", "log", 0.05, blocking=False),
    ]
    same = by_seed([1.0, 1.1, 0.9, 1.05])
    slightly_better = by_seed([0.97, 1.08, 0.88, 1.0])
    result = compare(
        rules,
        {"latency": BORDERLINE_BASE, "loss": same, "fvd": same, "info": same},
        # fvd differs in one seed: bit-identical arms would be left out of the family (tested below).
        {"latency": BORDERLINE_CAND, "loss": slightly_better, "fvd": {**same, 3: 1.06}, "info": BORDERLINE_BASE},
    )
    kpis = {k.name: k for k in result.kpis}
    blocking_raw = [kpis[name].test.p_regressed for name in ("latency", "loss", "fvd")]
    hand = sorted(blocking_raw)
    hand = [min(1.0, p * factor) for p, factor in zip(hand, (3, 2, 1))]
    hand = [max(hand[: i + 1]) for i in range(3)]  # running maximum keeps the order
    expected = {p: h for p, h in zip(sorted(blocking_raw), hand)}
    for name in ("latency", "loss", "fvd"):
        assert kpis[name].test.p_regressed_adjusted == pytest.approx(expected[kpis[name].test.p_regressed])
    # The informational KPI is its own family of one: unadjusted.
    assert kpis["info"].test.p_regressed_adjusted == pytest.approx(kpis["info"].test.p_regressed)
    # After Holm (x3) the borderline latency regression is no longer claimed.
    assert kpis["latency"].test.p_regressed_adjusted > 0.05
    assert kpis["latency"].verdict == "inconclusive"
    assert result.verdict != "FAIL"


def test_bit_identical_arms_are_identical_and_left_out_of_the_holm_family():
    """A KPI whose arms agree in every paired seed (a shared stage) carries no evidence: its verdict is
    "identical", it has no p values, and it does not enlarge Holm's family (which would weaken the others)."""
    base = by_seed([1.0, 1.1, 0.9, 1.05])
    worse = by_seed([1.12, 1.25, 1.0, 1.19])
    rules = [KpiRule("shared", "lower", "log", 0.05), KpiRule("loss", "lower", "log", 0.05)]
    result = compare(rules, {"shared": base, "loss": base}, {"shared": dict(base), "loss": worse})
    shared, loss = result.kpis
    assert shared.verdict == "identical" and "identical to the baseline in all 4 paired seeds" in kpi_reason(shared)
    assert math.isnan(shared.test.p_regressed_adjusted) and math.isnan(shared.test.p_noninferior)
    assert shared.effect.ci_low == shared.effect.ci_high == pytest.approx(1.0)
    # Holm over a family of one: the adjusted p is the raw one, not doubled by the identical KPI.
    assert loss.test.p_regressed_adjusted == pytest.approx(loss.test.p_regressed)
    # Identical blocking KPIs never prevent a PASS.
    assert compare(rules[:1], {"shared": base}, {"shared": dict(base)}).verdict == "PASS"
    # Ties in a quantised KPI count too; one differing seed makes it an ordinary comparison.
    one_off = compare_kpi(rules[0], base, {**base, 3: 1.06})
    assert one_off.verdict != "identical" and not math.isnan(one_off.test.p_noninferior)


def test_median_iqm_and_hedges_g_by_hand():
    linear = KpiRule("x", "lower", "linear", 1.0)
    k = compare_kpi(linear, by_seed([1, 2, 3, 4, 10, 20, 30, 100]), by_seed([1, 2, 3, 4, 10, 20, 30, 101]))
    assert k.baseline.median == pytest.approx(7.0)
    assert k.baseline.iqm == pytest.approx((3 + 4 + 10 + 20) / 4)

    # Paired: c - b = [1, 2, 3]: mean 2, sd 1, J = 1 - 3/(4*3 - 5) = 4/7.
    paired = compare_kpi(linear, by_seed([10, 10, 10]), by_seed([11, 12, 13]))
    assert paired.test.paired and paired.effect.hedges_g == pytest.approx(2 * 4 / 7)
    # Unpaired: means differ by 2, pooled sd 1, df 4, J = 1 - 3/(4*4 - 1) = 0.8.
    unpaired = compare_kpi(linear, by_seed([1, 2, 3]), by_seed([3, 4, 5], first_seed=10))
    assert not unpaired.test.paired and unpaired.effect.hedges_g == pytest.approx(2 * 0.8)
    # Effect size is on the user orientation (c - b), whatever the direction.
    flipped = compare_kpi(KpiRule("x", "higher", "linear", 1.0), by_seed([10, 10, 10]), by_seed([11, 12, 13]))
    assert flipped.effect.hedges_g == pytest.approx(paired.effect.hedges_g)


def test_probability_of_improvement_is_rliables_all_pairs_statistic():
    """rliable's P(C > B) counts every (candidate run, baseline run) pair, also when seeds are paired."""
    base = by_seed([1.0, 2.0, 3.0])
    cand = by_seed([0.5, 2.0, 2.5])  # per seed: better, tie, better when lower is better (matched share 5/6)
    linear_lower = KpiRule("x", "lower", "linear", 0.1)
    # All 9 pairs: 0.5 beats 1, 2, 3 (3); 2.0 ties 2, beats 3 (1.5); 2.5 beats 3 (1) -> 5.5 / 9.
    assert compare_kpi(linear_lower, base, cand).effect.prob_improvement == pytest.approx(5.5 / 9)
    mann_whitney = stats.mannwhitneyu([0.5, 2.0, 2.5], [1.0, 2.0, 3.0], alternative="less")
    assert compare_kpi(linear_lower, base, cand).effect.prob_improvement == pytest.approx(
        1 - mann_whitney.statistic / 9)
    linear_higher = KpiRule("x", "higher", "linear", 0.1)
    assert compare_kpi(linear_higher, base, cand).effect.prob_improvement == pytest.approx(3.5 / 9)
    # Unpaired: all 2 x 3 pairs. 2.0 beats 3, ties 2 -> 1.5; 2.5 beats 3 -> 1.
    unpaired = compare_kpi(linear_lower, base, by_seed([2.0, 2.5], first_seed=10))
    assert unpaired.effect.prob_improvement == pytest.approx(2.5 / 6)


# --------------------------------------------------------------------------- decision rules


def test_worse_by_less_than_the_margin_is_not_regressed():
    rng = np.random.default_rng(1)
    base = np.exp(rng.normal(0, 0.05, 8))
    cand = base * 1.03 * np.exp(rng.normal(0, 0.003, 8))  # consistently 3% worse, margin 5%
    k = compare_kpi(LOSS, by_seed(base), by_seed(cand))
    assert k.test.p_worse < 0.001  # clearly worse than baseline ...
    assert k.verdict == "non-inferior"  # ... but within the margin
    assert "within its margin (≤ +5.0%;" in kpi_reason(k)
    assert compare([LOSS], {"loss": by_seed(base)}, {"loss": by_seed(cand)}).verdict == "PASS"


def test_clear_regression_fails_with_a_readable_reason():
    base = np.array([1.0, 1.1, 0.95, 1.05, 1.02])
    cand = base * np.array([1.12, 1.13, 1.11, 1.12, 1.14])
    result = compare([LOSS], {"loss": by_seed(base)}, {"loss": by_seed(cand)})
    assert result.verdict == "FAIL"
    assert result.kpis[0].verdict == "regressed"
    assert "12.4% higher (worse), beyond its margin (≤ +5.0%;" in comparison_reasons(result)[0]


def test_missing_data_never_passes():
    good = by_seed([1.0, 1.1, 0.95, 1.05])
    missing = by_seed([float("nan")] * 4)
    result = compare([LOSS], {"loss": good}, {"loss": missing})
    assert result.verdict == "INCONCLUSIVE"
    assert result.kpis[0].verdict == "inconclusive" and "missing data" in kpi_reason(result.kpis[0])
    assert compare([LOSS], {"loss": good}, {}).verdict == "INCONCLUSIVE"  # KPI absent altogether
    one_value = compare([LOSS], {"loss": good}, {"loss": by_seed([1.0])})
    assert one_value.verdict == "INCONCLUSIVE" and "missing data" in kpi_reason(one_value.kpis[0])
    assert compare([], {}, {}).verdict == "INCONCLUSIVE"  # nothing to decide on


def test_a_few_missing_values_never_let_a_kpi_pass():
    """Runs that finished but lost a blocking value (evaluation broke) must not just shrink the sample."""
    baseline = by_seed([1.0, 1.1, 0.95, 1.05, 1.0])
    identical_but_two_missing = by_seed([1.0, 1.1, float("nan"), float("nan"), 1.0])
    assert compare([LOSS], {"loss": baseline}, {"loss": baseline}).verdict == "PASS"
    result = compare([LOSS], {"loss": baseline}, {"loss": identical_but_two_missing})
    assert result.verdict == "INCONCLUSIVE"
    assert result.kpis[0].verdict == "inconclusive" and "2 run(s) have no value" in kpi_reason(result.kpis[0])


def test_candidate_failures_block_pass():
    base = by_seed([1.0, 1.1, 0.95, 1.05, 1.02])
    same = {"loss": base}
    assert compare([LOSS], same, same).verdict == "PASS"
    assert compare([LOSS], same, same, failures_baseline=1, failures_candidate=2).verdict == "FAIL"
    equal_failures = compare([LOSS], same, same, failures_baseline=1, failures_candidate=1)
    assert equal_failures.verdict == "INCONCLUSIVE"
    assert any("failed" in r for r in comparison_reasons(equal_failures))
    assert compare([LOSS], same, same, failures_baseline=1, failures_candidate=0).verdict == "PASS"


# --------------------------------------------------------------------------- guard KPIs

GUARD = KpiRule("guard", "lower", "log", 0.10, blocking=False, guard=True)
WITHIN = by_seed(np.array([1.0, 1.1, 0.95, 1.05, 1.02]) * 1.01)  # LOSS's baseline, 1% worse: non-inferior
BASE = by_seed([1.0, 1.1, 0.95, 1.05, 1.02])
NOISY = by_seed([1.5, 0.8, 1.3, 0.9, 1.4])  # per-seed ratios 0.73-1.5: no 5 seeds settle a 10% margin


def test_a_guard_regressed_beyond_its_margin_fails_the_merge():
    worse = by_seed(np.array(list(BASE.values())) * [1.5, 1.6, 1.55, 1.45, 1.5])  # ~+52%, margin 10%
    result = compare([LOSS, GUARD], {"loss": BASE, "guard": BASE}, {"loss": WITHIN, "guard": worse})
    loss, guard = result.kpis
    assert loss.verdict == "non-inferior" and guard.verdict == "regressed"
    assert result.verdict == "FAIL" and result.reasons == [Reason(Finding.KPI, "guard")]
    assert "beyond its margin (≤ +10.0%;" in comparison_reasons(result)[0]


def test_an_unsettled_guard_does_not_hold_up_a_pass_and_the_pass_names_it():
    result = compare([LOSS, GUARD], {"loss": BASE, "guard": BASE}, {"loss": WITHIN, "guard": NOISY})
    loss, guard = result.kpis
    assert loss.verdict == "non-inferior" and guard.verdict == "inconclusive"
    assert result.verdict == "PASS" and result.reasons == [Reason(Finding.ALL_BLOCKING_OK)]
    assert result.unresolved_guards == [guard]
    # What it could FAIL at these seeds, by hand: the margin plus the detectable difference, 1.3594 sds of the
    # per-seed log ratios (the noncentral t at 5 seeds, alpha 0.05, 80% power: statsmodels' number).
    d = np.log(np.array(list(NOISY.values())) / np.array(list(BASE.values())))
    size = TTestPower().solve_power(nobs=5, alpha=0.05, power=0.8, alternative="larger")
    failable = math.log(1.1) + size * d.std(ddof=1)
    assert guard.resolution.failable == pytest.approx(failable, rel=1e-6)
    half = stats.t.isf(0.05, 4) * d.std(ddof=1) / math.sqrt(5)  # of the 90% t interval of the mean log ratio
    percent = [f"{(math.exp(x) - 1) * 100:+.1f}%".replace("-", "−") for x in (d.mean(), d.mean() - half,
                                                                               d.mean() + half, failable)]
    assert percent == ["+11.9%", "−18.0%", "+52.7%", "+71.3%"]
    assert resolution_text(guard) == ("+11.9% [−18.0%, +52.7%] — a guard: at 5 seeds it fails the change only from "
                                      "+71.3% (80% power; margin ≤ +10.0%)")
    # The same KPI blocking: it would hold up the PASS.
    blocking = dataclasses.replace(GUARD, blocking=True, guard=False)
    assert compare([LOSS, blocking], {"loss": BASE, "guard": BASE},
                   {"loss": WITHIN, "guard": NOISY}).verdict == "INCONCLUSIVE"


def test_a_guard_beyond_its_margin_before_holm_holds_up_the_pass():
    """A PASS never contradicts its own intervals: a guard whose 90% interval lies wholly beyond its margin, though
    not regressed after the Holm correction, is inconclusive and holds up the PASS (more seeds settle it)."""
    ratios = np.array([1.10, 1.45, 1.20, 1.55, 1.30])  # about +27% on every seed, margin 10%
    beyond = by_seed(np.array(list(BASE.values())) * ratios)
    other = dataclasses.replace(GUARD, name="other")
    arms = ([LOSS, GUARD, other], {"loss": BASE, "guard": BASE, "other": BASE},
            {"loss": WITHIN, "guard": beyond, "other": NOISY})
    result = compare(*arms)
    loss, guard, _ = result.kpis
    d = np.log(ratios)
    p_raw = stats.t.sf((d.mean() - math.log(1.1)) / (d.std(ddof=1) / math.sqrt(5)), 4)  # 0.024 by hand
    assert guard.test.p_regressed == pytest.approx(p_raw) and p_raw == pytest.approx(0.0240, abs=5e-4)
    assert guard.effect.ci_low > 1.1 and guard.test.p_regressed_adjusted == pytest.approx(3 * p_raw)  # Holm: 3 tests
    assert loss.verdict == "non-inferior" and guard.verdict == "inconclusive"
    assert result.verdict == "INCONCLUSIVE" and result.reasons == [Reason(Finding.KPI, "guard")]
    assert "beyond its margin (≤ +10.0%; p=0.024), but not after Holm (adjusted p=0.072)" in comparison_reasons(result)[0]
    assert guard.recommended_seeds is not None
    # Alone (a family of one) the same guard is regressed and FAILs the merge.
    assert compare([LOSS, GUARD], {"loss": BASE, "guard": BASE}, {"loss": WITHIN, "guard": beyond}).verdict == "FAIL"
    # A sequential look spends a small alpha; the hold-up keeps the gate's own, or an early look would PASS it.
    look = {"alpha": 0.0056}
    assert compare(*arms, **look).verdict == "PASS"
    assert compare(*arms, **look, hold_alpha=0.05).verdict == "INCONCLUSIVE"


def test_a_guard_worse_than_the_baseline_with_its_estimate_beyond_its_margin_holds_up_the_pass():
    """A guard that got worse at all (its one-sided t-test rejects "no worse" at alpha) with its best estimate
    beyond its margin holds up the PASS, though its interval still reaches inside the margin; either alone does
    not (NOISY: +11.9% but not significant)."""
    ratios = np.array([1.02, 1.30, 1.10, 1.35, 1.15])  # +17.8% [+5.4%, +31.6%], margin 10%
    worse = by_seed(np.array(list(BASE.values())) * ratios)
    other = dataclasses.replace(GUARD, name="other")
    result = compare([LOSS, GUARD, other], {"loss": BASE, "guard": BASE, "other": BASE},
                     {"loss": WITHIN, "guard": worse, "other": NOISY})
    loss, guard, noisy = result.kpis
    d = np.log(ratios)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    assert guard.test.p_worse == pytest.approx(stats.t.sf(t, 4)) and stats.t.sf(t, 4) == pytest.approx(
        0.0175, abs=5e-4)  # worse at all: p 0.0175 by hand
    assert guard.test.p_regressed == pytest.approx(0.1305, abs=5e-4)  # beyond the margin: not shown
    assert 1.0 < guard.effect.ci_low < 1.1 < guard.effect.estimate
    assert (loss.verdict, guard.verdict, guard.why, noisy.why) == ("non-inferior", "inconclusive", Why.WORSE,
                                                                   Why.UNSETTLED)
    assert result.verdict == "INCONCLUSIVE" and result.reasons == [Reason(Finding.KPI, "guard")]
    assert ("17.8% higher (worse), worse than the baseline (p=0.017) and beyond its margin (≤ +10.0%) at its "
            "estimate") in comparison_reasons(result)[0]
    assert guard.recommended_seeds is not None
    # Significantly worse but with its estimate within the margin: a small harm the margin allows, PASS.
    small = by_seed(np.array(list(BASE.values())) * (ratios - 1) / 4 + np.array(list(BASE.values())))
    assert compare([LOSS, GUARD], {"loss": BASE, "guard": BASE}, {"loss": WITHIN, "guard": small}).verdict == "PASS"


@pytest.mark.parametrize("missing", [
    by_seed([1.0, 1.1, float("nan"), 1.05, 1.02]),  # one ok run without a value
    by_seed([float("nan")] * 5),  # none measured
    {},  # the KPI absent altogether
])
def test_a_guard_without_its_values_cannot_pass(missing):
    """Fail closed: a guard that was not measured guards nothing, so like a blocking KPI's it holds up a PASS."""
    result = compare([LOSS, GUARD], {"loss": BASE, "guard": BASE}, {"loss": WITHIN, "guard": missing})
    guard = result.kpis[1]
    assert result.kpis[0].verdict == "non-inferior" and guard.verdict == "inconclusive"
    assert result.verdict == "INCONCLUSIVE" and Reason(Finding.KPI, "guard") in result.reasons
    assert result.unresolved_guards == [guard]  # not a PASS, so nothing names it as merely unresolved


def test_a_rule_is_blocking_or_a_guard_not_both():
    with pytest.raises(RuleError, match="blocking and guard are both true; pick one") as error:
        KpiRule("x", "lower", "log", 0.1, blocking=True, guard=True)
    assert "\n" not in str(error.value)
    assert [KpiRule("x", "lower", "log", 0.1, blocking=b, guard=g).tier for b, g in
            ((True, False), (False, True), (False, False))] == ["blocking", "guard", "informational"]


def test_failable_regression_is_the_margin_plus_what_80_percent_power_detects():
    """At 5 seeds a one-sided t-test at alpha 0.05 detects 1.3594 per-seed sds with 80% power (statsmodels), so a
    guard with a 10% margin and a per-seed sd of 0.1 (log ratio) FAILs with 80% power from log(1.1) + 0.13594:
    a ratio of 1.1 x exp(0.13594) = 1.2602, +26.0%."""
    failable = failable_regression(0.1, 5, math.log(1.1), 0.05)
    assert failable == pytest.approx(math.log(1.1) + 0.1 * 1.3594173, abs=1e-6)
    assert math.exp(failable) == pytest.approx(1.26018, abs=1e-5)
    # The definition: at that true worsening the regression test (H1: d > margin) rejects with 80% power.
    noncentrality = (failable - math.log(1.1)) / 0.1 * math.sqrt(5)
    assert stats.nct.sf(stats.t.isf(0.05, 4), 4, noncentrality) == pytest.approx(0.8, abs=1e-6)
    assert failable_regression(0.0, 5, 0.1, 0.05) == 0.1  # no spread: any worsening beyond the margin
    assert failable_regression(0.1, 1, 0.1, 0.05) == math.inf  # one seed: no test


def test_inconclusive_recommends_seeds():
    base = by_seed([1.0, 1.1, 0.95, 1.05])
    cand = by_seed([1.06, 1.09, 1.0, 1.07])  # ~2.5% worse, noisy, 4 seeds
    result = compare([LOSS], {"loss": base}, {"loss": cand})
    k = result.kpis[0]
    assert result.verdict == "INCONCLUSIVE" and k.verdict == "inconclusive"
    d = np.log(np.array(list(cand.values())) / np.array(list(base.values())))
    effect = (LOG_MARGIN - d.mean()) / d.std(ddof=1)
    n = k.recommended_seeds
    assert n is not None and 4 < n < 200 and result.recommended_seeds == n
    power = TTestPower()
    assert power.power(effect, n, 0.05, alternative="larger") >= 0.8
    assert power.power(effect, n - 1, 0.05, alternative="larger") < 0.8
    assert f"about {n} seeds" in kpi_reason(k)


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="<= 0 on a log-scale"):
        compare_kpi(LOSS, by_seed([1.0, 0.0]), by_seed([1.0, 1.0]))
    with pytest.raises(ValueError, match="censored"):
        compare_kpi(LOSS, by_seed([1.0, math.inf]), by_seed([1.0, 1.0]))
    with pytest.raises(ValueError, match="direction"):
        KpiRule("x", "up", "log", 0.05)
    with pytest.raises(ValueError, match="duplicate"):
        compare([LOSS, LOSS], {}, {})


def test_a_log_scale_value_at_or_below_zero_is_read_as_the_floor():
    """A collapsed encoder's variance of 0 has no ratio: floored, it shows as a huge change instead of an error."""
    floored, count = floor_log_scale(LOSS, {0: 0.0, 1: -1.0, 2: 0.5})
    assert floored == {0: LOG_SCALE_FLOOR, 1: LOG_SCALE_FLOOR, 2: 0.5} and count == 2
    assert floor_log_scale(LATENCY, {0: 0.0, 1: -1.0}) == ({0: 0.0, 1: -1.0}, 0)  # a difference needs no floor
    variance = KpiRule("variance", "higher", "log", 0.1)
    collapsed, _ = floor_log_scale(variance, by_seed([0.0, 0.0, 0.0]))
    assert compare_kpi(variance, by_seed([1.0, 1.1, 0.9]), collapsed).verdict == "regressed"


def test_degenerate_data_gives_no_crash_and_no_warnings():
    base = by_seed([1.0, 1.1, 0.95, 1.05])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        identical = compare_kpi(LOSS, base, base)
        two_seeds = compare_kpi(LOSS, by_seed([1.0, 1.2]), by_seed([1.1, 1.3]))
        constant_ratio = compare_kpi(LOSS, base, {s: v * 1.2 for s, v in base.items()})
        unpaired_constant = compare_kpi(LOSS, by_seed([1.0, 1.0]), by_seed([1.0, 1.0], first_seed=5))
    # A bit-for-bit identical candidate is certainly within the margin.
    assert identical.verdict == "identical"
    assert identical.effect.ci_low == identical.effect.ci_high == pytest.approx(1.0)
    assert math.isfinite(two_seeds.effect.ci_low) and math.isfinite(two_seeds.effect.ci_high)
    assert constant_ratio.verdict == "regressed" and constant_ratio.effect.ci_low == pytest.approx(1.2)
    assert unpaired_constant.verdict == "non-inferior" and math.isnan(unpaired_constant.effect.hedges_g)


def test_results_are_plain_json_floats_and_deterministic():
    base = {"loss": by_seed([1.0, 1.1, 0.95, 1.05, 1.02])}
    cand = {"loss": by_seed([1.03, 1.08, 1.0, 1.1, float("nan")])}
    first = compare([LOSS], base, cand)
    again = compare([LOSS], base, cand)
    assert (first.kpis[0].effect.ci_low, first.kpis[0].effect.ci_high) == (again.kpis[0].effect.ci_low,
                                                                           again.kpis[0].effect.ci_high)

    json.dumps(dataclasses.asdict(first))
    kpi = first.kpis[0]
    for group in (kpi, kpi.baseline, kpi.candidate, kpi.effect, kpi.test):
        for field in dataclasses.fields(group):
            value = getattr(group, field.name)
            if isinstance(value, (float, np.floating)):
                assert type(value) is float, field.name
    for value in kpi.candidate.values.values():
        assert type(value) is float
    assert isinstance(first, Comparison) and type(first.alpha) is float


# --------------------------------------------------------------------------- steps to target


def test_smoothed_loss_window_is_a_tenth_of_the_budget_in_steps():
    # Budget 300 logged every 10 steps: the window is 30 steps = the last 3 log points.
    steps = np.arange(10, 301, 10)
    losses = np.linspace(3.0, 1.0, len(steps)) ** 2
    smoothed = smoothed_loss(steps, losses)
    assert smoothed[0] == losses[0]  # the window starts before the first log point
    assert smoothed[10] == pytest.approx(np.mean(losses[8:11]))
    assert final_loss(list(steps), list(losses)) == smoothed[-1] == pytest.approx(np.mean(losses[-3:]))
    # Logging every step instead of every 10 leaves the window at 30 steps.
    every_step = np.arange(1, 301)
    assert smoothed_loss(every_step, np.arange(300.0))[-1] == pytest.approx(np.mean(np.arange(270.0, 300.0)))


def test_steps_to_target_is_where_the_smoothed_loss_stays_below():
    # Budget 200, logged every 10 steps: the window (20 steps) averages each point with the one before.
    steps = np.arange(10, 201, 10)
    losses = np.array([4.0] * 5 + [0.0, 0.0] + [4.0] * 3 + [1.0] * 10)
    # smoothed: 4 4 4 4 4 | 2 0 2 4 4 | 2.5 1 1 1 ... 1: a dip at step 70, below for good from step 120.
    assert steps_to_target(steps, losses, target=1.5) == 120.0
    assert steps_to_target(steps, losses, target=1.0) == 120.0  # <= target counts
    assert steps_to_target(steps, losses, target=0.5) == math.inf  # only the dip gets there: censored
    assert steps_to_target(steps, losses, target=5.0) == 10.0
    losses_with_nan = losses.copy()
    losses_with_nan[3] = np.nan
    assert steps_to_target(steps, losses_with_nan, target=1.5) == math.inf


def test_steps_to_target_is_reached_exactly_when_the_final_loss_is_at_most_the_target():
    rng = np.random.default_rng(0)
    for budget, log_every in [(24, 4), (300, 10), (600, 20), (5000, 50), (95, 7)]:
        steps = np.append(np.arange(log_every, budget, log_every), budget)
        for _ in range(20):
            trend = 2.0 * np.exp(-steps / (0.2 * budget)) + 0.5
            losses = trend * np.exp(rng.normal(0.0, 0.3, len(steps)))  # noisy, dips below its end early
            final = final_loss(list(steps), list(losses))
            reached = steps_to_target(steps, losses, target=final)
            assert math.isfinite(reached) and reached <= budget
            assert steps_to_target(steps, losses, target=final * (1 + 1e-9)) <= reached
            assert steps_to_target(steps, losses, target=final * (1 - 1e-9)) == math.inf
            # From the reported step on the smoothed curve never goes back above the target.
            assert np.all(smoothed_loss(steps, losses)[steps >= reached] <= final)


def test_censored_candidate_that_never_reaches_target_regresses():
    steps = KpiRule("steps_to_target", "lower", "log", 0.10)
    base = by_seed([1000, 1100, 950, 1050, 1020, 980])
    never = by_seed([math.inf] * 6)
    result = compare([steps], {steps.name: base}, {steps.name: never}, censored_kpis={steps.name})
    k = result.kpis[0]
    assert k.verdict == "regressed" and result.verdict == "FAIL"
    assert "Wilcoxon" in k.test.method and k.effect.prob_improvement == 0.0
    # Unpaired (different seeds): Mann-Whitney, same conclusion.
    unpaired = compare_kpi(steps, base, by_seed([math.inf] * 6, first_seed=50), censored=True)
    assert unpaired.verdict == "regressed" and "Mann-Whitney" in unpaired.test.method


def test_censored_change_is_the_median_ratio_per_seed_paired_and_over_all_run_pairs_unpaired():
    """Hand-computed. Paired seeds 0-2: ratios 400/100, 100/200, inf/400 -> 4, 0.5, inf, median 4. Unpaired (the
    same values on seeds 10-12): all nine ratios 0.25, 0.5, 1, 1, 2, 4, inf, inf, inf, median 2."""
    steps = KpiRule("steps_to_target", "lower", "log", 0.10)
    base = by_seed([100, 200, 400])
    paired = compare_kpi(steps, base, by_seed([400, 100, math.inf]), censored=True)
    assert paired.effect.estimate == pytest.approx(4.0) and paired.test.method.startswith("Wilcoxon")
    unpaired = compare_kpi(steps, base, by_seed([400, 100, math.inf], first_seed=10), censored=True)
    assert unpaired.effect.estimate == pytest.approx(2.0) and unpaired.test.method.startswith("Mann-Whitney")


def test_censored_candidate_cannot_pass_with_more_censored_runs():
    steps = KpiRule("steps_to_target", "lower", "log", 0.10)
    base = by_seed(1000 + 10 * np.arange(10))
    faster_but_one_never = {s: (v * 0.5 if s else math.inf) for s, v in base.items()}
    k = compare_kpi(steps, base, faster_but_one_never, censored=True)
    assert k.test.p_improved < 0.05  # nine of ten seeds much faster ...
    assert k.verdict == "inconclusive"  # ... but one run never got there
    assert "missed the target in 1 runs vs 0" in kpi_reason(k)
    all_faster = compare_kpi(steps, base, {s: v * 0.5 for s, v in base.items()}, censored=True)
    assert all_faster.verdict == "improved" and all_faster.effect.estimate == pytest.approx(0.5)


def test_censored_runs_count_as_a_share_of_each_arm():
    """Unpaired arms of 20 and 5 runs: the baseline misses the target once (5%), the candidate once (20%) while
    its other runs are four times faster. One miss each is not "no more often": never improved or non-inferior."""
    steps = KpiRule("steps_to_target", "lower", "log", 0.25)
    base = by_seed([*range(200, 390, 10), math.inf])
    k = compare_kpi(steps, base, by_seed([math.inf, 50, 60, 70, 80], first_seed=100), censored=True)
    assert k.test.p_improved < 0.05 and k.verdict == "inconclusive"
    identical = compare_kpi(steps, by_seed([math.inf, 200, 250]), by_seed([math.inf, 200, 250]), censored=True)
    assert identical.verdict == "identical" and identical.baseline.censored == identical.candidate.censored == 1


def test_an_arm_iqm_interval_ranks_runs_that_never_reached_the_target_worst():
    """Runs at inf (never reached) stay in the arm: its IQM is inf, and its interval has no NaN."""
    values = np.array([150.0, 160.0, math.inf, math.inf, math.inf])
    assert interquartile_mean(values) == math.inf
    low, high = iqm_interval(values, 0.9)
    assert 150.0 <= low < 160.0 and high == math.inf  # resamples with few infs trim them away; most do not


def test_a_constant_effect_at_exactly_the_margin_is_a_tie_not_a_regression():
    """Zero spread: every seed 0.05 worse against a 0.05 margin (0.050000000000000044 after rounding), or every
    seed 10% worse against 10%: neither within nor beyond the margin, so nothing is rejected."""
    accuracy = KpiRule("acc", "higher", "linear", 0.05, blocking=True)
    base = {0: 0.80, 1: 0.82, 2: 0.84}
    at_margin = compare_kpi(accuracy, base, {s: v - 0.05 for s, v in base.items()})
    assert at_margin.verdict == "inconclusive" and at_margin.test.p_regressed == at_margin.test.p_noninferior == 1.0
    loss = KpiRule("loss", "lower", "log", 0.10, blocking=True)
    base = {0: 1.0, 1: 2.0, 2: 3.0}
    assert compare_kpi(loss, base, {s: v * 1.1 for s, v in base.items()}).verdict == "inconclusive"
    assert compare_kpi(loss, base, {s: v * 1.2 for s, v in base.items()}).verdict == "regressed"


def test_tiny_values_that_really_vary_get_a_t_test():
    """Values near 1e-13 that differ by half their size are noise to test, not float rounding: the paired
    t-test's p is scipy's one-sided one (0.19), and the unpaired arms get Welch's."""
    rule = KpiRule("lin", "lower", "linear", 0.0)
    base, cand = [1e-13, 2e-13, 3e-13, 1.5e-13], [4e-13, 1e-13, 5e-13, 1.3e-13]
    paired = compare_kpi(rule, by_seed(base), by_seed(cand))
    expected = stats.ttest_1samp(np.subtract(cand, base), 0.0, alternative="greater").pvalue
    assert paired.verdict == "inconclusive" and paired.test.p_regressed == pytest.approx(expected, rel=1e-9)
    unpaired = compare_kpi(rule, by_seed(base), by_seed(cand, first_seed=10))
    welch = stats.ttest_ind(cand, base, equal_var=False, alternative="greater").pvalue
    assert unpaired.test.p_regressed == pytest.approx(welch, rel=1e-9)


def test_two_seeds_at_an_early_looks_alpha_give_a_verdict_not_a_crash():
    """An early sequential look spends 1.2e-5 of alpha: at two seeds no effect below 1,000 sds is detectable with
    80% power, so the resolution is unbounded (inf) and the verdict INCONCLUSIVE."""
    look_alpha = alpha_spending(5, 0.05)[0]
    assert detectable_effect_size(2, look_alpha) == math.inf
    accuracy = KpiRule("acc", "higher", "linear", 0.05, blocking=True)
    result = compare([accuracy], {"acc": {0: 0.80, 1: 0.82}}, {"acc": {0: 0.81, 1: 0.80}}, alpha=look_alpha,
                     hold_alpha=0.05)
    assert result.verdict == "INCONCLUSIVE"


# --------------------------------------------------------------------------- sequential looks


def test_alpha_spending_obrien_fleming():
    spend = alpha_spending(4, 0.05)
    assert len(spend) == 4 and sum(spend) == pytest.approx(0.05)
    assert spend[0] < 1e-3 and all(a < b for a, b in zip(spend, spend[1:]))
    assert alpha_spending(1, 0.05) == pytest.approx([0.05])
    # At the first look the tiny alpha keeps a modest result from passing.
    k = compare_kpi(LOSS, PAIRED_BASE, PAIRED_CAND)
    assert k.test.p_noninferior < 0.05
    assert compare_kpi(LOSS, PAIRED_BASE, PAIRED_CAND, alpha=spend[0]).verdict == "inconclusive"


# --------------------------------------------------------------------------- simulations


def simulate_verdicts(rules, true_effects, n_seeds, sims, sd, rng) -> np.ndarray:
    """Overall verdicts of `sims` comparisons with normal noise of `sd` per seed and arm.

    Log-scale KPIs are log-normal around 1 with true log-ratio c/b = true_effects[i];
    linear ones are normal around 0 with true difference true_effects[i].
    """
    verdicts = []
    seeds = range(n_seeds)
    for _ in range(sims):
        baseline, candidate = {}, {}
        for rule, effect in zip(rules, true_effects):
            b = rng.normal(0, sd, n_seeds)
            c = rng.normal(effect, sd, n_seeds)
            if rule.scale == "log":
                b, c = np.exp(b), np.exp(c)
            baseline[rule.name] = dict(zip(seeds, b))
            candidate[rule.name] = dict(zip(seeds, c))
        verdicts.append(compare(rules, baseline, candidate).verdict)
    return np.array(verdicts)


def test_calibration_a_a_rarely_fails():
    rng = np.random.default_rng(20240601)
    # 5 seeds, ~5% seed-to-seed noise per arm, identical distributions.
    single = simulate_verdicts([LOSS], [0.0], n_seeds=5, sims=1000, sd=0.05, rng=rng)
    three_kpis = [
        LOSS,
        KpiRule("psnr", "higher", "log", 0.05),
        KpiRule("latency", "lower", "linear", 0.05),
    ]
    # Fewer runs here: the rate is far below the bar (~0.1%), precision is not the question.
    multi = simulate_verdicts(three_kpis, [0.0, 0.0, 0.0], n_seeds=5, sims=600, sd=0.05, rng=rng)
    assert np.mean(single == "FAIL") <= 0.06
    assert np.mean(multi == "FAIL") <= 0.06


def test_calibration_at_the_boundaries_of_the_null_hypotheses():
    """The A/A check above is easy (true effect far from the margin); these sit exactly on the boundary,
    where the error rate should be close to alpha: not above it, and not absurdly below it."""
    rng = np.random.default_rng(7)
    strict = KpiRule("loss", "lower", "log", 0.0)  # margin 0: any real slowdown counts
    fail = simulate_verdicts([strict], [0.0], n_seeds=5, sims=1000, sd=0.05, rng=rng)
    assert 0.03 <= np.mean(fail == "FAIL") <= 0.06
    # Candidate truly worse by exactly the margin: must not PASS more than ~alpha of the time.
    at_margin = simulate_verdicts([LOSS], [LOG_MARGIN], n_seeds=8, sims=1000, sd=0.05, rng=rng)
    assert 0.03 <= np.mean(at_margin == "PASS") <= 0.06


def test_recommended_seeds_give_80_percent_power():
    sd_d = 0.05  # sd of the per-seed log-ratio
    n = recommended_seeds(sd_d, LOG_MARGIN)
    power = TTestPower()
    assert power.power(LOG_MARGIN / sd_d, n, 0.05, alternative="larger") >= 0.8  # 0.847 at n = 9
    assert power.power(LOG_MARGIN / sd_d, n - 1, 0.05, alternative="larger") < 0.8

    rng = np.random.default_rng(11)
    caught = not_passed = 0
    sims = 600
    for _ in range(sims):
        base = np.exp(rng.normal(0, 0.04, n))
        cand = base * np.exp(rng.normal(LOG_MARGIN, sd_d, n))  # planted effect = margin
        k = compare_kpi(LOSS, by_seed(base), by_seed(cand))
        caught += k.test.p_worse < 0.05
        not_passed += k.verdict not in ("improved", "non-inferior")
    assert caught / sims >= 0.80
    assert not_passed / sims >= 0.80


def test_power_is_the_noncentral_t_that_statsmodels_computes():
    """harness.power replaces statsmodels' TTestPower at runtime: the same numbers on a grid."""
    for size in (0.2, 0.8, 1.4, 3.0):
        for n in (2, 5, 10, 40):
            assert t_test_power(size, n, 0.05) == pytest.approx(
                TTestPower().power(effect_size=size, nobs=n, alpha=0.05, alternative="larger"), rel=1e-9)
    assert detectable_effect_size(5, 0.05) == pytest.approx(
        TTestPower().solve_power(nobs=5, alpha=0.05, power=0.8, alternative="larger"), rel=1e-6)


def test_resolution_is_the_difference_80_percent_power_detects_at_these_seeds():
    d = np.array([0.1, -0.1, 0.0, 0.05, -0.05])  # paired per-seed differences, sd 0.0790569
    sd = math.sqrt(0.025 / 4)
    size_at_5 = TTestPower().solve_power(nobs=5, alpha=0.05, power=0.8, alternative="larger")  # 1.3594
    wide = compare_kpi(KpiRule("x", "lower", "linear", 0.2), by_seed(np.ones(5)), by_seed(1 + d))
    assert wide.resolution.seeds == 5 and wide.resolution.spread == pytest.approx(sd)
    assert wide.resolution.detectable == pytest.approx(size_at_5 * sd, rel=1e-6)  # 0.10747
    assert wide.resolution.settles and wide.resolution.seeds_needed == 3  # 0.2 / sd = 2.53 sds: 3 seeds
    assert TTestPower().power(0.2 / sd, 3, 0.05, alternative="larger") >= 0.8 > \
        TTestPower().power(0.2 / sd, 2, 0.05, alternative="larger")
    narrow = compare_kpi(KpiRule("x", "lower", "linear", 0.05), by_seed(np.ones(5)), by_seed(1 + d))
    assert not narrow.resolution.settles
    needed = narrow.resolution.seeds_needed  # 0.05 / sd = 0.632 sds
    assert TTestPower().power(0.05 / sd, needed, 0.05, alternative="larger") >= 0.8 > \
        TTestPower().power(0.05 / sd, needed - 1, 0.05, alternative="larger")
    # identical arms resolve everything; censored KPIs (rank tests) have no t resolution
    same = compare_kpi(KpiRule("x", "lower", "linear", 0.05), by_seed(np.ones(5)), by_seed(np.ones(5)))
    assert same.resolution.detectable == 0 and same.resolution.settles
    censored = compare_kpi(KpiRule("s", "lower", "log", 0.1), by_seed([10, 20, 30]), by_seed([10, 20, math.inf]),
                           censored=True)
    assert censored.resolution is None


def test_partial_seed_overlap_is_tested_unpaired_over_every_run():
    """Pairing the two shared seeds would drop six recorded runs and PASS a candidate that is +0.54 worse."""
    rule = KpiRule("x", "lower", "linear", 0.1)
    result = compare([rule], {"x": {0: 1.0, 1: 1.1, 2: 0.9, 3: 1.05, 4: 1.2}},
                     {"x": {0: 0.95, 1: 1.0, 7: 2.0, 8: 2.0, 9: 2.0}})
    k = result.kpis[0]
    assert not k.test.paired and k.test.method.startswith("Welch") and k.baseline.n == k.candidate.n == 5
    assert k.effect.estimate == pytest.approx(1.59 - 1.05) and k.effect.prob_improvement == pytest.approx(0.30)
    assert result.verdict != "PASS"


def test_ci_has_the_coverage_of_its_label():
    """The interval is the (1 - 2 alpha) t interval, so a "90% t CI" covers the true ratio ~90% of the time,
    paired and unpaired (simulated at few seeds, where the old bootstrap under-covered)."""
    rng = np.random.default_rng(5)
    true_ratio = 1.02
    for paired in (True, False):
        hits, sims = 0, 2000
        for _ in range(sims):
            base = np.exp(rng.normal(0, 0.04, 5))
            noise = np.exp(rng.normal(math.log(true_ratio), 0.03, 5))
            cand = base * noise if paired else np.exp(rng.normal(math.log(true_ratio), 0.04, 5))
            k = compare_kpi(LOSS, by_seed(base), by_seed(cand, first_seed=0 if paired else 100))
            assert k.test.paired == paired and k.effect.ci_level == pytest.approx(0.90)
            hits += k.effect.ci_low <= true_ratio <= k.effect.ci_high
        assert 0.875 <= hits / sims <= 0.925


@pytest.mark.parametrize("rule", [LOSS, KpiRule("acc", "higher", "linear", 0.02)], ids=["log-lower", "linear-higher"])
def test_interval_shown_and_verdict_never_disagree(rule):
    """Oriented so that larger is worse: non-inferior exactly when the interval's worse end is inside the
    margin, improved exactly when it is on the better side of no change, regressed only when the whole
    interval lies beyond the margin, inconclusive only when the interval reaches past the margin."""
    rng = np.random.default_rng(11)
    orient = (lambda x: x) if rule.direction == "lower" else (lambda x: -x)
    no_change = orient(1.0 if rule.scale == "log" else 0.0)
    for i in range(600):
        n = int(rng.integers(3, 9))
        paired = i % 3 != 0
        effect = rng.normal(0, 0.05)
        if rule.scale == "log":
            base = np.exp(rng.normal(0, 0.05, n))
            cand = base * np.exp(effect + rng.normal(0, 0.04, n)) if paired else np.exp(rng.normal(effect, 0.05, n))
        else:
            base = rng.normal(0.5, 0.03, n)
            cand = base + effect / 2 + rng.normal(0, 0.02, n) if paired else rng.normal(0.5 + effect / 2, 0.03, n)
        k = compare_kpi(rule, by_seed(base), by_seed(cand, first_seed=0 if paired else 50))
        ends = orient(k.effect.ci_low), orient(k.effect.ci_high)
        worse, better = max(ends), min(ends)
        margin = orient(k.effect.margin)
        assert (k.test.p_noninferior < 0.05) == (worse < margin)
        assert (k.test.p_improved < 0.05) == (worse < no_change)
        assert (k.test.p_regressed < 0.05) == (better > margin)
        expected = {"improved": worse < no_change, "non-inferior": no_change <= worse < margin,
                    "regressed": better > margin, "inconclusive": worse >= margin and better <= margin}
        assert expected[k.verdict], (i, k.verdict, k.effect.ci_low, k.effect.ci_high, k.effect.margin)
