"""Executing run specs: skip what is recorded, run the rest on an executor, record each result."""
from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.executors import check_ray_address, run_local, run_ray
from harness.git import git_state
from harness.matrix import RunSpec, code_hash
from harness.runner import Progress, RunRecord
from harness.store import Store, stage_folder
from harness.suite import Suite
from worldmodel.data import VideoWindows, load_hdf5
from worldmodel.stages import check_data_matches

FINAL_STATUSES = ("ok", "diverged")  # deterministic outcomes; a `failed` run is retried on the next call


@dataclass
class Execution:
    """How and where runs execute."""
    results: Path
    jobs: int = 1
    executor: str = "local"
    ray_address: str | None = None
    force: bool = False
    device: str = "cpu"  # resolved: "cpu" or "cuda"


def record_run(store: Store, record: RunRecord) -> None:
    """Frames and detail tables first, the runs row last: a run counts as recorded once its row exists."""
    run_id = record.run["run_id"]
    if record.frames is not None:
        store.write_frames(run_id, record.frames["ground_truth"], record.frames["predictions"],
                           record.frames["context"], record.frames.get("reconstructions"))
    for table in ("kpis", "curves", "rollouts"):
        store.append(table, getattr(record, table), run_id)
    store.append("runs", [record.run], run_id)


def preflight(specs: list[RunSpec]) -> None:
    """Check users' HDF5 datasets against the model before any worker starts.

    A missing or malformed file, frames of another size than the model's, or episodes shorter
    than one window are usage errors (one line, exit 2), not run failures found minutes later.
    """
    checked = set()
    for spec in specs:
        if spec.data["kind"] != "hdf5" or (spec.data_id, spec.config.frame_size) in checked:
            continue
        checked.add((spec.data_id, spec.config.frame_size))
        data = load_hdf5(spec.data["path"], frame_size=spec.data["frame_size"] or None, dataset_name=spec.dataset)
        for split in ("train", "val"):
            windows = VideoWindows(data, spec.config.window, split, spec.data["val_fraction"])
            check_data_matches(spec.config, windows)


def execute(suite: Suite, specs: list[RunSpec], execution: Execution, progress: Progress | None = None,
            on_recorded=None) -> pd.DataFrame:
    """Run whatever of `specs` is not recorded yet; return the run rows of all of them.

    Nothing is written (not even the results dir) until the inputs have passed `preflight`.
    """
    recorded = Store(execution.results, create=False).runs() if Path(execution.results).exists() else None
    finished = set() if recorded is None else set(recorded.loc[recorded["status"].isin(FINAL_STATUSES), "run_id"])
    todo = specs if execution.force else [spec for spec in specs if spec.run_id not in finished]
    preflight(todo)
    if todo and execution.executor == "ray" and execution.ray_address:
        check_ray_address(execution.ray_address)
    store = Store(execution.results)
    if execution.force:
        for spec in todo:
            for stage, stage_id in spec.stage_ids.items():
                shutil.rmtree(stage_folder(store.cache, stage, stage_id), ignore_errors=True)
    commit, dirty = git_state()
    # One batch id per call: its runs were scheduled together, interleaved seed by seed (plan order).
    provenance = {"git_commit": commit, "git_dirty": dirty, "code_hash": code_hash(), "batch": uuid.uuid4().hex[:12]}

    def on_record(record: RunRecord) -> None:
        record.run.update(provenance)
        record_run(store, record)
        if on_recorded:
            on_recorded(record)

    if todo:
        root = str(execution.results)
        if execution.executor == "ray":
            run_ray(todo, root, execution.jobs, suite.plugins, on_record, execution.ray_address, execution.device)
        else:
            run_local(todo, root, execution.jobs, suite.plugins, on_record, progress, execution.device)
    runs = store.runs()
    return runs[runs["run_id"].isin([spec.run_id for spec in specs])].reset_index(drop=True)


def timing_paired(runs: pd.DataFrame, baseline: str, candidate: str) -> bool:
    """Whether timing KPIs were measured paired: every seed both arms finished was run by one `execute` call
    (whose schedule puts a seed's baseline and candidate runs side by side), not e.g. reused from another day.

    `runs` has an `arm` column; a run recorded before batches were, or a crashed one, has no batch.
    """
    ok = runs[runs["status"] == "ok"]
    batches = {arm: dict(zip(ok.loc[ok["arm"] == arm, "seed"], ok.loc[ok["arm"] == arm, "batch"].fillna("")))
               for arm in (baseline, candidate)}
    common = set(batches[baseline]) & set(batches[candidate])
    return bool(common) and all(batches[baseline][s] and batches[baseline][s] == batches[candidate][s]
                                for s in common)
