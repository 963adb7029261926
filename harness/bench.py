"""`bench run` as a function: plan the matrix, skip what is recorded, execute the rest, record it."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.executors import run_local, run_ray
from harness.matrix import WORLDMODEL_DIR, RunSpec, code_hash, plan_runs
from harness.runner import Progress, RunRecord
from harness.store import Store
from harness.suite import Suite

FINAL_STATUSES = ("ok", "diverged")  # deterministic outcomes; a `failed` run is retried on the next call


@dataclass
class RunRequest:
    profile: str
    dataset: str
    variants: list[str]
    seeds: list[int]
    results: Path
    jobs: int = 1
    executor: str = "local"
    ray_address: str | None = None
    force: bool = False


def git_state() -> tuple[str, bool]:
    root = WORLDMODEL_DIR.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit or "unknown", dirty


def record_run(store: Store, record: RunRecord) -> None:
    """Frames and detail tables first, the runs row last: a run counts as recorded once its row exists."""
    run_id = record.run["run_id"]
    if record.frames is not None:
        store.write_frames(run_id, record.frames["ground_truth"], record.frames["predictions"],
                           record.frames["context"])
    for table in ("kpis", "curves", "rollouts"):
        store.append(table, getattr(record, table), run_id)
    store.append("runs", [record.run], run_id)


def execute(suite: Suite, request: RunRequest, progress: Progress | None = None,
            on_recorded=None) -> tuple[list[RunSpec], pd.DataFrame]:
    """Run whatever of the request is not recorded yet; return the specs and their run rows."""
    store = Store(request.results)
    specs = plan_runs(suite, request.profile, request.dataset, request.variants, request.seeds)
    recorded = store.runs()
    finished = set(recorded.loc[recorded["status"].isin(FINAL_STATUSES), "run_id"])
    todo = specs if request.force else [spec for spec in specs if spec.run_id not in finished]
    if request.force:
        for spec in todo:
            for stage, stage_id in spec.stage_ids.items():
                shutil.rmtree(store.cache / "stages" / f"{stage}-{stage_id}", ignore_errors=True)
    commit, dirty = git_state()
    provenance = {"git_commit": commit, "git_dirty": dirty, "code_hash": code_hash()}

    def on_record(record: RunRecord) -> None:
        record.run.update(provenance)
        record_run(store, record)
        if on_recorded:
            on_recorded(record)

    if todo:
        root = str(request.results)
        if request.executor == "ray":
            run_ray(todo, root, request.jobs, suite.plugins, on_record, request.ray_address)
        else:
            run_local(todo, root, request.jobs, suite.plugins, on_record, progress)
    ids = [spec.run_id for spec in specs]
    runs = store.runs()
    return specs, runs[runs["run_id"].isin(ids)].reset_index(drop=True)
