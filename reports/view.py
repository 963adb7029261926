"""The report's content as plain-text tables and lists, shared by the markdown and HTML renderers.

Nothing here is escaped: the renderers escape every cell (markdown by `md_escape`, HTML by
Jinja's autoescape), so untrusted text can go anywhere in a table.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.kpis import COMPARE_TIME_KPIS
from harness.seeds import format_seeds
from harness.types import (TIERS, VERDICT_SEVERITY, ArmSummary, Comparison, KpiComparison, KpiVerdict, Leaderboard,
                           ReportInput, RulesNote, Verdict)
from worldmodel.config import STAGES
from reports.text import (
    MISSING,
    VERDICT_SYMBOL,
    arm_description,
    comparison_reasons,
    fmt_estimate,
    fmt_margin,
    fmt_number,
    fmt_p,
    fmt_seconds,
    guard_brief,
    is_missing,
    kpi_reason,
    note_text,
    resolution_text,
    to_float,
    truncate,
    unresolved_guards_line,
)

MODE_ORDER = ("ar", "tf", "random", "copy_last")
MODE_LABELS = {"ar": "autoregressive", "tf": "teacher-forced", "random": "random actions", "copy_last": "copy last frame"}
PROBLEM_STATUSES = ("failed", "diverged")
# A LAM whose median actions.codebook_perplexity is below this uses about one latent action: collapsed.
COLLAPSED_LAM_PERPLEXITY = 1.5


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    row_classes: list[str] = field(default_factory=list)  # HTML only: one CSS class per row ("" = none)
    note: str = ""  # shown under the table (e.g. what was left out)
    sort_keys: list[list[float]] = field(default_factory=list)  # HTML only: a number per cell to sort by (NaN: text)

    def __bool__(self) -> bool:
        return bool(self.rows)


@dataclass
class Banner:
    verdict: str  # "PASS" | "FAIL" | "INCONCLUSIVE"
    reasons: list[str]
    recommended_seeds: int | None
    context: str  # one line: who vs whom, profile, seeds, alpha
    # a PASS: the guards its seeds could not settle, each in a few words (reports/text.py guard_brief)
    unresolved_guards: list[str] = field(default_factory=list)

    def guards_line(self, max_chars: int | None = None) -> str:
        """The unresolved guards in one line (reports/text.py unresolved_guards_line); "" for none."""
        return unresolved_guards_line(self.unresolved_guards, max_chars)


@dataclass
class KpiExplanation:
    name: str
    verdict: str
    reason: str
    detail: str  # method, sample sizes and effect sizes, for the curious
    resolution: str = ""  # what the seeds can tell apart (blocking and guard KPIs with a t-test; reports/text.py)


# --------------------------------------------------------------------------- small helpers


def ordered(values: list[str], preferred: tuple[str, ...]) -> list[str]:
    """Known names in their natural order first, anything else alphabetically after."""
    unique = list(dict.fromkeys(values))
    return [v for v in preferred if v in unique] + sorted(v for v in unique if v not in preferred)


def has_columns(frame: pd.DataFrame | None, columns: tuple[str, ...]) -> bool:
    return frame is not None and not frame.empty and all(c in frame.columns for c in columns)


def descriptions(report: ReportInput | Leaderboard) -> dict[str, str]:
    """Variant -> its description, followed by the code it ran and its reused runs (bench gate) where known."""
    provenance = report.arm_provenance
    shown = dict(report.descriptions or {})
    for variant, arm in provenance.items():
        shown[variant] = arm_description(shown.get(variant), arm)
    return shown


def description_of(report: ReportInput | Leaderboard, variant: str) -> str:
    return str(descriptions(report).get(variant) or "")


def notes(report: ReportInput | Leaderboard) -> list[str]:
    """The report's notes, worded (reports/text.py note_text)."""
    return [note_text(note) for note in report.notes]


def role_of(report: ReportInput | Leaderboard, variant: str) -> str:
    if variant == report.baseline and variant in report.candidates:
        return "baseline = candidate"
    if variant == report.baseline:
        return "baseline"
    if variant in report.candidates:
        return "candidate"
    return "other"


