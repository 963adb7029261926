"""The `bench` command line: run, list, show, report, gate, validate.

How the process ends is decided in one place, `main`, from what the command returned (harness/exits.py):
0, 1 or 3 only when the command returned them, i.e. a verdict (or recorded runs, a listing) that was
computed and written; every user mistake is one line on stderr and exit 2, before anything is written;
anything else that stops a command (a bug, a plugin's sys.exit or KeyboardInterrupt) is one line and
exit 4; Ctrl-C, SIGTERM and SIGHUP are 130, 143 and 129. `guard` makes the same hold when code ends the
process outright (os._exit, a signal), which `main` could never see.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from harness import outcome, outputs
from harness.exits import (EXIT_CRASHED, EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED, EXIT_OK,  # noqa: F401
                           EXIT_TERMINATED, EXIT_USAGE, VERDICT_EXIT)
from harness.seeds import MAX_SEEDS
from worldmodel.errors import WorldbenchError

if TYPE_CHECKING:
    from harness.gate import Selection
    from harness.schema import Suite
    from harness.types import Leaderboard
    from harness.validate import Validation

# soft_wrap: a line is never broken at the terminal's width, so a log or CI step shows each reason on one line.
console = Console(stderr=True, soft_wrap=True)
out = Console()


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2)."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments") and re.search(r"--(device|seed-batch)\b", message):
            # only `bench run` trains off the CPU or seed-batched: say how to get a verdict from such runs
            raise WorldbenchError(f"{self.prog}: {message}: only `bench run` takes --device and --seed-batch; train "
                                  f"with `bench run --device cuda --seed-batch K`, then `bench report` gives the verdict")
        raise WorldbenchError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def count_up_to(limit: int):
    """An argparse type: a whole number in [1, limit] (a typo of a billion workers or seeds is refused, not tried)."""
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"must be from 1 to {limit:,}, got {value}")
        return value
    return count


def path_argument(text: str) -> Path:
    """An argparse type: a path, never "" (which Path reads as the working directory: a silent default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a file or folder")
    return Path(text)


MAX_JOBS = 256  # worker processes; more than any one machine's cores
MAX_SEED_BATCH = 64  # runs of one variant trained as one stacked model (harness/seed_batches.py)


# Two runs at once: each run trains single-threaded, so two use two cores, and a seed's baseline and candidate
# runs (scheduled next to each other) train side by side under the same load, which their timing KPIs need.
DEFAULT_JOBS = 2
JOBS_HELP = (f"runs in parallel (default {DEFAULT_JOBS}: each run trains on one core, and a seed's baseline and "
             "candidate runs then train side by side under the same load, which timing KPIs need to block)")


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=path_argument,
                        help="suite file (default: the first bench.toml in the working directory or a folder above "
                             "it, else the default suite that ships with worldbench)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="set a suite key on top of the file, checked as the file is: a dotted TOML key and a "
                             "TOML value, e.g. --set comparison.alpha=0.1 --set profiles.ci.seeds=[0,1] "
                             "(repeatable)")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON on stdout instead of tables")


def suite_file(args) -> Path:
    """The suite file a command reads: --config, else harness.suite.find_config."""
    from harness.suite import find_config

    return Path(args.config) if args.config is not None else find_config()


def suite_from_args(args) -> Suite:
    from harness.suite import load_suite

    return load_suite(suite_file(args), args.overrides)


def package_version() -> str:
    try:
        return metadata.version("worldbench")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def add_results(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=path_argument, default=Path("results"),
                        help="results dir, the only place written (default: results/)")


