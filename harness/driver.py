"""The driver: check a run matrix's inputs, skip the runs already recorded, hand the rest to an executor
(harness/executors.py, whose workers run harness/worker.py) and record each result in the store."""
from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.executors import run_local, run_ray, start_ray
from harness.git import git_state
from harness.matrix import RunSpec, code_hash
from harness.schema import Suite
from harness.seed_batches import check_batchable
from harness.store import Store, stage_folder
from harness.worker import Progress, RunRecord
from worldmodel.data import VideoData, VideoWindows, load_hdf5
from worldmodel.data.games import check_generation
from worldmodel.errors import WorldbenchError
from worldmodel.kernels import backend, library
from worldmodel.rollout import rollout_clips
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
    seed_batch: int = 1  # runs of one variant whose stages train as one model (harness/seed_batches.py)


def record_run(store: Store, record: RunRecord) -> None:
    """Frames and detail tables first, the runs row last: a run counts as recorded once its row exists."""
    run_id = record.run["run_id"]
    if record.frames is not None:
        store.write_frames(run_id, record.frames["ground_truth"], record.frames["predictions"],
                           record.frames["context"], record.frames.get("reconstructions"))
    for table in ("kpis", "curves", "rollouts"):
        store.append(table, getattr(record, table), run_id)
    store.append("runs", [record.run], run_id)


def preflight(specs: list[RunSpec], device: str = "cpu") -> None:
    """Check every input a run would otherwise fail on minutes later, before anything is written: the kernel
    backend named by WORLDBENCH_ATTENTION, each dataset's values, a user's HDF5 file against the model,
    whether the episodes hold a training window and the rollout clips, and, for runs on the CPU with the
    native backend, that the kernels build and load (into the kernel cache, the one place outside --results).

    Each problem is a usage error (one line, exit 2), never a `failed` run. Procedural datasets are checked
    on their episode layout (harness.driver.episode_layout), so nothing is rendered here.
    """
    backend()
    checked = set()
    for spec in specs:
        config = spec.config
        key = (spec.data_id, config.frame_size, config.window, config.rollout.horizon, config.rollout.clips)
        if key in checked:
            continue
        checked.add(key)
        try:
            if spec.data["kind"] == "hdf5":
                data = load_hdf5(spec.data["path"], frame_size=spec.data["frame_size"] or None,
                                 dataset_name=spec.dataset)
            else:
                data = episode_layout(spec.data)
            for split in ("train", "val"):
                check_data_matches(config, VideoWindows(data, config.window, split, spec.data["val_fraction"]))
            rollout_clips(data, config, spec.data["val_fraction"])
        except WorldbenchError as err:
            raise WorldbenchError(f"datasets.{spec.dataset} on profiles.{spec.profile}: {err}") from None
    if specs and device == "cpu" and backend() == "native":
        library()  # a missing compiler is one line now, not a failed run per spec


def episode_layout(data: dict) -> VideoData:
    """What a procedural dataset's generated video looks like to windows and splits: its episodes, of
    frames of the model's size that take no memory (one zero pixel, broadcast)."""
    check_generation(data["game"], data["episodes"], data["episode_len"], data["frame_size"], data["seed"],
                     data["repeat_prob"], data.get("options"), data["noop"])
    count, size = data["episodes"] * data["episode_len"], data["frame_size"]
    frames = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (count, size, size, 3))  # [N, S, S, 3]
    return VideoData(frames, None, np.arange(data["episodes"], dtype=np.int64) * data["episode_len"])


def finished_runs(results: Path) -> set[str]:
    """Ids of the runs the store holds a final result of (ok or diverged: a `failed` run is retried), read
    without creating anything; a results dir that is not worldbench's is refused."""
    if not Path(results).exists():
        return set()
    runs = Store(results, create=False).runs()
    return set(runs.loc[runs["status"].isin(FINAL_STATUSES), "run_id"])


def execute(suite: Suite, specs: list[RunSpec], execution: Execution, progress: Progress | None = None,
            on_recorded=None) -> pd.DataFrame:
    """Run whatever of `specs` is not recorded yet; return the run rows of all of them.

    Nothing is written (not even the results dir) until the inputs have passed `preflight`.
    """
    finished = finished_runs(execution.results)
    todo = specs if execution.force else [spec for spec in specs if spec.run_id not in finished]
    preflight(todo, execution.device)
    if todo and execution.seed_batch > 1:
        check_batchable(todo, execution.device)
    if todo and execution.executor == "ray":
        start_ray(execution.jobs, execution.ray_address)
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
            run_ray(todo, root, execution.jobs, suite.plugins, on_record, execution.device, execution.seed_batch)
        else:
            run_local(todo, root, execution.jobs, suite.plugins, on_record, progress, execution.device,
                      execution.seed_batch)
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