def seeds_by_variant(report: ReportInput) -> dict[str, list[int]]:
    """Seeds that were run per variant (from the runs table, else from the KPI values)."""
    seeds: dict[str, set[int]] = {v: set() for v in report.variants}
    if has_columns(report.runs, ("variant", "seed")):
        for variant, seed in zip(report.runs["variant"], report.runs["seed"]):
            if variant in seeds and not is_missing(seed):
                seeds[variant].add(int(seed))
    else:
        for kpi in report.comparison.kpis:
            seeds[report.baseline].update(kpi.baseline.values)
            seeds[report.candidate].update(kpi.candidate.values)
    return {v: sorted(s) for v, s in seeds.items()}


# --------------------------------------------------------------------------- verdict


def banner(report: ReportInput) -> Banner:
    comparison = report.comparison
    seeds = seeds_by_variant(report)
    seed_text = "; ".join(f"{role_of(report, v)} seeds {format_seeds(s) or MISSING}" for v, s in seeds.items())
    context = (
        f"candidate {report.candidate} vs baseline {report.baseline} · profile {report.profile} · "
        f"{seed_text} · α = {comparison.alpha:g}"
    )
    recommended = comparison.recommended_seeds if comparison.verdict == "INCONCLUSIVE" else None
    return Banner(comparison.verdict, comparison_reasons(comparison), recommended, context,
                  [guard_brief(kpi) for kpi in passed_unresolved_guards(comparison)])


def passed_unresolved_guards(comparison: Comparison) -> list[KpiComparison]:
    """The guards a PASS says nothing about (Comparison.unresolved_guards); none unless the verdict is PASS, whose
    reader would otherwise take it for "nothing got worse"."""
    return comparison.unresolved_guards if comparison.verdict == Verdict.PASS else []


# --------------------------------------------------------------------------- KPIs


def kpi_label(kpi: KpiComparison) -> str:
    arrow = "↓" if kpi.rule.direction == "lower" else "↑"  # which way is better
    return f"{kpi.name} {arrow}"


def ci_label(alpha: float) -> str:
    """The interval's exact name: the two-sided t interval dual to the one-sided tests at alpha."""
    return f"{(1 - 2 * alpha) * 100:g}% t CI"


# The order a maintainer reads verdicts in: what to act on first.
URGENCY = {KpiVerdict.REGRESSED: 0, KpiVerdict.INCONCLUSIVE: 1, KpiVerdict.NON_INFERIOR: 2, KpiVerdict.IMPROVED: 3,
           KpiVerdict.IDENTICAL: 4}


def rank_test(kpi: KpiComparison) -> bool:
    """Steps-to-target KPIs are compared by rank tests, whose estimate is a median (harness.stats)."""
    return kpi.name in COMPARE_TIME_KPIS


def arm_center(kpi: KpiComparison, arm: ArmSummary) -> float:
    """One arm's value the way the test summarises it, so that candidate vs baseline is the change shown: the
    geometric mean (log scale: the change is the mean per-seed log ratio) or the mean (linear: the mean per-seed
    difference) of the usable values; the median for rank tests."""
    if rank_test(kpi):
        return arm.median
    values = np.array([v for v in arm.values.values() if not math.isnan(v)], dtype=float)
    if not len(values):
        return math.nan
    return float(np.exp(np.mean(np.log(values)))) if kpi.rule.scale == "log" else float(np.mean(values))


def verdict_counts(report: ReportInput) -> dict[str, int]:
    """How many KPIs got each verdict, in the order a maintainer reads them."""
    counts = Counter(kpi.verdict for kpi in report.comparison.kpis)
    order = (KpiVerdict.IMPROVED, KpiVerdict.NON_INFERIOR, KpiVerdict.INCONCLUSIVE, KpiVerdict.REGRESSED,
             KpiVerdict.IDENTICAL)
    return {str(verdict): counts.get(verdict, 0) for verdict in order}


def headline_kpis(report: ReportInput, max_rows: int) -> tuple[list[KpiComparison], int]:
    """The KPIs a PR comment shows: every blocking and guard KPI and any other that regressed, in the suite's order;
    when more than `max_rows`, the most urgent ones. Returns them and how many were left out."""
    kpis = [k for k in report.comparison.kpis if k.rule.can_fail or k.verdict == KpiVerdict.REGRESSED]
    if len(kpis) <= max_rows:
        return kpis, 0
    order = sorted(range(len(kpis)), key=lambda i: (URGENCY[kpis[i].verdict], TIERS.index(kpis[i].rule.tier), i))
    return [kpis[i] for i in sorted(order[:max_rows])], len(kpis) - max_rows