def build_parser() -> Parser:
    parser = Parser(prog="bench", description="Train Genie-style world-model variants across seeds, record KPIs, "
                                              "compare them with statistics and gate merges.")
    parser.add_argument("--version", action="version", version=f"worldbench {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = commands.add_parser("run", help="train the variant x seed matrix and record KPIs")
    add_config(run)
    run.add_argument("--profile", help="profile from the suite (default: the comparison's)")
    run.add_argument("--dataset", help="dataset from the suite (default: the comparison's)")
    run.add_argument("--variants", help="comma-separated variants (default: baseline and candidates)")
    run.add_argument("--seeds", help="seeds, e.g. 0-4 or 0,3 (default: the profile's)")
    run.add_argument("--jobs", type=count_up_to(MAX_JOBS), default=DEFAULT_JOBS, help=JOBS_HELP)
    run.add_argument("--executor", choices=["local", "ray"], default="local", help="where runs execute")
    run.add_argument("--ray-address", help="address of a running Ray cluster (default: start a local one)")
    add_results(run)
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                     help="where stages, evaluation and rollouts run (default auto = cuda if available, else cpu)")
    run.add_argument("--seed-batch", type=count_up_to(MAX_SEED_BATCH), default=1, metavar="K",
                     help="train each stage of up to K runs of one variant as one seed-batched model (for a GPU, "
                          "which one small model leaves idle; slower on a CPU; other float rounding, named in the "
                          "runs' device column). Default 1: seed by seed")
    run.add_argument("--force", action="store_true", help="retrain and re-record runs already recorded")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    listing = commands.add_parser("list", help="show variants, components, datasets, KPIs, profiles or the runs "
                                               "recorded in --results")
    add_config(listing)
    listing.add_argument("what", nargs="?", default="variants",
                         choices=["variants", "components", "datasets", "kpis", "profiles", "runs"])
    # Read by `list runs` only, so no default here: the other listings touch no results dir, not even its caches.
    listing.add_argument("--results", type=path_argument,
                         help="with `runs`: the results dir to list (default: results/)")
    add_json(listing)

    show = commands.add_parser("show", help="print one run's record and KPIs")
    add_config(show)
    show.add_argument("run_id", help="run id (a unique prefix is enough; `bench list runs` lists them)")
    add_results(show)
    add_json(show)

    add_report_commands(commands)

    export = commands.add_parser("export", help="write a results dir's curves and KPIs for an experiment tracker: "
                                                "TensorBoard event files, an MLflow file store or W&B offline runs")
    export.add_argument("--to", required=True, choices=["tensorboard", "mlflow", "wandb"],
                        help="the tracker (each needs its extra: pip install 'worldbench[TRACKER]')")
    add_results(export)
    export.add_argument("--out", type=path_argument, required=True, help="folder to write into (outside the store)")

    validate = commands.add_parser(
        "validate", help="planted faults and null changes: each fault must FAIL against the baseline, each null "
                         "change (float rounding only) and the A/A check must PASS; exit 0 all as expected, 1 not, "
                         "2 usage, 4 runs crashed")
    add_config(validate)
    validate.add_argument("--profile", help="profile (default: the comparison's, i.e. the gate's)")
    validate.add_argument("--dataset", help="dataset (default: the comparison's)")
    validate.add_argument("--seeds", help="seeds, e.g. 0-4 (default: the comparison's or profile's); the A/A "
                                          "check's candidate arm takes as many seeds after them")
    validate.add_argument("--jobs", type=count_up_to(MAX_JOBS), default=DEFAULT_JOBS, help=JOBS_HELP)
    add_results(validate)
    validate.add_argument("--quiet", action="store_true", help="no progress bars")
    add_json(validate)
    return parser


# ----------------------------------------------------------------------------- run

def resolve_device(requested: str) -> str:
    """"cpu" or "cuda"; auto picks cuda when PyTorch sees a CUDA device."""
    import torch

    if requested == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if requested == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise WorldbenchError("no CUDA device found; use --device cpu")
    return "cuda"


def check_precision(specs, device: str) -> None:
    """tf32 and bf16 are CUDA modes: refuse them on the CPU up front, not as failed runs."""
    for spec in specs:
        if spec.precision != "fp32" and device != "cuda":
            raise WorldbenchError(f"profiles.{spec.profile}.precision = \"{spec.precision}\" needs a CUDA device "
                                  f"(running on {device}); use --device cuda or precision = \"fp32\"")


def given(value: str | None, default):
    """An option's value, or `default` when it was not given: an empty one is given (and then refused by the
    lookup), never silently the default."""
    return default if value is None else value


def specs_from_args(args, suite):
    """The run matrix `bench run` was asked for."""
    from harness.matrix import plan_runs
    from harness.seeds import seeds_option

    profile = given(args.profile, suite.comparison.profile)
    seeds = seeds_option(args.seeds, suite.default_seeds(profile))
    names = [v.strip() for v in args.variants.split(",")] if args.variants is not None else \
        [suite.comparison.baseline, *suite.comparison.candidates]
    return plan_runs(suite, profile, given(args.dataset, suite.comparison.dataset), list(dict.fromkeys(names)), seeds)


