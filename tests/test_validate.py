"""`bench validate`: the planted faults, the caught-by rule, actions.majority_accuracy blocking, and the command end
to end."""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.compat import check_compat
from harness.gate import Selection, compare_runs, rules_for
from harness.kpis import KPIS
from harness.stats import Comparison, KpiComparison, KpiRule, compare
from harness.types import ArmSummary, Effect, Finding, HypothesisTest, Reason, Why
from harness.store import Store
from harness.suite import load_suite
from harness.validate import (AA_CHECK, EXPECT_FAIL, EXPECT_PASS, Check, Validation, caught_by, exit_code, judge,
                              plan_checks)
from reports.validate import resolution_lines
from variants.planted_faults import Blind
from worldmodel import registry
from worldmodel.config import WorldModelConfig
from worldmodel.dynamics import Dynamics
from worldmodel.stages import stage_config_json
from tiny import record_fabricated

REPO = Path(__file__).resolve().parents[1]
SUITE = str(REPO / "bench.toml")
BUILTIN_FAULTS = ["fault_tokenizer_undertrained", "fault_lam_blind", "fault_dynamics_blind",
                  "fault_dynamics_undertrained"]
SMALL = {"frame_size": 16, "dynamics": {"embed_dim": 16, "heads": 4, "hidden": 32, "blocks": 1}}


# ----------------------------------------------------------------------------- the planted components

def test_blind_encoder_output_does_not_depend_on_the_frames():
    config = WorldModelConfig.from_dict(dict(SMALL))
    encoder = Blind(config)
    frames = torch.rand(3, 4, 3, 16, 16) * 2 - 1  # [B, T, 3, H, W]
    out = encoder(frames)
    assert out.shape == (3, 3, config.action_dim)  # [B, T-1, A]
    assert torch.equal(out, encoder(-frames)) and torch.equal(out, encoder(torch.zeros_like(frames)))
    assert out.requires_grad and [p.shape for p in encoder.parameters()] == [(config.action_dim,)]