def ci_column(report: ReportInput) -> str:
    return f"change [{ci_label(report.comparison.alpha)}]"


def kpi_row(kpi: KpiComparison) -> list[str]:
    """KPI, baseline, candidate, change [interval], margin: one statistic throughout (arm_center)."""
    return [kpi_label(kpi), fmt_number(arm_center(kpi, kpi.baseline)), fmt_number(arm_center(kpi, kpi.candidate)),
            fmt_estimate(kpi), fmt_margin(kpi)]


def headline_table(report: ReportInput, kpis: list[KpiComparison]) -> Table:
    """The PR comment's table: the KPIs of `headline_kpis`, verdict last."""
    rows = []
    for kpi in kpis:
        row = kpi_row(kpi) + [kpi.verdict]
        if not kpi.rule.blocking:
            row[0] += " (guard)" if kpi.rule.guard else " (not blocking)"
        rows.append(row)
    return Table(["KPI", "baseline", "candidate", ci_column(report), "margin", "verdict"], rows)


def table_note(report: ReportInput) -> str:
    """How to read the KPI tables, once."""
    alpha = report.comparison.alpha
    return (
        "↓/↑: lower/higher is better. Baseline and candidate: the geometric mean over seeds for ratio KPIs, the mean "
        "for difference KPIs (the median for steps-to-target), so candidate vs baseline is the change. Change: the "
        "mean per-seed log ratio c/b as % (log scale) or the mean difference c − b (linear), paired by seed, with "
        f"its {ci_label(alpha)}, dual to the one-sided tests at α = {alpha:g}: its worse end is inside the margin "
        "exactly when the KPI is non-inferior. Margin: how far the change may go and still be non-inferior. "
        "\"Regressed\" is Holm-adjusted, so stricter than the interval. Identical: the same value in every paired "
        "seed (a shared stage); no test. Tier: a blocking KPI must be non-inferior for a PASS and FAILs the merge "
        "when regressed; a guard only FAILs it when regressed (too noisy between seeds to show non-inferiority); "
        "an informational one decides nothing."
    )


def kpi_table(report: ReportInput) -> Table:
    """Every KPI, with the test's p values (the HTML report and the comment's details)."""
    columns = ["KPI", "tier", "baseline", "candidate", ci_column(report), "margin", "p non-inferior",
               "p regressed (Holm)", "verdict"]
    rows, classes, keys = [], [], []
    for kpi in report.comparison.kpis:
        label, baseline, candidate, change, margin = kpi_row(kpi)
        rows.append([label, kpi.rule.tier, baseline, candidate, change, margin,
                     fmt_p(kpi.test.p_noninferior), fmt_p(kpi.test.p_regressed_adjusted), kpi.verdict])
        classes.append(f"{kpi.verdict.replace('-', '_')} {kpi.rule.tier}")
        keys.append([math.nan, float(TIERS.index(kpi.rule.tier)), arm_center(kpi, kpi.baseline),
                     arm_center(kpi, kpi.candidate), kpi.effect.estimate, kpi.effect.margin,
                     kpi.test.p_noninferior, kpi.test.p_regressed_adjusted, float(URGENCY[kpi.verdict])])
    table = Table(columns, rows, classes, table_note(report))
    table.sort_keys = keys
    return table


