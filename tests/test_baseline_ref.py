"""`bench gate --baseline-ref REF` on a throwaway git repository, with the CI workflow's commands.

The repository is a copy of this project: commit `main` is the base; a push to it records the
baseline arm (`bench run --variants <baseline>`), then a pull request's gate compares its code with
the merge base. A planted regression in shared config must FAIL, a README-only change must not and
must reuse every baseline run. Every command runs in a subprocess from the copy, so each arm runs
its own commit's code, as in CI.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["harness", "worldmodel", "variants", "reports", "bench.toml", "pyproject.toml", "README.md"]
BASELINE = "meanpool_concat"
SEEDS = "0-2"  # the planted regression FAILs at 3 seeds on smoke (adjusted p ~ 0.001)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def bench(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """`bench ARGS` run with the repository's own code (its folder first on sys.path)."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env.pop("GITHUB_STEP_SUMMARY", None)
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git repository holding this project's code at one commit on branch `main`."""
    repo = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, repo / name, symlinks=True,  # harness/bench.toml links to the project's
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, repo / name)
    (repo / ".gitignore").write_text("results/\n__pycache__/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    commit_all(repo, "base")
    return repo


def plant_regression(bench_toml: Path) -> None:
    """Cut the smoke profile's tokenizer budget to 1 step: reconstructions and rollouts get much worse."""
    text = bench_toml.read_text()
    start = text.index("[profiles.smoke.model]")
    smoke, count = re.subn(r"(?m)^(tokenizer = \{.*?\bsteps = )\d+", r"\g<1>1", text[start:], count=1)
    assert count == 1, "bench.toml's smoke tokenizer line changed; update plant_regression"
    bench_toml.write_text(text[:start] + smoke)


def gate(repo: Path, results: Path, name: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = results / name
    result = bench(repo, "gate", "--profile", "smoke", "--seeds", SEEDS, "--baseline-ref", "HEAD~1",
                   "--results", str(results), "--out", str(out), "--format", "md,json", "--quiet", *extra)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return result, report


def runs_line(report: dict, role: str) -> str:
    """The 'Runs: N of M reused ...' sentence of the baseline or candidate arm's description."""
    text = report["descriptions"][report[role]]
    return re.search(r"Runs: .*", text).group(0)


def test_gate_against_the_base_commit(project, tmp_path):
    results = tmp_path / "results"
    base = git(project, "rev-parse", "HEAD")
    # A push to main records the base arm, as the workflow's push job does.
    os.utime(project / "README.md")  # the index's stat data is stale now: a plain `git status` would rewrite it
    index = (project / ".git" / "index").stat().st_mtime_ns
    recorded = bench(project, "run", "--profile", "smoke", "--variants", BASELINE, "--seeds", SEEDS,
                     "--results", str(results), "--jobs", "2", "--quiet")
    assert recorded.returncode == 0, recorded.stderr
    assert (project / ".git" / "index").stat().st_mtime_ns == index, "recording the commit wrote the user's index"

    # A pull request that breaks shared config: FAIL, and the base arm comes from the store.
    git(project, "checkout", "-q", "-b", "regression", "main")
    plant_regression(project / "bench.toml")
    commit_all(project, "smoke: one tokenizer step")
    result, report = gate(project, results, "regression")
    assert result.returncode == 1, result.stderr
    assert report["verdict"] == "FAIL"
    assert any(reason.startswith("tokenizer.val_loss") for reason in report["reasons"]), report["reasons"]
    assert report["baseline"] == f"{BASELINE} @ {base[:12]}"
    assert report["candidate"] == f"{BASELINE} @ {git(project, 'rev-parse', 'HEAD')[:12]}"
    assert runs_line(report, "baseline") == "Runs: 3 of 3 reused from the store, 0 trained now."
    assert runs_line(report, "candidate") == "Runs: 0 of 3 reused from the store, 3 trained now."
    assert f"commit {base}" in report["descriptions"][report["baseline"]]
    compat = report["compat"]
    assert compat["ok"] and sum("checkpoint trained by" in line for line in compat["lines"]) == 3, compat
    assert (results / "worktrees" / base[:12] / "bench.toml").exists()
    # REF's tree borrows the repository's objects; nothing is registered in, or locked inside, its .git.
    assert not (project / ".git" / "worktrees").exists() and not (project / ".git" / "index.lock").exists()
    assert report["judged_by_rules_of"] == {"ref": "HEAD~1", "commit": base, "changes": []}
    # REF's plan of a long arm arrives whole (its JSON line is longer than an error line may be).
    from harness.baseline_ref import BaselineRef
    tree = results / "worktrees" / base[:12]
    plan = BaselineRef("HEAD~1", base, tree, tree / "bench.toml", "", []).run_ids("smoke", "sprite_world", BASELINE,
                                                                              list(range(40)))
    assert sorted(plan) == list(range(40)) and {len(run_id) for run_id in plan.values()} == {16}

    # The same regression with the rules loosened in the same pull request: judged by the base's rules, it still
    # FAILs, and the comment says above the fold what the change would have set.
    git(project, "checkout", "-q", "-b", "loosened", "main")
    plant_regression(project / "bench.toml")
    text = (project / "bench.toml").read_text().replace("alpha = 0.05", "alpha = 1e-9", 1)
    (project / "bench.toml").write_text(text + '\n[kpis."tokenizer.val_loss"]\nmargin = 1000.0\n')
    commit_all(project, "smoke: one tokenizer step, and rules that cannot fail it")
    result, report = gate(project, results, "loosened")
    assert result.returncode == 1, result.stderr
    assert report["verdict"] == "FAIL" and report["alpha"] == 0.05
    assert report["judged_by_rules_of"]["changes"] == [
        {"key": "alpha", "ref_value": 0.05, "value": 1e-9},
        {"key": "tokenizer.val_loss.margin", "ref_value": 0.1, "value": 1000.0}]
    assert runs_line(report, "candidate") == "Runs: 3 of 3 reused from the store, 0 trained now."
    visible = (results / "loosened" / "report.md").read_text().split("<details>")[0].replace("\\", "")  # unescaped
    assert ("not by this change's own rules, which would set alpha 0.05 → 1e-09, tokenizer.val_loss.margin "
            "0.1 → 1000 (they apply once it is merged)") in visible

    # A README-only change: not FAIL, and every baseline run is reused (its code is the base's).
    git(project, "checkout", "-q", "-b", "docs", "main")
    (project / "README.md").write_text((project / "README.md").read_text() + "\nA note.\n")
    commit_all(project, "README: a note")
    result, report = gate(project, results, "docs")
    assert result.returncode in (0, 3), result.stderr
    assert report["verdict"] != "FAIL"
    assert runs_line(report, "baseline") == "Runs: 3 of 3 reused from the store, 0 trained now."
    assert runs_line(report, "candidate") == "Runs: 3 of 3 reused from the store, 0 trained now."


def test_bad_input_exits_2_with_one_line(project, tmp_path):
    results = tmp_path / "results"

    def refused(*extra: str) -> str:
        result = bench(project, "gate", "--profile", "smoke", "--seeds", "0", "--results", str(results), "--quiet",
                       *extra)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        return lines[0]

    assert "'no-such-ref' does not name a commit" in refused("--baseline-ref", "no-such-ref")

    (project / "worldmodel" / "train.py").write_text((project / "worldmodel" / "train.py").read_text() + "\n# edit\n")
    try:
        line = refused("--baseline-ref", "HEAD")
        assert "uncommitted changes to worldmodel/train.py" in line and "--allow-dirty" in line
    finally:
        git(project, "checkout", "--", "worldmodel/train.py")

    # A variant the base commit does not have (the candidate's bench.toml adds it).
    git(project, "checkout", "-q", "-B", "new-variant", "main")
    with open(project / "bench.toml", "a") as handle:
        handle.write('\n[variants.brand_new]\ndescription = "added by this change"\n'
                     'components = { lam_encoder = "meanpool_concat" }\n')
    commit_all(project, "a new variant")
    line = refused("--baseline-ref", "HEAD~1", "--baseline", "brand_new")
    assert "its code cannot run variant 'brand_new'" in line and "unknown variant" in line


def test_compat_runs_one_batch_of_the_base_commits_checkpoints(tmp_path):
    from harness.compat import GOLDEN_DIR, check_compat

    weights = torch.load(GOLDEN_DIR / "dynamics.pt", weights_only=True)
    weights["model"] = {key: value.fill_(float("nan")) if value.is_floating_point() else value
                        for key, value in weights["model"].items()}
    torch.save(weights, tmp_path / "dynamics.pt")
    result = check_compat(trained={"dynamics": tmp_path / "dynamics.pt"}, trained_by="abc123 (baseline arm, seed 0)")
    assert not result.ok
    line = result.lines[-1]
    assert line.startswith("dynamics: checkpoint trained by abc123 (baseline arm, seed 0) does NOT load")
    assert "non-finite loss" in line


def test_the_gate_is_judged_by_the_base_commits_rules_and_says_what_the_change_would_set():
    from harness.baseline_ref import BaselineRef, judged_by_ref_rules
    from harness.suite import build_suite
    from harness.types import RuleChange, RulesNote
    from reports.text import note_text

    suite = build_suite({"comparison": {"alpha": 0.1},
                         "kpis": {"rollout.tf_mse": {"margin": 0.5, "guard": True}, "actions.nmi": {"blocking": True}}})
    ref_rules = {"alpha": 0.05, "kpis": {
        "rollout.tf_mse": {"direction": "lower", "scale": "log", "margin": 0.1, "blocking": False, "guard": True},
        "actions.nmi": {"margin": suite.kpis["actions.nmi"].margin},  # a REF without a tier: the candidate's stays
        "retired.kpi": {"margin": 0.2}}}  # a KPI the candidate no longer records: nothing to judge
    ref = BaselineRef("main", "a" * 40, Path("."), Path("bench.toml"), "b" * 40, [])
    judged, note = judged_by_ref_rules(suite, ref, ref_rules)
    assert judged.comparison.alpha == 0.05 and judged.kpis["rollout.tf_mse"].margin == 0.1
    assert judged.kpis["actions.nmi"].blocking  # REF had no blocking field to give
    assert judged.kpis["dynamics.val_loss"] == suite.kpis["dynamics.val_loss"]
    assert note == RulesNote("main", "a" * 40, (RuleChange("alpha", 0.05, 0.1),
                                                RuleChange("rollout.tf_mse.margin", 0.1, 0.5)))
    assert note_text(note) == ("judged by the gate rules of --baseline-ref main (aaaaaaaaaaaa), not by this change's "
                               "own rules, which would set alpha 0.05 → 0.1, rollout.tf_mse.margin 0.1 → 0.5 (they "
                               "apply once it is merged)")
    assert judged_by_ref_rules(judged, ref, ref_rules)[1].changes == ()
