"""Gate faults the `ci` profile was never tuned on, moderate ones included, each against the baseline.

`bench validate`'s planted faults are the ones the profile was designed against; a gate that catches only
those has been fitted to its test. Each fault here is the baseline with one realistic bug or cut budget,
gated on its own as a pull request would be (`bench gate --candidate X`, the profile's seeds), and the
table says what the gate made of it and through which KPI. A moderate fault may honestly end
INCONCLUSIVE or PASS: the table is a measurement of the gate's reach, not a test.

    python benchmarks/unseen_faults.py --results results            # reuses the stored baseline runs
    python benchmarks/unseen_faults.py --only dyn_steps_50,actions_noisy --results results

Writes the suite it used and one report per fault under <results>/unseen_faults/, and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = "meanpool_concat"

# name: (what breaks, the variant's table beside its description); every one keeps the baseline's LAM encoder.
FAULTS: dict[str, tuple[str, dict[str, dict[str, float | int | str]]]] = {
    "dyn_steps_50": ("half the dynamics steps", {"scale": {"dynamics.steps": 0.5}}),
    "dyn_steps_25": ("a quarter of the dynamics steps", {"scale": {"dynamics.steps": 0.25}}),
    "dyn_steps_75": ("three quarters of the dynamics steps", {"scale": {"dynamics.steps": 0.75}}),
    "dyn_lr_10": ("the dynamics' learning rate / 10", {"scale": {"dynamics.lr": 0.1}}),
    "tok_steps_25": ("a quarter of the tokenizer steps", {"scale": {"tokenizer.steps": 0.25}}),
    "tok_steps_50": ("half the tokenizer steps", {"scale": {"tokenizer.steps": 0.5}}),
    "lam_steps_25": ("a quarter of the LAM steps", {"scale": {"actions.steps": 0.25}}),
    "lam_steps_50": ("half the LAM steps", {"scale": {"actions.steps": 0.5}}),
    "lam_lr_10": ("the LAM's learning rate / 10", {"scale": {"actions.lr": 0.1}}),
    "lam_4_codes": ("4 latent codes instead of 64", {"overrides": {"n_actions": 4}}),
    "actions_shuffled_30": ("30% of the dynamics' training actions from another clip",
                            {"components": {"action_input": "shuffled_in_training"}}),
    "actions_shuffled_10": ("10% of the dynamics' training actions from another clip",
                            {"components": {"action_input": "shuffled_10_in_training"}}),
    "actions_noisy": ("noise (sd 1) on the dynamics' actions, training and rollouts",
                      {"components": {"action_input": "noisy"}}),
    "actions_previous": ("off by one: each frame conditioned on the action before its own",
                         {"components": {"action_input": "previous_action"}}),
    "dyn_lr_half": ("the dynamics' learning rate / 2", {"scale": {"dynamics.lr": 0.5}}),
    "dyn_batch_half": ("the dynamics' batch halved (8 clips a step)", {"scale": {"dynamics.batch_size": 0.5}}),
    "tok_lr_half": ("the tokenizer's learning rate / 2", {"scale": {"tokenizer.lr": 0.5}}),
    "lam_lr_half": ("the LAM's learning rate / 2", {"scale": {"actions.lr": 0.5}}),
    "lam_batch_half": ("the LAM's batch halved (32 transitions a step)", {"scale": {"actions.batch_size": 0.5}}),
    "lam_entropy_off": ("the LAM's code-entropy term off", {"overrides": {"actions.entropy_weight": 0.0}}),
    "actions_dropout_on": ("dropout (p 0.2) on the dynamics' actions, left on in evaluation and rollouts",
                           {"components": {"action_input": "dropout_left_on"}}),
    "rollout_sampled": ("rollouts sample tokens at temperature 1 instead of taking the most likely",
                        {"overrides": {"dynamics.temperature": 1.0}}),
    "rollout_one_round": ("rollouts decode each frame in 1 MaskGIT round instead of 4",
                          {"overrides": {"dynamics.maskgit_steps": 1}}),
}


def toml_inline(table: dict[str, float | int | str]) -> str:
    """A flat table as a TOML inline table, keys quoted (they hold dots): {"a.b" = 0.5, "c" = "x"}."""
    return "{ " + ", ".join(f"{json.dumps(key)} = {json.dumps(value)}" for key, value in table.items()) + " }"


def suite_text(names: list[str]) -> str:
    """The repository's suite with the plugin and one variant per fault appended."""
    tables = ['\n[plugins]\nmodules = ["unseen_fault_components"]\n']
    for name in names:
        what, variant = FAULTS[name]
        variant = {**variant, "components": {"lam_encoder": BASELINE, **variant.get("components", {})}}
        lines = [f"{key} = {toml_inline(table)}" for key, table in variant.items()]
        tables.append(f'\n[variants.{name}]\ndescription = "unseen fault: {what}"\n' + "\n".join(lines) + "\n")
    return (REPO / "bench.toml").read_text() + "".join(tables)


