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
from harness.suite import Suite, load_suite, parse_seeds
from worldmodel.errors import WorldbenchError

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_CRASHED = 0, 1, 2, 3, 4
VERDICT_EXIT = {"PASS": EXIT_PASS, "FAIL": EXIT_FAIL, "INCONCLUSIVE": EXIT_INCONCLUSIVE}


@dataclass
class Selection:
    """Which recorded runs a report compares."""
    profile: str
    dataset: str
    baseline: str
    candidate: str
    seeds: list[int]


# ----------------------------------------------------------------------------- data for the statistics

def arm_values(kpis: pd.DataFrame, runs: pd.DataFrame, variant: str) -> dict[str, dict[int, float]]:
    """kpi -> seed -> value for one variant's ok runs."""
    ok = runs[(runs["variant"] == variant) & (runs["status"] == "ok")]
    merged = kpis.merge(ok[["run_id", "seed"]], on="run_id")
    return {kpi: dict(zip(group["seed"].astype(int), group["value"].astype(float)))
            for kpi, group in merged.groupby("kpi")}


def add_steps_to_target(values: dict[str, dict[str, dict[int, float]]], curves: pd.DataFrame, runs: pd.DataFrame,
                        suite: Suite, baseline: str) -> list[str]:
    """Compute <stage>.steps_to_target for every arm from the loss curves; returns notes on the targets."""
    notes = []
    losses = curves[curves["metric"] == "loss"].merge(runs[["run_id", "variant", "seed", "status"]], on="run_id")
    losses = losses[losses["status"] == "ok"]
    for name in sorted(COMPARE_TIME_KPIS):
        stage = name.split(".")[0]
        rule = suite.kpis[name]
        stage_losses = losses[losses["stage"] == stage]
        if isinstance(rule.target, str):  # auto: just above where the baseline ends up
            finals = values[baseline].get(f"{stage}.final_loss", {})
            if not finals:
                continue
            target = (1 + rule.target_epsilon) * float(np.median(list(finals.values())))
            how = f"auto = (1 + {rule.target_epsilon:g}) x median baseline final loss"
        else:
            target, how = float(rule.target), "from bench.toml"
        notes.append(f"{name}: target loss {target:.5g} ({how})")
        for variant, arm in values.items():
            arm[name] = {}
            for seed, curve in stage_losses[stage_losses["variant"] == variant].groupby("seed"):
                curve = curve.sort_values("step")
                arm[name][int(seed)] = stats.steps_to_target(curve["step"].to_numpy(), curve["value"].to_numpy(),
                                                             target)
    return notes


def rules_for(suite: Suite) -> list[stats.KpiRule]:
    return [stats.KpiRule(name, rule.direction, rule.scale, rule.margin, rule.blocking)
            for name, rule in suite.kpis.items()]


def compare_runs(suite: Suite, store: Store, specs: list[RunSpec], selection: Selection, alpha: float):
    """Statistics for the selected runs: (Comparison, runs, curves, notes)."""
    ids = [spec.run_id for spec in specs]
    runs = store.runs()
    runs = runs[runs["run_id"].isin(ids)].reset_index(drop=True)
    kpis, curves = store.for_runs("kpis", ids), store.for_runs("curves", ids)
    values = {v: arm_values(kpis, runs, v) for v in (selection.baseline, selection.candidate)}
    notes = add_steps_to_target(values, curves, runs, suite, selection.baseline)

    def failures(variant: str) -> int:
        planned = [s for s in specs if s.variant == variant]
        finished_ok = runs[(runs["variant"] == variant) & (runs["status"] == "ok")]
        return len(planned) - len(finished_ok)  # missing runs count as failures: never a PASS

    comparison = stats.compare(rules_for(suite), values[selection.baseline], values[selection.candidate],
                               failures_baseline=failures(selection.baseline),
                               failures_candidate=failures(selection.candidate),
                               censored_kpis=set(COMPARE_TIME_KPIS), alpha=alpha)
    return comparison, runs, curves, notes


# ----------------------------------------------------------------------------- report input

