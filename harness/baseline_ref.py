"""`bench gate --baseline-ref REF`: the baseline arm trained by the code at a git commit.

REF is resolved in the git checkout this code runs from and checked out, detached, into
`<results>/worktrees/<sha12>`: a clone that borrows the checkout's objects (`git clone --shared`), so nothing
is written into the user's repository. The baseline arm is planned and trained there by REF's own code
(`python -m harness.cli run` with that tree first on sys.path), with REF's own bench.toml unless
--config is given, and recorded into the same store as the candidate arm. Run ids hash the
source they run, so a commit benchmarked before (the push to the main branch, or an earlier
gate) has its runs reused, and REF's run ids are exactly the ones its `bench run` records. The verdict is
judged by REF's gate rules (its KPI rules and alpha, `judged_by_ref_rules`), so a change cannot loosen them for itself.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from harness.git import ROOT, git  # ROOT: the checkout whose code runs the candidate arm
from harness.store import stage_folder
from harness.schema import Suite
from harness.types import OVERRIDABLE, ArmProvenance, RuleChange, RulesNote
from worldmodel.config import STAGES
from worldmodel.errors import WorldbenchError

CODE_PATHS = ("worldmodel", "variants", "harness", "bench.toml")  # what a run's numbers depend on

# Runs in REF's worktree with REF's code: the run ids its `bench run` records for one arm, seed -> id.
PLAN_SCRIPT = """
import json, sys
from harness.matrix import plan_runs
from harness.suite import load_suite
from worldmodel.errors import WorldbenchError
config, profile, dataset, variant, seeds = sys.argv[1:6]
try:
    specs = plan_runs(load_suite(config), profile, dataset, [variant], [int(s) for s in seeds.split(",")])
except WorldbenchError as err:
    sys.exit(str(err))
print(json.dumps({spec.seed: spec.run_id for spec in specs}))
"""


# Runs in REF's worktree with REF's code: the gate's rules there (its harness/kpis.py defaults under its suite file).
RULES_SCRIPT = """
import json, sys
from harness.suite import load_suite
from worldmodel.errors import WorldbenchError
try:
    suite = load_suite(sys.argv[1])
except WorldbenchError as err:
    sys.exit(str(err))
fields = sys.argv[2].split(",")
kpis = {name: {f: getattr(rule, f) for f in fields if hasattr(rule, f)} for name, rule in suite.kpis.items()}
print(json.dumps({"alpha": suite.comparison.alpha, "kpis": kpis}))
"""


def last_line(text: str) -> str:
    """The last line of a message, cut for an error line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"


def printed_json(text: str):
    """What a script in REF's worktree printed as JSON on its last line (whole: a long plan is not cut)."""
    return json.loads(text.strip().splitlines()[-1])


def uncommitted_code() -> list[str]:
    """Paths under CODE_PATHS with changes no commit holds (modified, staged or new, not ignored)."""
    status = git("status", "--porcelain", "--", *CODE_PATHS)
    return [line[3:] for line in status.stdout.splitlines() if line.strip()]


