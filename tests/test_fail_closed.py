"""Failing closed: an exit code of 0, 1 or 3 only from a verdict that was computed and written, nothing
written outside --results, --out and the kernel cache, and a finished run that always has every KPI row."""
from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from harness.cli import EXIT_CRASHED, EXIT_INTERRUPTED, EXIT_USAGE, main
from harness.export import TRACKERS
from harness.kpis import COMPARE_TIME_KPIS, KPIS
from harness.store import Store
from tiny import tiny_suite
from worldmodel.errors import WorldbenchError

REPO = Path(__file__).resolve().parents[1]
TINY = tiny_suite("tiny", tokenizer_steps=4, actions_steps=4, dynamics_steps=4)


def bench(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`bench ARGS` as a user runs it: a process of its own, through the guard (harness.cli.guard)."""
    path = os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- exit codes

EXITING_PLUGINS = {
    "exit0_plugin": "import sys\nsys.exit(0)\n",
    "exit1_plugin": "import sys\nsys.exit(1)\n",
    "interrupt_plugin": "raise KeyboardInterrupt\n",
    "os_exit0_plugin": "import os\nos._exit(0)\n",
    "os_exit1_plugin": "import os\nos._exit(1)\n",
}
# Components whose code ends the process while a run trains them (in a worker process).
EXITING_COMPONENTS = '''
import os
import sys
from variants import register
from worldmodel.lam import MeanPoolConcat


@register("lam_encoder", "sys_exit_0")
class SysExit(MeanPoolConcat):
    """Test component: sys.exit(0) in the middle of a run."""
    def forward(self, frames):
        sys.exit(0)


@register("lam_encoder", "interrupted")
class Interrupted(MeanPoolConcat):
    """Test component: KeyboardInterrupt in the middle of a run."""
    def forward(self, frames):
        raise KeyboardInterrupt


@register("lam_encoder", "os_exit_0")
class OsExit(MeanPoolConcat):
    """Test component: os._exit(0), the worker process gone at once."""
    def forward(self, frames):
        os._exit(0)
'''


@pytest.mark.parametrize("plugin", sorted(EXITING_PLUGINS))
def test_a_plugin_that_ends_the_process_at_import_is_exit_2_naming_it(tmp_path, plugin):
    """sys.exit, KeyboardInterrupt or os._exit at import: never 0 or 1, always the plugin named in one line."""
    (tmp_path / f"{plugin}.py").write_text(EXITING_PLUGINS[plugin])
    (tmp_path / "bench.toml").write_text(TINY + f'[plugins]\nmodules = ["{plugin}"]\n')
    for command in ("run", "gate") if plugin.endswith("exit0_plugin") else ("run",):  # one loader for both
        done = bench(command, "--profile", "tiny", "--results", str(tmp_path / "r"), "--quiet", cwd=tmp_path)
        assert done.returncode == EXIT_USAGE, (command, done.returncode, done.stderr)
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
        assert f"plugin '{plugin}'" in done.stderr
        assert not (tmp_path / "r").exists()


def test_no_environment_variable_makes_a_process_report_for_the_guard(tmp_path):
    """The guard's channel is not in the environment: a variable naming an open file descriptor (stderr) does
    not turn `bench` into an unguarded child whose plugin's os._exit(0) would be its exit code."""
    (tmp_path / "os_exit0_plugin.py").write_text(EXITING_PLUGINS["os_exit0_plugin"])
    (tmp_path / "bench.toml").write_text(TINY + '[plugins]\nmodules = ["os_exit0_plugin"]\n')
    for fd in ("2", "abc", ""):
        done = bench("gate", "--profile", "tiny", "--results", str(tmp_path / "r"), "--quiet", cwd=tmp_path,
                     env={"WORLDBENCH_OUTCOME_FD": fd})
        assert done.returncode == EXIT_USAGE and done.stderr.startswith("error: plugins.modules"), done.stderr


LYING_PLUGIN = """
import harness.stats
from harness.types import Finding, Reason, Verdict

harness.stats._merge_verdict = lambda kpis, failed_baseline, failed_candidate: (
    Verdict.PASS, [Reason(Finding.ALL_BLOCKING_OK, None)], None)
"""


def test_a_plugin_that_replaces_part_of_the_judge_gets_no_verdict(tmp_path):
    """A plugin that monkeypatches the statistics to say PASS, at import: exit 2 naming it and what it replaced,
    before anything is written (the planted fault it would have waved through FAILs without it)."""
    (tmp_path / "lying_plugin.py").write_text(LYING_PLUGIN)
    (tmp_path / "bench.toml").write_text(TINY + '[plugins]\nmodules = ["lying_plugin"]\n')
    done = bench("gate", "--profile", "tiny", "--candidate", "fault_dynamics_blind", "--results",
                 str(tmp_path / "r"), "--quiet", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: plugins.modules: plugin 'lying_plugin' replaced "
                                  "harness.stats._merge_verdict"), done.stderr
    assert not (tmp_path / "r").exists()


def test_a_judge_replaced_after_import_stops_the_report_before_it_is_written(monkeypatch, tmp_path):
    """Replaced later (by a component's code, say): `write_report` checks again first, so nothing is written."""
    import harness.cli
    import harness.plugins
    import harness.stats

    def fake_verdict(*args):
        raise AssertionError("never called")

    fake_verdict.__module__ = "a_plugin"
    monkeypatch.setattr(harness.plugins, "_loaded", ["a_plugin"])
    harness.plugins.check_judge()  # nothing replaced yet
    monkeypatch.setattr(harness.stats, "_merge_verdict", fake_verdict)
    with pytest.raises(WorldbenchError, match="plugin 'a_plugin' replaced harness.stats._merge_verdict"):
        harness.cli.write_report(None, tmp_path / "out", ["md"], None)
    assert not (tmp_path / "out").exists()


def test_kernels_that_cannot_be_built_are_one_line_before_anything_is_written(tmp_path):
    """No working compiler and an empty kernel cache: exit 2 naming the compiler and the way out, from `run`
    and `gate`, with no results dir (a fresh process: one that has loaded the kernels never builds them again)."""
    (tmp_path / "bench.toml").write_text(TINY)
    env = {"CXX": "/bin/false", "WORLDBENCH_KERNEL_CACHE": str(tmp_path / "kernels"), "WORLDBENCH_ATTENTION": ""}
    for command in ("run", "gate"):
        done = bench(command, "--profile", "tiny", "--results", str(tmp_path / "r"), "--quiet", cwd=tmp_path, env=env)
        assert done.returncode == EXIT_USAGE and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: the native worldbench kernels are unavailable (no working C++ "
                                      "compiler '/bin/false'") and "WORLDBENCH_ATTENTION=torch" in done.stderr
        assert not (tmp_path / "r").exists() and not (tmp_path / "kernels").exists()


def test_a_component_that_ends_its_run_is_a_failed_run_and_exit_4(tmp_path):
    """Code a run executes (in a worker) raising SystemExit or KeyboardInterrupt, or calling os._exit:
    those runs fail, the others are kept, and the command exits 4, never 0 or 1."""
    (tmp_path / "exiting_components.py").write_text(EXITING_COMPONENTS)
    variants = "".join(f'[variants.{name}]\ncomponents = {{ lam_encoder = "{name}" }}\n'
                       for name in ("sys_exit_0", "interrupted", "os_exit_0"))
    (tmp_path / "bench.toml").write_text(TINY + '[plugins]\nmodules = ["exiting_components"]\n' + variants)
    done = bench("run", "--profile", "tiny", "--variants", "meanpool_concat,sys_exit_0,interrupted,os_exit_0",
                 "--results", str(tmp_path / "r"), "--quiet", cwd=tmp_path)
    assert done.returncode == EXIT_CRASHED, done.stderr
    runs = pd.read_parquet(tmp_path / "r" / "store" / "runs").set_index("variant")["status"].to_dict()
    assert set(runs) == {"meanpool_concat", "sys_exit_0", "interrupted", "os_exit_0"}
    assert runs["sys_exit_0"] == runs["interrupted"] == runs["os_exit_0"] == "failed"


def test_a_command_ended_by_sys_exit_inside_is_exit_4_with_one_line(monkeypatch, capsys):
    import harness.cli

    for code in (0, 1, 3):
        monkeypatch.setitem(harness.cli.COMMANDS, "list", lambda args, code=code: sys.exit(code))
        assert main(["list", "variants"]) == EXIT_CRASHED
        err = capsys.readouterr().err
        assert err.startswith("internal error: SystemExit") and err.count("\n") == 1, err


def test_a_signal_whose_unwinding_breaks_a_lock_is_still_the_signals_exit(monkeypatch, capsys):
    """SIGHUP's exception landing inside a lock's release makes threading raise "release unlocked lock" as it
    unwinds: the command still ended because of the signal (129, one line), not a bug (4); a bug is still 4."""
    import signal
    import harness.cli

    def hung_up(args):
        try:
            raise harness.cli.Terminated(signal.SIGHUP)
        except harness.cli.Terminated:
            raise RuntimeError("release unlocked lock") from None  # from None hides it, __context__ keeps it

    monkeypatch.setitem(harness.cli.COMMANDS, "list", hung_up)
    assert main(["list", "variants"]) == 128 + signal.SIGHUP
    err = capsys.readouterr().err
    assert err.startswith("terminated (SIGHUP); workers stopped") and err.count("\n") == 1, err

    def interrupted(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("release unlocked lock")

    monkeypatch.setitem(harness.cli.COMMANDS, "list", interrupted)
    assert main(["list", "variants"]) == EXIT_INTERRUPTED
    monkeypatch.setitem(harness.cli.COMMANDS, "list", lambda args: 1 / 0)
    assert main(["list", "variants"]) == EXIT_CRASHED


def test_the_guard_exits_with_what_the_command_decided_not_with_how_its_process_ended(tmp_path):
    """A plugin that makes the process exit 0 after the command returned (an atexit hook) changes nothing:
    the guard exits with the code the command reported."""
    (tmp_path / "atexit_plugin.py").write_text("import atexit, os\natexit.register(lambda: os._exit(0))\n")
    (tmp_path / "bench.toml").write_text(TINY + '[plugins]\nmodules = ["atexit_plugin"]\n')
    done = bench("run", "--profile", "tiny", "--variants", "nope", "--results", str(tmp_path / "r"), cwd=tmp_path)
    assert done.returncode == EXIT_USAGE and "unknown variant 'nope'" in done.stderr, done.stderr


# ----------------------------------------------------------------------------- where the program writes

HOSTILE = ["../../../escaped", "a\x00b", "n" * 300, "line\nbreak", "/tmp/abs", "..", ""]


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if not p.is_symlink()}


def changed(before: dict, after: dict) -> set[str]:
    return {path for path in after if before.get(path) != after[path]} | (set(before) - set(after))


def test_every_command_writes_only_under_results_out_and_the_kernel_cache(tmp_path):
    """Every command, with hostile names on the command line and in bench.toml, and once with good ones end to
    end in its own process (HOME and the working directory in a scratch tree): nothing appears anywhere but
    under --results and --out (the kernel cache is kept where it was built, outside the tree)."""
    root, configs = tmp_path / "tree", tmp_path / "configs"  # the tree watched, and the test's own files
    home, work, results, out = root / "home", root / "work", root / "results", root / "out"
    for folder in (home, work, configs):
        folder.mkdir(parents=True)
    (work / "bench.toml").write_text(TINY)
    kernels = os.environ.get("WORLDBENCH_KERNEL_CACHE") or str(Path(os.environ.get(
        "XDG_CACHE_HOME", Path.home() / ".cache")) / "worldbench" / "kernels")
    env = {"HOME": str(home), "XDG_CACHE_HOME": "", "WORLDBENCH_KERNEL_CACHE": kernels}
    before = tree(root)

    # Hostile names are refused with exit 2 and write nothing (in this process: a NUL cannot be an argument).
    config = work / "bench.toml"
    for name in HOSTILE:
        for argv in (["run", "--profile", name], ["run", "--dataset", name], ["run", "--variants", name],
                     ["gate", "--baseline", name], ["gate", "--candidate", name], ["report", "--profile", name],
                     ["validate", "--dataset", name], ["show", name]):
            code = main([*argv, "--config", str(config), "--results", str(results)])
            assert code == EXIT_USAGE, (argv, code)
        for section in ("profiles", "datasets", "variants"):
            hostile = configs / "hostile.toml"
            hostile.write_text(f"[{section}.{json.dumps(name)}]\n")
            assert main(["list", "--config", str(hostile)]) == EXIT_USAGE, (section, name)
            hostile.unlink()
    assert changed(before, tree(root)) == set(), "a refused command wrote files"

    # Good names, every command, end to end as a user runs them.
    common = ["--config", str(config), "--results", str(results)]
    for argv in (["run", "--profile", "tiny", "--quiet"],
                 ["gate", "--profile", "tiny", "--quiet", "--out", str(out)],
                 ["report", "--profile", "tiny", "--out", str(out / "again"), "--format", "json"],
                 ["validate", "--profile", "tiny", "--quiet", "--jobs", "1"],
                 ["list", "kpis"]):
        done = bench(*argv, *(common if argv[0] != "list" else ["--config", str(config)]), cwd=work, env=env)
        assert done.returncode in (0, 1, 3), (argv, done.returncode, done.stderr[-2000:])
    run_id = str(pd.read_parquet(results / "store" / "runs")["run_id"].iloc[0])
    assert bench("show", run_id[:8], *common, cwd=work, env=env).returncode == 0
    for tracker, (module, _) in TRACKERS.items():  # the trackers keep their caches and config under --out too
        if importlib.util.find_spec(module) is not None:
            done = bench("export", "--to", tracker, "--results", str(results), "--out", str(out / tracker), cwd=work,
                         env=env)
            assert done.returncode == 0, done.stderr[-2000:]
    assert (results / "report" / "validate.json").exists()

    elsewhere = {path for path in changed(before, tree(root))
                 if not (path.startswith(("results/", "out/")) or path in ("results", "out"))}
    assert elsewhere == set(), f"written outside --results and --out: {sorted(elsewhere)[:10]}"
    assert (out / "report.json").exists() and (out / "again" / "report.json").exists()


# ----------------------------------------------------------------------------- the store under concurrency

def _create_store(root: str, start, errors) -> None:
    start.wait()
    try:
        Store(Path(root))
    except Exception as err:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(err).__name__}: {err}")