def kpi_explanations(report: ReportInput, tiers: tuple[str, ...] = TIERS) -> list[KpiExplanation]:
    """Why each KPI of `tiers` got its verdict, in the report's KPI order; the identical KPIs (a shared stage: no
    test, no effect) share one entry per reason, where the first of them stood."""
    out: list[KpiExplanation] = []
    identical: dict[str, KpiExplanation] = {}
    for kpi in (kpi for kpi in report.comparison.kpis if kpi.rule.tier in tiers):
        if kpi.verdict == KpiVerdict.IDENTICAL:
            reason = kpi_reason(kpi)
            if reason in identical:
                identical[reason].name += ", " + kpi.name
            else:
                identical[reason] = KpiExplanation(kpi.name, kpi.verdict, reason, "")
                out.append(identical[reason])
            continue
        test, effect = kpi.test, kpi.effect
        design = (f"{test.n_paired} paired seeds" if test.paired
                  else f"unpaired, n = {kpi.baseline.n} vs {kpi.candidate.n}")
        method = test.method or "no test (too little data)"
        detail = (
            f"{method}, {design}; Hedges' g {fmt_number(effect.hedges_g, 3)}; "
            f"probability of improvement (all run pairs) {fmt_number(effect.prob_improvement, 3)}; "
            f"median {fmt_number(kpi.baseline.median)} → {fmt_number(kpi.candidate.median)}; "
            f"IQM {fmt_number(kpi.baseline.iqm)} → {fmt_number(kpi.candidate.iqm)}"
        )
        resolution = resolution_text(kpi) if kpi.rule.can_fail else ""
        out.append(KpiExplanation(kpi.name, kpi.verdict, kpi_reason(kpi), detail, resolution))
    return out


def kpi_seeds(report: ReportInput) -> list[int]:
    seeds: set[int] = set()
    for kpi in report.comparison.kpis:
        seeds.update(int(s) for s in kpi.baseline.values)
        seeds.update(int(s) for s in kpi.candidate.values)
    return sorted(seeds)


def seed_table(report: ReportInput, max_seeds: int | None = None) -> Table:
    """One row per KPI, one column per seed with "baseline / candidate"."""
    all_seeds = kpi_seeds(report)
    seeds = all_seeds if max_seeds is None else all_seeds[:max_seeds]
    columns = ["KPI"] + [f"seed {s}" for s in seeds]
    rows = []
    for kpi in report.comparison.kpis:
        row = [kpi.name]
        for seed in seeds:
            b = kpi.baseline.values.get(seed, math.nan)
            c = kpi.candidate.values.get(seed, math.nan)
            row.append(f"{fmt_number(b)} / {fmt_number(c)}")
        rows.append(row)
    note = "Each cell: baseline / candidate. — = missing (run failed or value not measured); ∞ = never reached."
    if len(seeds) < len(all_seeds):
        note += f" Showing {len(seeds)} of {len(all_seeds)} seeds; the HTML and JSON reports have all of them."
    return Table(columns, rows, [], note)


# --------------------------------------------------------------------------- rollouts and speed


def rollout_table(report: ReportInput | Leaderboard) -> Table:
    frame = report.rollouts
    if not has_columns(frame, ("variant", "mode", "horizon_step", "psnr")):
        return Table([], [])
    frame = frame.copy()
    for metric in ("psnr", "ssim", "mse"):
        if metric in frame.columns:
            frame[metric] = pd.to_numeric(frame[metric], errors="coerce").replace([np.inf, -np.inf], np.nan)
    columns = ["variant", "role", "mode", "PSNR step 1", "PSNR last step", "mean PSNR", "mean SSIM"]
    rows, classes = [], []
    copy_last = {}  # variant -> its copy-last-frame row's numbers: the clips', the same for arms on the same clips
    variants = ordered(list(frame["variant"].astype(str)), tuple(report.variants))
    for variant in variants:
        of_variant = frame[frame["variant"].astype(str) == variant]
        for mode in ordered(list(of_variant["mode"].astype(str)), MODE_ORDER):
            part = of_variant[of_variant["mode"].astype(str) == mode]
            per_step = part.groupby("horizon_step")["psnr"].mean().sort_index()
            ssim = part["ssim"].mean() if "ssim" in part.columns else math.nan
            numbers = [fmt_number(per_step.iloc[0] if len(per_step) else math.nan, 3) + " dB",
                       fmt_number(per_step.iloc[-1] if len(per_step) else math.nan, 3) + " dB",
                       fmt_number(part["psnr"].mean(), 3) + " dB", fmt_number(ssim, 3)]
            if mode == "copy_last":
                copy_last[variant] = numbers
            rows.append([variant, role_of(report, variant), MODE_LABELS.get(mode, mode), *numbers])
            classes.append("reference" if mode in ("random", "copy_last") else "")
    shared = len(copy_last) > 1 and len({tuple(numbers) for numbers in copy_last.values()}) == 1
    if shared:  # one row for the reference every arm shares, last
        kept = [k for k, row in enumerate(rows) if row[2] != MODE_LABELS["copy_last"]]
        rows = [rows[k] for k in kept] + [["every arm", "reference", MODE_LABELS["copy_last"],
                                           *next(iter(copy_last.values()))]]
        classes = [classes[k] for k in kept] + ["reference"]
    note = "Means over clips and seeds (higher is better). Copy-last and random actions are references, not models."
    if shared:
        note += " Copying the last frame scores the same for every arm (the same clips), so it has one row."
    return Table(columns, rows, classes, note)


