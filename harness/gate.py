"""`bench report` and `bench gate`: recorded runs -> statistics -> verdict -> reports -> exit code.

gate = run (resuming) + report, exiting 0 PASS, 1 FAIL, 2 usage/config error, 3 INCONCLUSIVE,
4 runs crashed. With --sequential, seeds are added in groups and alpha is spent per look.
"""
from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness import stats
from harness.kpis import COMPARE_TIME_KPIS, KPIS
from harness.matrix import RunSpec, plan_runs
from harness.store import Store
from harness.suite import Suite, load_suite, seeds_option
from worldmodel.errors import WorldbenchError

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_CRASHED = 0, 1, 2, 3, 4
VERDICT_EXIT = {"PASS": EXIT_PASS, "FAIL": EXIT_FAIL, "INCONCLUSIVE": EXIT_INCONCLUSIVE}


@dataclass
class Selection:
    """Which runs a report compares: a baseline arm and a candidate arm, each a variant over seeds."""
    profile: str
    dataset: str
    baseline: str
    candidate: str
    baseline_seeds: list[int]
    candidate_seeds: list[int]

    @property
    def labels(self) -> tuple[str, str]:
        """Arm names; a variant compared with itself (on other seeds) gets its seeds in the name."""
        if self.baseline != self.candidate:
            return self.baseline, self.candidate
        return (f"{self.baseline} [seeds {seed_text(self.baseline_seeds)}]",
                f"{self.candidate} [seeds {seed_text(self.candidate_seeds)}]")

    def plan(self, suite: Suite) -> tuple[list[RunSpec], dict[str, str]]:
        """The runs of both arms and run_id -> arm label."""
        specs, arm_of = [], {}
        for label, variant, seeds in zip(self.labels, (self.baseline, self.candidate),
                                         (self.baseline_seeds, self.candidate_seeds)):
            for spec in plan_runs(suite, self.profile, self.dataset, [variant], seeds):
                if spec.run_id not in arm_of:
                    specs.append(spec)
                arm_of.setdefault(spec.run_id, label)
        return specs, arm_of


def seed_text(seeds: list[int]) -> str:
    ordered = sorted(seeds)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(map(str, ordered))


# ----------------------------------------------------------------------------- data for the statistics

def arm_values(kpis: pd.DataFrame, runs: pd.DataFrame, arm: str) -> dict[str, dict[int, float]]:
    """kpi -> seed -> value for one arm's ok runs."""
    ok = runs[(runs["arm"] == arm) & (runs["status"] == "ok")]
    merged = kpis.merge(ok[["run_id", "seed"]], on="run_id")
    return {kpi: dict(zip(group["seed"].astype(int), group["value"].astype(float)))
            for kpi, group in merged.groupby("kpi")}


def add_steps_to_target(values: dict[str, dict[str, dict[int, float]]], curves: pd.DataFrame, runs: pd.DataFrame,
                        suite: Suite, baseline: str) -> list[str]:
    """Compute <stage>.steps_to_target for every arm from the loss curves; returns notes on the targets."""
    notes = []
    losses = curves[curves["metric"] == "loss"].merge(runs[["run_id", "arm", "seed", "status"]], on="run_id")
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
            how = f"auto = (1 + {rule.target_epsilon:g}) x the largest baseline final loss"
        else:
            target, how = float(rule.target), "from bench.toml"
        notes.append(f"{name}: target loss {target:.5g} ({how})")
        for arm, arm_kpis in values.items():
            arm_kpis[name] = {}
            for seed, curve in stage_losses[stage_losses["arm"] == arm].groupby("seed"):
                curve = curve.sort_values("step")
                arm_kpis[name][int(seed)] = stats.steps_to_target(curve["step"].to_numpy(),
                                                                  curve["value"].to_numpy(), target)
    return notes


LOG_SCALE_FLOOR = 1e-12  # a log-scale KPI at 0 (a collapsed encoder's variance) is read as this


def floor_log_scale(values: dict[str, dict[str, dict[int, float]]], suite: Suite) -> list[str]:
    """Values <= 0 have no ratio: read them as LOG_SCALE_FLOOR so a collapse shows as a huge change."""
    notes = []
    for arm, arm_kpis in values.items():
        for name, by_seed in arm_kpis.items():
            low = [seed for seed, value in by_seed.items() if value <= 0]
            if low and suite.kpis[name].scale == "log":
                by_seed.update({seed: LOG_SCALE_FLOOR for seed in low})
                notes.append(f"{name}: {arm} has {len(low)} values <= 0, read as {LOG_SCALE_FLOOR:g} on its log scale")
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