def test_processes_creating_one_new_results_dir_at_once_all_succeed(tmp_path):
    """Six drivers starting on one new results dir: none sees a half-written worldbench.json or the others'
    temp file and calls the dir someone else's."""
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for attempt in range(40):
        root = tmp_path / f"results{attempt}"
        start = context.Barrier(6)
        processes = [context.Process(target=_create_store, args=(str(root), start, errors)) for _ in range(6)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert json.loads((root / "worldbench.json").read_text())["project"] == "worldbench"
        assert [p.name for p in root.iterdir()] == ["worldbench.json"]  # no temp file left
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []


# ----------------------------------------------------------------------------- every KPI row of a finished run

def test_a_finished_run_records_every_kpi_with_nan_where_its_evaluation_gave_none(tmp_path):
    """A metric the evaluation did not produce is a NaN row, never an absent one: an absent row would shrink
    the sample unseen (the statistics count a NaN as missing, and missing data never passes)."""
    from harness.worker import RunRecord, add_results

    curve = [{"step": step, "loss": 1.0 / step, "it_per_s": 10.0} for step in range(1, 11)]
    outputs = {stage: {"curve": curve, "metrics": {"val_loss": 0.5}, "params": 100, "wall_s": 1.0,
                       "peak_rss_mb": 10.0} for stage in ("tokenizer", "actions", "dynamics")}
    frames = np.zeros((1, 5, 4, 4, 3), np.uint8)
    result = SimpleNamespace(kpis={"ar_mse": 0.1}, scores={}, ground_truth=frames, predictions={},
                             reconstructions=None)
    spec = SimpleNamespace(run_id="r1", config=SimpleNamespace(window=4))
    record = RunRecord(run={})
    add_results(record, spec, outputs, result)
    values = {row["kpi"]: row["value"] for row in record.kpis}
    assert set(values) == set(KPIS) - COMPARE_TIME_KPIS
    assert values["rollout.ar_mse"] == 0.1 and values["actions.val_loss"] == 0.5
    assert np.isnan(values["actions.nmi"]) and np.isnan(values["rollout.delta_psnr"])


# ----------------------------------------------------------------------------- one line after the progress bars

def test_an_error_after_the_progress_bars_started_is_still_exactly_one_line(tmp_path, monkeypatch, capsys):
    from harness import driver
    from worldmodel.errors import WorldbenchError

    def full_disk(store, record):
        raise WorldbenchError("cannot write 'part' (No space left on device); free disk space")

    monkeypatch.setattr(driver, "record_run", full_disk)
    (tmp_path / "bench.toml").write_text(TINY)
    code = main(["run", "--config", str(tmp_path / "bench.toml"), "--profile", "tiny", "--variants",
                 "meanpool_concat", "--results", str(tmp_path / "r")])  # with progress bars
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.startswith("error: cannot write 'part'") and err.count("\n") == 1, repr(err)
