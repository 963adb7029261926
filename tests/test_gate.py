"""The verdict from recorded runs, the gate's exit codes, and the backward-compatibility check."""
from __future__ import annotations

from dataclasses import replace
import re
import shutil
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.compat import GOLDEN_DIR, check_compat
from harness.gate import Selection, compare_runs
from harness.kpis import KPIS
from harness.store import Store
from harness.suite import load_suite
from tiny import record_fabricated

REPO = Path(__file__).resolve().parents[1]
SUITE = str(REPO / "bench.toml")


def fabricate(store: Store, specs, statuses: dict[tuple[str, int], str]) -> None:
    """Record runs whose KPIs are equal across variants (so a complete record would PASS)."""
    for spec in specs:
        status = statuses.get((spec.variant, spec.seed), "ok")
        if status != "missing":
            noise = 1 + 0.01 * spec.seed
            record_fabricated(store, spec, {k: noise for k in KPIS if not k.endswith("steps_to_target")}, status,
                              loss_scale=noise)


def verdict_for(tmp_path, statuses) -> str:
    suite = load_suite(SUITE)
    selection = Selection("smoke", "sprite_world", "meanpool_concat", "windowed_attention", [0, 1, 2, 3], [0, 1, 2, 3])
    specs, _ = selection.plan(suite)
    store = Store(tmp_path / "results")
    fabricate(store, specs, statuses)
    comparison, *_ = compare_runs(suite, store, selection, alpha=0.05)
    return comparison.verdict


def test_complete_equal_runs_pass(tmp_path):
    assert verdict_for(tmp_path, {}) == "PASS"


@pytest.mark.parametrize("statuses", [
    {("windowed_attention", 3): "missing"},
    {("windowed_attention", 0): "failed"},
    {("windowed_attention", 1): "diverged"},
    {("windowed_attention", s): "missing" for s in range(4)},
    {("meanpool_concat", s): "failed" for s in range(4)},
])
def test_missing_or_failed_runs_never_pass(tmp_path, statuses):
    assert verdict_for(tmp_path, statuses) != "PASS"