def run_with_progress(suite, specs, execution, quiet: bool):
    """Execute specs with a rich progress bar per run and stage (a line per finished run on Ray)."""
    from harness.driver import execute

    if quiet or execution.executor == "ray":
        return execute(suite, specs, execution, on_recorded=lambda r: None if quiet else console.print(
            f"[bold]{escape(r.run['variant'])}[/] seed {r.run['seed']}: {r.run['status']}"))
    bars = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
    tasks: dict[tuple[str, str], int] = {}
    labels = {spec.run_id: f"{escape(spec.variant)} s{spec.seed}" for spec in specs}  # names are user text

    def on_progress(run_id: str, stage: str, step: int, total: int, loss: float) -> None:
        key = (run_id, stage)
        if key not in tasks:
            tasks[key] = bars.add_task(f"{labels.get(run_id, run_id)} {stage:<9}", total=total, info="")
        bars.update(tasks[key], completed=step)
        speed = next(t.speed for t in bars.tasks if t.id == tasks[key])  # rich's estimate from recent updates
        rate = f" {speed:.1f} it/s" if speed else ""
        bars.update(tasks[key], info=f"step {step} loss {loss:.4f}{rate}" if loss == loss else "done")

    bars.start()
    try:
        runs = execute(suite, specs, execution, progress=on_progress)
    except BaseException:
        bars.live.transient = True  # stopped so, the bars leave no line: the error's one line is all on stderr
        bars.live.stop()
        raise
    bars.stop()
    return runs


def command_run(args) -> int:
    from harness.driver import Execution

    suite = suite_from_args(args)
    device = resolve_device(args.device)
    specs = specs_from_args(args, suite)
    check_precision(specs, device)
    execution = Execution(args.results, args.jobs, args.executor, args.ray_address, args.force, device,
                          args.seed_batch)
    runs = run_with_progress(suite, specs, execution, args.quiet)
    print_listing(Listing("runs", ["run", "variant", "seed", "status", "error"],
                          [[r.run_id, r.variant, int(r.seed), r.status, r.error[:100]]
                           for r in runs.sort_values(["variant", "seed"]).itertuples()]))
    not_ok = runs[runs["status"] != "ok"]
    return EXIT_CRASHED if len(not_ok) else EXIT_OK


# ----------------------------------------------------------------------------- tables

@dataclass
class Listing:
    """A table a command prints: plain values (user text included, never markup)."""
    title: str
    columns: list[str]
    rows: list[list]

    def records(self) -> list[dict]:
        return [dict(zip(self.columns, row)) for row in self.rows]


STATUS_STYLES = {"ok": "green", "diverged": "red", "failed": "red"}


def print_listing(listing: Listing, as_json: bool = False) -> None:
    """A table on a terminal (long cells folded, never cut), tab-separated lines with a header when piped (one
    record a line, for scripts), or JSON records with --json."""
    if as_json:
        print_json(listing.records())
    elif not out.is_terminal:
        lines = [listing.columns] + [[plain_cell(cell) for cell in row] for row in listing.rows]
        write_stdout("".join("\t".join(line) + "\n" for line in lines))
    else:
        table = Table(title=escape(listing.title))
        for column in listing.columns:
            table.add_column(column, overflow="fold")
        for row in listing.rows:
            cells = [escape(str(cell)) for cell in row]
            if "status" in listing.columns:
                index = listing.columns.index("status")
                cells[index] = f"[{STATUS_STYLES.get(str(row[index]), 'yellow')}]{cells[index]}[/]"
            table.add_row(*cells)
        out.print(table)


def plain_cell(value) -> str:
    """One tab-separated cell: a tab or newline in user text must not start another cell or record."""
    return " ".join(str(value).split("\t")).replace("\n", "\\n")


def print_json(data) -> None:
    write_stdout(json.dumps(data, indent=2, ensure_ascii=False, default=json_value) + "\n")


def write_stdout(text: str) -> None:
    """Output for a pipe: a reader that stops early (`| head`) ends the output, not the command."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit raises nothing


def json_value(value):
    """What json cannot write itself: numpy and pandas scalars as Python values, anything else as text."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a missing number is null."""
    return None if value != value else float(value)


# ----------------------------------------------------------------------------- list / show

def command_list(args) -> int:
    if args.what == "runs":
        print_listing(list_runs(args.results or Path("results")), args.json)
        return EXIT_OK
    from reports.text import fmt_rule_margin
    from variants import components, describe

    suite = suite_from_args(args)
    if args.what == "variants":
        listing = Listing("variants", ["variant", "components", "overrides", "scale", "description"],
                          [[v.name, v.components, v.overrides, v.scale, v.description] for v in suite.variants.values()])
    elif args.what == "components":
        listing = Listing("components", ["slot", "component", "description"],
                          [[slot, name, describe(slot, name)] for slot, names in components().items() for name in names])
    elif args.what == "datasets":
        listing = Listing("datasets", ["dataset", "kind", "source", "description"],
                          [[d.name, d.kind, d.game if d.kind == "procedural" else d.path, d.description]
                           for d in suite.datasets.values()])
    elif args.what == "kpis":
        listing = Listing("kpis", ["kpi", "better", "scale", "margin", "blocking", "guard", "description"],
                          [[name, rule.direction, rule.scale, rule.margin if args.json else fmt_rule_margin(rule),
                            rule.blocking, rule.guard, rule.description] for name, rule in suite.kpis.items()])
    else:
        listing = Listing("profiles", ["profile", "seeds", "base", "model", "description"],
                          [[p.name, p.seeds, p.base, p.model, p.description] for p in suite.profiles.values()])
    if not args.json:  # tables show nested values as compact JSON
        listing.rows = [[json.dumps(cell) if isinstance(cell, (dict, list)) else cell for cell in row]
                        for row in listing.rows]
    print_listing(listing, args.json)
    return EXIT_OK