def speed_table(report: ReportInput) -> Table:
    """Per stage: each arm's steps/s and wall time, and the change in steps/s as the KPI table has it (the same
    statistic: `arm_center` and the test's estimate). Stages without timing KPIs are left out."""
    kpis = {kpi.name: kpi for kpi in report.comparison.kpis}
    stages = ordered([name.split(".")[0] for name in kpis if name.endswith((".it_per_s", ".wall_s"))], STAGES)
    columns = ["stage", "baseline it/s", "candidate it/s", f"it/s {ci_column(report)}", "baseline wall",
               "candidate wall"]
    rows = []
    totals = [0.0, 0.0]
    for stage in stages:
        speed, wall = kpis.get(f"{stage}.it_per_s"), kpis.get(f"{stage}.wall_s")
        walls = [arm_center(wall, arm) for arm in (wall.baseline, wall.candidate)] if wall else [math.nan, math.nan]
        totals = [total + w for total, w in zip(totals, walls)]
        rows.append([stage] + ([fmt_number(arm_center(speed, speed.baseline), 3),
                                fmt_number(arm_center(speed, speed.candidate), 3), fmt_estimate(speed)]
                               if speed else [MISSING] * 3) + [fmt_seconds(w) for w in walls])
    if not rows:
        return Table([], [])
    rows.append(["total", "", "", "", fmt_seconds(totals[0]), fmt_seconds(totals[1])])
    note = ("Geometric means over seeds; the change is the it_per_s KPI's (mean per-seed log ratio). Positive: the "
            "candidate trains faster. Timing KPIs depend on the machine's load.")
    return Table(columns, rows, [""] * (len(rows) - 1) + ["total"], note)


# --------------------------------------------------------------------------- runs and provenance


def _run_records(report: ReportInput | Leaderboard) -> list[dict]:
    if not has_columns(report.runs, ("variant", "status")):
        return []
    return report.runs.to_dict("records")


def run_counts(report: ReportInput | Leaderboard) -> Table:
    records = _run_records(report)
    if not records:
        return Table([], [])
    statuses = ordered([str(r["status"]) for r in records], ("ok",) + PROBLEM_STATUSES)
    variants = ordered([str(r["variant"]) for r in records], tuple(report.variants))
    counts = Counter((str(r["variant"]), str(r["status"])) for r in records)
    rows, classes = [], []
    for variant in variants:
        row = [variant, role_of(report, variant)] + [str(counts[(variant, s)]) for s in statuses]
        rows.append(row)
        bad = sum(counts[(variant, s)] for s in statuses if s != "ok")
        everything_bad = bad == sum(counts[(variant, s)] for s in statuses)
        classes.append("all_failed" if everything_bad else ("has_failures" if bad else ""))
    return Table(["variant", "role"] + statuses, rows, classes)


def problem_runs(report: ReportInput | Leaderboard, error_limit: int = 600) -> Table:
    """Runs that did not finish cleanly, with their error, baseline first."""
    records = [r for r in _run_records(report) if str(r["status"]) != "ok"]
    variants = tuple(report.variants)
    records.sort(key=lambda r: (variants.index(r["variant"]) if r["variant"] in variants else 99, to_float(r.get("seed"))))
    rows = [
        [
            str(r.get("run_id", MISSING)),
            str(r["variant"]),
            fmt_number(r.get("seed")),
            str(r["status"]),
            truncate(_text(r.get("error")) or MISSING, error_limit),
        ]
        for r in records
    ]
    return Table(["run", "variant", "seed", "status", "error"], rows, ["bad"] * len(rows))


def all_runs(report: ReportInput | Leaderboard, error_limit: int = 200) -> Table:
    records = _run_records(report)
    rows, classes = [], []
    for r in records:
        rows.append(
            [
                str(r.get("run_id", MISSING)),
                str(r["variant"]),
                fmt_number(r.get("seed")),
                str(r["status"]),
                truncate(_text(r.get("error")), error_limit),
            ]
        )
        classes.append("" if str(r["status"]) == "ok" else "bad")
    return Table(["run", "variant", "seed", "status", "error"], rows, classes)