def dynamics_logits(model: Dynamics, actions: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    latents = model.fsq.from_indices(torch.randint(model.fsq.codebook_size, (2, 4, 16)))  # [B, T, P, L]
    mask = Dynamics.training_mask(2, 4, 16)  # [B, T, P]
    return model.to_logits(model.hidden(latents, actions, mask))  # [B, T, P, V]


def with_action_input(component: str) -> WorldModelConfig:
    return WorldModelConfig.from_dict({**SMALL, "dynamics": {**SMALL["dynamics"], "action_input": component}})


@pytest.mark.parametrize("blind", [False, True])
def test_action_blind_dynamics_logits_do_not_depend_on_the_actions(blind):
    config = with_action_input("blind" if blind else "latent_actions")
    torch.manual_seed(0)
    model = Dynamics(config).eval()
    for p in model.parameters():  # FiLM starts near zero: make the actions matter for the check
        torch.nn.init.normal_(p, std=0.3)
    actions = torch.ones(2, 3, config.action_dim)  # [B, T-1, A]
    same = torch.equal(dynamics_logits(model, actions), dynamics_logits(model, -actions))
    assert same == blind
    context = model.fsq.from_indices(torch.randint(model.fsq.codebook_size, (2, 2, 16)))  # [B, Tc, P, L]
    predicted = [model.predict_next(context, a, rounds=2) for a in (actions[:, :2], -actions[:, :2])]
    assert not blind or torch.equal(*predicted)


def test_the_blind_action_input_is_a_component_left_out_of_stage_ids_by_default_and_golden_checkpoints_load():
    off, on = WorldModelConfig.from_dict(dict(SMALL)), with_action_input("blind")
    assert "action_input" not in stage_config_json(off, "dynamics")
    assert '"dynamics.action_input": "blind"' in stage_config_json(on, "dynamics")
    assert stage_config_json(off, "dynamics") == stage_config_json(with_action_input("latent_actions"), "dynamics")
    params = [{name: p.shape for name, p in Dynamics(config).state_dict().items()} for config in (off, on)]
    assert params[0] == params[1]  # no parameters of its own: checkpoints keep their keys
    assert "blind" in registry.components()["action_input"]
    assert check_compat().ok


def test_builtin_faults_are_the_baseline_with_one_thing_broken():
    suite = load_suite(SUITE)
    assert suite.planted_faults()[:4] == BUILTIN_FAULTS
    base = suite.model_config("smoke", suite.comparison.baseline)
    fault = {name: suite.model_config("smoke", name) for name in BUILTIN_FAULTS}
    assert fault["fault_tokenizer_undertrained"].tokenizer.steps == max(1, round(0.05 * base.tokenizer.steps))
    assert suite.model_config("ci", "fault_tokenizer_undertrained").tokenizer.steps == 30  # 5% of ci's 600
    assert fault["fault_lam_blind"].actions.encoder == "blind"
    assert fault["fault_dynamics_blind"].dynamics.action_input == "blind"
    assert base.dynamics.action_input == "latent_actions"
    assert fault["fault_dynamics_undertrained"].dynamics.steps == max(1, round(0.1 * base.dynamics.steps))
    assert fault["fault_lam_blind"].dynamics == base.dynamics and fault["fault_lam_blind"].tokenizer == base.tokenizer
    checks = plan_checks(suite, "smoke", None, [0, 1])
    assert [c.name for c in checks] == [*suite.planted_faults(), "null_rounding", AA_CHECK]
    assert [c.expected for c in checks] == [EXPECT_FAIL] * 4 + [EXPECT_PASS, EXPECT_PASS]
    aa, null = checks[-1].selection, checks[-2].selection
    assert aa.candidate == aa.baseline and aa.candidate_seeds == [2, 3]
    assert null.baseline_seeds == null.candidate_seeds == [0, 1]  # paired: the same seeds, float rounding only
    rounding = suite.model_config("smoke", "null_rounding")
    assert all(rounding.stage(stage).init_noise == 1e-6 for stage in ("tokenizer", "actions", "dynamics"))
    assert dataclasses.replace(rounding.tokenizer, init_noise=0.0) == base.tokenizer


# ----------------------------------------------------------------------------- caught by which KPI

def kpi(name: str, verdict: str, p_adjusted: float = 1.0, tier: str | None = None) -> KpiComparison:
    """The comparison of the KPI `name` (its own rule and role, in its own tier unless `tier` says), reduced to what
    caught_by reads."""
    nan = math.nan
    arm = ArmSummary(values={}, n=5, median=nan, iqm=nan)
    rule = KPIS[name] if tier is None else dataclasses.replace(KPIS[name], blocking=tier == "blocking",
                                                               guard=tier == "guard")
    return KpiComparison(
        name=name, rule=rule, baseline=arm, candidate=arm,
        effect=Effect(estimate=nan, ci_low=nan, ci_high=nan, ci_level=nan, margin=1.1, hedges_g=nan,
                      prob_improvement=nan),
        test=HypothesisTest(method="paired t-test", paired=True, n_paired=5, p_noninferior=nan, p_improved=nan,
                            p_regressed=p_adjusted, p_regressed_adjusted=p_adjusted, p_worse=nan),
        verdict=verdict, why=Why.REGRESSED if verdict == "regressed" else Why.UNSETTLED, recommended_seeds=None)


def verdict_of(kpis: list[KpiComparison], failed_runs: bool = False) -> Comparison:
    fails = any(k.rule.can_fail and k.verdict == "regressed" for k in kpis)  # blocking or guard
    verdict = "FAIL" if fails or failed_runs else "INCONCLUSIVE"
    return Comparison(verdict, [Reason(Finding.KPI, k.name) for k in kpis if k.verdict == "regressed"], kpis, None, 0.05)


FAULT = Check("fault_x", EXPECT_FAIL, Selection("smoke", "sprite_world", "meanpool_concat", "fault_x", [0], [0]))
AA = Check(AA_CHECK, EXPECT_PASS, Selection("smoke", "sprite_world", "meanpool_concat", "meanpool_concat",
                                                [0], [1]))


def test_caught_by_is_the_most_significant_regressed_blocking_or_guard_quality_or_controllability_kpi():
    comparison = verdict_of([
        kpi("rollout.ar_mse", "regressed", 0.03), kpi("actions.majority_accuracy", "regressed", 0.01),
        kpi("tokenizer.val_mse", "regressed", 0.001),  # informational
        kpi("actions.nmi", "regressed", 0.001),  # informational
        kpi("dynamics.wall_s", "regressed", 0.0001),  # timing
        kpi("actions.variance_penalty", "regressed", 0.0001),  # regulariser
        kpi("dynamics.val_loss", "inconclusive", 0.0001),
    ])
    assert caught_by(comparison).name == "actions.majority_accuracy"
    row = judge(FAULT, comparison)
    assert (row.observed, row.caught_by, row.p_adjusted, row.ok) == ("FAIL", "actions.majority_accuracy", 0.01, True)


def test_a_guard_kpi_that_regressed_catches_a_fault():
    """A guard's regression FAILs the merge as a blocking KPI's does, so it is evidence that the fault was caught."""
    guards = [kpi("rollout.tf_mse", "regressed", 0.02), kpi("dynamics.val_loss", "regressed", 0.004),
              kpi("rollout.tf_action_response", "inconclusive")]
    assert all(k.rule.guard for k in guards[:2]) and guards[2].rule.blocking
    comparison = verdict_of(guards)
    row = judge(FAULT, comparison)
    assert (row.observed, row.caught_by, row.p_adjusted, row.ok) == ("FAIL", "dynamics.val_loss", 0.004, True)


def test_the_resolution_table_lists_each_guard_with_the_worsening_it_fails():
    """The null rows' "can it settle" table: a blocking KPI's detectable worsening and seeds needed; a guard's
    smallest worsening FAILed with 80% power (tests/test_stats.py derives +71.3% by hand from these values)."""
    rules = [KpiRule("loss", "lower", "log", 0.05), KpiRule("guard", "lower", "log", 0.10, blocking=False, guard=True),
             KpiRule("info", "lower", "log", 0.10, blocking=False)]
    base = {i: v for i, v in enumerate([1.0, 1.1, 0.95, 1.05, 1.02])}
    noisy = {i: v for i, v in enumerate([1.5, 0.8, 1.3, 0.9, 1.4])}
    comparison = compare(rules, {"loss": base, "guard": base, "info": base},
                         {"loss": {s: v * 1.01 for s, v in base.items()}, "guard": noisy, "info": noisy})
    assert comparison.verdict == "PASS"
    row = judge(AA, comparison)
    lines = resolution_lines(Validation("smoke", "sprite_world", "meanpool_concat", [0], [1], 0.05, [row]))
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| KPI")]
    assert table[0].startswith("| loss | ≤ +5.0% | ") and "needs" in table[0]
    assert table[1] == "| guard (guard) | ≤ +10.0% | fails from +71.3% at 5 |"
    assert len(table) == 2  # informational KPIs decide nothing: not listed


@pytest.mark.parametrize("kpis, failed_runs", [
    ([kpi("dynamics.it_per_s", "regressed", 0.001)], False),  # a slower machine is no evidence
    ([kpi("actions.variance_penalty", "regressed", 0.001)], False),  # nor is a regulariser
    ([kpi("actions.params", "regressed", 0.001)], False),  # nor a size
    ([kpi("rollout.ar_mse", "regressed", 0.001, tier="informational")], True),  # failed runs alone
    ([kpi("rollout.ar_mse", "inconclusive")], False),
])
def test_a_fault_failing_only_through_timing_regularisers_or_crashes_is_not_caught(kpis, failed_runs):
    comparison = verdict_of(kpis, failed_runs)
    row = judge(FAULT, comparison)
    assert caught_by(comparison) is None and row.caught_by == "" and math.isnan(row.p_adjusted)
    assert not row.ok


@pytest.mark.parametrize("verdict, ok", [("PASS", True), ("INCONCLUSIVE", False), ("FAIL", False)])
def test_a_null_row_is_as_expected_only_when_it_passes(verdict, ok):
    """INCONCLUSIVE fails a CI check as surely as FAIL: a null row expecting "not FAIL" would hide that."""
    kpis = [kpi("rollout.ar_mse", "regressed" if verdict == "FAIL" else "non-inferior", 0.02)]
    row = judge(AA, Comparison(verdict, [], kpis, None, 0.05))
    assert row.ok == ok and row.expected == EXPECT_PASS


# ----------------------------------------------------------------------------- majority accuracy blocks where actions exist

def fabricate(store: Store, specs, candidate: str, accuracy_drop: float, with_actions_kpis: bool = True) -> None:
    """ok runs whose KPIs are equal across arms except the candidate's actions.majority_accuracy, lower by
    accuracy_drop, and its actions.nmi, lower by five times that."""
    for spec in specs:
        noise = 1 + 0.01 * spec.seed
        values = {k: noise for k in KPIS if not k.endswith("steps_to_target")}
        drop = accuracy_drop if spec.variant == candidate else 0.0
        values["actions.majority_accuracy"] = 0.6 + 0.01 * spec.seed - drop
        values["actions.nmi"] = 0.6 + 0.01 * spec.seed - 5 * drop
        if not with_actions_kpis:
            del values["actions.nmi"], values["actions.majority_accuracy"]
        record_fabricated(store, spec, values, loss_scale=noise)


def compare_fabricated(tmp_path: Path, suite_path: str, profile: str, dataset: str, accuracy_drop: float,
                       with_actions_kpis: bool = True) -> Comparison:
    suite = load_suite(suite_path)
    selection = Selection(profile, dataset, "meanpool_concat", "windowed_attention", [0, 1, 2, 3], [0, 1, 2, 3])
    store = Store(tmp_path / "results")
    fabricate(store, selection.plan(suite)[0], "windowed_attention", accuracy_drop, with_actions_kpis)
    return compare_runs(suite, store, selection, alpha=0.05)[0]


@pytest.mark.parametrize("accuracy_drop, verdict", [(0.3, "FAIL"), (0.02, "PASS")])
def test_actions_majority_accuracy_blocks_on_a_dataset_with_true_actions(tmp_path, accuracy_drop, verdict):
    """A LAM that stops encoding the true actions must not PASS. NMI, which penalises a harmless split of one action
    over two latent codes, is informational: here it drops by 0.1, twice its margin, and decides nothing."""
    comparison = compare_fabricated(tmp_path, SUITE, "smoke", "sprite_world", accuracy_drop)
    assert comparison.verdict == verdict
    accuracy = next(k for k in comparison.kpis if k.name == "actions.majority_accuracy")
    assert accuracy.rule.blocking and accuracy.rule.margin == 0.05 and accuracy.rule.scale == "linear"
    nmi = next(k for k in comparison.kpis if k.name == "actions.nmi")
    assert nmi.rule.tier == "informational" and nmi.verdict == "regressed"
    if verdict == "FAIL":
        assert caught_by(comparison).name == "actions.majority_accuracy"


def test_the_losses_are_guards_and_the_controllability_kpis_block_by_default():
    """Training is chaotic: the losses vary 2-4x between seeds, too much to ever show non-inferiority at the gate's
    seeds (docs/variance.md), so they guard, as does the autoregressive action response; majority accuracy and the
    teacher-forced action response block; NMI only informs."""
    losses = [f"{stage}.val_loss" for stage in ("tokenizer", "actions", "dynamics")] + ["rollout.ar_mse",
                                                                                        "rollout.tf_mse"]
    expected = {**dict.fromkeys(losses, "guard"), "actions.majority_accuracy": "blocking",
                "rollout.action_response": "guard", "rollout.tf_action_response": "blocking"}
    for kpis in (KPIS, load_suite(SUITE).kpis):  # the defaults, and as the project's bench.toml leaves them
        assert {name: rule.tier for name, rule in kpis.items() if rule.can_fail} == expected
        assert kpis["actions.nmi"].tier == "informational" and kpis["actions.majority_accuracy"].margin == 0.05


def write_hdf5(path: Path, with_actions: bool) -> None:
    with h5py.File(path, "w") as f:
        f["frames"] = np.zeros((40, 16, 16, 3), np.uint8)
        if with_actions:
            f["actions"] = np.zeros(40, np.int64)


@pytest.mark.parametrize("with_actions, verdict", [(False, "PASS"), (True, "INCONCLUSIVE")])
def test_missing_majority_accuracy_blocks_only_where_the_dataset_has_actions(tmp_path, with_actions, verdict):
    write_hdf5(tmp_path / "video.h5", with_actions)
    suite_path = tmp_path / "bench.toml"
    suite_path.write_text(f'[datasets.recorded]\nkind = "hdf5"\npath = "{tmp_path / "video.h5"}"\n')
    suite = load_suite(suite_path)
    accuracy_rule = next(r for r in rules_for(suite, with_actions) if r.name == "actions.majority_accuracy")
    assert accuracy_rule.blocking == with_actions
    # No actions: it is not measured and must not block; with actions its absence must not PASS.
    comparison = compare_fabricated(tmp_path, str(suite_path), "default", "recorded", 0.0, with_actions_kpis=False)
    assert comparison.verdict == verdict


# ----------------------------------------------------------------------------- the command

CRASH_PLUGIN = '''
from variants import register
from worldmodel.lam import MeanPoolConcat


@register("lam_encoder", "crashing_encoder")
class CrashingEncoder(MeanPoolConcat):
    """Test component: raises, so its runs fail."""

    def forward(self, frames):
        raise RuntimeError("planted crash")
'''


def read_rows(results: Path) -> list[dict]:
    return json.loads((results / "report" / "validate.json").read_text())["rows"]


def test_validate_runs_each_fault_against_the_baseline_and_a_users_fault_joins(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    # A 24-step smoke model barely follows its actions: its teacher-forced action response is a handful of flipped
    # tokens, which float rounding alone flips too, so here it guards (FAILs a blind dynamics) rather than blocks.
    # On the walled sprite world (a wall and a solid spinner, the built-in data before the open torus), where its
    # dynamics' blindness shows at three seeds; on the open torus 24 steps learn too little of the actions to tell.
    walled = ['datasets.walled.game="sprite_world"', "datasets.walled.noop=false", "datasets.walled.repeat_prob=0.5",
              "datasets.walled.options={walls=1}"]
    args = ["--profile", "smoke", "--dataset", "walled", "--seeds", "0-2", "--results", str(results), "--jobs", "2",
            "--quiet", "--set", 'kpis."rollout.tf_action_response".blocking=false',
            "--set", 'kpis."rollout.tf_action_response".guard=true', *[f for item in walled for f in ("--set", item)]]
    code = main(["validate", "--config", SUITE, *args])
    rows = {row["name"]: row for row in read_rows(results)}
    assert list(rows) == [*BUILTIN_FAULTS, "null_rounding", AA_CHECK]
    # The two faults the smoke profile tells apart at three seeds are caught, each by the KPI its damage
    # shows in (adjusted p about 0.001 at the time of writing).
    for name, evidence in (("fault_tokenizer_undertrained", "tokenizer."), ("fault_dynamics_blind",
                                                                             "rollout.")):
        row = rows[name]
        assert (row["observed"], row["ok"]) == ("FAIL", True), row
        assert row["caught_by"].startswith(evidence) and row["p_adjusted"] < 0.05, row
    # The null change (initial weights x (1 + 1e-6 N(0, 1)), float rounding only) PASSes on the same seeds: smoke
    # trains 24 steps, too few to amplify the rounding into another model.
    assert rows["null_rounding"]["expected"] == "PASS" and rows["null_rounding"]["observed"] == "PASS"
    assert rows["null_rounding"]["ok"]
    for row in rows.values():  # a row is ok exactly when the gate's verdict is the expected one, for a reason
        caught = row["caught_by"] != ""
        assert caught == (row["p_adjusted"] is not None) and (not caught or KPIS[row["caught_by"]].evidence)
        expected_ok = row["observed"] == "PASS" if row["expected"] == "PASS" else (row["observed"] == "FAIL" and caught)
        assert row["ok"] == expected_ok, row
    assert rows[AA_CHECK]["expected"] == "PASS"  # smoke's seeds differ far more than its margins: no PASS there
    assert code == (0 if all(row["ok"] for row in rows.values()) else 1)
    markdown = (results / "report" / "validate.md").read_text()
    assert all(f"| {name.replace('_', chr(92) + '_')} |" in markdown for name in rows)
    runs = pd.read_parquet(results / "store" / "runs")
    assert runs.groupby("variant")["seed"].apply(sorted).to_dict() == {
        "meanpool_concat": [0, 1, 2, 3, 4, 5], **{name: [0, 1, 2] for name in [*BUILTIN_FAULTS, "null_rounding"]}}
    assert "Can each blocking KPI settle at these seeds?" in markdown and "needs" in markdown
    assert "| rollout.tf\\_mse (guard) |" in markdown and "fails from" in markdown  # and what each guard can FAIL
    printed = capsys.readouterr().out
    assert "planted faults and null changes vs meanpool_concat" in printed
    assert all(any(f"│ {name} " in line for line in printed.splitlines()) for name in rows)  # piped: never folded

    # A user's planted fault joins; its runs crash, so validate exits 4. A plugin's source joins every
    # stage id (it may register a component for any stage), so the other runs are recorded anew.
    (tmp_path / "crash_plugin.py").write_text(CRASH_PLUGIN)
    suite = tmp_path / "bench.toml"
    suite.write_text(Path(SUITE).read_text() + textwrap.dedent("""
        [plugins]
        modules = ["crash_plugin"]
        [variants.fault_crashes]
        components = { lam_encoder = "crashing_encoder" }
        planted_fault = true
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.components()
    monkeypatch.setitem(registry._REGISTRY, "lam_encoder", dict(registry._REGISTRY["lam_encoder"]))
    monkeypatch.setitem(sys.modules, "crash_plugin", None)  # so teardown removes the imported plugin
    monkeypatch.delitem(sys.modules, "crash_plugin")
    assert main(["validate", "--config", str(suite), *args]) == 4
    rows = {r["name"]: r for r in read_rows(results)}
    assert list(rows) == [*BUILTIN_FAULTS, "fault_crashes", "null_rounding", AA_CHECK]
    crashed = rows["fault_crashes"]
    assert crashed["observed"] == "FAIL" and crashed["caught_by"] == "" and not crashed["ok"]  # crashes alone
    runs = pd.read_parquet(results / "store" / "runs")
    assert len(runs) == 21 + 21 + 3 and set(runs[runs["status"] == "failed"]["variant"]) == {"fault_crashes"}


def test_validate_says_the_code_changed_when_its_runs_are_not_under_this_codes_ids(tmp_path, monkeypatch, capsys):
    """Runs missing after validate trained them are not crashes or failed faults: exit 2, one line."""
    monkeypatch.setattr("harness.cli.run_with_progress",
                        lambda *args: pd.DataFrame({"status": pd.Series([], dtype=str)}))  # records nothing
    code = main(["validate", "--config", SUITE, "--profile", "smoke", "--seeds", "0-1", "--quiet",
                 "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "not recorded under this code's run ids: the code changed while bench validate ran" in err


@pytest.mark.parametrize("args, expected", [
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--seeds", "3-1"], "--seeds: '3-1' is not a seed list"),
    (["--jobs", "0"], "must be from 1 to 256"),
])
def test_validate_usage_errors_exit_2(tmp_path, capsys, args, expected):
    assert main(["validate", "--config", SUITE, "--results", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert expected in " ".join(err.split()) and err.count("\n") == 1


def test_exit_code_crash_outranks_verdicts():
    suite = load_suite(SUITE)
    checks = plan_checks(suite, "smoke", None, [0, 1])
    comparison = verdict_of([kpi("rollout.ar_mse", "regressed", 0.01)])
    as_expected = Validation("smoke", "sprite_world", "meanpool_concat", [0, 1], [2, 3], 0.05,
                             [judge(checks[0], comparison)])
    assert exit_code(as_expected, crashed=False) == 0 and exit_code(as_expected, crashed=True) == 4
    not_as_expected = Validation("smoke", "sprite_world", "meanpool_concat", [0, 1], [2, 3], 0.05,
                                 [judge(checks[-1], comparison)])
    assert exit_code(not_as_expected, crashed=False) == 1
