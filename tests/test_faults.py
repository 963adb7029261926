"""Fault injection: a worker killed mid-run, a truncated store part, a full disk, and a driver stopped by
SIGTERM or SIGKILL. Whatever happens, nothing already recorded is lost, the tool says what went wrong in
one line with the project's exit codes, and no worker process outlives its driver."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import EXIT_CRASHED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE, main
from tiny import tiny_suite

TABLES = ("runs", "kpis", "curves", "rollouts")


def write_suite(folder: Path, steps: int) -> Path:
    suite = folder / "bench.toml"
    suite.write_text(tiny_suite("faulty", tokenizer_steps=steps, actions_steps=8, dynamics_steps=8))
    return suite


def bench(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())",
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def children(pid: int) -> list[int]:
    """The direct child processes of `pid`, from /proc (those of each of its threads)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").glob("*")
            for child in (task / "children").read_text().split()]


def workers_of(pid: int) -> list[int]:
    """The run workers (spawned processes) below the `bench` process `pid`, from /proc: `bench` runs its
    command in a child (harness.cli.guard), whose children the workers are."""
    found, todo = [], [pid]
    while todo:
        try:
            below = children(todo.pop())
        except OSError:
            continue
        for child in below:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                found.append(child)
            else:
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def training_checkpoint(results: Path) -> Path | None:
    """A tokenizer checkpoint of a stage that has not finished: a run is mid-training."""
    stages = results / "cache" / "stages"
    return next((p for p in stages.glob("tokenizer-*/checkpoint.pt") if not (p.parent / "output.json").exists()),
                None) if stages.exists() else None


def store_rows(results: Path) -> dict[str, pd.DataFrame]:
    return {table: pd.read_parquet(results / "store" / table) for table in TABLES}


def run_args(suite: Path, results: Path, seeds: str) -> list[str]:
    return ["run", "--config", str(suite), "--profile", "faulty", "--variants", "meanpool_concat", "--seeds", seeds,
            "--results", str(results), "--quiet", "--jobs", "1"]


def assert_kept(before: dict[str, pd.DataFrame], results: Path) -> None:
    """Every row recorded before is still there, value for value."""
    after = store_rows(results)
    for table, rows in before.items():
        merged = rows.merge(after[table], how="left", indicator=True)
        assert (merged["_merge"] == "both").all(), f"{table}: rows recorded before were lost"


def test_faults_never_lose_what_was_recorded(tmp_path, monkeypatch, capsys):
    suite = write_suite(tmp_path, steps=60)
    results = tmp_path / "results"
    assert main(run_args(suite, results, "0")) == EXIT_OK
    recorded = store_rows(results)

    # 1. A worker killed mid-run (the OOM killer, a segfault): that run is `failed`, the driver goes on, exit 4.
    driver = bench(*run_args(suite, results, "0,1"))
    wait_for(lambda: training_checkpoint(results), 180, "seed 1 to train")
    for worker in workers_of(driver.pid):
        os.kill(worker, signal.SIGKILL)
    assert driver.wait(timeout=120) == EXIT_CRASHED, driver.stderr.read()
    runs = pd.read_parquet(results / "store" / "runs").set_index("seed")
    assert runs.loc[1, "status"] == "failed" and "worker process died" in runs.loc[1, "error"]
    assert_kept(recorded, results)

    # ... and the next call retries it (resuming the stage from its checkpoint).
    assert main(run_args(suite, results, "0,1")) == EXIT_OK
    assert set(pd.read_parquet(results / "store" / "runs")["status"]) == {"ok"}
    assert_kept(recorded, results)
    recorded = store_rows(results)
    capsys.readouterr()

    # 2. A truncated store part (a kill mid-copy): one line naming the file, exit 2; the other parts stay readable.
    seed_1 = recorded["runs"].set_index("seed").loc[1, "run_id"]
    part = results / "store" / "kpis" / f"part-{seed_1}.parquet"
    part.write_bytes(part.read_bytes()[:40])
    seed_0 = recorded["runs"].set_index("seed").loc[0, "run_id"]
    assert main(["show", seed_0, "--results", str(results)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(part) in " ".join(err.split()) and "Traceback" not in err
    kept = pd.read_parquet(results / "store" / "kpis" / f"part-{seed_0}.parquet")
    pd.testing.assert_frame_equal(kept, recorded["kpis"][recorded["kpis"]["run_id"] == seed_0].reset_index(drop=True))
    for table in TABLES:  # the fix the message gives: delete that run's parts and rerun
        (results / "store" / table / f"part-{seed_1}.parquet").unlink()
    assert main(run_args(suite, results, "0,1")) == EXIT_OK
    assert_kept({table: rows[rows["run_id"] != seed_1] for table, rows in recorded.items()}, results)
    recorded = store_rows(results)
    capsys.readouterr()

    # 3. A full disk while recording: one line naming the file, exit 2, no temp file left, nothing lost;
    #    once there is space again the same command records the rest.
    real_to_parquet = pd.DataFrame.to_parquet

    def disk_full(self, path, *args, **kwargs):
        if "runs" in Path(path).parts:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_to_parquet(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    assert main(run_args(suite, results, "0-2")) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "runs recorded before are kept" in err
    assert not list((results / "store").rglob(".*tmp*")), "a temp file was left behind"
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real_to_parquet)
    assert_kept(recorded, results)
    assert 2 not in set(pd.read_parquet(results / "store" / "runs")["seed"])
    assert main(run_args(suite, results, "0-2")) == EXIT_OK
    assert_kept(recorded, results)
    assert set(pd.read_parquet(results / "store" / "runs")["seed"]) == {0, 1, 2}


@pytest.mark.parametrize("sig,target", [(signal.SIGTERM, "bench"), (signal.SIGHUP, "bench"), (signal.SIGKILL, "bench"),
                                        (signal.SIGKILL, "command")],
                         ids=["sigterm", "sighup", "sigkill", "sigkill_command"])
def test_workers_never_outlive_their_driver(tmp_path, sig, target):
    """SIGTERM (or a hang-up): the driver stops its workers and exits 143 (129) with one line. SIGKILL: it can
    do nothing, so each worker notices its parent is gone and exits by itself; when the command's process is
    killed (`bench`'s child, as the OOM killer may), `bench` says so in one line, exit 4."""
    suite = write_suite(tmp_path, steps=2000)
    results = tmp_path / "results"
    driver = bench(*run_args(suite, results, "0"))
    wait_for(lambda: training_checkpoint(results), 180, "the run to train")
    workers = wait_for(lambda: workers_of(driver.pid), 30, "the worker process")
    os.kill(driver.pid if target == "bench" else children(driver.pid)[0], sig)
    code = driver.wait(timeout=60)
    wait_for(lambda: not any(alive(pid) for pid in workers), 30, "the workers to exit")
    if target == "command":
        err = driver.stderr.read().strip()
        assert code == EXIT_CRASHED and len(err.splitlines()) == 1 and "killed by signal 9" in err, err
    elif sig != signal.SIGKILL:
        err = driver.stderr.read().strip()
        assert code == (EXIT_TERMINATED if sig == signal.SIGTERM else 129), err
        assert len(err.splitlines()) == 1 and "rerun the same command" in err, err