RUN_COLUMNS = ("run_id", "profile", "dataset", "variant", "seed", "status", "git_commit", "started_at")


def list_runs(results: Path) -> Listing:
    """The runs recorded in a results dir, oldest first."""
    from harness.store import Store

    runs = Store(results, create=False).runs().sort_values(["started_at", "variant", "seed"])
    return Listing(f"runs in {results}", list(RUN_COLUMNS),
                   [list(record.values()) for record in runs[list(RUN_COLUMNS)].to_dict("records")])


SHOWN_RUN_FIELDS = ("profile", "dataset", "variant", "seed", "status", "error", "git_commit", "code_hash",
                    "torch_version", "numpy_version", "scipy_version", "pandas_version", "device", "precision",
                    "cpu_model", "host", "executor", "started_at", "finished_at")


def command_show(args) -> int:
    from harness.store import Store

    store = Store(args.results, create=False)
    runs = store.runs()
    matches = runs[runs["run_id"].str.startswith(args.run_id)]
    if len(matches) != 1:
        known = ", ".join(runs["run_id"].head(8)) or "(none recorded)"
        raise WorldbenchError(f"run '{args.run_id}' matches {len(matches)} runs in '{args.results}'; "
                              f"use a unique id prefix (some ids: {known}; `bench list runs` lists all)")
    run = matches.iloc[0]
    kpis = store.for_runs("kpis", [run.run_id]).sort_values("kpi")
    if args.json:
        print_json({"run_id": run.run_id, **{key: run[key] for key in SHOWN_RUN_FIELDS},
                    "kpis": {row.kpi: finite_or_none(row.value) for row in kpis.itertuples()}})
        return EXIT_OK
    print_listing(Listing(f"run {run.run_id}", ["field", "value"], [[key, run[key]] for key in SHOWN_RUN_FIELDS]))
    print_listing(Listing("KPIs", ["kpi", "value"], [[row.kpi, f"{row.value:.6g}"] for row in kpis.itertuples()]))
    return EXIT_OK


# ----------------------------------------------------------------------------- report / gate

def add_report_commands(commands) -> None:
    for name, help_text in (("report", "compare recorded runs and write the PR-acceptance report"),
                            ("gate", "run (resuming) + report; exit 0 PASS, 1 FAIL, 2 usage, 3 INCONCLUSIVE, "
                                     "4 runs crashed")):
        parser = commands.add_parser(name, help=help_text, description=help_text)
        add_config(parser)
        parser.add_argument("--profile", help="profile (default: the comparison's)")
        parser.add_argument("--dataset", help="dataset (default: the comparison's)")
        parser.add_argument("--baseline", help="baseline variant (default: the comparison's)")
        parser.add_argument("--candidate", help="candidate variant (default: the comparison's first)")
        parser.add_argument("--candidates", metavar="A,B,...",
                            help="several candidates, each against the baseline, in one leaderboard report: Holm "
                                 "across all of them, exit code of the worst verdict (FAIL, then INCONCLUSIVE)")
        parser.add_argument("--seeds", help="seeds, e.g. 0-4 or 0,3 (default: the comparison's or profile's)")
        parser.add_argument("--candidate-seeds", help="the candidate's seeds when they differ (unpaired comparison)")
        add_results(parser)
        parser.add_argument("--format", default="md,html,json", help="report formats (default md,html,json)")
        parser.add_argument("--out", type=path_argument, help="report dir (default: <results>/report)")
        if name == "gate":
            parser.add_argument("--jobs", type=count_up_to(MAX_JOBS), default=DEFAULT_JOBS, help=JOBS_HELP)
            add_json(parser)
            parser.add_argument("--sequential", action="store_true",
                                help="add seeds in groups until decided, spending alpha per look")
            parser.add_argument("--max-seeds", type=count_up_to(MAX_SEEDS),
                                help="with --sequential: most seeds (default 2x)")
            parser.add_argument("--quiet", action="store_true", help="no progress bars")
            parser.set_defaults(config=None)  # given or not decides which suite file --baseline-ref's code reads
            parser.add_argument("--baseline-ref", metavar="REF",
                                help="train the baseline arm with the code at this git commit (e.g. the merge base), "
                                     "checked out under <results>/worktrees, with its own bench.toml unless --config "
                                     "is given; the candidate (default: the same variant) runs this checkout")
            parser.add_argument("--allow-dirty", action="store_true",
                                help="with --baseline-ref: compare even with uncommitted changes to the code")