def problem_summary(report: ReportInput | Leaderboard) -> list[str]:
    """One line per variant with failed or diverged runs, for the top of the report."""
    lines = []
    for variant in ordered([str(r["variant"]) for r in _run_records(report)], tuple(report.variants)):
        mine = [r for r in _run_records(report) if str(r["variant"]) == variant]
        bad = [r for r in mine if str(r["status"]) != "ok"]
        if not bad:
            continue
        what = ", ".join(f"seed {fmt_number(r.get('seed'))} {r['status']}" for r in bad[:8])
        if len(bad) > 8:
            what += f", … ({len(bad) - 8} more)"
        prefix = "ALL runs failed" if len(bad) == len(mine) else f"{len(bad)} of {len(mine)} runs did not finish"
        lines.append(f"{role_of(report, variant)} {variant}: {prefix} ({what})")
    return lines


def _text(value: object) -> str:
    return "" if value is None or is_missing(value) and not isinstance(value, str) else str(value)


# Properties whose values must agree across runs for their numbers to be comparable: the code and the libraries.
VERSION_KEYS = ("git_commit", "code_hash", "torch_version", "numpy_version", "scipy_version", "pandas_version")
PROVENANCE_FIELDS = (
    ("git_commit", "git commit"),
    ("git_dirty", "uncommitted changes"),
    ("code_hash", "code hash"),
    ("torch_version", "torch"),
    ("numpy_version", "numpy"),
    ("scipy_version", "scipy"),
    ("pandas_version", "pandas"),
    ("device", "device"),
    ("cpu_model", "CPU"),
    ("host", "host"),
)


def _provenance_value(key: str, value: object) -> str:
    if value is None or value == "" or (not isinstance(value, str) and is_missing(value)):
        return MISSING  # "": a column the run's code did not record yet (library versions)
    if key == "git_dirty":
        return "yes" if str(value).lower() in ("true", "1", "yes") else "no"
    if key == "git_commit":
        return str(value)[:12]
    return str(value)


def _summarise_field(records: list[dict], key: str) -> str:
    values = [_provenance_value(key, r.get(key)) for r in records]
    counts = Counter(values)
    if len(counts) == 1:
        return f"{values[0]} (all {len(values)} runs)"
    by_variant: dict[str, set[str]] = {}
    for record, value in zip(records, values):
        by_variant.setdefault(str(record.get("variant")), set()).add(value)
    if all(len(v) == 1 for v in by_variant.values()):
        return "; ".join(f"{variant}: {next(iter(v))}" for variant, v in by_variant.items())
    shown = [f"{value} ({n} runs)" for value, n in counts.most_common(5)]
    if len(counts) > 5:
        shown.append(f"… {len(counts) - 5} more values")
    return ", ".join(shown)


def provenance_table(report: ReportInput | Leaderboard) -> Table:
    """Each property once: one value when all runs agree, else per variant or with counts."""
    records = [dict(r) for r in report.provenance]
    if not records:
        return Table([], [])
    rows = [[label, _summarise_field(records, key)] for key, label in PROVENANCE_FIELDS]
    classes = ["warn" if _not_comparable(records, key) else "" for key, _ in PROVENANCE_FIELDS]
    seeds: dict[str, set[int]] = {}
    for record in records:
        if not is_missing(record.get("seed")):
            seeds.setdefault(str(record.get("variant")), set()).add(int(record["seed"]))
    rows.append(["seeds", "; ".join(f"{v}: {format_seeds(s) or MISSING}" for v, s in seeds.items()) or MISSING])
    starts = sorted(str(r["started_at"]) for r in records if r.get("started_at"))
    rows.append(["started", f"{starts[0]} … {starts[-1]}" if starts else MISSING])
    classes += ["", ""]
    return Table(["property", "value"], rows, classes, f"Summarised over {len(records)} runs.")


def _not_comparable(records: list[dict], key: str) -> bool:
    """Whether this property shows results from different code, which are not comparable."""
    distinct = {_provenance_value(key, r.get(key)) for r in records}
    return (key == "git_dirty" and "yes" in distinct) or (key in VERSION_KEYS and len(distinct) > 1)


