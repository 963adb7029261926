"""`bench validate`: planted faults and null changes, which show the gate tells a broken model from a harmless change.

Every planted fault (a variant with `planted_fault = true`: the built-in ones in harness/schema.py plus the
user's) is compared with the baseline exactly as `bench gate` compares a candidate and must FAIL. A fault only
counts as caught when a blocking or guard quality or controllability KPI regressed (either FAILs the merge): not a
timing KPI, not a regulariser, and not failed runs alone. Every null change (`null_change = true`: the built-in
`null_rounding`, float rounding only, plus the user's) on the same seeds, and the baseline against itself on the
next, disjoint seeds (A/A), must PASS: a gate that cannot pass a harmless change blocks every real pull request.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from harness.exits import EXIT_CRASHED, EXIT_FAIL, EXIT_OK
from harness.gate import Selection, compare_runs, require_complete
from harness.matrix import RunSpec
from harness.store import Store
from harness.suite import Suite
from harness.types import Comparison, KpiComparison, KpiVerdict, Verdict

EXPECT_FAIL, EXPECT_PASS = Verdict.FAIL, Verdict.PASS
EXIT_AS_EXPECTED, EXIT_NOT_AS_EXPECTED = EXIT_OK, EXIT_FAIL  # 2 (usage) comes from the CLI
AA_CHECK = "A/A"  # the row of the baseline against itself


@dataclass
class Check:
    """One row of the suite: a candidate against the baseline, and the verdict it must get."""
    name: str
    expected: Verdict  # EXPECT_FAIL | EXPECT_PASS
    selection: Selection


@dataclass
class CheckResult:
    name: str
    candidate: str  # the candidate variant
    expected: Verdict
    observed: Verdict  # the gate's verdict
    caught_by: str  # the blocking or guard evidence KPI with the smallest adjusted p among those regressed; "" if none
    p_adjusted: float  # its Holm-adjusted p (NaN when none)
    ok: bool
    comparison: Comparison | None = None  # the gate's decision (reports/validate.py words its reasons)


@dataclass
class Validation:
    profile: str
    dataset: str
    baseline: str
    seeds: list[int]
    aa_seeds: list[int]  # the A/A candidate arm's seeds, disjoint from `seeds`
    alpha: float
    rows: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)


def plan_checks(suite: Suite, profile: str | None = None, dataset: str | None = None,
                seeds: list[int] | None = None) -> list[Check]:
    """Each planted fault, then each null change, against the baseline on the same seeds (paired); then A/A."""
    comparison = suite.comparison
    profile = profile or comparison.profile
    dataset = dataset or comparison.dataset
    suite.profile(profile)
    suite.dataset(dataset)
    seeds = seeds or suite.default_seeds(profile)
    baseline = comparison.baseline
    checks = [Check(name, EXPECT_FAIL, Selection(profile, dataset, baseline, name, seeds, seeds))
              for name in suite.planted_faults() if name != baseline]
    checks += [Check(name, EXPECT_PASS, Selection(profile, dataset, baseline, name, seeds, seeds))
               for name in suite.null_changes() if name != baseline]
    start = max(seeds) + 1
    aa_seeds = list(range(start, start + len(seeds)))
    checks.append(Check(AA_CHECK, EXPECT_PASS, Selection(profile, dataset, baseline, baseline, seeds, aa_seeds)))
    return checks


def run_specs(suite: Suite, checks: list[Check]) -> list[RunSpec]:
    """Every run the checks compare, once each: the baseline's runs are shared by all rows."""
    specs: dict[str, RunSpec] = {}
    for check in checks:
        for spec in check.selection.plan(suite)[0]:
            specs.setdefault(spec.run_id, spec)
    return list(specs.values())


def caught_by(comparison: Comparison) -> KpiComparison | None:
    """The evidence that a fault was caught: the most significant regressed quality/controllability KPI among those
    whose regression FAILs the merge (blocking and guard)."""
    regressed = [k for k in comparison.kpis
                 if k.rule.can_fail and k.verdict == KpiVerdict.REGRESSED and k.rule.evidence]
    return min(regressed, key=lambda k: k.test.p_regressed_adjusted, default=None)


def judge(check: Check, comparison: Comparison) -> CheckResult:
    """A fault is caught when the gate FAILs through a regressed evidence KPI; a null row only when it PASSes
    (INCONCLUSIVE fails a CI check as surely as FAIL does)."""
    culprit = caught_by(comparison)
    if check.expected == EXPECT_FAIL:
        ok = comparison.verdict == Verdict.FAIL and culprit is not None
    else:
        ok = comparison.verdict == Verdict.PASS
    return CheckResult(check.name, check.selection.candidate, check.expected, comparison.verdict,
                       culprit.name if culprit else "", culprit.test.p_regressed_adjusted if culprit else math.nan, ok,
                       comparison)


def exit_code(result: Validation, crashed: bool) -> int:
    """0 every check as expected, 1 one is not, 4 a run crashed (a crash outranks the verdicts, as in the gate)."""
    if crashed:
        return EXIT_CRASHED
    return EXIT_AS_EXPECTED if result.ok else EXIT_NOT_AS_EXPECTED


def validate(suite: Suite, store: Store, checks: list[Check]) -> Validation:
    """Compare each check's recorded runs with the gate's statistics and judge the verdicts."""
    for check in checks:  # all trained just now: one missing means the code changed meanwhile
        require_complete(store, [check.selection], check.selection.plan(suite)[1], "bench validate")
    rows = [judge(check, compare_runs(suite, store, check.selection, suite.comparison.alpha)[0]) for check in checks]
    first, aa = checks[0].selection, checks[-1].selection
    return Validation(first.profile, first.dataset, first.baseline, aa.baseline_seeds, aa.candidate_seeds,
                      suite.comparison.alpha, rows)