def bench(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env, cwd=REPO, text=True,
                          capture_output=True)


def caught_by(report: dict) -> str:
    """The regressed KPIs that decide (blocking and guard), most significant first, as 'name change (adjusted p)'."""
    regressed = sorted((k for k in report["kpis"] if k["verdict"] == "regressed" and k["tier"] != "informational"),
                       key=lambda k: k["p_regressed_adjusted"] if k["p_regressed_adjusted"] is not None else 1.0)
    return ", ".join(f"{k['name']} {k['change']} ({k['p_regressed_adjusted']:.2g})" for k in regressed[:3]) or "—"


def held_up_by(report: dict) -> str:
    """For a verdict other than FAIL, the KPIs its reasons name (those that kept it from a PASS), as 'name change'."""
    kpis = {k["name"]: k for k in report["kpis"]}
    named = [reason.split(":")[0] for reason in report["reasons"]]
    return ", ".join(f"{name} {kpis[name]['change']} (p {kpis[name]['p_regressed']:.2g} before Holm)"
                     if kpis[name]["p_regressed"] is not None and kpis[name]["p_regressed"] < report["alpha"]
                     else f"{name} {kpis[name]['change']}" for name in named if name in kpis) or "—"


def blocking(report: dict) -> str:
    return "; ".join(f"{k['name'].split('.')[-1]} " + ("identical" if k["verdict"] == "identical"
                                                       else f"{k['change']} {k['verdict']}")
                     for k in report["kpis"] if k["tier"] == "blocking")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--only", default=",".join(FAULTS), help="comma-separated fault names")
    parser.add_argument("--jobs", default="2")
    args = parser.parse_args()
    names = args.only.split(",")
    unknown = [name for name in names if name not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s) {unknown}; choose from {list(FAULTS)}")
    results = Path(args.results).resolve()
    out = results / "unseen_faults"
    # The suite goes beside the reports, once `bench run` has made (or checked) the results dir.
    scratch = Path(tempfile.mkdtemp())
    suite = scratch / "bench.toml"
    suite.write_text(suite_text(names))
    common = ["--profile", args.profile, "--seeds", args.seeds, "--results", str(results)]

    started = time.time()
    run = bench(["run", "--config", str(suite), *common, "--variants", ",".join([BASELINE, *names]), "--jobs", args.jobs, "--quiet"])
    if run.returncode != 0:
        print(run.stderr.strip(), file=sys.stderr)
        return run.returncode
    out.mkdir(exist_ok=True)
    suite = Path(shutil.move(suite, out / "bench.toml"))
    scratch.rmdir()
    print(f"trained in {time.time() - started:.0f} s\n")
    print("| fault | what breaks | verdict | FAILed by (change, adjusted p), or what held up a PASS | blocking KPIs |")
    print("|---|---|---|---|---|")
    for name in names:
        gate = bench(["gate", "--config", str(suite), *common, "--baseline", BASELINE, "--candidate", name, "--out", str(out / name),
                      "--format", "json,md", "--json", "--quiet"])
        if gate.returncode not in (0, 1, 3):
            print(f"| {name} | {FAULTS[name][0]} | error (exit {gate.returncode}) | {gate.stderr.strip()} | |")
            continue
        report = json.loads((out / name / "report.json").read_text())
        decided = caught_by(report) if report["verdict"] == "FAIL" else held_up_by(report)
        print(f"| `{name}` | {FAULTS[name][0]} | **{report['verdict']}** | {decided} | {blocking(report)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
