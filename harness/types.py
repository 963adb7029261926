"""The data that crosses layers: KPI rules, the statistics' results, and what a report is drawn from.

A leaf module: it imports nothing of the project, so `harness.stats` (which fills these types),
`harness.gate` (which assembles a ReportInput) and `reports/` (which renders one) all import it
and none of them imports the others for a type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, TypedDict, get_type_hints

if TYPE_CHECKING:
    import pandas as pd

NAN = float("nan")


# --------------------------------------------------------------------------- runs


class RunRow(TypedDict, total=False):
    """One run as the store's runs table holds it (harness/store.py takes its columns and types from here).

    harness/worker.py fills it in the worker, harness/executors.py for a worker that died, and
    harness/driver.py adds the provenance (git_commit, git_dirty, code_hash, batch) when recording it.
    """

    run_id: str
    profile: str
    dataset: str
    variant: str
    seed: int
    status: str  # ok | diverged | failed
    error: str
    failed_stage: str
    diverged_step: int  # -1 unless diverged
    git_commit: str
    git_dirty: bool
    code_hash: str
    config_json: str
    stage_ids_json: str
    torch_version: str
    # the numeric libraries' versions (their requirements are open ranges, and a drift between two arms changes
    # numbers); "" on runs recorded before these columns existed
    numpy_version: str
    scipy_version: str
    pandas_version: str
    device: str
    precision: str
    cpu_model: str
    host: str
    executor: str
    started_at: str
    finished_at: str
    # the host's 1-minute load average when the run started; batch: the `execute` call that scheduled it
    # (runs of one batch were interleaved seed by seed, see harness.matrix.interleave).
    load_avg_1m: float
    batch: str


_DTYPES = {str: "string", int: "int64", float: "float64", bool: "bool"}


def column_types(row: type) -> dict[str, str]:
    """A TypedDict's keys as pandas dtypes, in declaration order."""
    return {name: _DTYPES[kind] for name, kind in get_type_hints(row).items()}


# --------------------------------------------------------------------------- rules

DIRECTIONS = ("lower", "higher")  # which way is better
SCALES = ("log", "linear")  # log: compare ratios c/b; linear: compare differences c-b
# quality | controllability: what the model learned, evidence that a planted fault was caught (bench validate);
# timing: depends on the machine's load, not reproducible bit for bit; regulariser, cost, data: neither.
ROLES = ("quality", "controllability", "timing", "regulariser", "cost", "data")
# The fields of a KpiRule that bench.toml [kpis."name"] may override (harness/suite.py); the rest say what the KPI is.
OVERRIDABLE = ("direction", "scale", "margin", "blocking", "guard", "target", "target_epsilon")
# How a KPI counts in the merge verdict (KpiRule.tier; harness.stats._merge_verdict):
# blocking: must be shown non-inferior for a PASS, and a confident regression beyond its margin FAILs the merge;
# guard: need not be shown non-inferior for a PASS, but a confident regression beyond its margin FAILs the merge,
#   and an interval wholly beyond it that Holm does not confirm holds up the PASS (a KPI too noisy between seeds
#   to ever show non-inferiority at the gate's seeds that can still catch a large regression);
# informational: decides nothing.
TIERS = ("blocking", "guard", "informational")