def provenance_warnings(report: ReportInput | Leaderboard) -> list[str]:
    """Where the arms' runs are not comparable (library versions, CPUs, ...), and gate rules this change would
    alter (judged by --baseline-ref REF's instead)."""
    records = [dict(r) for r in report.provenance]
    return ([f"{label}: {_summarise_field(records, key)}" for key, label in PROVENANCE_FIELDS
             if records and _not_comparable(records, key)]
            + [note_text(note) for note in report.notes if isinstance(note, RulesNote) and note.changes])


def collapsed_lam_warnings(report: ReportInput) -> list[str]:
    """One line per arm whose LAM has collapsed: its latent actions carry (almost) nothing, so
    the KPIs that compare LAM actions with others (ΔtPSNR, NMI) measure little."""
    perplexity = next((k for k in report.comparison.kpis if k.name == "actions.codebook_perplexity"), None)
    if perplexity is None:
        return []
    medians = {report.baseline: perplexity.baseline.median, report.candidate: perplexity.candidate.median}
    return [
        f"{role_of(report, variant)} {variant}: the LAM has collapsed (median actions.codebook_perplexity "
        f"{fmt_number(median, 3)} < {COLLAPSED_LAM_PERPLEXITY:g}), so rollout.delta_psnr (ΔtPSNR) and actions.nmi "
        "say little about its actions"
        for variant, median in medians.items()
        if median < COLLAPSED_LAM_PERPLEXITY  # NaN (not measured) compares False
    ]


# --------------------------------------------------------------------------- leaderboard (several candidates)


def by_severity(board: Leaderboard) -> list[ReportInput]:
    """The candidates' reports, the worst verdict first (those that decided the leaderboard), then as given."""
    return sorted(board.reports, key=lambda report: -VERDICT_SEVERITY.index(report.comparison.verdict))


def multiplicity_text(board: Leaderboard) -> str:
    """What the "regressed" p values were adjusted over, in a few words."""
    return f"\"regressed\" Holm-adjusted across all {len(board.reports)} candidates' blocking and guard KPIs"


def leaderboard_banner(board: Leaderboard) -> Banner:
    """The leaderboard's verdict (its worst candidate's) and, for each candidate that decided it, its reasons."""
    deciders = [report for report in board.reports if report.candidate in board.decided_by]
    reasons = [f"{report.candidate}: {reason}" for report in deciders for reason in comparison_reasons(report.comparison)]
    recommended = [report.comparison.recommended_seeds for report in deciders
                   if report.comparison.verdict == "INCONCLUSIVE" and report.comparison.recommended_seeds]
    seeds = seeds_by_variant(board.reports[0])[board.baseline]
    context = (f"{len(board.reports)} candidates vs baseline {board.baseline} · profile {board.profile} · "
               f"seeds {format_seeds(seeds) or MISSING} · α = {board.alpha:g}, {multiplicity_text(board)}")
    guards = [f"{report.candidate}: {guard_brief(kpi)}" for report in board.reports
              for kpi in passed_unresolved_guards(report.comparison)]
    return Banner(board.verdict, reasons, max(recommended, default=None), context, guards)


LEADERBOARD_COUNTS = (KpiVerdict.IMPROVED, KpiVerdict.NON_INFERIOR, KpiVerdict.INCONCLUSIVE, KpiVerdict.REGRESSED,
                      KpiVerdict.IDENTICAL)


def leaderboard_table(board: Leaderboard, reason_chars: int | None = None) -> Table:
    """One row per candidate, worst first: its verdict, how many KPIs got each verdict, and its first reason."""
    rows, classes = [], []
    for report in by_severity(board):
        counts = verdict_counts(report)
        reason = comparison_reasons(report.comparison)[0]
        rows.append([report.candidate, str(report.comparison.verdict)] + [str(counts[str(v)]) for v in LEADERBOARD_COUNTS]
                    + [reason if reason_chars is None else truncate(reason, reason_chars)])
        classes.append({"FAIL": "bad", "INCONCLUSIVE": "warn"}.get(report.comparison.verdict, ""))
    columns = ["candidate", "verdict", *(str(v) for v in LEADERBOARD_COUNTS), "first reason"]
    note = (f"Each candidate against {board.baseline}, the worst verdict first; the leaderboard's verdict is the "
            f"worst one. The counts are KPIs by verdict, of every tier (an informational KPI, such as speed or "
            f"size, decides nothing); {multiplicity_text(board)}.")
    return Table(columns, rows, classes, note)