def rules_for(suite: Suite, has_actions: bool = True) -> list[stats.KpiRule]:
    """The statistics' rules; a KPI against ground-truth actions cannot block where there are none."""
    return [stats.KpiRule(name, rule.direction, rule.scale, rule.margin,
                          rule.blocking and (has_actions or not KPIS[name].needs_actions))
            for name, rule in suite.kpis.items()]


def compare_runs(suite: Suite, store: Store, selection: Selection, alpha: float):
    """Statistics for the selected runs: (Comparison, runs with an `arm` column, kpis, curves, notes)."""
    specs, arm_of = selection.plan(suite)
    runs = store.runs()
    runs = runs[runs["run_id"].isin(arm_of)].reset_index(drop=True)
    runs["arm"] = runs["run_id"].map(arm_of)
    kpis, curves = store.for_runs("kpis", arm_of), store.for_runs("curves", arm_of)
    baseline, candidate = selection.labels
    values = {arm: arm_values(kpis, runs, arm) for arm in (baseline, candidate)}
    notes = add_steps_to_target(values, curves, runs, suite, baseline)
    notes += floor_log_scale(values, suite)

    def failures(arm: str) -> int:
        planned = sum(1 for label in arm_of.values() if label == arm)
        return planned - int(((runs["arm"] == arm) & (runs["status"] == "ok")).sum())  # missing = failed

    rules = rules_for(suite, dataset_has_actions(suite, selection.dataset))
    comparison = stats.compare(rules, values[baseline], values[candidate],
                               failures_baseline=failures(baseline), failures_candidate=failures(candidate),
                               censored_kpis=set(COMPARE_TIME_KPIS), alpha=alpha)
    return comparison, runs, kpis, curves, notes


# ----------------------------------------------------------------------------- report input

def build_report_input(suite: Suite, store: Store, selection: Selection, alpha: float, reproduce: str):
    from harness.compat import check_compat
    from reports.model import ReportInput

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
    provenance_columns = ["run_id", "variant", "seed", "git_commit", "git_dirty", "code_hash", "torch_version",
                          "device", "precision", "cpu_model", "host", "started_at"]
    report = ReportInput(
        title=f"{candidate} vs {baseline}", baseline=baseline, candidate=candidate,
        descriptions={baseline: suite.variant(selection.baseline).description,
                      candidate: suite.variant(selection.candidate).description},
        comparison=comparison, runs=runs[["run_id", "variant", "seed", "status", "error"]], curves=curves,
        rollouts=rollouts, frames=frames, speed=speed, compat=check_compat(),
        provenance=runs[provenance_columns].to_dict("records"), reproduce_command=reproduce,
        profile=selection.profile, notes=notes)
    if not report.compat.ok:  # a PR that breaks loading the baseline's checkpoints must not merge
        comparison.verdict = "FAIL"
        comparison.reasons.append("backward compatibility: a golden baseline checkpoint no longer loads")
    return report


def write_report(report, out: Path, formats: list[str]) -> dict[str, Path]:
    from reports.render import render_markdown, write_reports

    paths = write_reports(report, out, formats)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as handle:
            handle.write(render_markdown(report) + "\n")
    return paths


# ----------------------------------------------------------------------------- commands

def selection_from_args(args, suite: Suite) -> Selection:
    comparison = suite.comparison
    profile = args.profile or comparison.profile
    seeds = seeds_option(args.seeds, suite.default_seeds(profile))
    candidate_seeds = seeds_option(args.candidate_seeds, seeds, "--candidate-seeds")
    selection = Selection(profile, args.dataset or comparison.dataset, args.baseline or comparison.baseline,
                          args.candidate or comparison.candidates[0], seeds, candidate_seeds)
    suite.profile(selection.profile)
    suite.dataset(selection.dataset)
    suite.variant(selection.baseline)
    suite.variant(selection.candidate)
    return selection


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in ("md", "html", "json")]
    if unknown or not formats:
        raise WorldbenchError(f"--format: '{text}' is not a list of md, html, json; e.g. --format md,html")
    return formats


def reproduce_command(args, selection: Selection) -> str:
    parts = ["bench", args.command, "--config", args.config, "--profile", selection.profile, "--dataset",
             selection.dataset, "--baseline", selection.baseline, "--candidate", selection.candidate,
             "--seeds", ",".join(map(str, selection.baseline_seeds))]
    if selection.candidate_seeds != selection.baseline_seeds:
        parts += ["--candidate-seeds", ",".join(map(str, selection.candidate_seeds))]
    return shlex.join(parts)