def build_report_input(suite: Suite, store: Store, specs: list[RunSpec], selection: Selection, alpha: float,
                       reproduce: str):
    from harness.compat import check_compat
    from reports.model import ReportInput

    comparison, runs, curves, notes = compare_runs(suite, store, specs, selection, alpha)
    labelled = runs[["run_id", "variant", "seed"]]
    rollouts = store.for_runs("rollouts", runs["run_id"]).merge(labelled, on="run_id")
    curves = curves.merge(labelled, on="run_id")
    kpis = store.for_runs("kpis", runs["run_id"]).merge(labelled, on="run_id")
    speed_rows = []
    for (variant, kpi), group in kpis[kpis["kpi"].str.endswith((".it_per_s", ".wall_s"))].groupby(["variant", "kpi"]):
        speed_rows.append({"variant": variant, "stage": kpi.split(".")[0], "metric": kpi.split(".")[1],
                           "value": float(group["value"].median())})
    speed = (pd.DataFrame(speed_rows).pivot_table(index=["variant", "stage"], columns="metric", values="value")
             .reset_index() if speed_rows else pd.DataFrame(columns=["variant", "stage", "it_per_s", "wall_s"]))
    # Pictures: the first seed both arms finished, so every variant shows the same clips.
    ok = runs[runs["status"] == "ok"]
    common = sorted(set(ok[ok["variant"] == selection.baseline]["seed"]) &
                    set(ok[ok["variant"] == selection.candidate]["seed"]))
    frames = {}
    if common:
        for variant in dict.fromkeys([selection.baseline, selection.candidate]):
            run_id = ok[(ok["variant"] == variant) & (ok["seed"] == common[0])]["run_id"].iloc[0]
            loaded = store.read_frames(run_id)
            if loaded:
                frames[variant] = {"seed": int(common[0]), **loaded}
    provenance_columns = ["run_id", "variant", "seed", "git_commit", "git_dirty", "code_hash", "torch_version",
                          "device", "cpu_model", "host", "started_at"]
    report = ReportInput(
        title=f"{selection.candidate} vs {selection.baseline}", baseline=selection.baseline,
        candidate=selection.candidate,
        descriptions={v: suite.variant(v).description for v in (selection.baseline, selection.candidate)},
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
    seeds = parse_seeds(args.seeds) if args.seeds else (comparison.seeds or suite.profile(profile).seeds)
    selection = Selection(profile, args.dataset or comparison.dataset, args.baseline or comparison.baseline,
                          args.candidate or comparison.candidates[0], seeds)
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
             "--seeds", ",".join(map(str, selection.seeds))]
    return shlex.join(parts)


def print_verdict(report, paths: dict[str, Path]) -> None:
    from harness.cli import console

    colour = {"PASS": "green", "FAIL": "red"}.get(report.comparison.verdict, "yellow")
    console.print(f"[bold {colour}]{report.comparison.verdict}[/]: {report.title}")
    for reason in report.comparison.reasons:
        console.print(f"  - {reason}", highlight=False)
    for fmt, path in paths.items():
        console.print(f"  {fmt}: {path}")


def command_report(args) -> int:
    suite = load_suite(args.config)
    selection = selection_from_args(args, suite)
    store = Store(args.results, create=False)
    specs = plan_runs(suite, selection.profile, selection.dataset,
                      list(dict.fromkeys([selection.baseline, selection.candidate])), selection.seeds)
    recorded = set(store.runs()["run_id"])
    if not recorded & {s.run_id for s in specs}:
        raise WorldbenchError(f"no recorded runs of {selection.baseline} or {selection.candidate} on profile "
                              f"'{selection.profile}' in '{args.results}' for this code; run `bench run` first")
    report = build_report_input(suite, store, specs, selection, suite.comparison.alpha,
                                reproduce_command(args, selection))
    paths = write_report(report, args.out or args.results / "report", parse_formats(args.format))
    print_verdict(report, paths)
    return 0


def command_gate(args) -> int:
    from harness.bench import RunRequest
    from harness.cli import run_with_progress

    suite = load_suite(args.config)
    selection = selection_from_args(args, suite)
    formats = parse_formats(args.format)
    variants = list(dict.fromkeys([selection.baseline, selection.candidate]))
    all_seeds = selection.seeds
    if args.sequential:
        group = len(selection.seeds)
        max_seeds = args.max_seeds or 2 * group
        extra = [s for s in range(max(all_seeds) + 1, max(all_seeds) + 1 + max_seeds) if s not in all_seeds]
        all_seeds = (all_seeds + extra)[:max_seeds]
        looks = math.ceil(len(all_seeds) / group)
        alphas = stats.alpha_spending(looks, suite.comparison.alpha)
    else:
        group, looks, alphas = len(all_seeds), 1, [suite.comparison.alpha]
    for look in range(looks):
        selection.seeds = all_seeds[: group * (look + 1)]
        request = RunRequest(selection.profile, selection.dataset, variants, selection.seeds, args.results, args.jobs)
        specs, runs = run_with_progress(suite, request, args.quiet)
        report = build_report_input(suite, Store(args.results), specs, selection, alphas[look],
                                    reproduce_command(args, selection))
        if args.sequential:
            report.notes.append(f"sequential look {look + 1} of {looks}: {len(selection.seeds)} seeds, "
                                f"alpha {alphas[look]:.4f} spent at this look")
        if report.comparison.verdict != "INCONCLUSIVE":
            break
    paths = write_report(report, args.out or args.results / "report", formats)
    print_verdict(report, paths)
    if (runs["status"] == "failed").any():
        return EXIT_CRASHED
    return VERDICT_EXIT[report.comparison.verdict]


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
