"""The run schedule: seeds interleaved across arms, timing KPIs blocking only when measured side by side,
and sequential looks that keep every earlier seed and never exceed --max-seeds."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from harness import gate
from harness.cli import main
from harness.driver import finished_runs, timing_paired
from harness.gate import Selection, extend_seeds, look_sizes, rules_for
from harness.kpis import KPIS
from harness.matrix import plan_runs
from harness.sequential import alpha_spending
from harness.store import Store
from harness.suite import load_suite
from tiny import record_fabricated, run_row

SUITE = str(Path(__file__).resolve().parents[1] / "bench.toml")


@pytest.fixture(scope="module")
def suite():
    return load_suite(SUITE)


def test_plans_put_each_seeds_baseline_and_candidate_runs_side_by_side(suite):
    specs = plan_runs(suite, "smoke", "sprite_world", ["meanpool_concat", "windowed_attention"], [0, 1, 2])
    assert [(s.variant, s.seed) for s in specs] == [
        ("meanpool_concat", 0), ("windowed_attention", 0), ("meanpool_concat", 1), ("windowed_attention", 1),
        ("meanpool_concat", 2), ("windowed_attention", 2)]
    selection = Selection("smoke", "sprite_world", "meanpool_concat", "windowed_attention", [0, 1], [0, 1])
    planned, arm_of = selection.plan(suite)
    assert [(s.variant, s.seed) for s in planned] == [
        ("meanpool_concat", 0), ("windowed_attention", 0), ("meanpool_concat", 1), ("windowed_attention", 1)]
    assert len(planned) == 4 and len({spec.run_id for spec in planned}) == 4


def test_runs_that_train_nothing_of_their_own_go_last(suite):
    """A MaskGIT schedule decodes with the baseline's stages: beside the baseline's run it would only wait."""
    specs = plan_runs(suite, "smoke", "sprite_world", ["meanpool_concat", "maskgit_cosine", "windowed_attention"],
                      [0, 1])
    assert [(s.variant, s.seed) for s in specs] == [
        ("meanpool_concat", 0), ("windowed_attention", 0), ("meanpool_concat", 1), ("windowed_attention", 1),
        ("maskgit_cosine", 0), ("maskgit_cosine", 1)]


def runs_frame(batches: dict[tuple[str, int], str]) -> pd.DataFrame:
    return pd.DataFrame([{"arm": arm, "seed": seed, "status": "ok", "batch": batch}
                         for (arm, seed), batch in batches.items()])


def test_timing_kpis_block_only_when_both_arms_ran_in_one_interleaved_batch(suite):
    together = runs_frame({("b", 0): "x", ("c", 0): "x", ("b", 1): "x", ("c", 1): "x"})
    reused = runs_frame({("b", 0): "old", ("c", 0): "new", ("b", 1): "old", ("c", 1): "new"})
    unknown = runs_frame({("b", 0): "", ("c", 0): "", ("b", 1): "", ("c", 1): ""})
    unpaired = runs_frame({("b", 0): "x", ("c", 5): "x"})
    assert timing_paired(together, "b", "c")
    assert not any(timing_paired(runs, "b", "c") for runs in (reused, unknown, unpaired))

    timing = [name for name in suite.kpis if KPIS[name].timing]
    blocking_suite = SimpleNamespace(kpis={name: replace(KPIS[name], blocking=True) for name in timing})
    assert all(rule.blocking for rule in rules_for(blocking_suite, timing_paired=True))
    assert not any(rule.blocking for rule in rules_for(blocking_suite, timing_paired=False))


def test_a_run_records_the_machine_load_and_its_batch(tmp_path, monkeypatch):
    from harness import driver

    recorded = []
    monkeypatch.setattr(driver, "run_local", lambda specs, root, jobs, plugins, on_record, *rest: [
        on_record(driver.RunRecord(run={**run_row(spec), "load_avg_1m": os.getloadavg()[0]})) for spec in specs])
    suite = load_suite(SUITE)
    specs = plan_runs(suite, "smoke", "sprite_world", ["meanpool_concat", "windowed_attention"], [0])
    runs = driver.execute(suite, specs, driver.Execution(tmp_path / "results"), on_recorded=recorded.append)
    assert len(runs) == 2 and runs["load_avg_1m"].notna().all() and runs["load_avg_1m"].ge(0).all()
    assert runs["batch"].nunique() == 1 and runs["batch"].iloc[0]


def test_look_sizes_never_exceed_max_seeds():
    assert look_sizes(5, 12) == [5, 10, 12]
    assert look_sizes(5, 10) == [5, 10]
    assert look_sizes(5, 5) == [5]
    assert look_sizes(3, 4) == [3, 4]
    spent = alpha_spending(3, 0.05, [5 / 12, 10 / 12, 1.0])
    # O'Brien-Fleming spending by information: little at 5 seeds, most by 10, the short last look the rest.
    assert sum(spent) == pytest.approx(0.05) and 0 < spent[0] < spent[2] < spent[1]


@pytest.mark.parametrize("baseline,candidate", [([0, 1], [0, 1]), ([0, 1], [1, 0]), ([0, 1], [2, 3])],
                         ids=["paired", "paired_in_another_order", "unpaired"])
def test_later_looks_keep_every_seed_of_earlier_looks(baseline, candidate):
    looks = [extend_seeds(baseline, candidate, extra) for extra in (0, 2, 4, 5)]
    for (b1, c1), (b2, c2) in zip(looks, looks[1:]):
        assert b2[:len(b1)] == b1 and c2[:len(c1)] == c1  # no earlier run dropped, none wasted
    paired = set(baseline) == set(candidate)
    for b, c in looks:
        assert len(b) == len(set(b)) and len(c) == len(set(c))
        assert (set(b) == set(c)) if paired else not set(b) & set(c)  # paired stays paired, unpaired apart


def undecidable_kpis(seed: int) -> dict[str, float]:
    """KPIs spread over four orders of magnitude by `seed % 5`, the same spread in both arms: neither arm is
    worse, and no number of seeds a gate takes shows a 10% margin, so every look stays INCONCLUSIVE."""
    spread = 10.0 ** (seed % 5 - 2)
    return {name: spread for name in KPIS if not name.endswith("steps_to_target")}


def test_sequential_gate_runs_looks_of_5_10_12_with_max_seeds_12(tmp_path, monkeypatch):
    """`bench gate --sequential` end to end, its training replaced by recorded runs (the only stand-in): each
    look trains only its new seeds, keeps every earlier one, stops at --max-seeds, and spends alpha in total."""
    trained, looks = [], []

    def train(suite, specs, execution, quiet):  # as harness.driver.execute: skip what is recorded, record the rest
        new = [spec for spec in specs if spec.run_id not in finished_runs(execution.results)]
        trained.append([(spec.variant, spec.seed) for spec in new])
        for spec in new:
            record_fabricated(Store(execution.results), spec, undecidable_kpis(spec.seed))
        return Store(execution.results).runs()

    build = gate.build_leaderboard

    def look(suite, store, selections, alpha, reproduce, hold_alpha=None):  # the real report, each look's seeds noted
        looks.append((list(selections[0].baseline_seeds), list(selections[0].candidate_seeds), alpha, hold_alpha))
        return build(suite, store, selections, alpha, reproduce, hold_alpha)

    monkeypatch.setattr("harness.cli.run_with_progress", train)
    monkeypatch.setattr(gate, "build_leaderboard", look)
    results = tmp_path / "r"
    code = main(["gate", "--config", SUITE, "--profile", "smoke", "--baseline", "meanpool_concat",
                 "--candidate", "windowed_attention", "--seeds", "0-4", "--candidate-seeds", "10-14",
                 "--sequential", "--max-seeds", "12", "--results", str(results), "--format", "json", "--quiet"])
    assert code == 3
    assert [(len(b), len(c)) for b, c, *_ in looks] == [(5, 5), (10, 10), (12, 12)]
    for (b1, c1, *_), (b2, c2, *_) in zip(looks, looks[1:]):
        assert b2[:len(b1)] == b1 and c2[:len(c1)] == c1  # a later look keeps every seed of the one before
    assert [len(batch) for batch in trained] == [10, 10, 4]  # each look trains its new seeds only
    assert not set(looks[-1][0]) & set(looks[-1][1])  # unpaired arms stay apart
    gate_alpha = load_suite(SUITE).comparison.alpha
    assert sum(alpha for _, _, alpha, _ in looks) == pytest.approx(gate_alpha)
    # a guard beyond its margin holds up a PASS at the gate's alpha at every look, not at the look's spent one
    assert [hold for *_, hold in looks] == [gate_alpha] * 3
    report = json.loads((results / "report" / "report.json").read_text())
    assert report["verdict"] == "INCONCLUSIVE" and any("look 3 of 3: 12 seeds" in note for note in report["notes"])
    runs = pd.read_parquet(results / "store" / "runs")
    assert runs.groupby("variant")["seed"].count().to_dict() == {"meanpool_concat": 12, "windowed_attention": 12}


@pytest.mark.parametrize("args, expected", [
    (["--seeds", "0-2", "--candidate-seeds", "10-14", "--sequential", "--max-seeds", "6"],
     "--sequential needs arms of equal size, but --seeds gives the baseline 3 and --candidate-seeds the candidate 5"),
    (["--seeds", "0-4", "--max-seeds", "8"], "--max-seeds 8 is read only with --sequential"),
])
def test_a_sequential_cap_that_would_not_hold_for_both_arms_is_refused(tmp_path, capsys, args, expected):
    code = main(["gate", "--config", SUITE, "--profile", "smoke", "--results", str(tmp_path / "r"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and expected in " ".join(err.split()) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_max_seeds_below_the_first_look_is_a_usage_error(tmp_path, capsys):
    code = main(["gate", "--config", SUITE, "--profile", "smoke", "--seeds", "0-4", "--sequential",
                 "--max-seeds", "3", "--results", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-seeds 3 is below the 5 seeds" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