def arms_table(board: Leaderboard) -> Table:
    """One row per arm (the baseline, then each candidate), one column per blocking and guard KPI: the IQM over
    seeds with its percentile bootstrap interval (harness.stats.iqm_interval)."""
    kpis = list(dict.fromkeys(arm.kpi for arm in board.arms))
    cells = {(arm.variant, arm.kpi): arm for arm in board.arms}
    rows = []
    for variant in board.variants:
        row = [variant, role_of(board, variant)]
        for kpi in kpis:
            arm = cells.get((variant, kpi))
            if arm is None:
                row.append(MISSING)
                continue
            interval = (f" [{fmt_number(arm.low, 3)}, {fmt_number(arm.high, 3)}]"
                        if not math.isnan(arm.low) else " (no interval)")
            row.append(fmt_number(arm.iqm) + interval)
        rows.append(row)
    level = next((arm.level for arm in board.arms), math.nan)
    note = (f"IQM (mean of the middle 50% of seeds) of each blocking and guard KPI over each arm's seeds, with its "
            f"{level:.0%} percentile bootstrap interval (resampling the seeds, as rliable does); an arm's spread, not "
            "a test: the verdicts come from the paired changes in the KPI tables.")
    return Table(["arm", "role", *kpis], rows, [], note)


@dataclass
class KpiMatrixRow:
    label: str  # the KPI and its direction (kpi_label)
    tier: str
    margin: str
    baseline: str  # arm_center of the baseline's seeds
    cells: list[tuple[str, str]]  # per candidate: its change [interval] ("identical" for none), its verdict
    sort_keys: list[float]  # HTML: a number per column to sort by (NaN: its text); a candidate's, its verdict's URGENCY


@dataclass
class KpiMatrix:
    """The leaderboard's KPI table: a row per KPI, a column per candidate."""
    candidates: list[str]
    rows: list[KpiMatrixRow]
    note: str

    def __bool__(self) -> bool:
        return bool(self.rows)


def leaderboard_kpi_table(board: Leaderboard) -> KpiMatrix:
    """Every KPI a row, every candidate a column holding its change against the baseline and its verdict: the
    candidates side by side, and the baseline, the margin and the identical KPIs written once, not once per
    candidate. The p values stay in each candidate's explanations and report.json."""
    reports = list(board.reports)
    by_name = [{kpi.name: kpi for kpi in report.comparison.kpis} for report in reports]
    first = {}  # every KPI of any candidate (a component's own KPIs only some have), in the order they come
    for kpis in by_name:
        for name, kpi in kpis.items():
            first.setdefault(name, kpi)
    rows = []
    for kpi in first.values():
        label, baseline, _, _, margin = kpi_row(kpi)
        cells = []
        keys = [math.nan, float(TIERS.index(kpi.rule.tier)), kpi.effect.margin, arm_center(kpi, kpi.baseline)]
        for kpis in by_name:
            other = kpis.get(kpi.name)
            if other is None:
                cells.append((MISSING, ""))
                keys.append(math.nan)
            else:
                identical = other.verdict == KpiVerdict.IDENTICAL
                cells.append(("identical" if identical else fmt_estimate(other), str(other.verdict)))
                keys.append(float(URGENCY[other.verdict]))
        rows.append(KpiMatrixRow(label, kpi.rule.tier, margin, baseline, cells, keys))
    note = (table_note(reports[0]) + " Each candidate's column: its change with its interval and its verdict ("
            + ", ".join(f"{VERDICT_SYMBOL[verdict]} {verdict}" for verdict in KpiVerdict)
            + "); clicking a candidate's name puts its worst verdicts first. Each candidate's p values are in its "
            "explanations below and in report.json.") if reports else ""
    return KpiMatrix([report.candidate for report in reports], rows, note)


def leaderboard_collapsed_lam_warnings(board: Leaderboard) -> list[str]:
    """collapsed_lam_warnings of every candidate, each arm once."""
    return list(dict.fromkeys(line for report in board.reports for line in collapsed_lam_warnings(report)))