def test_report_names_unrecorded_runs_instead_of_calling_them_failed(tmp_path, capsys):
    """A run never recorded for this code (not run yet, or recorded by other code) is no failed run:
    `bench report` stops with one line naming it and what to run, not a FAIL verdict."""
    suite = load_suite(SUITE)
    selection = Selection("smoke", "sprite_world", "meanpool_concat", "windowed_attention", [0, 1, 2, 3], [0, 1, 2, 3])
    fabricate(Store(tmp_path / "results"), selection.plan(suite)[0],
              {("windowed_attention", 2): "missing", ("windowed_attention", 3): "missing"})
    code = main(["report", "--config", SUITE, "--profile", "smoke", "--seeds", "0-3",
                 "--results", str(tmp_path / "results"), "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "the runs of windowed_attention seeds 2,3 are not recorded" in err and "`bench run`" in err
    assert not (tmp_path / "report").exists()
    # the recorded seeds alone make a report
    assert main(["report", "--config", SUITE, "--profile", "smoke", "--seeds", "0-1",
                 "--results", str(tmp_path / "results"), "--out", str(tmp_path / "report")]) == 0


def test_gate_says_the_code_changed_when_its_runs_are_not_under_this_codes_ids(tmp_path, capsys, monkeypatch):
    """Runs recorded under ids the code no longer plans (it was edited while the gate trained) are not
    reported as "candidate failed in 5 runs": exit 2 and one line saying what happened."""
    monkeypatch.setattr("harness.cli.run_with_progress", lambda suite, specs, execution, quiet: None)  # records nothing
    code = main(["gate", "--config", SUITE, "--profile", "smoke", "--seeds", "0-1", "--quiet",
                 "--results", str(tmp_path / "results"), "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "the runs of meanpool_concat seeds 0,1 and windowed_attention seeds 0,1 are not recorded" in err
    assert "the code changed while bench gate ran; rerun bench gate" in err


def test_candidate_failing_more_often_fails(tmp_path):
    assert verdict_for(tmp_path, {("windowed_attention", 0): "diverged", ("windowed_attention", 2): "failed"}) == "FAIL"


def test_golden_checkpoints_load_and_a_renamed_key_fails_with_a_clear_line(tmp_path):
    result = check_compat()
    assert result.ok, result.lines
    golden = tmp_path / "golden"
    shutil.copytree(GOLDEN_DIR, golden)
    payload = torch.load(golden / "actions.pt", weights_only=True)
    key = next(k for k in payload["model"] if k.startswith("encoder."))
    payload["model"][key.replace("encoder.", "action_encoder.", 1)] = payload["model"].pop(key)
    torch.save(payload, golden / "actions.pt")
    result = check_compat(golden)
    assert not result.ok
    line = next(line for line in result.lines if line.startswith("actions"))
    assert "does NOT load into the current code" in line and key in line and "\n" not in line


def test_gate_runs_reports_and_exits_by_verdict(tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out = tmp_path / "report"
    code = main(["gate", "--config", SUITE, "--profile", "smoke", "--baseline", "meanpool_concat",
                 "--candidate", "meanpool_concat", "--seeds", "0-1", "--candidate-seeds", "2-3",
                 "--results", str(tmp_path / "results"), "--out", str(out), "--quiet"])
    # the baseline against itself on disjoint seeds: an A/A comparison, never FAIL
    assert code in (0, 3)
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.html", "report.json"}
    assert summary.read_text().startswith("<!-- worldbench-report -->")
    html = (out / "report.html").read_text()
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="Tokenizer reconstructions vs ground truth">', html)


def test_gate_usage_errors_exit_2(tmp_path, capsys):
    code = main(["gate", "--config", SUITE, "--candidate", "nope", "--results", str(tmp_path / "r")])
    assert code == 2 and "unknown variant 'nope'" in capsys.readouterr().err
    code = main(["report", "--config", SUITE, "--format", "pdf", "--results", str(tmp_path / "r")])
    assert code == 2


@pytest.mark.parametrize("tier", ["blocking", "guard"])
def test_a_kpi_neither_arm_measured_is_left_out_unless_it_blocks_or_guards(tmp_path, tier):
    """An MoE's expert-load KPIs are NaN in a comparison without an MoE: no row for them, and no INCONCLUSIVE;
    a blocking or guard KPI that neither arm measured stays in the comparison and keeps it from passing (a guard
    that was not measured guards nothing)."""
    suite = load_suite(SUITE)
    selection = Selection("smoke", "sprite_world", "meanpool_concat", "windowed_attention", [0, 1, 2], [0, 1, 2])
    specs, _ = selection.plan(suite)
    store = Store(tmp_path / "results")
    for spec in specs:
        kpis = {k: 1 + 0.01 * spec.seed for k in KPIS if not k.endswith("steps_to_target")}
        kpis.update({k: float("nan") for k in kpis if ".moe_" in k})
        record_fabricated(store, spec, kpis, "ok", loss_scale=1 + 0.01 * spec.seed)
    comparison, *_ = compare_runs(suite, store, selection, alpha=0.05)
    names = {kpi.name for kpi in comparison.kpis}
    assert "dynamics.moe_load_cv" not in names and "dynamics.val_loss" in names
    assert comparison.verdict == "PASS"
    suite.kpis["dynamics.moe_load_cv"] = replace(suite.kpis["dynamics.moe_load_cv"], blocking=tier == "blocking",
                                                 guard=tier == "guard")
    comparison, *_ = compare_runs(suite, store, selection, alpha=0.05)
    assert "dynamics.moe_load_cv" in {kpi.name for kpi in comparison.kpis} and comparison.verdict == "INCONCLUSIVE"


def test_two_machines_runs_of_one_change_pass_against_each_other_unless_one_machine_is_worse(tmp_path):
    """compare_recordings: the same runs recorded in two results dirs. Rounding-sized differences PASS for both
    arms; a machine whose candidate runs lost half their action response FAILs that arm only; the timing KPIs
    (each machine's own load) decide nothing, even blocking ones, where one machine is twice as slow."""
    from harness.gate import compare_recordings

    suite = load_suite(SUITE)
    suite.kpis["dynamics.it_per_s"] = replace(suite.kpis["dynamics.it_per_s"], blocking=True)
    selection = Selection("smoke", "sprite_world", "meanpool_concat", "windowed_attention", [0, 1, 2, 3, 4],
                          [0, 1, 2, 3, 4])
    specs, _ = selection.plan(suite)

    def record(name: str, scale) -> Store:
        store = Store(tmp_path / name)
        for spec in specs:
            kpis = {k: (1 + 0.05 * spec.seed) * scale(spec, k) for k in KPIS if not k.endswith("steps_to_target")}
            record_fabricated(store, spec, kpis, "ok", loss_scale=1 + 0.05 * spec.seed)
        return store

    here = record("here", lambda spec, kpi: 1.0)
    rounding = record("rounding", lambda spec, kpi: 1 + 1e-3 * (-1) ** spec.seed * (1 + spec.seed % 3))
    slower = record("slower", lambda spec, kpi: 0.5 if kpi.endswith("it_per_s") else 2.0 if kpi.endswith(
        "wall_s") else 1.0)
    blunted = record("blunted", lambda spec, kpi: 0.5 if kpi == "rollout.tf_action_response"
                     and spec.variant == "windowed_attention" else 1.0)

    assert [c.verdict for c in compare_recordings(suite, (here, rounding), selection, 0.05)] == ["PASS", "PASS"]
    assert [c.verdict for c in compare_recordings(suite, (here, slower), selection, 0.05)] == ["PASS", "PASS"]
    baseline, candidate = compare_recordings(suite, (here, blunted), selection, 0.05)
    assert baseline.verdict == "PASS" and candidate.verdict == "FAIL"
    assert {kpi.name for kpi in candidate.kpis if kpi.verdict == "regressed"} == {"rollout.tf_action_response"}
