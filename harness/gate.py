"""What `bench report` and `bench gate` compute: recorded runs -> statistics -> verdict -> ReportInput.

gate = run (resuming) + report. With --sequential, seeds are added in groups and alpha is spent per
look (`run_looks`). This module returns data; harness/cli.py parses the arguments, prints, writes
the report files and maps the verdict to an exit code (harness/exits.py).
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
from harness.types import (ArmProvenance, Finding, FloorNote, KpiRule, LookNote, Note, Reason, ReportInput,
                           TargetNote, TargetSource, Verdict)
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
    except OSError:  # unreadable here: keep such KPIs blocking, so their missing values cannot PASS
        return True


def rules_for(suite: Suite, has_actions: bool = True, timing_paired: bool = False) -> list[KpiRule]:
    """The suite's rules as the statistics judge them here: a KPI against ground-truth actions cannot block
    where there are none, and a timing KPI (machine load) only where the arms' runs were scheduled side by
    side (harness.driver.timing_paired)."""
    return [replace(rule, blocking=rule.blocking and (has_actions or not rule.needs_actions)
                    and (timing_paired or not rule.timing))
            for rule in suite.kpis.values()]


def compare_runs(suite: Suite, store: Store, selection: Selection, alpha: float):
    """Statistics for the selected runs: (Comparison, runs with an `arm` column, kpis, curves, notes)."""
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
    comparison = stats.compare(rules, values[baseline], values[candidate],
                               failures_baseline=failures(baseline), failures_candidate=failures(candidate),
                               censored_kpis=set(COMPARE_TIME_KPIS), alpha=alpha)
    return comparison, runs, kpis, curves, notes


# ----------------------------------------------------------------------------- report input

def build_report_input(suite: Suite, store: Store, selection: Selection, alpha: float, reproduce: str) -> ReportInput:
    from harness.compat import check_compat  # loads torch: only when a report is built

    comparison, runs, kpis, curves, notes = compare_runs(suite, store, selection, alpha)
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
    # With --baseline-ref, the checkpoints REF's code trained must load and run in this code too.
    trained, trained_by = (selection.baseline_ref.checkpoints(store.cache, ok[ok["arm"] == baseline])
                           if selection.baseline_ref else ({}, ""))
    provenance_columns = ["run_id", "variant", "seed", "git_commit", "git_dirty", "code_hash", "torch_version",
                          "numpy_version", "scipy_version", "pandas_version", "device", "precision", "cpu_model",
                          "host", "started_at"]
    report = ReportInput(
        title=f"{candidate} vs {baseline}", baseline=baseline, candidate=candidate,
        descriptions={baseline: suite.variant(selection.baseline).description,
                      candidate: suite.variant(selection.candidate).description},
        comparison=comparison, runs=runs[["run_id", "variant", "seed", "status", "error"]], curves=curves,
        rollouts=rollouts, frames=frames, speed=speed, compat=check_compat(trained=trained, trained_by=trained_by),
        provenance=runs[provenance_columns].to_dict("records"), reproduce_command=reproduce,
        profile=selection.profile, notes=notes)
    if not report.compat.ok:  # a PR that breaks loading the baseline's checkpoints must not merge
        comparison.verdict = Verdict.FAIL
        comparison.reasons.append(Reason(Finding.COMPAT_BROKEN))
    return report


def require_recorded(suite: Suite, store: Store, selection: Selection, results: Path) -> None:
    """`bench report` needs every run of the selection recorded for this code: a run that was never
    recorded is not a failed one, so a usage error names what to run first instead of a verdict."""
    _, arms = selection.plan(suite)
    unrecorded = unrecorded_seeds(store, selection, arms)
    if all(len(unrecorded.get(label, [])) == len(ids) for label, ids in arms.items()):
        raise WorldbenchError(f"no recorded runs of {selection.baseline} or {selection.candidate} on profile "
                              f"'{selection.profile}' in '{results}' for this code; run `bench run` first")
    if unrecorded:
        raise WorldbenchError(f"{describe_unrecorded(unrecorded)} not recorded in '{results}' for this code; "
                              f"run them with `bench run` (or `bench gate`), or report on the recorded seeds "
                              f"with --seeds")


def require_complete(store: Store, selection: Selection, arms: dict[str, list[str]],
                     command: str = "bench gate") -> None:
    """After `command` has trained its runs, each must be in the store under this code's id. If one is not,
    the project's code changed while it ran (ids hash the source): say so rather than call them failed."""
    unrecorded = unrecorded_seeds(store, selection, arms)
    if unrecorded:
        raise WorldbenchError(f"{describe_unrecorded(unrecorded)} not recorded under this code's run ids: "
                              f"the code changed while {command} ran; rerun {command}")


