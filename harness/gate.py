"""What `bench report` and `bench gate` compute: recorded runs -> statistics -> verdict -> ReportInput.

gate = run (resuming) + report. With --sequential, seeds are added in groups and alpha is spent per
look (`run_looks`). Several candidates against one baseline make one leaderboard (`build_leaderboard`):
one Selection per candidate, their runs planned once (`plan_lineup`) and their "regressed" claims one
Holm family. This module returns data; harness/cli.py parses the arguments, prints, writes the report
files and maps the verdict to an exit code (harness/exits.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from harness import curves, sequential, stats
from harness.baseline_ref import BaselineRef
from harness.driver import finished_runs, timing_paired
from harness.git import git_state
from harness.kpis import COMPARE_TIME_KPIS
from harness.matrix import RunSpec, interleave, plan_runs
from harness.seeds import format_seeds
from harness.store import Store
from harness.schema import Suite
from harness.types import (ArmInterval, ArmProvenance, Comparison, CompatResult, Finding, FloorNote, KpiRule,
                           Leaderboard, LookNote, Note, Reason, ReportInput, TargetNote, TargetSource, Verdict)
from worldmodel.errors import WorldbenchError


@dataclass
class Selection:
    """Which runs a report compares: a baseline arm and a candidate arm, each a variant over seeds."""
    profile: str
    dataset: str
    baseline: str
    candidate: str
    baseline_seeds: list[int]
    candidate_seeds: list[int]
    baseline_ref: BaselineRef | None = None  # bench gate --baseline-ref: the baseline arm runs this commit's code

    @property
    def labels(self) -> tuple[str, str]:
        """Arm names; a variant compared with itself (on other seeds) gets its seeds in the name, an arm
        at a --baseline-ref commit its commit."""
        if self.baseline_ref:
            ref = self.baseline_ref
            baseline = f"{self.baseline} @ {ref.commit[:12]}"
            candidate = f"{self.candidate} @ {ref.head[:12]}{' + changes' if ref.changes else ''}"
            return baseline, candidate if candidate != baseline else f"{candidate} (this checkout)"
        if self.baseline != self.candidate:
            return self.baseline, self.candidate
        return (f"{self.baseline} [seeds {format_seeds(self.baseline_seeds)}]",
                f"{self.candidate} [seeds {format_seeds(self.candidate_seeds)}]")

    def check_arms(self, other_code: bool = False) -> None:
        """Refuse arms whose comparison would compare nothing or drop recorded runs: the arms' seeds are the same
        (paired) or disjoint (unpaired), and a variant against itself on the same seeds needs other code
        (--baseline-ref) to differ by anything."""
        baseline, candidate = set(self.baseline_seeds), set(self.candidate_seeds)
        if baseline & candidate and baseline != candidate:
            raise WorldbenchError(
                f"the arms share only some seeds (--seeds {format_seeds(baseline)}, --candidate-seeds "
                f"{format_seeds(candidate)}): a paired test would leave the other runs out; give both arms the "
                f"same seeds (paired) or seeds they do not share (unpaired)")
        if self.baseline == self.candidate and baseline == candidate and not other_code:
            raise WorldbenchError(
                f"the candidate {self.candidate!r} is the baseline, on the same seeds: that compares nothing; "
                f"pass another --candidate, other --candidate-seeds, or --baseline-ref REF")

    def plan(self, suite: Suite) -> tuple[list[RunSpec], dict[str, list[str]]]:
        """The runs this checkout executes, interleaved (baseline s0, candidate s0, ...), and arm label -> run ids.

        A run can serve both arms. With --baseline-ref the baseline arm's ids are the ones REF's code
        plans, and its runs are trained by REF's code (BaselineRef.train), not listed here.
        """
        groups, arms = [], {}
        for arm, (label, variant, seeds) in enumerate(zip(self.labels, (self.baseline, self.candidate),
                                                          (self.baseline_seeds, self.candidate_seeds))):
            if arm == 0 and self.baseline_ref:
                arms[label] = list(self.baseline_ref.run_ids(self.profile, self.dataset, variant, seeds).values())
                continue
            specs = plan_runs(suite, self.profile, self.dataset, [variant], seeds)
            planned = {spec.run_id for group in groups for spec in group}
            groups.append([spec for spec in specs if spec.run_id not in planned])
            arms[label] = [spec.run_id for spec in specs]
        return interleave(groups), arms


def plan_lineup(suite: Suite, selections: list[Selection]) -> tuple[list[RunSpec], dict[str, list[str]]]:
    """The runs of several selections (a baseline against each candidate), each once, and arm label -> run ids.

    Seed-major over all arms (baseline s0, each candidate s0, baseline s1, ...). A run shared by selections (the
    baseline's) is planned once, and runs whose stages have the same ids share them in the stage cache: the
    tokenizer of a seed trains once for every candidate that leaves it as the baseline's.
    """
    plans = [selection.plan(suite) for selection in selections]
    specs = {spec.run_id: spec for spec in interleave([planned for planned, _ in plans])}  # keeps first positions
    arms = {label: ids for _, plan_arms in plans for label, ids in plan_arms.items()}
    return list(specs.values()), arms


# ----------------------------------------------------------------------------- data for the statistics

def arm_values(kpis: pd.DataFrame, runs: pd.DataFrame, arm: str) -> dict[str, dict[int, float]]:
    """kpi -> seed -> value for one arm's ok runs."""
    ok = runs[(runs["arm"] == arm) & (runs["status"] == "ok")]
    merged = kpis.merge(ok[["run_id", "seed"]], on="run_id")
    return {kpi: dict(zip(group["seed"].astype(int), group["value"].astype(float)))
            for kpi, group in merged.groupby("kpi")}


def add_steps_to_target(values: dict[str, dict[str, dict[int, float]]], curve_rows: pd.DataFrame,
                        runs: pd.DataFrame, suite: Suite, baseline: str) -> list[TargetNote]:
    """Compute <stage>.steps_to_target for every arm from the loss curves; returns the targets used."""
    notes = []
    losses = curve_rows[curve_rows["metric"] == "loss"].merge(runs[["run_id", "arm", "seed", "status"]], on="run_id")
    losses = losses[losses["status"] == "ok"]
    for name in sorted(COMPARE_TIME_KPIS):
        stage = name.split(".")[0]
        rule = suite.kpis[name]
        stage_losses = losses[losses["stage"] == stage]
        if isinstance(rule.target, str):  # auto: just above where every baseline run ends up
            finals = values[baseline].get(f"{stage}.final_loss", {})
            if not finals:
                continue
            # The worst baseline run, not the median: final_loss is the smoothed curve's last value, so
            # every baseline run reaches this target and the KPI measures speed rather than censoring
            # half the baseline (seeds differ by far more than a few percent at gate budgets).
            target = (1 + rule.target_epsilon) * float(np.max(list(finals.values())))
            notes.append(TargetNote(name, target, TargetSource.AUTO, rule.target_epsilon))
        else:
            target = float(rule.target)
            notes.append(TargetNote(name, target, TargetSource.CONFIG))
        for arm, arm_kpis in values.items():
            arm_kpis[name] = {}
            for seed, curve in stage_losses[stage_losses["arm"] == arm].groupby("seed"):
                curve = curve.sort_values("step")
                arm_kpis[name][int(seed)] = curves.steps_to_target(curve["step"].to_numpy(),
                                                                  curve["value"].to_numpy(), target)
    return notes


def floor_values(values: dict[str, dict[str, dict[int, float]]], suite: Suite) -> list[FloorNote]:
    """Read each arm's log-scale values <= 0 as harness.stats.floor_log_scale says; returns a note per arm and KPI."""
    notes = []
    for arm, arm_kpis in values.items():
        for name, by_seed in arm_kpis.items():
            arm_kpis[name], floored = stats.floor_log_scale(suite.kpis[name], by_seed)
            if floored:
                notes.append(FloorNote(name, arm, floored, stats.LOG_SCALE_FLOOR))
    return notes


def dataset_has_actions(suite: Suite, dataset: str) -> bool:
    """Whether the dataset records ground-truth actions: the procedural games always do, HDF5 files may."""
    spec = suite.dataset(dataset)
    if spec.kind != "hdf5":
        return True
    import h5py

    try:
        with h5py.File(spec.path, "r") as handle:
            return "actions" in handle
    except OSError:  # unreadable here: keep such KPIs in their tier, so their missing values cannot PASS
        return True


def rules_for(suite: Suite, has_actions: bool = True, timing_paired: bool = False) -> list[KpiRule]:
    """The suite's rules as the statistics judge them here: a KPI against ground-truth actions cannot block (or
    guard) where there are none, and a timing KPI (machine load) only where the arms' runs were scheduled side by
    side (harness.driver.timing_paired); elsewhere such a KPI is informational."""
    def judged_here(rule: KpiRule) -> bool:
        return (has_actions or not rule.needs_actions) and (timing_paired or not rule.timing)

    return [replace(rule, blocking=rule.blocking and judged_here(rule), guard=rule.guard and judged_here(rule))
            for rule in suite.kpis.values()]


@dataclass
class Recorded:
    """One selection's recorded runs, as the statistics take them (`arms`) and as its report shows them."""
    arms: stats.ComparisonArms  # the rules and both arms' values and failures
    runs: pd.DataFrame  # with an `arm` column
    kpis: pd.DataFrame
    curves: pd.DataFrame
    notes: list[Note]


@dataclass
class Compared:
    """One selection's recorded runs and their statistics (`compare_lineup`)."""
    recorded: Recorded
    comparison: Comparison


def recorded_arms(suite: Suite, store: Store, selection: Selection) -> Recorded:
    """The runs of one selection's arms in the store, and what the statistics compare of them."""
    specs, arms = selection.plan(suite)
    recorded = store.runs()
    runs = pd.concat([recorded[recorded["run_id"].isin(ids)].assign(arm=arm) for arm, ids in arms.items()],
                     ignore_index=True)
    run_ids = set(runs["run_id"])
    kpis, curves = store.for_runs("kpis", run_ids), store.for_runs("curves", run_ids)
    baseline, candidate = selection.labels
    values = {arm: arm_values(kpis, runs, arm) for arm in (baseline, candidate)}
    notes: list[Note] = list(add_steps_to_target(values, curves, runs, suite, baseline))
    notes += floor_values(values, suite)

    def failures(arm: str) -> int:
        return len(arms[arm]) - int(((runs["arm"] == arm) & (runs["status"] == "ok")).sum())  # missing = failed

    rules = rules_for(suite, dataset_has_actions(suite, selection.dataset), timing_paired(runs, baseline, candidate))
    # An informational KPI that neither arm measured (a component's own, such as an MoE's expert load, in a
    # comparison without that component) has nothing to compare; a blocking or guard one stays, so it cannot PASS.
    rules = [rule for rule in rules if rule.can_fail or any(
        np.isfinite(list(values[arm].get(rule.name, {}).values())).any() for arm in (baseline, candidate))]
    judged = stats.ComparisonArms(rules, values[baseline], values[candidate], failures(baseline), failures(candidate))
    return Recorded(judged, runs, kpis, curves, notes)


def compare_lineup(suite: Suite, store: Store, selections: list[Selection], alpha: float,
                   hold_alpha: float | None = None) -> list[Compared]:
    """Statistics for each selection's runs, Holm across every selection's KPIs (harness.stats.compare_all)."""
    recorded = [recorded_arms(suite, store, selection) for selection in selections]
    comparisons = stats.compare_all([r.arms for r in recorded], censored_kpis=set(COMPARE_TIME_KPIS), alpha=alpha,
                                    hold_alpha=hold_alpha)
    return [Compared(r, comparison) for r, comparison in zip(recorded, comparisons)]


def compare_recordings(suite: Suite, stores: tuple[Store, Store], selection: Selection,
                       alpha: float) -> list[Comparison]:
    """The same runs recorded in two results dirs (two machines, kernels or library versions: run ids do not name
    the machine): each arm of `selection` in the second store against the same arm in the first, paired by
    seed, judged as a change is, with Holm across both arms; one Comparison per arm (baseline, candidate).
    No pair of runs shared one machine's load, so the timing KPIs decide nothing here."""
    first, second = (recorded_arms(suite, store, selection) for store in stores)
    judged_in_first = {rule.name for rule in first.arms.rules}
    rules = [rule for rule in rules_for(suite, dataset_has_actions(suite, selection.dataset), timing_paired=False)
             if rule.name in judged_in_first]
    arms = [stats.ComparisonArms(rules, getattr(first.arms, side), getattr(second.arms, side),
                                 getattr(first.arms, f"failures_{side}"), getattr(second.arms, f"failures_{side}"))
            for side in ("baseline", "candidate")]
    return stats.compare_all(arms, censored_kpis=set(COMPARE_TIME_KPIS), alpha=alpha)


def compare_runs(suite: Suite, store: Store, selection: Selection, alpha: float):
    """Statistics for the selected runs: (Comparison, runs with an `arm` column, kpis, curves, notes)."""
    compared = compare_lineup(suite, store, [selection], alpha)[0]
    recorded = compared.recorded
    return compared.comparison, recorded.runs, recorded.kpis, recorded.curves, recorded.notes


# ----------------------------------------------------------------------------- report input

def check_baseline_compat(store: Store, selection: Selection, runs: pd.DataFrame) -> CompatResult:
    """The golden checkpoints, and with --baseline-ref the ones REF's code trained, must load and run in this code.
    It depends on the baseline arm alone, so a leaderboard checks it once."""
    from harness.compat import check_compat  # loads torch: only when a report is built

    baseline = selection.labels[0]
    ok = runs[(runs["status"] == "ok") & (runs["arm"] == baseline)]
    trained, trained_by = (selection.baseline_ref.checkpoints(store.cache, ok) if selection.baseline_ref
                           else ({}, ""))
    return check_compat(trained=trained, trained_by=trained_by)


def report_input(suite: Suite, store: Store, selection: Selection, compared: Compared, compat: CompatResult,
                 reproduce: str) -> ReportInput:
    """The report of one selection from its statistics (`compare_lineup`) and the compatibility check."""
    recorded, comparison = compared.recorded, compared.comparison
    runs, kpis, curves, notes = recorded.runs.copy(), recorded.kpis, recorded.curves, list(recorded.notes)
    runs["variant"] = runs["arm"]  # the report shows arms; they are the variants unless one is compared to itself
    labelled = runs[["run_id", "variant", "seed"]]
    rollouts = store.for_runs("rollouts", runs["run_id"]).merge(labelled, on="run_id")
    curves = curves.merge(labelled, on="run_id")
    kpis = kpis.merge(labelled, on="run_id")
    speed_rows = []
    for (variant, kpi), group in kpis[kpis["kpi"].str.endswith((".it_per_s", ".wall_s"))].groupby(["variant", "kpi"]):
        speed_rows.append({"variant": variant, "stage": kpi.split(".")[0], "metric": kpi.split(".")[1],
                           "value": float(group["value"].median())})
    speed = (pd.DataFrame(speed_rows).pivot_table(index=["variant", "stage"], columns="metric", values="value")
             .reset_index() if speed_rows else pd.DataFrame(columns=["variant", "stage", "it_per_s", "wall_s"]))
    # Pictures: every run rolls out the same val clips (the data does not depend on the run's seed);
    # show each arm's first finished seed, the same seed for both arms when they share one.
    ok = runs[runs["status"] == "ok"]
    baseline, candidate = selection.labels
    common = sorted(set(ok[ok["arm"] == baseline]["seed"]) & set(ok[ok["arm"] == candidate]["seed"]))
    frames = {}
    for arm in (baseline, candidate):
        mine = ok[ok["arm"] == arm].sort_values("seed")
        if mine.empty:
            continue
        row = mine[mine["seed"] == common[0]].iloc[0] if common else mine.iloc[0]
        loaded = store.read_frames(row["run_id"])
        if loaded:
            frames[arm] = {"seed": int(row["seed"]), **loaded}
    provenance_columns = ["run_id", "variant", "seed", "git_commit", "git_dirty", "code_hash", "torch_version",
                          "numpy_version", "scipy_version", "pandas_version", "device", "precision", "cpu_model",
                          "host", "started_at"]
    report = ReportInput(
        title=f"{candidate} vs {baseline}", baseline=baseline, candidate=candidate,
        descriptions={baseline: suite.variant(selection.baseline).description,
                      candidate: suite.variant(selection.candidate).description},
        comparison=comparison, runs=runs[["run_id", "variant", "seed", "status", "error"]], curves=curves,
        rollouts=rollouts, frames=frames, speed=speed, compat=compat,
        provenance=runs[provenance_columns].to_dict("records"), reproduce_command=reproduce,
        profile=selection.profile, notes=notes)
    if not compat.ok:  # a PR that breaks loading the baseline's checkpoints must not merge
        comparison.verdict = Verdict.FAIL
        comparison.reasons.append(Reason(Finding.COMPAT_BROKEN))
    return report


def build_report_input(suite: Suite, store: Store, selection: Selection, alpha: float, reproduce: str) -> ReportInput:
    """The report of one baseline against one candidate."""
    return build_leaderboard(suite, store, [selection], alpha, reproduce).reports[0]


def build_leaderboard(suite: Suite, store: Store, selections: list[Selection], alpha: float,
                      reproduce: str, hold_alpha: float | None = None) -> Leaderboard:
    """One report of a baseline against each selection's candidate: a leaderboard (one selection: its report).
    `hold_alpha`: see harness.stats.compare (a sequential look's alpha is spent; the hold-up keeps the gate's)."""
    lineup = compare_lineup(suite, store, selections, alpha, hold_alpha)
    compat = check_baseline_compat(store, selections[0], lineup[0].recorded.runs)  # every selection's baseline arm
    return leaderboard_of([report_input(suite, store, selection, compared, compat, reproduce)
                           for selection, compared in zip(selections, lineup)], reproduce)


def leaderboard_of(reports: list[ReportInput], reproduce: str) -> Leaderboard:
    """The leaderboard of reports of one baseline against each candidate: every arm's runs, curves, rollouts, frames
    and provenance once (the baseline's from the first report: they are the same runs), and each arm's IQMs."""
    baseline = reports[0].baseline

    def every_arm_once(table: str) -> pd.DataFrame:
        """Each report's rows of a table, the baseline's from the first report only (they are the same runs)."""
        frames = [getattr(report, table) for report in reports]
        return pd.concat([frames[0]] + [frame[frame["variant"] != baseline] for frame in frames[1:]], ignore_index=True)

    provenance = {row["run_id"]: row for report in reports for row in report.provenance}
    return Leaderboard(reports=reports, arms=arm_intervals(reports), runs=every_arm_once("runs"),
                       curves=every_arm_once("curves"), rollouts=every_arm_once("rollouts"),
                       frames={arm: frames for report in reports for arm, frames in report.frames.items()},
                       provenance=list(provenance.values()), reproduce_command=reproduce)


def arm_intervals(reports: list[ReportInput]) -> list[ArmInterval]:
    """Each arm's IQM of each blocking and guard KPI with its bootstrap interval, at the level of the reports' own
    intervals: the baseline once (from the first report), then each candidate."""
    level = stats.ci_level(reports[0].comparison.alpha)
    rows = [(reports[0].baseline, kpi.name, kpi.baseline) for kpi in reports[0].comparison.kpis if kpi.rule.can_fail]
    rows += [(report.candidate, kpi.name, kpi.candidate) for report in reports for kpi in report.comparison.kpis
             if kpi.rule.can_fail]
    intervals = []
    for arm, name, summary in rows:
        # a censored run (inf: never reached the target) counts as the worst, as in the tests; NaN is missing
        values = np.array([v for v in summary.values.values() if not np.isnan(v)], dtype=float)
        low, high = stats.iqm_interval(values, level)
        intervals.append(ArmInterval(arm, name, len(values), stats.interquartile_mean(values), low, high, level))
    return intervals


def require_recorded(suite: Suite, store: Store, selections: list[Selection], results: Path) -> None:
    """`bench report` needs every run of the selections recorded for this code: a run that was never
    recorded is not a failed one, so a usage error names what to run first instead of a verdict."""
    _, arms = plan_lineup(suite, selections)
    unrecorded = unrecorded_seeds(store, selections, arms)
    if all(len(unrecorded.get(label, [])) == len(ids) for label, ids in arms.items()):
        variants = list(dict.fromkeys(v for s in selections for v in (s.baseline, s.candidate)))
        raise WorldbenchError(f"no recorded runs of {' or '.join(variants)} on profile '{selections[0].profile}' in "
                              f"'{results}' for this code; run `bench run` first")
    if unrecorded:
        raise WorldbenchError(f"{describe_unrecorded(unrecorded)} not recorded in '{results}' for this code; "
                              f"run them with `bench run` (or `bench gate`), or report on the recorded seeds "
                              f"with --seeds")


def require_complete(store: Store, selections: list[Selection], arms: dict[str, list[str]],
                     command: str = "bench gate") -> None:
    """After `command` has trained its runs, each must be in the store under this code's id. If one is not,
    the project's code changed while it ran (ids hash the source): say so rather than call them failed."""
    unrecorded = unrecorded_seeds(store, selections, arms)
    if unrecorded:
        raise WorldbenchError(f"{describe_unrecorded(unrecorded)} not recorded under this code's run ids: "
                              f"the code changed while {command} ran; rerun {command}")


def unrecorded_seeds(store: Store, selections: list[Selection], arms: dict[str, list[str]]) -> dict[str, list[int]]:
    """Arm label -> the seeds whose run, as this code plans it (`arms`, in seed order), the store lacks."""
    recorded = set(store.runs()["run_id"])
    seeds = {label: arm_seeds for selection in selections
             for label, arm_seeds in zip(selection.labels, (selection.baseline_seeds, selection.candidate_seeds))}
    missing = {label: [seed for seed, run_id in zip(seeds[label], ids) if run_id not in recorded]
               for label, ids in arms.items()}
    return {label: found for label, found in missing.items() if found}


def describe_unrecorded(unrecorded: dict[str, list[int]]) -> str:
    """'the runs of windowed_attention seeds 3,4 and meanpool_concat seed 0 are' (one line)."""
    parts = [f"{label} seed{'s' if len(seeds) > 1 else ''} {format_seeds(seeds)}" for label, seeds in unrecorded.items()]
    return f"the runs of {' and '.join(parts)} are"


def run_looks(suite: Suite, selections: list[Selection], results: Path, sizes: list[int], alpha: float,
              spend_alpha: bool, execute: Callable[[list[RunSpec]], object],
              reproduce: Callable[[list[Selection]], str], jobs: int = 2,
              quiet: bool = False) -> tuple[Leaderboard, dict[str, list[str]]]:
    """The gate's looks: at each, extend every arm to `sizes[look]` seeds, train what is missing (`execute`;
    REF's code trains the baseline arm with --baseline-ref), compare, and stop once the verdict is decided (for
    several candidates: the worst one's). `spend_alpha` (--sequential): alpha is spent across the looks.

    Returns the last look's leaderboard (one report per selection) and its arms (label -> run ids)."""
    group = len(selections[0].baseline_seeds)
    first_seeds = [(selection.baseline_seeds, selection.candidate_seeds) for selection in selections]
    alphas = [alpha]
    if spend_alpha:
        alphas = sequential.alpha_spending(len(sizes), alpha, [size / sizes[-1] for size in sizes])
    looks = len(sizes)
    for look in range(looks):
        for selection, (baseline_seeds, candidate_seeds) in zip(selections, first_seeds):
            selection.baseline_seeds, selection.candidate_seeds = extend_seeds(
                baseline_seeds, candidate_seeds, sizes[look] - group)
        specs, arms = plan_lineup(suite, selections)
        first = selections[0]
        if first.baseline_ref and set(arms[first.labels[0]]) - finished_runs(results):
            first.baseline_ref.train(results, first.profile, first.dataset, first.baseline, first.baseline_seeds,
                                     jobs, quiet)
        execute(specs)
        board = build_leaderboard(suite, Store(results), selections, alphas[look], reproduce(selections), alpha)
        if spend_alpha:
            for report in board.reports:
                report.notes.append(LookNote(look + 1, looks, len(first.baseline_seeds), alphas[look]))
        if board.verdict != Verdict.INCONCLUSIVE:
            break
    return board, arms


def describe_arms(board: Leaderboard, selections: list[Selection], arms: dict[str, list[str]],
                  finished_before: set[str]) -> None:
    """Record for each arm of each report the code it ran and how many of its runs were reused or trained now
    (report.arm_provenance; reports/text.py words it after the arm's description)."""
    commit, dirty = git_state()
    here = ArmProvenance(commit, dirty=dirty)
    for report, selection in zip(board.reports, selections):
        for role, label in zip(("baseline", "candidate"), selection.labels):
            code = selection.baseline_ref.code(role) if selection.baseline_ref else here
            reused = sum(run_id in finished_before for run_id in arms[label])
            report.arm_provenance[label] = replace(code, reused=reused, total=len(arms[label]))


def sequential_sizes(selection: Selection, max_seeds: int | None) -> list[int]:
    """Seeds per arm at each look of a sequential gate (default cap: twice the first look). The looks grow both
    arms by the same seeds, so the arms must start equal: otherwise the cap and the information fractions
    would hold for one arm only."""
    group, other = len(selection.baseline_seeds), len(selection.candidate_seeds)
    if group != other:
        raise WorldbenchError(f"--sequential needs arms of equal size, but --seeds gives the baseline {group} and "
                              f"--candidate-seeds the candidate {other}; give both arms as many seeds")
    return look_sizes(group, 2 * group if max_seeds is None else max_seeds)


def look_sizes(group: int, max_seeds: int) -> list[int]:
    """Seeds per arm at each sequential look: groups of `group`, the last one cut to `max_seeds` (5, 10, 12)."""
    if max_seeds < group:
        raise WorldbenchError(f"--max-seeds {max_seeds} is below the {group} seeds of the first look; "
                              f"pass --max-seeds {group} or more, or fewer --seeds")
    return [min(size, max_seeds) for size in range(group, max_seeds + group, group)]


def extend_seeds(baseline: list[int], candidate: list[int], extra: int) -> tuple[list[int], list[int]]:
    """Both arms plus `extra` unused seeds each: the same new seeds when the arms are paired.

    Unpaired arms take turns from one sequence of new seeds, so a later look (more `extra`) keeps every
    seed of an earlier look and no run is wasted.
    """
    start = max(baseline + candidate) + 1
    if set(baseline) == set(candidate):  # paired, whatever order the seeds were given in
        new = list(range(start, start + extra))
        return baseline + new, candidate + new
    return (baseline + list(range(start, start + 2 * extra, 2)),
            candidate + list(range(start + 1, start + 2 * extra, 2)))