def candidate_names(args, suite: Suite, baseline: str, against_ref: bool) -> list[str]:
    """The candidates asked for: --candidates a,b,c, or --candidate x (the one-candidate case), else bench.toml's
    `[comparison] candidates`, every one of them (checked by the suite loader)."""
    if args.candidates is not None and args.candidate is not None:
        raise WorldbenchError(f"--candidate {args.candidate} and --candidates {args.candidates} both given; "
                              f"name one candidate with --candidate, or several with --candidates")
    if args.candidate is not None:
        return [args.candidate]
    if args.candidates is None:
        # Against another commit the default candidate is the same variant: only the code differs between the arms.
        return [baseline] if against_ref else list(suite.comparison.candidates)
    names = [name.strip() for name in args.candidates.split(",")]
    if not all(names):
        raise WorldbenchError(f"--candidates: {args.candidates!r} has an empty name; e.g. --candidates a,b,c")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise WorldbenchError(f"--candidates: {', '.join(twice)} given more than once; name each candidate once")
    if len(names) > 1 and baseline in names:  # its arms would be the baseline's twice, on other seeds or the same
        raise WorldbenchError(f"--candidates: {baseline!r} is the baseline; compare it with itself (on other "
                              f"--candidate-seeds) alone, with --candidate")
    if against_ref and len(names) > 1:
        raise WorldbenchError("--candidates with --baseline-ref: the baseline arm at REF is compared with one "
                              "candidate at a time; pass one --candidate")
    return names


def selections_from_args(args, suite: Suite) -> list[Selection]:
    """The arms `bench report` or `gate` compares: the baseline against each candidate, one Selection each,
    checked (harness.gate.Selection.check_arms) before anything is written."""
    from harness.gate import Selection
    from harness.seeds import seeds_option

    comparison = suite.comparison
    profile = given(args.profile, comparison.profile)
    seeds = seeds_option(args.seeds, suite.default_seeds(profile))
    candidate_seeds = seeds_option(args.candidate_seeds, seeds, "--candidate-seeds")
    baseline = given(args.baseline, comparison.baseline)
    against_ref = getattr(args, "baseline_ref", None) is not None
    dataset = given(args.dataset, comparison.dataset)
    suite.profile(profile)
    suite.dataset(dataset)
    suite.variant(baseline)
    selections = []
    for candidate in candidate_names(args, suite, baseline, against_ref):
        selection = Selection(profile, dataset, baseline, candidate, list(seeds), list(candidate_seeds))
        suite.variant(candidate)
        selection.check_arms(other_code=against_ref)
        selections.append(selection)
    return selections


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in ("md", "html", "json")]
    if unknown or not formats:
        raise WorldbenchError(f"--format: {text!r} is not a list of md, html, json; e.g. --format md,html")
    return formats


def reproduce_command(args, selections: list[Selection]) -> str:
    from harness.seeds import format_seeds

    selection = selections[0]
    candidates = (["--candidate", selection.candidate] if len(selections) == 1 else
                  ["--candidates", ",".join(chosen.candidate for chosen in selections)])
    parts = ["bench", args.command, "--config", str(suite_file(args)), "--profile", selection.profile, "--dataset",
             selection.dataset, "--baseline", selection.baseline, *candidates,
             "--seeds", format_seeds(selection.baseline_seeds)]
    for override in args.overrides:
        parts += ["--set", override]
    if selection.candidate_seeds != selection.baseline_seeds:
        parts += ["--candidate-seeds", format_seeds(selection.candidate_seeds)]
    if selection.baseline_ref:
        parts += ["--baseline-ref", selection.baseline_ref.commit] + (["--allow-dirty"] if args.allow_dirty else [])
    return shlex.join(parts)


def write_report(board: Leaderboard, out: Path, formats: list[str], summary: Path | None) -> dict[str, Path]:
    """The report files, and the markdown appended to the GitHub job summary when there is one
    (both destinations checked before the command trained: harness.outputs). The summary says where the pictures
    are rather than linking files that nothing publishes for it."""
    from harness.plugins import check_judge
    from reports.publish import render_markdown, write_reports

    check_judge()  # a plugin that replaced part of the judge since it was imported (a component's code) gets no verdict
    board.ci_run_url = ci_run_url()
    paths = write_reports(board, out, formats)
    if summary:
        with open(summary, "a") as handle:
            handle.write(render_markdown(board, pictures=False) + "\n")
    return paths