def unrecorded_seeds(store: Store, selection: Selection, arms: dict[str, list[str]]) -> dict[str, list[int]]:
    """Arm label -> the seeds whose run, as this code plans it (`arms`, in seed order), the store lacks."""
    recorded = set(store.runs()["run_id"])
    seeds = dict(zip(selection.labels, (selection.baseline_seeds, selection.candidate_seeds)))
    missing = {label: [seed for seed, run_id in zip(seeds[label], ids) if run_id not in recorded]
               for label, ids in arms.items()}
    return {label: found for label, found in missing.items() if found}


def describe_unrecorded(unrecorded: dict[str, list[int]]) -> str:
    """'the runs of windowed_attention seeds 3,4 and meanpool_concat seed 0 are' (one line)."""
    parts = [f"{label} seed{'s' if len(seeds) > 1 else ''} {format_seeds(seeds)}" for label, seeds in unrecorded.items()]
    return f"the runs of {' and '.join(parts)} are"


def run_looks(suite: Suite, selection: Selection, results: Path, sizes: list[int], alpha: float, spend_alpha: bool,
              execute: Callable[[list[RunSpec]], object], reproduce: Callable[[Selection], str],
              jobs: int = 2, quiet: bool = False) -> tuple[ReportInput, dict[str, list[str]]]:
    """The gate's looks: at each, extend both arms to `sizes[look]` seeds, train what is missing (`execute`;
    REF's code trains the baseline arm with --baseline-ref), compare, and stop once the verdict is decided.
    `spend_alpha` (--sequential): alpha is spent across the looks.

    Returns the last look's report input and its arms (label -> run ids)."""
    group = len(selection.baseline_seeds)
    baseline_seeds, candidate_seeds = selection.baseline_seeds, selection.candidate_seeds
    alphas = [alpha]
    if spend_alpha:
        alphas = sequential.alpha_spending(len(sizes), alpha, [size / sizes[-1] for size in sizes])
    looks = len(sizes)
    for look in range(looks):
        selection.baseline_seeds, selection.candidate_seeds = extend_seeds(
            baseline_seeds, candidate_seeds, sizes[look] - group)
        specs, arms = selection.plan(suite)
        if selection.baseline_ref and set(arms[selection.labels[0]]) - finished_runs(results):
            selection.baseline_ref.train(results, selection.profile, selection.dataset, selection.baseline,
                                         selection.baseline_seeds, jobs, quiet)
        execute(specs)
        report = build_report_input(suite, Store(results), selection, alphas[look], reproduce(selection))
        if spend_alpha:
            report.notes.append(LookNote(look + 1, looks, len(selection.baseline_seeds), alphas[look]))
        if report.comparison.verdict != Verdict.INCONCLUSIVE:
            break
    return report, arms


def describe_arms(report, selection: Selection, arms: dict[str, list[str]], finished_before: set[str]) -> None:
    """Record for each arm the code it ran and how many of its runs were reused or trained now
    (report.arm_provenance; reports/text.py words it after the arm's description)."""
    commit, dirty = git_state()
    here = ArmProvenance(commit, dirty=dirty)
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
    if baseline == candidate:
        new = list(range(start, start + extra))
        return baseline + new, candidate + new
    return (baseline + list(range(start, start + 2 * extra, 2)),
            candidate + list(range(start + 1, start + 2 * extra, 2)))