@dataclass
class BaselineRef:
    """The commit the baseline arm runs, its worktree, and the checkout the candidate arm runs."""
    ref: str  # as given on the command line
    commit: str  # REF resolved to a full sha
    project: Path  # REF's project folder inside its worktree (cwd and sys.path[0] of its processes)
    config: Path  # the suite file REF's code reads
    head: str  # the candidate checkout's commit
    changes: list[str]  # the candidate's uncommitted code paths (only with --allow-dirty)
    _plans: dict = field(default_factory=dict, repr=False)

    def code(self, role: str) -> ArmProvenance:
        """The code the baseline or candidate arm ran (reports/text.py words it)."""
        if role == "baseline":
            return ArmProvenance(self.commit, ref=self.ref)
        return ArmProvenance(self.head, dirty=bool(self.changes), changes=tuple(self.changes))

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(self.project),
                                                                         os.environ.get("PYTHONPATH")]))}

    def check_out(self, results: Path) -> None:
        """Check REF out into its worktree under `results` (reused when it is there and clean)."""
        checkout(self.commit, results)

    def run_script(self, script: str, *args: str) -> subprocess.CompletedProcess:
        """`python -c script args` with REF's code: in its worktree, its tree first on sys.path."""
        return subprocess.run([sys.executable, "-c", script, *args], cwd=self.project, env=self.environment(),
                              capture_output=True, text=True)

    def run_ids(self, profile: str, dataset: str, variant: str, seeds: list[int]) -> dict[int, str]:
        """Seed -> run id of the baseline arm as REF's code plans it; exit 2 when REF cannot run it."""
        key = (profile, dataset, variant, tuple(seeds))
        if key not in self._plans:
            result = self.run_script(PLAN_SCRIPT, str(self.config), profile, dataset, variant,
                                     ",".join(map(str, seeds)))
            if result.returncode != 0:
                raise WorldbenchError(f"--baseline-ref {self.ref} ({self.commit[:12]}): its code cannot run variant "
                                      f"'{variant}' on profile '{profile}', dataset '{dataset}': "
                                      f"{last_line(result.stderr)}; pick a REF that has it, or another --baseline")
            plan = printed_json(result.stdout)
            self._plans[key] = {int(seed): run_id for seed, run_id in plan.items()}
        return self._plans[key]

    def rules(self) -> dict:
        """REF's gate rules: {"alpha": float, "kpis": {name: {field: value}}} for the OVERRIDABLE fields it has."""
        result = self.run_script(RULES_SCRIPT, str(self.config), ",".join(OVERRIDABLE))
        if result.returncode != 0:
            raise WorldbenchError(f"--baseline-ref {self.ref} ({self.commit[:12]}): its code cannot read its gate "
                                  f"rules: {last_line(result.stderr)}; fix its suite file or pass --config")
        return printed_json(result.stdout)

    def train(self, results: Path, profile: str, dataset: str, variant: str, seeds: list[int], jobs: int,
              quiet: bool) -> None:
        """Train and record the baseline arm with REF's own CLI (it skips runs the store already has)."""
        command = [sys.executable, "-m", "harness.cli", "run", "--config", str(self.config), "--profile", profile,
                   "--dataset", dataset, "--variants", variant, "--seeds", ",".join(map(str, seeds)),
                   "--results", str(results.resolve()), "--jobs", str(jobs), "--device", "cpu"]
        code = subprocess.run(command + (["--quiet"] if quiet else []), cwd=self.project, env=self.environment(),
                              stdout=subprocess.DEVNULL if quiet else None).returncode
        if code not in (0, 4):  # 4: some runs crashed; they are recorded as failed and count against the arm
            raise WorldbenchError(f"--baseline-ref {self.ref} ({self.commit[:12]}): its `bench run` of the baseline "
                                  f"arm exited {code} (its message is above)")

    def checkpoints(self, cache: Path, runs: pd.DataFrame) -> tuple[dict[str, Path], str]:
        """REF's stage checkpoints of the baseline arm's first finished run, and which run that is."""
        ok = runs[runs["status"] == "ok"].sort_values("seed")
        if ok.empty:
            return {}, ""
        row = ok.iloc[0]
        stage_ids = json.loads(row["stage_ids_json"] or "{}")
        paths = {stage: stage_folder(cache, stage, stage_ids[stage]) / "checkpoint.pt"
                 for stage in STAGES if stage in stage_ids}
        return paths, f"{self.commit[:12]} (baseline arm, seed {int(row['seed'])})"