def ci_run_url() -> str:
    """The GitHub Actions run this command runs in (from the variables Actions sets), "" elsewhere."""
    parts = [os.environ.get(name, "") for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    return "{}/{}/actions/runs/{}".format(*parts) if all(parts) else ""


def print_report_json(board: Leaderboard) -> None:
    """--json: the report's data (report.json's content) on stdout; the verdict lines stay on stderr."""
    from reports.publish import render_json

    write_stdout(render_json(board))


def print_verdict(board: Leaderboard, paths: dict[str, Path]) -> None:
    """The verdict and its reasons; for several candidates, which decided it and one line per candidate."""
    from reports.text import comparison_reasons
    from reports.view import banner, by_severity, leaderboard_banner

    # Titles and reasons carry variant and profile names, which are user text: never rich markup.
    colours = {"PASS": "green", "FAIL": "red"}
    verdict = board.verdict
    if len(board.reports) == 1:
        report = board.reports[0]
        console.print(f"[bold {colours.get(verdict, 'yellow')}]{verdict}[/]: {escape(report.title)}")
        for reason in comparison_reasons(report.comparison):
            console.print(f"  - {escape(reason)}", highlight=False)
        guards = banner(report).guards_line()
    else:
        deciders = "every candidate PASSes" if verdict == "PASS" else f"decided by {', '.join(board.decided_by)}"
        console.print(f"[bold {colours.get(verdict, 'yellow')}]{verdict}[/]: {escape(board.title)}, {escape(deciders)}")
        for report in by_severity(board):  # the report's order: worst first
            comparison = report.comparison
            console.print(f"  - [{colours.get(comparison.verdict, 'yellow')}]{comparison.verdict}[/] "
                          f"{escape(report.candidate)}: {escape(comparison_reasons(comparison)[0])}", highlight=False)
        guards = leaderboard_banner(board).guards_line()
    if guards:  # a PASS that says nothing about these guards below the worsening each FAILs
        console.print(f"  - {escape(guards)}", highlight=False)
    for fmt, path in paths.items():
        console.print(f"  {fmt}: {escape(str(path))}")


def command_report(args) -> int:
    from harness import gate
    from harness.store import Store

    formats = parse_formats(args.format)
    suite = suite_from_args(args)
    selections = selections_from_args(args, suite)
    store = Store(args.results, create=False)
    gate.require_recorded(suite, store, selections, args.results)
    out, summary = outputs.report_dir(args.results, args.out), outputs.job_summary(args.results)
    board = gate.build_leaderboard(suite, store, selections, suite.comparison.alpha,
                                   reproduce_command(args, selections))
    print_verdict(board, write_report(board, out, formats, summary))
    return EXIT_OK


def command_gate(args) -> int:
    from harness import gate
    from harness.baseline_ref import judged_by_ref_rules, prepare as prepare_baseline_ref
    from harness.driver import Execution, finished_runs, preflight
    from harness.store import Store

    # Every check first; the first write is the results dir, once nothing is left to refuse.
    formats = parse_formats(args.format)
    if args.max_seeds is not None and not args.sequential:
        raise WorldbenchError(f"--max-seeds {args.max_seeds} is read only with --sequential; add --sequential or "
                              f"drop --max-seeds")
    if args.baseline_ref and args.overrides:
        raise WorldbenchError("--set with --baseline-ref: REF's code reads its own suite file, which --set cannot "
                              "reach; write the keys into a suite file and pass it with --config")
    config_given, args.config = args.config is not None, str(suite_file(args))
    suite = suite_from_args(args)
    selections = selections_from_args(args, suite)
    first = selections[0]  # every selection has the same baseline and seeds
    sizes = gate.sequential_sizes(first, args.max_seeds) if args.sequential else [len(first.baseline_seeds)]
    finished_before = finished_runs(args.results)  # also refuses a results dir that is not worldbench's
    # the runs this checkout's code trains at the first look; REF's own `bench run` checks its arm
    preflight([spec for spec in gate.plan_lineup(suite, selections)[0] if spec.run_id not in finished_before])
    if args.baseline_ref:  # REF's own bench.toml unless --config was given
        first.baseline_ref = prepare_baseline_ref(args.baseline_ref, args.results,
                                                  args.config if config_given else None, args.allow_dirty)
    out, summary = outputs.report_dir(args.results, args.out), outputs.job_summary(args.results)
    Store(args.results)
    rules_note = None
    if first.baseline_ref:
        first.baseline_ref.check_out(args.results)
        suite, rules_note = judged_by_ref_rules(suite, first.baseline_ref, first.baseline_ref.rules())
    execution = Execution(args.results, args.jobs)
    board, arms = gate.run_looks(
        suite, selections, args.results, sizes, suite.comparison.alpha, args.sequential,
        execute=lambda specs: run_with_progress(suite, specs, execution, args.quiet),
        reproduce=lambda chosen: reproduce_command(args, chosen), jobs=args.jobs, quiet=args.quiet)
    gate.require_complete(Store(args.results), selections, arms)
    gate.describe_arms(board, selections, arms, finished_before)
    for report in board.reports if rules_note else []:
        report.notes.append(rules_note)
    print_verdict(board, write_report(board, out, formats, summary))
    if args.json:
        print_report_json(board)
    if board.crashed:
        return EXIT_CRASHED
    return VERDICT_EXIT[board.verdict]


# ----------------------------------------------------------------------------- export

def command_export(args) -> int:
    from harness.export import check_tracker, export

    check_tracker(args.to)
    out = outputs.report_dir(args.results, args.out)  # outside the store, and a folder that can be made
    done = export(args.results, out, args.to)
    console.print(f"{done.tracker}: {done.runs} runs, {done.points} curve points -> {escape(str(done.out))}")
    return EXIT_OK


# ----------------------------------------------------------------------------- validate

def command_validate(args) -> int:
    from harness import validate
    from harness.driver import Execution
    from harness.plugins import check_judge
    from harness.seeds import seeds_option
    from harness.store import Store

    suite = suite_from_args(args)
    profile = suite.profile(given(args.profile, suite.comparison.profile)).name
    dataset = suite.dataset(given(args.dataset, suite.comparison.dataset)).name
    checks = validate.plan_checks(suite, profile, dataset, seeds_option(args.seeds, None))
    out = outputs.report_dir(args.results, None)
    runs = run_with_progress(suite, validate.run_specs(suite, checks), Execution(args.results, args.jobs), args.quiet)
    result = validate.validate(suite, Store(args.results), checks)
    from reports.validate import render_json, write_validation  # after the results dir exists: it imports matplotlib

    check_judge()

    if args.json:
        write_stdout(render_json(result))
    else:
        print_validation(result)
    for fmt, path in write_validation(result, out).items():
        console.print(f"  {fmt}: {escape(str(path))}")
    return validate.exit_code(result, crashed=bool((runs["status"] == "failed").any()))


def print_validation(result: Validation) -> None:
    from harness.seeds import format_seeds

    table = Table(title=f"planted faults and null changes vs {escape(result.baseline)} ({escape(result.profile)}, "
                        f"{escape(result.dataset)}, seeds {format_seeds(result.seeds)})")
    for column in ("check", "expected", "observed", "caught by", "adjusted p", "ok"):
        table.add_column(column, overflow="fold")  # names are long: fold them rather than cut them off
    colours = {"PASS": "green", "FAIL": "red"}
    for row in result.rows:
        p_text = "—" if math.isnan(row.p_adjusted) else f"{row.p_adjusted:.2g}"
        table.add_row(escape(row.name), row.expected,
                      f"[{colours.get(row.observed, 'yellow')}]{row.observed}[/]", escape(row.caught_by) or "—",
                      p_text, "[green]ok[/]" if row.ok else "[red]NOT OK[/]")
    # Piped (a log, a CI step), the table takes its own width: folding it at 80 columns would cut the names.
    (out if out.is_terminal else Console(width=1_000)).print(table)


COMMANDS = {"run": command_run, "list": command_list, "show": command_show, "report": command_report,
            "gate": command_gate, "validate": command_validate, "export": command_export}


UNWINDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # the driver stops its workers, then exits 128 + the signal


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind like Ctrl-C, so the executors stop their workers on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def sigterm_unwinds():
    """While a command runs, SIGTERM and SIGHUP raise Terminated instead of killing the driver outright,
    which would orphan its worker processes; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, terminate) for signum in UNWINDING_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    """`main(argv)` runs one command in this process and returns its exit code (tests, embedding).

    Called as the program (no argv: the `bench` script, `python -m harness.cli`), it becomes `guard`, which
    runs the command in a child process (`guarded_child`) whose decision it reports.
    """
    if argv is None:
        return guard(sys.argv[1:])
    return run_command(argv)


def guarded_child(channel_fd: int, argv: list[str]) -> int:
    """The command as `guard`'s child runs it: the exit code it decides goes to the guard on `channel_fd`."""
    outcome.adopt_channel(channel_fd)
    outcome.exit_with_parent(os.getppid())  # the guard was killed outright: stop, as a driver would
    code = run_command(argv)
    outcome.report_exit(code)
    return code


def run_command(argv: list[str] | None) -> int:
    """The one place where the end of a command becomes an exit code.

    0, 1 and 3 only come back from the command itself, i.e. from a verdict (or recorded runs, a listing)
    computed and written. Whatever else ends it is 2 (a WorldbenchError: the user's to fix) or 4 (a bug, or
    code inside the command raising SystemExit or KeyboardInterrupt), with one line on stderr; Ctrl-C and
    SIGTERM from outside are 130 and 143 (SIGHUP 129).
    """
    args = None
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as err:  # argparse after --help: usage errors raise WorldbenchError (Parser.error)
            return EXIT_OK if err.code in (0, None) else EXIT_USAGE
        with sigterm_unwinds(), outputs.caches_under(getattr(args, "results", None)):
            code = COMMANDS[args.command](args)
        if code not in (EXIT_OK, EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_CRASHED):
            raise RuntimeError(f"command {args.command} returned {code!r}, not an exit code")
        return code
    except WorldbenchError as err:
        print_line("[red]error:[/]", str(err))
        return EXIT_USAGE
    except BaseException as err:  # noqa: BLE001 - a signal, a bug, or SystemExit from code the command ran: never 0/1
        ended = signal_behind(err)
        if isinstance(ended, Terminated):
            name = signal.Signals(ended.signum).name
            print_line("", f"terminated ({name}); workers stopped; rerun the same command to resume")
            return 128 + ended.signum  # EXIT_TERMINATED for SIGTERM
        if isinstance(ended, KeyboardInterrupt):
            print_line("", "interrupted; rerun the same command to resume")
            return EXIT_INTERRUPTED
        print_line("[red]internal error:[/]", crash_line(err, getattr(args, "results", None)))
        return EXIT_CRASHED


def signal_behind(err: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM/SIGHUP that ended the command, if one did: `err` itself, or one it was raised while
    handling. A signal's exception can land inside a lock's release (threading's Condition in a wait), which then
    raises "release unlocked lock" as the stack unwinds; the command still ended because of the signal."""
    while err is not None:
        if isinstance(err, (KeyboardInterrupt, Terminated)):
            return err
        err = err.__context__
    return None


def guard(argv: list[str]) -> int:
    """`bench` as the user and CI see it: the command runs in a child process, and this parent exits with
    the code the child's `main` decided and reported on a private pipe (harness.outcome) after it returned.

    Code running in the command (a plugin at import, a component in a report's compatibility check) can end
    a process outright, with os._exit or a signal, and then no exception handler runs; the parent, which
    runs none of that code, still decides. A child that ends without reporting is exit 2 naming the plugin
    it was importing, else 4: never 0 or 1. The parent forwards SIGTERM to the child and ignores Ctrl-C,
    which the terminal delivers to the child (same process group), and forwards SIGHUP too; the child exits
    when the parent dies.
    """
    read_end, write_end = os.pipe()
    child_code = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
                  "from harness.cli import guarded_child; sys.exit(guarded_child(int(sys.argv[2]), sys.argv[3:]))")
    # A driver killed outright leaves its semaphores to multiprocessing's resource tracker, which frees them
    # and would add its own warning to the one line below.
    warnings = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:resource_tracker:UserWarning"]))
    child = subprocess.Popen([sys.executable, "-c", child_code, json.dumps(sys.path), str(write_end), *argv],
                             pass_fds=(write_end,), env={**os.environ, "PYTHONWARNINGS": warnings})
    os.close(write_end)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for forwarded in UNWINDING_SIGNALS:  # the child unwinds; the guard exits with what it reports
        signal.signal(forwarded, lambda signum, frame: child.send_signal(signum))
    status = child.wait()
    notes = outcome.read_notes(read_end)
    os.close(read_end)
    if "exit" in notes:
        return int(notes["exit"])
    ended = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    if notes.get("plugin"):
        print_line("[red]error:[/]", f"plugins.modules: plugin {notes['plugin']!r} ended the process while it was "
                                     f"imported ({ended}); a plugin must not exit: fix it or remove it from [plugins]")
        return EXIT_USAGE
    print_line("[red]internal error:[/]", f"the command ended without a result ({ended}); nothing it reported "
                                          f"counts as a verdict")
    return EXIT_CRASHED


def one_line(text: str) -> str:
    """`text` as one printable line: a newline or a control character in user text is shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def print_line(label: str, text: str) -> None:
    """The one line a command ends with on stderr: `label` is rich markup, `text` plain (user text)."""
    console.print(f"{label} {escape(one_line(text))}".strip(), highlight=False)


def crash_line(err: BaseException, results: Path | None) -> str:
    """One line for a crash: the exception, where it was raised, and the traceback's log file (kept under
    --results when that is a worldbench results dir: harness.outputs)."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    first = (str(err).strip().splitlines() or [""])[0][:200]
    line = f"{type(err).__name__}: {first}{where}"
    folder = outputs.crash_log_dir(results)
    if folder is None:
        return line
    try:
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        log.write_text("".join(traceback.format_exception(err)))
    except OSError:
        return line
    return f"{line} (traceback: {log})"


if __name__ == "__main__":
    sys.exit(main())