class RuleError(ValueError):
    """A KPI rule field the statistics cannot use; harness/suite.py reports it as `kpis.<name>.<field>: <problem>`."""

    def __init__(self, name: str, field: str, problem: str) -> None:
        super().__init__(f"KPI {name!r}, {field}: {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class KpiRule:
    """One KPI: what it measures and the rule the gate judges it by.

    harness/kpis.py holds every KPI's default; bench.toml overrides the OVERRIDABLE fields in a copy
    (dataclasses.replace), so the checks below are the only ones, for defaults and overrides alike.
    """

    name: str
    direction: str  # DIRECTIONS
    scale: str  # SCALES
    margin: float  # how much worse is still fine: fraction (log) or absolute amount (linear)
    blocking: bool = True  # TIERS: needed non-inferior for a PASS; FAILs the merge when regressed
    guard: bool = False  # TIERS: FAILs the merge when regressed; need not be non-inferior for a PASS
    # steps_to_target KPIs only (harness.gate.add_steps_to_target), from bench.toml:
    target: float | str = "auto"  # absolute loss, or "auto"
    target_epsilon: float = 0.05  # auto target = (1 + eps) * the largest final loss among the baseline's runs
    # what the KPI is (harness/kpis.py; not OVERRIDABLE):
    description: str = ""
    role: str = "quality"  # ROLES
    needs_actions: bool = False  # only measured on datasets with ground-truth actions; blocks only there

    def __post_init__(self) -> None:
        for field_name, allowed in (("direction", DIRECTIONS), ("scale", SCALES), ("role", ROLES)):
            if (value := getattr(self, field_name)) not in allowed:
                choices = ", ".join(sorted(allowed))
                raise RuleError(self.name, field_name, f"'{value}' is not allowed; use one of: {choices}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise RuleError(self.name, "margin", f"must be a finite number >= 0, got {self.margin!r}")
        if isinstance(self.target, str) and self.target != "auto":
            raise RuleError(self.name, "target", f'use "auto" or a number, got {self.target!r}')
        if not isinstance(self.target, str) and not (math.isfinite(self.target) and self.target > 0):
            raise RuleError(self.name, "target", f'must be "auto" or a finite loss > 0, got {self.target!r}')
        if not (math.isfinite(self.target_epsilon) and self.target_epsilon >= 0):
            raise RuleError(self.name, "target_epsilon", f"must be a finite number >= 0, got {self.target_epsilon!r}")
        if self.blocking and self.guard:
            raise RuleError(self.name, "guard", "blocking and guard are both true; pick one (blocking: must be "
                                                "non-inferior to PASS; guard: only FAILs a confident regression)")

    @property
    def badness_sign(self) -> float:
        """+1 when larger values are worse, -1 when larger values are better."""
        return 1.0 if self.direction == "lower" else -1.0

    @property
    def analysis_margin(self) -> float:
        """The margin on the axis the tests use: log(1 + margin) for ratios."""
        return math.log1p(self.margin) if self.scale == "log" else self.margin

    @property
    def can_fail(self) -> bool:
        """Whether a confident regression of this KPI FAILs the merge: blocking and guard KPIs (one Holm family)."""
        return self.blocking or self.guard

    @property
    def tier(self) -> str:
        """How the KPI counts in the merge verdict: one of TIERS."""
        return "blocking" if self.blocking else "guard" if self.guard else "informational"

    @property
    def timing(self) -> bool:
        return self.role == "timing"

    @property
    def evidence(self) -> bool:
        """Whether a regression of this KPI shows a broken model (not a slower machine or a regulariser)."""
        return self.role in ("quality", "controllability")


# --------------------------------------------------------------------------- results


class KpiVerdict(StrEnum):
    """One KPI's verdict (harness.stats._verdict; Why says which rule gave it)."""

    IMPROVED = "improved"
    NON_INFERIOR = "non-inferior"
    IDENTICAL = "identical"  # every paired value equal: no evidence either way
    REGRESSED = "regressed"
    INCONCLUSIVE = "inconclusive"


class Verdict(StrEnum):
    """The merge verdict over all KPIs; harness/exits.py maps it to the exit code."""

    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


# Best to worst: a leaderboard's verdict is its worst candidate's (a FAIL anywhere blocks the merge; an undecided
# candidate blocks a PASS). Not the exit codes' order: INCONCLUSIVE exits 3, FAIL 1.
VERDICT_SEVERITY = (Verdict.PASS, Verdict.INCONCLUSIVE, Verdict.FAIL)


def worst_verdict(verdicts: list[Verdict]) -> Verdict:
    """The worst of the verdicts (VERDICT_SEVERITY)."""
    return max(verdicts, key=VERDICT_SEVERITY.index)


class Why(StrEnum):
    """Why a KPI got its verdict: the branch of harness.stats._verdict that decided it."""

    TOO_FEW_VALUES = "too few values"  # inconclusive: fewer than MIN_VALUES_PER_ARM usable values in an arm
    REGRESSED = "regressed"  # worse than the margin (Holm-adjusted)
    NO_VALUE = "runs without a value"  # inconclusive: a finished run has no value for the KPI
    IDENTICAL = "identical"  # every paired value equal
    IMPROVED = "improved"
    NON_INFERIOR = "non-inferior"
    UNSETTLED = "unsettled"  # inconclusive: too few seeds to tell (see recommended_seeds)
    # inconclusive: its interval lies wholly beyond the margin (raw p_regressed < alpha), but not after Holm
    BEYOND_MARGIN = "beyond its margin before the Holm correction"
    # inconclusive: worse than the baseline (raw one-sided p < alpha that it got worse at all) with its estimate
    # beyond the margin, though its interval still reaches inside it
    WORSE = "worse than the baseline, its estimate beyond its margin"


class Finding(StrEnum):
    """One line of the explanation of a merge verdict."""

    KPI = "kpi"  # the KPI Reason.kpi decided it: a blocking or guard KPI regressed, a blocking one not settled, or
    # a guard without its data or beyond its margin before the Holm correction
    MORE_FAILURES = "more failures"  # the candidate failed in more runs than the baseline: FAIL
    CANDIDATE_FAILURES = "candidate failures"  # any candidate failure prevents PASS
    NO_BLOCKING_KPI = "no blocking KPI"
    ALL_BLOCKING_OK = "all blocking KPIs ok"  # PASS
    COMPAT_BROKEN = "compat broken"  # a baseline checkpoint no longer loads or runs (harness.gate): FAIL


@dataclass(frozen=True)
class Reason:
    finding: Finding
    kpi: str = ""  # Finding.KPI: the KPI's name


@dataclass
class ArmSummary:
    """One arm of one KPI: its values and what the statistics used of them."""

    values: dict[int, float]  # as given, per seed (NaN = missing)
    n: int  # usable values (missing excluded)
    median: float  # median and IQM over the usable values
    iqm: float
    censored: int = 0  # steps-to-target runs that never reached the target, in the analysed seeds

    @property
    def missing(self) -> int:
        """Runs that finished without a value for the KPI (NaN)."""
        return count_missing(self.values)


def count_missing(values: dict[int, float]) -> int:
    """How many of the per-seed values are missing (NaN)."""
    return sum(math.isnan(value) for value in values.values())


@dataclass(frozen=True)
class Resolution:
    """What the seeds of one KPI comparison can tell apart, on the statistics' axis (log ratio or difference).

    harness.power.resolution computes it from the spread the per-seed effects showed.
    """

    seeds: int  # per-seed effects the test used (paired seeds, or the smaller arm when unpaired)
    spread: float  # sd of a per-seed effect (unpaired: sqrt(var_c + var_b))
    detectable: float  # smallest true difference the one-sided test detects with 80% power at `seeds`
    seeds_needed: int  # seeds that show a zero true difference non-inferior with 80% power (capped at 200)
    margin: float  # the KPI's margin on the same axis
    failable: float  # smallest true worsening the regression test FAILs with 80% power at `seeds` (margin + detectable)

    @property
    def settles(self) -> bool:
        """Whether a change that truly makes no difference is shown non-inferior with 80% power at these seeds."""
        return self.detectable <= self.margin


@dataclass
class Effect:
    """How the candidate differs, on the user's scale: the ratio c/b (log) or the difference c-b (linear)."""

    estimate: float  # not sign-flipped
    ci_low: float  # the interval of `estimate` at `ci_level` (NaN for censored KPIs)
    ci_high: float
    ci_level: float  # two-sided: 1 - 2 alpha, dual to the one-sided tests
    margin: float  # the non-inferiority boundary on the same scale: e.g. 1.05 (1/1.05 if higher is better)
    hedges_g: float  # standardised (c - b) on the analysis axis, small-sample corrected
    prob_improvement: float  # rliable's probability of improvement: share of all n_c x n_b run pairs, ties 1/2


@dataclass
class HypothesisTest:
    """The one-sided tests of the candidate's badness d against 0 and the margin m (harness.stats docstring)."""

    method: str  # which test produced the p values ("" when there were too few values)
    paired: bool  # True: paired test over common seeds; False: unpaired (Welch / Mann-Whitney)
    n_paired: int  # seeds present in both arms
    p_noninferior: float  # H1: d < m (raw; see harness.stats)
    p_improved: float  # H1: d < 0
    p_regressed: float  # H1: d > m
    p_regressed_adjusted: float  # Holm-adjusted p_regressed (within the blocking and guard KPIs / the informational
    # ones, of every candidate of a leaderboard: harness.stats.compare_all)
    p_worse: float  # H1: d > 0, worse at all (ignores the margin)


@dataclass
class KpiComparison:
    """The comparison of one KPI.  Floats are plain Python floats; NaN where undefined."""

    name: str
    rule: KpiRule
    baseline: ArmSummary
    candidate: ArmSummary
    effect: Effect
    test: HypothesisTest
    verdict: KpiVerdict
    why: Why  # which rule of harness.stats._verdict gave the verdict; reports/text.py words it (kpi_reason)
    recommended_seeds: int | None  # for inconclusive KPIs: seeds for 80% power (capped at 200)
    # what these seeds can tell apart (harness.power.resolution); None for censored KPIs (rank tests)
    resolution: Resolution | None = None

    def __post_init__(self) -> None:
        self.verdict = KpiVerdict(self.verdict)  # a bare string from the statistics is checked here


@dataclass
class Comparison:
    """The merge decision over all KPIs."""

    verdict: Verdict
    reasons: list[Reason]  # what decided it, in order; reports/text.py words them (comparison_reasons)
    kpis: list[KpiComparison]
    recommended_seeds: int | None
    alpha: float
    failures_baseline: int = 0  # failed (or missing) runs per arm
    failures_candidate: int = 0

    def __post_init__(self) -> None:
        self.verdict = Verdict(self.verdict)  # a bare string from the statistics is checked here

    @property
    def unresolved_guards(self) -> list[KpiComparison]:
        """The guard KPIs these seeds could not settle (inconclusive: neither shown within their margin nor
        regressed): a PASS says nothing about them below the worsening they FAIL (their Resolution.failable)."""
        return [kpi for kpi in self.kpis if kpi.rule.guard and kpi.verdict == KpiVerdict.INCONCLUSIVE]


# --------------------------------------------------------------------------- reports


@dataclass
class CompatResult:
    """Backward-compatibility check: do golden checkpoints still load and behave?"""

    ok: bool
    lines: list[str]  # e.g. "tokenizer: golden checkpoint loads (strict keys)", or the failure line


class TargetSource(StrEnum):
    """How a steps_to_target KPI's target loss was chosen (harness.gate.add_steps_to_target)."""

    AUTO = "auto"  # (1 + epsilon) x the largest final loss among the baseline's runs
    CONFIG = "bench.toml"  # an absolute loss from bench.toml


@dataclass(frozen=True)
class TargetNote:
    """The target loss a steps_to_target KPI counted steps to; reports/text.py words it (note_text)."""

    kpi: str
    target: float
    source: TargetSource
    epsilon: float = 0.0  # TargetSource.AUTO: the rule's target_epsilon


@dataclass(frozen=True)
class FloorNote:
    """An arm's values <= 0 of a log-scale KPI, read as `floor` (harness.stats.floor_log_scale)."""

    kpi: str
    arm: str
    count: int
    floor: float


@dataclass(frozen=True)
class LookNote:
    """One look of a sequential gate (harness.gate.run_looks)."""

    look: int  # 1-based
    looks: int
    seeds: int  # per arm at this look
    alpha: float  # spent at this look


@dataclass(frozen=True)
class RuleChange:
    """A gate rule the candidate's code or bench.toml sets otherwise than --baseline-ref REF's (harness.baseline_ref)."""

    key: str  # "alpha", or "<kpi>.<field>" for an OVERRIDABLE field of a KPI rule
    ref_value: object
    value: object  # the candidate's: not used for this verdict


@dataclass(frozen=True)
class RulesNote:
    """With --baseline-ref, the verdict is judged by REF's rules (its KPI rules and alpha); what the candidate's
    own rules would change, which apply only once it is merged."""

    ref: str  # as given
    commit: str
    changes: tuple[RuleChange, ...]


Note = TargetNote | FloorNote | LookNote | RulesNote


@dataclass(frozen=True)
class ArmProvenance:
    """The code an arm of `bench gate` ran and how many of its runs were reused (harness.gate.describe_arms)."""

    commit: str
    ref: str = ""  # the --baseline-ref REF this arm's code came from; "" = this checkout
    dirty: bool = False  # this checkout had uncommitted changes
    changes: tuple[str, ...] = ()  # the changed files, where known (--baseline-ref)
    reused: int = 0  # runs found finished in the store
    total: int = 0  # runs of the arm


@dataclass
class ReportInput:
    """What the report renderer needs: the statistical decision plus the raw material to show it.

    Plain data: the renderers never recompute statistics; they only summarise, format and plot
    what `harness` measured.
    """

    title: str
    baseline: str  # variant names (untrusted text: escaped wherever shown)
    candidate: str
    descriptions: dict[str, str]  # variant -> free text from the user's config (untrusted)
    comparison: Comparison
    runs: pd.DataFrame  # run_id, variant, seed, status ("ok"/"diverged"/"failed"), error
    curves: pd.DataFrame  # variant, seed, stage, step, metric, value
    rollouts: pd.DataFrame  # variant, seed, mode, clip, horizon_step (1-based), mse, psnr, ssim
    # variant -> {"seed": int, "context": int, "ground_truth": uint8 [clips, context+horizon, H, W, 3],
    #             "predictions": {mode: uint8 [clips, horizon, H, W, 3]},
    #             "reconstructions" (optional): the tokenizer's uint8 [clips, context+horizon, H, W, 3]};
    # same clips and seed for all variants
    frames: dict[str, dict]
    speed: pd.DataFrame  # variant, stage, it_per_s, wall_s (medians over seeds)
    compat: CompatResult | None  # None: not checked
    provenance: list[dict]  # one per run: run_id, variant, seed, git_commit, git_dirty, code_hash, ...
    reproduce_command: str
    profile: str
    notes: list[Note] = field(default_factory=list)  # reports/text.py words them (note_text)
    # variant -> the code it ran and its reused runs (bench gate only); reports/text.py words it (arm_code_text)
    arm_provenance: dict[str, ArmProvenance] = field(default_factory=dict)
    ci_run_url: str = ""  # the CI run that made the report (GitHub Actions), linked from the PR comment; "" = none

    @property
    def variants(self) -> list[str]:
        """Baseline first, then candidate (deduplicated if someone compares a variant to itself)."""
        return list(dict.fromkeys([self.baseline, self.candidate]))

    @property
    def candidates(self) -> list[str]:
        """The candidate arms: one (a Leaderboard has several)."""
        return [self.candidate]


@dataclass(frozen=True)
class ArmInterval:
    """One arm's IQM of one KPI over its seeds, with its percentile bootstrap interval (harness.stats.iqm_interval)."""

    variant: str  # the arm's label
    kpi: str
    n: int  # finite values (seeds) it summarises
    iqm: float
    low: float  # NaN: too few values for an interval
    high: float
    level: float  # two-sided, e.g. 0.9


@dataclass
class Leaderboard:
    """Several candidates against one baseline in one report (`bench gate --candidates a,b,c`).

    Each candidate's ReportInput is its one-candidate report, except that its "regressed" p values were
    Holm-adjusted across every candidate's blocking and guard KPIs (harness.stats.compare_all). The gate's verdict
    is the worst candidate's. `curves`, `rollouts` and `frames` hold every arm once (the baseline's runs are shared), for
    the figures that show all arms together; like ReportInput, plain data that the renderers only format.
    """

    reports: list[ReportInput]  # one per candidate, in the order given
    arms: list[ArmInterval]  # baseline first, then each candidate: each blocking and guard KPI's IQM and interval
    # As ReportInput's, for every arm once: what the figures and the run and provenance tables read.
    runs: pd.DataFrame
    curves: pd.DataFrame
    rollouts: pd.DataFrame
    frames: dict[str, dict]
    provenance: list[dict]
    reproduce_command: str
    ci_run_url: str = ""

    @property
    def baseline(self) -> str:
        return self.reports[0].baseline

    @property
    def candidates(self) -> list[str]:
        return [report.candidate for report in self.reports]

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys([self.baseline, *self.candidates]))

    @property
    def profile(self) -> str:
        return self.reports[0].profile

    @property
    def alpha(self) -> float:
        return self.reports[0].comparison.alpha

    @property
    def title(self) -> str:
        if len(self.reports) == 1:
            return self.reports[0].title
        return f"{len(self.reports)} candidates vs {self.baseline}"

    @property
    def verdict(self) -> Verdict:
        return worst_verdict([report.comparison.verdict for report in self.reports])

    @property
    def decided_by(self) -> list[str]:
        """The candidates whose verdict is the leaderboard's: the ones that caused it."""
        return [report.candidate for report in self.reports if report.comparison.verdict == self.verdict]

    @property
    def crashed(self) -> bool:
        """Whether a run of any arm crashed (an exception): the gate then exits 4 whatever the verdicts."""
        return bool((self.runs["status"] == "failed").any())

    @property
    def compat(self) -> CompatResult | None:
        return self.reports[0].compat  # it checks the baseline arm's checkpoints: the same for every candidate

    @property
    def descriptions(self) -> dict[str, str]:
        return {variant: text for report in self.reports for variant, text in report.descriptions.items()}

    @property
    def arm_provenance(self) -> dict[str, ArmProvenance]:
        return {arm: code for report in self.reports for arm, code in report.arm_provenance.items()}

    @property
    def notes(self) -> list[Note]:
        """Every report's notes once (the baseline's targets and floors are in each)."""
        return list(dict.fromkeys(note for report in self.reports for note in report.notes))