def judged_by_ref_rules(suite: Suite, ref: BaselineRef, ref_rules: dict) -> tuple[Suite, RulesNote]:
    """`suite` with REF's rules (BaselineRef.rules: the OVERRIDABLE fields) for every KPI REF knows, and REF's alpha:
    a change cannot loosen the rules it is judged by (a margin in bench.toml or a default in harness/kpis.py). KPIs
    new in the candidate keep their own rule. The note lists what the candidate's rules would change, which apply
    once it is merged."""
    changes: list[RuleChange] = []
    kpis = dict(suite.kpis)
    for name, fields in ref_rules["kpis"].items():
        if name not in kpis:
            continue
        changes += [RuleChange(f"{name}.{key}", value, getattr(kpis[name], key)) for key, value in fields.items()
                    if getattr(kpis[name], key) != value]
        kpis[name] = replace(kpis[name], **fields)
    alpha = float(ref_rules["alpha"])
    if alpha != suite.comparison.alpha:
        changes.insert(0, RuleChange("alpha", alpha, suite.comparison.alpha))
    judged = replace(suite, kpis=kpis, comparison=replace(suite.comparison, alpha=alpha))
    return judged, RulesNote(ref.ref, ref.commit, tuple(changes))


def worktree(commit: str, results: Path) -> Path:
    """Where `commit` is checked out: <results>/worktrees/<sha12>."""
    return (Path(results) / "worktrees" / commit[:12]).resolve()


def checkout(commit: str, results: Path) -> Path:
    """`commit` checked out, detached, under <results>/worktrees, reused when it is already there and clean.

    A shared clone rather than `git worktree add`, which would register the tree in the checkout's .git.
    """
    tree = worktree(commit, results)
    if tree.exists():
        top = git("rev-parse", "--show-toplevel", cwd=tree).stdout.strip()
        head = git("rev-parse", "HEAD", cwd=tree).stdout.strip()
        clean = not git("status", "--porcelain", "--untracked-files=no", cwd=tree).stdout.strip()
        if top and Path(top).resolve() == tree and head == commit and clean:
            return tree
        shutil.rmtree(tree, ignore_errors=True)  # stale, e.g. restored from a CI cache without its git metadata
    tree.parent.mkdir(parents=True, exist_ok=True)
    top = git("rev-parse", "--show-toplevel").stdout.strip()
    for step, cwd in ((("clone", "--quiet", "--shared", "--no-checkout", top, str(tree)), ROOT),
                      (("checkout", "--quiet", "--detach", commit), tree)):
        done = git(*step, cwd=cwd)
        if done.returncode != 0:
            shutil.rmtree(tree, ignore_errors=True)
            raise WorldbenchError(f"cannot check out {commit[:12]} into '{tree}': {last_line(done.stderr)}")
    return tree


def prepare(ref: str, results: Path, config: str | None, allow_dirty: bool) -> BaselineRef:
    """Resolve REF and refuse a dirty candidate, writing nothing: every problem is one line (exit 2).
    `BaselineRef.check_out` then checks REF out, once the command has nothing left to refuse."""
    prefix = git("rev-parse", "--show-prefix")
    if prefix.returncode != 0:
        raise WorldbenchError(f"--baseline-ref needs a git checkout of the project; '{ROOT}' is not in one "
                              f"(install with `pip install -e .` from a clone)")
    resolved = git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    if resolved.returncode != 0:
        raise WorldbenchError(f"--baseline-ref: {ref!r} does not name a commit in '{ROOT}'; pass a branch, tag or "
                              f"sha that exists locally (fetch it first; in CI check out with fetch-depth: 0)")
    changes = uncommitted_code()
    if changes and not allow_dirty:
        shown = ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise WorldbenchError(f"--baseline-ref: uncommitted changes to {shown}; the candidate arm would run code that "
                              f"no commit names, so commit them first (or pass --allow-dirty to compare them anyway)")
    commit, inside = resolved.stdout.strip(), prefix.stdout.strip()
    project = worktree(commit, results) / inside
    if config:
        suite_file = Path(config).resolve()
        if not suite_file.is_file():
            raise WorldbenchError(f"--config '{config}' is not a file; pass the suite file REF's code should read")
    else:
        suite_file = project / "bench.toml"
        if git("cat-file", "-e", f"{commit}:{inside}bench.toml").returncode != 0:
            raise WorldbenchError(f"--baseline-ref {ref} ({commit[:12]}) has no bench.toml; pass --config FILE")
    head = git("rev-parse", "HEAD").stdout.strip()
    return BaselineRef(ref, commit, project, suite_file, head, changes)
