"""`bench run` end to end on the smoke profile: tables, stage sharing, resume, isolation, Ray."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.kpis import KPIS
from harness.store import Store
from harness.suite import build_suite, load_suite
import variants  # noqa: F401  (registers the built-in components)
from worldmodel import registry
from worldmodel.errors import WorldbenchError
from tiny import tiny_suite

REPO = Path(__file__).resolve().parents[1]
SUITE = str(REPO / "bench.toml")
TABLES = ("runs", "kpis", "curves", "rollouts")


def reproducible_kpis(results: Path) -> pd.DataFrame:
    """KPIs keyed by (variant, seed, kpi), without the timing ones that depend on machine load."""
    runs = pd.read_parquet(results / "store" / "runs")[["run_id", "variant", "seed"]]
    kpis = pd.read_parquet(results / "store" / "kpis").merge(runs, on="run_id")
    kpis = kpis[~kpis["kpi"].map(lambda k: KPIS[k].timing)]
    return kpis.set_index(["variant", "seed", "kpi"])["value"].sort_index()


def test_smoke_run_fills_all_four_tables_and_show_prints_a_run(smoke_results, capsys):
    for table in TABLES:
        frame = pd.read_parquet(smoke_results / "store" / table)
        assert len(frame) > 0, table
    runs = pd.read_parquet(smoke_results / "store" / "runs")
    assert sorted(zip(runs["variant"], runs["seed"])) == [
        ("meanpool_concat", 0), ("meanpool_concat", 1), ("windowed_attention", 0), ("windowed_attention", 1)]
    assert (runs["status"] == "ok").all()
    kpis = pd.read_parquet(smoke_results / "store" / "kpis")
    assert not kpis.duplicated(["run_id", "kpi"]).any()
    recorded = set(kpis["kpi"])
    expected = {name for name in KPIS if not name.endswith("steps_to_target")}
    assert expected <= recorded, expected - recorded
    assert all((smoke_results / "frames" / f"{run_id}.h5").exists() for run_id in runs["run_id"])
    frames = Store(smoke_results).read_frames(runs["run_id"][0])
    assert frames["reconstructions"].dtype == np.uint8  # the tokenizer's view of the rollout clips
    assert frames["reconstructions"].shape == frames["ground_truth"].shape

    capsys.readouterr()
    assert main(["show", runs["run_id"][0][:8], "--results", str(smoke_results)]) == 0
    shown = capsys.readouterr().out
    assert "rollout.ar_mse" in shown and runs["variant"][0] in shown


def test_the_verdict_summary_keeps_each_reason_on_one_line_when_piped(smoke_results, tmp_path):
    """On one seed every blocking KPI is missing data, and each reason is longer than a terminal's 80 columns."""
    done = subprocess.run(bench_command("report", "--config", SUITE, "--profile", "smoke", "--seeds", "0",
                                        "--results", str(smoke_results), "--out", str(tmp_path)),
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("INCONCLUSIVE: ")
    reasons = [line for line in lines if line.startswith("  - ")]
    assert len(reasons) >= 2 and all(line.rstrip().endswith("(need 2 each)") for line in reasons)
    assert all(line.startswith(("  - ", "  md: ", "  html: ", "  json: ")) for line in lines[1:]), lines


def test_variants_that_only_change_the_lam_share_the_tokenizer(smoke_results):
    stages = [p.name.split("-")[0] for p in (smoke_results / "cache" / "stages").iterdir() if p.is_dir()]
    # 2 variants x 2 seeds: one tokenizer per seed, a LAM and a dynamics model per run
    assert stages.count("tokenizer") == 2
    assert stages.count("actions") == 4 and stages.count("dynamics") == 4
    runs = pd.read_parquet(smoke_results / "store" / "runs")
    ids = runs.set_index(["variant", "seed"])["stage_ids_json"].map(json.loads)
    assert ids[("meanpool_concat", 0)]["tokenizer"] == ids[("windowed_attention", 0)]["tokenizer"]
    assert ids[("meanpool_concat", 0)]["actions"] != ids[("windowed_attention", 0)]["actions"]


def test_rerun_skips_recorded_runs(smoke_results, monkeypatch):
    from harness import driver

    before = pd.read_parquet(smoke_results / "store" / "runs")
    # Skipped means never handed to an executor (not "fast enough", which a loaded machine can miss).
    monkeypatch.setattr(driver, "run_local", lambda todo, *rest: pytest.fail(f"{len(todo)} recorded runs ran again"))
    assert main(["run", "--config", SUITE, "--profile", "smoke", "--results", str(smoke_results), "--quiet"]) == 0
    after = pd.read_parquet(smoke_results / "store" / "runs")
    assert after.sort_values("run_id").equals(before.sort_values("run_id"))


def test_ray_executor_gives_the_same_kpis_as_local(smoke_results, tmp_path):
    ray = pytest.importorskip("ray")
    results = tmp_path / "ray"
    try:
        code = main(["run", "--config", SUITE, "--profile", "smoke", "--results", str(results), "--jobs", "2",
                     "--executor", "ray", "--quiet"])
    finally:
        ray.shutdown()  # a Ray left connected would serve the next test's --executor ray
    assert code == 0
    runs = pd.read_parquet(results / "store" / "runs")
    assert set(runs["executor"]) == {"ray"}
    pd.testing.assert_series_equal(reproducible_kpis(results), reproducible_kpis(smoke_results))


def test_a_run_trains_its_lam_first_while_another_worker_holds_the_shared_tokenizer(smoke_results, tmp_path,
                                                                                   monkeypatch):
    import fcntl
    from types import SimpleNamespace
    from harness import worker

    spec = SimpleNamespace(stage_ids={"tokenizer": "abc"})
    lock = tmp_path / "cache" / "stages" / "tokenizer-abc.lock"
    assert worker.stage_order(spec, tmp_path / "cache") == ("tokenizer", "actions", "dynamics")
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as holder:  # another open file: flock conflicts as with another process
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert worker.stage_order(spec, tmp_path / "cache") == ("actions", "tokenizer", "dynamics")
    assert worker.stage_order(spec, tmp_path / "cache") == ("tokenizer", "actions", "dynamics")

    # The order changes no number: every run trained LAM first gives the KPIs of the smoke runs.
    monkeypatch.setattr(worker, "stage_order", lambda spec, cache: ("actions", "tokenizer", "dynamics"))
    results = tmp_path / "lam_first"
    assert main(["run", "--config", SUITE, "--profile", "smoke", "--results", str(results), "--jobs", "2",
                 "--quiet"]) == 0  # --jobs 2 as the smoke runs: the same torch threads per run
    pd.testing.assert_series_equal(reproducible_kpis(results), reproducible_kpis(smoke_results))


# ----------------------------------------------------------------------------- kill and resume

KILL_SUITE = tiny_suite("killable", tokenizer_steps=60, actions_steps=16, dynamics_steps=16)


def bench_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())", *args]