def print_verdict(report, paths: dict[str, Path]) -> None:
    from rich.markup import escape

    from harness.cli import console

    # Titles and reasons carry variant and profile names, which are user text: never rich markup.
    colour = {"PASS": "green", "FAIL": "red"}.get(report.comparison.verdict, "yellow")
    console.print(f"[bold {colour}]{report.comparison.verdict}[/]: {escape(report.title)}")
    for reason in report.comparison.reasons:
        console.print(f"  - {escape(reason)}", highlight=False)
    for fmt, path in paths.items():
        console.print(f"  {fmt}: {escape(str(path))}")


def command_report(args) -> int:
    formats = parse_formats(args.format)
    suite = load_suite(args.config)
    selection = selection_from_args(args, suite)
    store = Store(args.results, create=False)
    _, arm_of = selection.plan(suite)
    if not set(store.runs()["run_id"]) & set(arm_of):
        raise WorldbenchError(f"no recorded runs of {selection.baseline} or {selection.candidate} on profile "
                              f"'{selection.profile}' in '{args.results}' for this code; run `bench run` first")
    report = build_report_input(suite, store, selection, suite.comparison.alpha, reproduce_command(args, selection))
    print_verdict(report, write_report(report, args.out or args.results / "report", formats))
    return 0


def command_gate(args) -> int:
    from harness.bench import Execution
    from harness.cli import run_with_progress

    formats = parse_formats(args.format)
    suite = load_suite(args.config)
    selection = selection_from_args(args, suite)
    execution = Execution(args.results, args.jobs)
    baseline_seeds, candidate_seeds = selection.baseline_seeds, selection.candidate_seeds
    looks, alphas = 1, [suite.comparison.alpha]
    if args.sequential:
        # Each look adds another group of seeds (the size of the first) to both arms.
        group = len(baseline_seeds)
        max_seeds = args.max_seeds or 2 * group
        looks = math.ceil(max_seeds / group)
        alphas = stats.alpha_spending(looks, suite.comparison.alpha)
    for look in range(looks):
        selection.baseline_seeds, selection.candidate_seeds = extend_seeds(
            baseline_seeds, candidate_seeds, look * len(baseline_seeds))
        specs, _ = selection.plan(suite)
        runs = run_with_progress(suite, specs, execution, args.quiet)
        report = build_report_input(suite, Store(args.results), selection, alphas[look],
                                    reproduce_command(args, selection))
        if args.sequential:
            report.notes.append(f"sequential look {look + 1} of {looks}: {len(selection.baseline_seeds)} seeds, "
                                f"alpha {alphas[look]:.4f} spent at this look")
        if report.comparison.verdict != "INCONCLUSIVE":
            break
    print_verdict(report, write_report(report, args.out or args.results / "report", formats))
    if (runs["status"] == "failed").any():
        return EXIT_CRASHED
    return VERDICT_EXIT[report.comparison.verdict]


def extend_seeds(baseline: list[int], candidate: list[int], extra: int) -> tuple[list[int], list[int]]:
    """Both arms plus `extra` unused seeds each: the same new seeds when the arms are paired."""
    start = max(baseline + candidate) + 1
    if baseline == candidate:
        new = list(range(start, start + extra))
        return baseline + new, candidate + new
    return baseline + list(range(start, start + extra)), candidate + list(range(start + extra, start + 2 * extra))


def add_commands(commands, add_config, add_results) -> None:
    for name, help_text in (("report", "compare recorded runs and write the PR-acceptance report"),
                            ("gate", "run (resuming) + report; exit 0 PASS, 1 FAIL, 2 usage, 3 INCONCLUSIVE, "
                                     "4 runs crashed")):
        parser = commands.add_parser(name, help=help_text, description=help_text)
        add_config(parser)
        parser.add_argument("--profile", help="profile (default: the comparison's)")
        parser.add_argument("--dataset", help="dataset (default: the comparison's)")
        parser.add_argument("--baseline", help="baseline variant (default: the comparison's)")
        parser.add_argument("--candidate", help="candidate variant (default: the comparison's first)")
        parser.add_argument("--seeds", help="seeds, e.g. 0-4 or 0,3 (default: the comparison's or profile's)")
        parser.add_argument("--candidate-seeds", help="the candidate's seeds when they differ (unpaired comparison)")
        add_results(parser)
        parser.add_argument("--format", default="md,html,json", help="report formats (default md,html,json)")
        parser.add_argument("--out", type=Path, help="report dir (default: <results>/report)")
        if name == "gate":
            from harness.cli import positive_int

            parser.add_argument("--jobs", type=positive_int, default=2, help="runs in parallel (default 2)")
            parser.add_argument("--sequential", action="store_true",
                                help="add seeds in groups until decided, spending alpha per look")
            parser.add_argument("--max-seeds", type=positive_int, help="with --sequential: most seeds (default 2x)")
            parser.add_argument("--quiet", action="store_true", help="no progress bars")


COMMANDS = {"report": command_report, "gate": command_gate}