def test_sigkilled_run_resumes_to_identical_kpis_without_duplicate_rows(tmp_path):
    suite = tmp_path / "bench.toml"
    suite.write_text(KILL_SUITE)
    args = ["run", "--config", str(suite), "--profile", "killable", "--variants", "meanpool_concat", "--quiet"]
    assert main([*args, "--results", str(tmp_path / "whole")]) == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen(bench_command(*args, "--results", str(killed)), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    checkpoint = None
    while time.time() < deadline and checkpoint is None:
        checkpoint = next((p for p in (killed / "cache" / "stages").glob("tokenizer-*/checkpoint.pt")), None) \
            if (killed / "cache" / "stages").exists() else None
        time.sleep(0.05)
    assert checkpoint is not None, "the tokenizer never wrote a checkpoint"
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its worker, mid-stage
    process.wait()
    assert not (checkpoint.parent / "output.json").exists(), "killed too late: the stage had finished"
    assert not (killed / "store" / "runs").exists()

    assert main([*args, "--results", str(killed)]) == 0
    pd.testing.assert_series_equal(reproducible_kpis(killed), reproducible_kpis(tmp_path / "whole"))
    for table in TABLES:
        frame = pd.read_parquet(killed / "store" / table)
        assert not frame.duplicated().any(), table
    assert len(pd.read_parquet(killed / "store" / "runs")) == 1


# ----------------------------------------------------------------------------- failure isolation

NAN_PLUGIN = '''
import torch
from torch import nn
from variants import register
from worldmodel.lam import MeanPoolConcat


@register("lam_encoder", "nan_encoder")
class NanEncoder(MeanPoolConcat):
    """Test component: its output is NaN, so the LAM loss diverges."""

    def forward(self, frames):
        return super().forward(frames) * float("nan")
'''


def test_a_diverging_component_marks_only_its_run_and_exits_4(tmp_path, monkeypatch):
    (tmp_path / "nan_plugin.py").write_text(NAN_PLUGIN)
    suite = tmp_path / "bench.toml"
    suite.write_text(KILL_SUITE.replace("steps = 60", "steps = 8") + textwrap.dedent("""
        [plugins]
        modules = ["nan_plugin"]
        [variants.broken]
        components = { lam_encoder = "nan_encoder" }
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    # The plugin registers into this process too: give it a copy of the slot, restored afterwards.
    registry.components()
    monkeypatch.setitem(registry._REGISTRY, "lam_encoder", dict(registry._REGISTRY["lam_encoder"]))
    monkeypatch.setitem(sys.modules, "nan_plugin", None)  # so teardown removes the imported plugin
    monkeypatch.delitem(sys.modules, "nan_plugin")
    results = tmp_path / "results"
    code = main(["run", "--config", str(suite), "--profile", "killable", "--variants", "meanpool_concat,broken",
                 "--results", str(results), "--quiet", "--jobs", "2"])
    assert code == 4
    runs = pd.read_parquet(results / "store" / "runs").set_index("variant")
    assert runs.loc["meanpool_concat", "status"] == "ok"
    assert runs.loc["broken", "status"] == "diverged"
    assert runs.loc["broken", "failed_stage"] == "actions"
    assert runs.loc["broken", "diverged_step"] == 1


# ----------------------------------------------------------------------------- profiles built on a base


def test_a_profile_with_a_base_gets_its_model_and_data_under_its_own_keys():
    suite = build_suite({"profiles": {
        "small": {"data": {"episodes": 12, "episode_len": 16},
                  "model": {"frame_size": 16, "actions": {"steps": 30, "rotary": True}}},
        "eight": {"base": "small", "data": {"episodes": 20}, "model": {"n_actions": 8, "actions": {"steps": 40}}},
        "deeper": {"base": "eight", "model": {"actions": {"lr": 1e-3}}},
    }})
    eight, deeper = suite.model_config("eight", "meanpool_concat"), suite.model_config("deeper", "meanpool_concat")
    assert (eight.frame_size, eight.n_actions, eight.actions.steps, eight.actions.rotary) == (16, 8, 40, True)
    assert (deeper.n_actions, deeper.actions.steps, deeper.actions.lr) == (8, 40, 1e-3)
    assert suite.profile("eight").data == {"episodes": 20, "episode_len": 16}
    assert suite.model_config("small", "meanpool_concat").n_actions == 4  # the base itself is unchanged


def test_the_pong_profile_is_the_ci_profile_with_eight_latent_actions():
    suite = load_suite(REPO / "bench.toml")
    ci, pong = suite.model_config("ci", "meanpool_concat").to_dict(), suite.model_config("pong", "meanpool_concat").to_dict()
    assert {**ci, "n_actions": 8} == pong and ci["n_actions"] == 64
    assert suite.profile("pong").data == suite.profile("ci").data


# ----------------------------------------------------------------------------- bad input: one line, exit 2

HDF5_DATASET = '[datasets.mine]\nkind = "hdf5"\npath = "{{tmp}}/{file}"\n'


@pytest.mark.parametrize("args, toml, expected", [
    (["--profile", "nope"], "", "unknown profile 'nope'; known profiles:"),
    (["--variants", "meanpool_concat,nope"], "", "unknown variant 'nope'; known variants:"),
    (["--dataset", "nope"], "", "unknown dataset 'nope'; known datasets:"),
    ([], '[kpis."rollout.nope"]\nmargin = 0.1\n', "kpis: 'rollout.nope' is not allowed; use one of:"),
    ([], "[profiles.x\nseeds = 1", "is not valid TOML"),
    ([], "[profiles.x]\nseeds = \"three\"", "profiles.x.seeds: 'three' is not a seed list"),
    ([], "[profiles.x.model.tokenizer]\nsteps = \"ten\"", "profiles.x.model.tokenizer.steps: expected an integer"),
    ([], "[profiles.x.model]\nframe_sise = 32", "profiles.x.model.frame_sise: unknown model key; allowed:"),
    ([], "[variants.v]\ncomponents = { lam_encoder = \"nope\" }",
     "variants.v.components.lam_encoder: 'nope' is not allowed; use one of: blind, meanpool_concat"),
    ([], "[kpis.\"rollout.ar_mse\"]\ndirection = \"up\"", "kpis.rollout.ar_mse.direction: 'up' is not allowed"),
    # a guard KPI FAILs a regression and need not be non-inferior; a blocking one must be: not both
    ([], '[kpis."rollout.ar_mse"]\nguard = "yes"', "kpis.rollout.ar_mse.guard: expected true or false, got 'yes'"),
    ([], '[kpis."rollout.ar_mse"]\nblocking = true', "kpis.rollout.ar_mse.guard: blocking and guard are both true; "
                                                    "pick one"),
    (["--seeds", "3-1"], "", "--seeds: '3-1' is not a seed list"),
    (["--jobs", "0"], "", "argument --jobs: must be from 1 to 256, got 0"),
    # ranges checked when the suite loads, before any run trains
    ([], "[profiles.x.model.tokenizer]\nheads = 0", "tokenizer.heads 0 must be >= 1"),
    ([], "[profiles.x.model]\npatch_size = 0", "patch_size 0 must be >= 1"),
    ([], "[profiles.x.model]\nframe_size = 0", "frame_size 0 must be >= 1"),
    ([], "[profiles.x.model.actions]\ncheckpoint_every = 0", "actions.checkpoint_every 0 must be >= 1"),
    ([], "[profiles.x.model.dynamics]\nhidden = -4", "dynamics.hidden -4 must be >= 1"),
    ([], "[profiles.x.model.dynamics]\nblocks = 0", "dynamics.blocks 0 must be >= 1"),
    ([], "[profiles.x.model.tokenizer]\nlr = nan", "tokenizer.lr nan must be a finite number > 0"),
    ([], "[profiles.x.model.tokenizer]\nlr = -1e-3", "tokenizer.lr -0.001 must be a finite number > 0"),
    ([], "[profiles.x.model.dynamics]\ngrad_clip = -1.0", "dynamics.grad_clip -1.0 must be a finite number > 0"),
    ([], "[profiles.x.model.tokenizer]\neval_batches = 0", "tokenizer.eval_batches 0 must be >= 1"),
    ([], "[profiles.x.model.dynamics]\nmaskgit_steps = 0", "dynamics.maskgit_steps 0 must be >= 1"),
    ([], "[profiles.x.model.actions]\ndecoder_context = \"some\"", "actions.decoder_context 'some' is not one of"),
    ([], "[profiles.x.model.dynamics]\nlr_decay = \"linear\"", "dynamics.lr_decay 'linear' is not one of"),
    ([], "[profiles.x.model.actions]\nrotary = true\nheads = 16", "actions.rotary needs a head dim"),
    ([], "[profiles.x.model.actions]\nentropy_weight = -0.1", "actions.entropy_weight -0.1 must be a finite number >= 0"),
    ([], "[profiles.x.model.dynamics]\nmasked_frames = \"first\"", "dynamics.masked_frames 'first' is not one of"),
    ([], "[comparison]\ncandidates = []", "comparison.candidates: empty"),
    ([], "[comparison]\nalpha = 5.0", "comparison.alpha: 5.0 is not in (0, 0.5)"),
    ([], "[datasets.mine]\noptions = { grid = 1 }", "datasets.mine.options: sprite_world option grid=1"),
    ([], "[datasets.mine]\noptions = { colour = 1 }", "has no option 'colour'"),
    ([], "[datasets.mine]\ngame = \"pong\"\noptions = { paddle_step = 0 }", "pong option paddle_step=0"),
    ([], "[profiles.x]\nbase = \"nope\"", "profiles.x.base: no profile 'nope'; known: default, x"),
    ([], "[profiles.x]\nbase = \"y\"\n[profiles.y]\nbase = \"x\"", "profiles.y.base: 'x' makes a cycle (x -> y -> x)"),
    (["--seeds", "99999999999999999999999"], "", "at most 10,000 seeds, each <= 4294967295"),
    (["--seeds", "0-100000000"], "", "asks for 100,000,001 seeds"),
    (["--seeds", ""], "", "--seeds: empty seed list"),
    (["--variants", "[/]"], "", "unknown variant '[/]'"),
    # CLI
    (["--jobs", "abc"], "", "argument --jobs: 'abc' is not a whole number"),
    # --set: the same checks and lines as the file, naming the key
    (["--set", "profiles.default.seeds=three"], "", "profiles.default.seeds: 'three' is not a seed list"),
    (["--set", 'kpis."rollout.ar_mse".margin=-1'], "", "kpis.rollout.ar_mse.margin: must be a finite number >= 0"),
    (["--set", "comparison.nope=1"], "", "comparison.nope: unknown key"),
    (["--set", "profiles.default.model.tokenizer.steps=0"], "", "profiles.default.model"),
    (["--set", "a b=1"], "", "--set 'a b=1': 'a b' is not a dotted key"),
    (["gate", "--set", "comparison.alpha=0.1", "--baseline-ref", "HEAD"], "", "--set with --baseline-ref"),
    (["--executor", "dask"], "", "argument --executor: invalid choice: 'dask'"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:1"], "", "--ray-address '127.0.0.1:1': nothing answers there"),
    (["--executor", "ray", "--ray-address", "head-node"], "", "--ray-address 'head-node' is not HOST:PORT"),
    (["list", "nope"], "", "invalid choice: 'nope'"),
    (["gate", "--format", "pdf"], "", "--format: 'pdf' is not a list of md, html, json"),
    (["gate", "--seeds", "0-4", "--sequential", "--max-seeds", "3"], "", "--max-seeds 3 is below the 5 seeds"),
    (["gate", "--candidate-seeds", "x"], "", "--candidate-seeds: 'x' is not a seed list"),
    # config: a raw component override must name a registered component
    ([], "[profiles.x.model.actions]\nencoder = \"nope\"",
     "profiles.x.model.actions.encoder: 'nope' is not allowed; use one of: blind, meanpool_concat"),
    ([], "[variants.v]\noverrides = { \"actions.encoder\" = \"nope\" }",
     "variants.v.overrides.actions.encoder: 'nope' is not allowed; use one of:"),
    ([], "[comparison]\nbaseline = \"nope\"", "unknown variant 'nope'"),
    # plugins
    ([], "[plugins]\nmodules = [\"syntax_error_plugin\"]",
     "plugin 'syntax_error_plugin' ({tmp}/syntax_error_plugin.py:2) failed to import: SyntaxError"),
    ([], "[plugins]\nmodules = [\"raising_plugin\"]",
     "plugin 'raising_plugin' ({tmp}/raising_plugin.py:3) failed to import: RuntimeError: plugin exploded"),
    ([], "[plugins]\nmodules = [\"missing_dependency_plugin\"]",
     "plugin 'missing_dependency_plugin' ({tmp}/missing_dependency_plugin.py:1) failed to import: "
     "ModuleNotFoundError: No module named 'no_such_package_wb'"),
    ([], "[plugins]\nmodules = [\"no_such_plugin_wb\"]", "plugins.modules: cannot import 'no_such_plugin_wb'"),
    # data: a user's HDF5 file, checked before any run (and before the results dir is made)
    (["--dataset", "mine"], HDF5_DATASET.format(file="nonsquare.h5"),
     "frames are 16x24 (height x width), the model needs square frames"),
    (["--dataset", "mine"], HDF5_DATASET.format(file="float_frames.h5"), "'frames' has dtype float32, must be uint8"),
    (["--dataset", "mine"], HDF5_DATASET.format(file="no_frames.h5"), "has no 'frames' dataset (it has: video)"),
    (["--dataset", "mine"], HDF5_DATASET.format(file="not_hdf5.h5"), "is not an HDF5 file"),
    (["--dataset", "mine"], HDF5_DATASET.format(file="gone.h5"), "does not exist"),
    # store
    (["--results", "{tmp}/a_file"], "", "results path '{tmp}/a_file' is a file"),
    (["--results", "{tmp}/foreign"], "", "was not made by worldbench"),
    (["show", "abc", "--results", "{tmp}/nowhere"], "", "results dir '{tmp}/nowhere' does not exist"),
    (["show", "abc", "--results", "{tmp}/truncated"], "", "store/runs/part-aaaa.parquet' is unreadable"),
    (["report", "--results", "{tmp}/empty_results"], "", "no recorded runs of meanpool_concat or"),
    # issue 21, row 1: a plugin that exits or is interrupted at import is named (os._exit: test_a_plugin_...)
    ([], "[plugins]\nmodules = [\"exit0_plugin\"]", "plugin 'exit0_plugin' ({tmp}/exit0_plugin.py:2) failed to import: "
                                                   "SystemExit: 0"),
    ([], "[plugins]\nmodules = [\"exit1_plugin\"]", "plugin 'exit1_plugin' ({tmp}/exit1_plugin.py:2) failed to import: "
                                                   "SystemExit: 1"),
    ([], "[plugins]\nmodules = [\"interrupt_plugin\"]", "plugin 'interrupt_plugin' ({tmp}/interrupt_plugin.py:1) failed "
                                                       "to import: KeyboardInterrupt"),
    # row 2 and 13: names that cannot be a file name or one line of text
    (["--dataset", "../../../escaped_dataset"], '[datasets."../../../escaped_dataset"]\ngame = "sprite_world"',
     "datasets: the name '../../../escaped_dataset' cannot be used"),
    ([], f'[variants."{"v" * 300}"]', "variants: the name 'vvvvvvvvvv"),
    ([], '[variants."a\\u0000b"]', "variants: the name 'a\\x00b' cannot be used"),
    ([], '[profiles."a\\nb"]', "profiles: the name 'a\\nb' cannot be used"),
    ([], '[variants."a\\nb"]', "variants: the name 'a\\nb' cannot be used"),
    # row 3: a candidate that is the baseline on the same seeds compares nothing
    (["gate", "--baseline", "meanpool_concat", "--candidate", "meanpool_concat"], "",
     "the candidate 'meanpool_concat' is the baseline, on the same seeds"),
    ([], '[comparison]\ncandidates = ["meanpool_concat"]', "comparison.candidates: 'meanpool_concat' is the baseline"),
    ([], '[comparison]\ncandidates = ["query_pool", "query_pool"]', "comparison.candidates: query_pool named more than once"),
    # row 4: a steps_to_target rule the statistics cannot use
    ([], '[kpis."dynamics.steps_to_target"]\nblocking = true\ntarget_epsilon = nan',
     "kpis.dynamics.steps_to_target.target_epsilon: must be a finite number >= 0, got nan"),
    ([], '[kpis."dynamics.steps_to_target"]\ntarget_epsilon = -3.0', "target_epsilon: must be a finite number >= 0"),
    ([], '[kpis."dynamics.steps_to_target"]\ntarget = -1.0', "kpis.dynamics.steps_to_target.target: must be"),
    # row 5: dataset values, before anything runs
    (["--profile", "x"], "[profiles.x]\ndata = { episodes = 0 }", "profiles.x.data.episodes: must be >= 1, got 0"),
    (["--profile", "x"], '[profiles.x]\ndata = { episodes = "many" }', "profiles.x.data.episodes: expected an integer"),
    (["--profile", "x"], "[profiles.x]\ndata = { episode_len = 3 }",
     "datasets.sprite_world on profiles.x: every train episode is shorter than one window of 4 frames"),
    (["--dataset", "mine"], "[datasets.mine]\nval_fraction = 1.5",
     "datasets.mine on profiles.default: val_fraction must be in [0, 1), got 1.5"),
    (["--dataset", "mine"], "[datasets.mine]\nseed = -1", "datasets.mine on profiles.default: game 'sprite_world': seed"),
    # row 6: what the rollouts need, before the stages train
    (["--profile", "x"], "[profiles.x.model]\nrollout = { clips = 4, horizon = 40 }",
     "datasets.sprite_world on profiles.x: rollout clips of 43 frames do not fit"),
    ([], "[profiles.x.model.dynamics]\ntemperature = nan", "dynamics.temperature nan must be a finite number >= 0"),
    (["--profile", "s16", "--dataset", "mine"],
     "[profiles.s16.model]\nframe_size = 16\n" + HDF5_DATASET.format(file="short_val.h5"),
     "rollout clips of 11 frames do not fit"),
    # row 7: HDF5 frames that cannot be read
    (["--dataset", "mine"], HDF5_DATASET.format(file="empty_frames.h5"), "'frames' has shape [40, 0, 0, 3]"),
    (["--dataset", "mine"], HDF5_DATASET.format(file="huge_sparse.h5"), "more than this machine's"),
    # row 8: report destinations, checked before training
    (["gate", "--out", "{tmp}/a_file/report"], "", "--out '{tmp}/a_file/report' lies under '{tmp}/a_file', which is a file"),
    (["gate", "--out", "/proc/worldbench_report"], "", "--out '/proc/worldbench_report' cannot be created"),
    (["gate", "--out", "{tmp}/a_file"], "", "--out '{tmp}/a_file' is a file"),
    (["gate", "--out", "{tmp}/r/store/kpis"], "", "is inside the store"),
    (["env:GITHUB_STEP_SUMMARY={tmp}/missing_dir/summary.md", "gate"], "",
     "GITHUB_STEP_SUMMARY '{tmp}/missing_dir/summary.md' is in a folder that does not exist"),
    # row 9: the gate writes nothing before refusing
    (["gate", "--dataset", "mine"], HDF5_DATASET.format(file="not_hdf5.h5"), "is not an HDF5 file"),
    (["gate", "--baseline-ref", "no_such_ref_wb"], "", "--baseline-ref: 'no_such_ref_wb' does not name a commit"),
    (["--executor", "ray", "--ray-address", "auto"], "", "cannot start or reach Ray at 'auto'"),
    # row 10: an empty name is given, not the default
    (["--profile", ""], "", "unknown profile ''"),
    (["--dataset", ""], "", "unknown dataset ''"),
    (["--variants", ""], "", "unknown variant ''"),
    (["gate", "--candidate", ""], "", "unknown variant ''"),
    # row 11: the kernel backend
    (["env:WORLDBENCH_ATTENTION=bogus"], "", "WORLDBENCH_ATTENTION='bogus' is not a known backend"),
    # row 12: the seed limits hold in bench.toml too
    (["--profile", "x"], "[profiles.x]\nseeds = [5000000000]", "profiles.x.seeds: asks for 1 seeds up to 5000000000"),
    (["--profile", "x"], f"[profiles.x]\nseeds = {list(range(20_001))}", "asks for 20,001 seeds"),
    ([], "[comparison]\nseeds = [4294967296]", "comparison.seeds: asks for 1 seeds up to 4294967296"),
    # row 15: arms that share some seeds would have their other runs dropped
    (["gate", "--seeds", "0-4", "--candidate-seeds", "0,1,7,8,9"], "",
     "the arms share only some seeds (--seeds 0-4, --candidate-seeds 0,1,7-9)"),
    # row 16 and the smaller ones
    (["gate", "--seeds", "0-2", "--candidate-seeds", "10-14", "--sequential"], "", "--sequential needs arms of equal size"),
    (["gate", "--max-seeds", "8"], "", "--max-seeds 8 is read only with --sequential"),
    (["--variants", "v"], '[variants.v]\noverrides = { "tokenizer.steps" = -5 }',
     "variants.v on profiles.default: tokenizer.steps -5 must be >= 1"),
    ([], '[kpis."rollout.ar_mse"]\ntarget = 1.0', "kpis.rollout.ar_mse.target: unknown key"),
    # a second hostile pass
    (["--jobs", "3000000000"], "", "argument --jobs: must be from 1 to 256, got 3000000000"),
    (["--seed-batch", "0"], "", "argument --seed-batch: must be from 1 to 64, got 0"),
    (["gate", "--device", "cuda"], "", "only `bench run` takes --device and --seed-batch; train with `bench run"),
    (["report", "--seed-batch=2"], "", "unrecognized arguments: --seed-batch=2: only `bench run` takes --device"),
    (["--variants", "v", "--seed-batch", "2"], '[variants.v]\ncomponents = { lam_encoder = "meanpool_concat", '
     'ffn = "moe" }', "variant v: dynamics: this model cannot be trained seed-batched"),
    (["gate", "--sequential", "--max-seeds", "100000000000"], "", "argument --max-seeds: must be from 1 to 10,000"),
    (["--variants", "v"], '[variants.v]\nscale = { "tokenizer.steps" = inf }',
     "variants.v.scale.tokenizer.steps: the factor must be > 0 and <= 1000, got inf"),
    (["--variants", "v"], '[variants.v]\nscale = { "tokenizer.steps" = 1e308 }', "the factor must be > 0 and <= 1000"),
    ([], '[plugins]\nmodule = ["my_plugin"]', "plugins.module: unknown key; allowed: modules"),
    (["--results", ""], "", "argument --results: an empty path; name a file or folder"),
    (["gate", "--out", " "], "", "argument --out: an empty path"),
    (["--config", ""], "", "argument --config: an empty path"),
    (["gate", "env:GITHUB_STEP_SUMMARY={tmp}/r/store/runs/part.parquet"], "",
     "GITHUB_STEP_SUMMARY '{tmp}/r/store/runs/part.parquet' is inside the store"),
    ([], f'[variants."{"世" * 40}"]', "bytes in UTF-8"),  # 120 bytes: a folder name of export's must fit
])
def test_bad_input_gets_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, toml, expected):
    """Exit 2, exactly one line on stderr (the raw output: no leading blank line), no traceback, and nothing
    written anywhere. An argument "env:NAME=VALUE" sets an environment variable instead."""
    bad_input_files(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # importing a plugin must not count as writing
    for name, value in (arg[4:].replace("{tmp}", str(tmp_path)).split("=", 1) for arg in args if arg.startswith("env:")):
        monkeypatch.setenv(name, value)
    suite = tmp_path / "bench.toml"
    suite.write_text(toml.replace("{tmp}", str(tmp_path)))
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args if not arg.startswith("env:")]
    command = args.pop(0) if args and args[0] in ("gate", "report", "show", "list") else "run"
    argv = [command, "--config", str(suite), *args]
    if command != "list" and "--results" not in args:
        argv += ["--results", str(tmp_path / "r")]
    if command in ("run", "gate") and "--profile" not in args:
        argv += ["--profile", "default"]
    before = snapshot(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), repr(err)
    assert expected.replace("{tmp}", str(tmp_path)) in err, err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before, "a bad input wrote files"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def bad_input_files(folder: Path) -> None:
    """The broken plugins, data files and results dirs the bad-input table points at."""
    import h5py

    (folder / "syntax_error_plugin.py").write_text("from variants import register\ndef broken(:\n")
    (folder / "raising_plugin.py").write_text("import os\n\nraise RuntimeError('plugin exploded')\n")
    (folder / "missing_dependency_plugin.py").write_text("import no_such_package_wb\n")
    (folder / "exit0_plugin.py").write_text("import sys\nsys.exit(0)\n")
    (folder / "exit1_plugin.py").write_text("import sys\nsys.exit(1)\n")
    (folder / "interrupt_plugin.py").write_text("raise KeyboardInterrupt\n")
    for name, frames in (("nonsquare.h5", np.zeros((40, 16, 24, 3), np.uint8)),
                         ("float_frames.h5", np.zeros((40, 16, 16, 3), np.float32))):
        with h5py.File(folder / name, "w") as f:
            f["frames"] = frames
    with h5py.File(folder / "no_frames.h5", "w") as f:
        f["video"] = np.zeros((4, 16, 16, 3), np.uint8)
    with h5py.File(folder / "empty_frames.h5", "w") as f:
        f["frames"] = np.zeros((40, 0, 0, 3), np.uint8)
    with h5py.File(folder / "huge_sparse.h5", "w") as f:  # declares 10M frames of 256x256 in a few KB
        f.create_dataset("frames", shape=(10_000_000, 256, 256, 3), dtype=np.uint8, chunks=(1, 256, 256, 3))
    with h5py.File(folder / "short_val.h5", "w") as f:  # the val episode holds a window, not a rollout clip
        f["frames"] = np.zeros((40, 16, 16, 3), np.uint8)
        f["episode_starts"] = np.array([0, 30])
    (folder / "not_hdf5.h5").write_text("not hdf5")
    (folder / "a_file").write_text("")
    (folder / "foreign").mkdir()
    (folder / "foreign" / "thesis.tex").write_text("mine")
    Store(folder / "empty_results")
    truncated = Store(folder / "truncated")
    truncated.append("kpis", [{"run_id": "aaaa", "kpi": "rollout.ar_mse", "value": 0.5}], "aaaa")
    os.replace(truncated.table_dir("kpis"), truncated.table_dir("runs"))  # any parquet part will do
    part = truncated.table_dir("runs") / "part-aaaa.parquet"
    part.write_bytes(part.read_bytes()[:40])


def test_an_unexpected_exception_is_exit_4_with_one_line_and_a_log(tmp_path, capsys, monkeypatch):
    """A bug is never reported as exit 1 (the gate's FAIL) nor as a traceback on the terminal; its traceback is
    kept under --results when that is a results dir already, and nowhere else (nothing written outside it)."""
    import harness.cli

    def explode(args):
        raise RuntimeError("something deep broke\nsecond line")

    monkeypatch.setitem(harness.cli.COMMANDS, "show", explode)
    Store(tmp_path / "results")
    code = main(["show", "abc", "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 4
    assert err.count("\n") == 1 and err.startswith("internal error: RuntimeError: something deep broke at "), err
    log = next((tmp_path / "results" / "logs").glob("crash-*.log"))
    assert "Traceback" in log.read_text() and str(log) in err

    monkeypatch.setitem(harness.cli.COMMANDS, "list", explode)
    before = snapshot(tmp_path)
    assert main(["list", "variants"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "traceback:" not in err and snapshot(tmp_path) == before


def test_a_users_hdf5_dataset_is_checked_before_any_run(tmp_path, capsys):
    from worldmodel.data import generate, save_hdf5

    save_hdf5(generate("pong", 4, 16, 16, seed=0), tmp_path / "pong16.h5")
    suite = tmp_path / "bench.toml"
    suite.write_text(KILL_SUITE.replace("frame_size = 16", "frame_size = 32") + textwrap.dedent(f"""
        [datasets.mine]
        kind = "hdf5"
        path = "{tmp_path / 'pong16.h5'}"
        [datasets.gone]
        kind = "hdf5"
        path = "{tmp_path / 'gone.h5'}"
    """))
    base = ["run", "--config", str(suite), "--profile", "killable", "--variants", "meanpool_concat",
            "--results", str(tmp_path / "r")]
    assert main([*base, "--dataset", "mine"]) == 2
    err = capsys.readouterr().err
    assert "dataset frames are 16x16 but the model's frame_size is 32" in " ".join(err.split())
    assert len(err.strip().splitlines()) == 1
    assert main([*base, "--dataset", "gone"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r" / "store").exists()


def test_results_dir_that_is_unwritable_or_foreign_is_refused(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    code = main(["run", "--config", SUITE, "--profile", "smoke", "--results", str(foreign)])
    assert code == 2 and "was not made by worldbench" in capsys.readouterr().err

    other = tmp_path / "other"
    other.mkdir()
    (other / "worldbench.json").write_text('{"project": "someone-else"}')
    code = main(["run", "--config", SUITE, "--profile", "smoke", "--results", str(other)])
    assert code == 2 and "belongs to another project" in capsys.readouterr().err

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
        target = tmp_path / "a_file" / "results"
        (tmp_path / "a_file").write_text("")
    else:
        target = locked / "results"
    code = main(["run", "--config", SUITE, "--profile", "smoke", "--results", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write results dir" in err and len(err.strip().splitlines()) == 1


def test_a_truncated_store_part_is_named_in_one_line_and_other_runs_are_kept(tmp_path):
    store = Store(tmp_path / "results")
    for run in ("aaaa", "bbbb"):
        store.append("kpis", [{"run_id": run, "kpi": "rollout.ar_mse", "value": 0.5}], key=run)
    assert set(store.read("kpis")["run_id"]) == {"aaaa", "bbbb"}
    part = store.table_dir("kpis") / "part-bbbb.parquet"
    part.write_bytes(part.read_bytes()[:40])  # a kill mid-copy
    with pytest.raises(WorldbenchError) as err:
        store.read("kpis")
    assert str(part) in str(err.value) and "\n" not in str(err.value)
    part.unlink()
    assert list(store.read("kpis")["run_id"]) == ["aaaa"]  # nothing already recorded is lost


def test_editing_a_plugin_module_changes_the_stage_and_run_ids(tmp_path, monkeypatch):
    """Stale numbers must never be reused: a plugin's source joins the ids, like the project's own."""
    from harness.matrix import plan_runs

    plugin = tmp_path / "edited_plugin.py"
    plugin.write_text(NAN_PLUGIN.replace("nan_encoder", "edited_encoder"))
    suite_file = tmp_path / "bench.toml"
    suite_file.write_text('[plugins]\nmodules = ["edited_plugin"]\n[profiles.tiny]\nseeds = [0]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.components()
    monkeypatch.setitem(registry._REGISTRY, "lam_encoder", dict(registry._REGISTRY["lam_encoder"]))
    monkeypatch.setitem(sys.modules, "edited_plugin", None)
    monkeypatch.delitem(sys.modules, "edited_plugin")

    def ids() -> tuple[str, dict[str, str]]:
        spec = plan_runs(load_suite(suite_file), "tiny", "sprite_world", ["meanpool_concat"], [0])[0]
        return spec.run_id, spec.stage_ids

    before = ids()
    assert ids() == before  # deterministic
    plugin.write_text(plugin.read_text() + "\n# an edit\n")
    after = ids()
    assert after[0] != before[0]
    assert all(after[1][stage] != before[1][stage] for stage in before[1])


def test_a_stage_alone_benchmark_trains_on_the_data_a_run_of_the_profile_trains_on(tmp_path):
    """benchmarks/stage_spread.py measures one stage outside the harness; its data must be the run's (the ci
    profile's sprite world without noop), or its spreads describe another dataset."""
    import argparse
    import importlib.util

    from harness.matrix import plan_runs
    from harness.worker import load_dataset

    loader = importlib.util.spec_from_file_location("stage_spread", REPO / "benchmarks" / "stage_spread.py")
    stage_spread = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(stage_spread)
    args = argparse.Namespace(config=SUITE, profile="ci", dataset="", stage="actions", set=[])
    _, train, _ = stage_spread.build(args, seed=0, noise=0.0)
    run = plan_runs(load_suite(SUITE), "ci", "sprite_world", ["meanpool_concat"], [0])[0]
    data = load_dataset(run, tmp_path)
    assert np.array_equal(train.data.frames, data.frames) and np.array_equal(train.data.actions, data.actions)
    transitions = data.actions.reshape(run.data["episodes"], run.data["episode_len"])[:, :-1]  # [episodes, T-1]
    assert transitions.min() == 1  # no noop: every step moves the agent
