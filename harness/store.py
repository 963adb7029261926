"""The results store: append-only parquet tables plus one HDF5 file of rollout frames per run.

Layout under the results dir:
  worldbench.json              marks the dir as ours (a dir of another project is refused)
  store/<table>/part-<run>.parquet  one part per run and table, written to a temp name and renamed
  frames/<run_id>.h5           ground truth, predicted rollout frames and tokenizer reconstructions (uint8)
  cache/                       stage checkpoints, shared between runs
`pandas.read_parquet("results/store/<table>")` reads a whole table.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from harness.types import RunRow, column_types
from worldmodel.errors import WorldbenchError
from worldmodel.files import write_atomic

MARKER_FILE = "worldbench.json"
SCHEMA_VERSION = 1

TABLES: dict[str, dict[str, str]] = {
    "runs": column_types(RunRow),  # harness/types.py spells the run row once
    "kpis": {"run_id": "string", "kpi": "string", "value": "float64"},
    "curves": {"run_id": "string", "stage": "string", "step": "int64", "metric": "string", "value": "float64"},
    "rollouts": {"run_id": "string", "mode": "string", "clip": "int64", "horizon_step": "int64",
                 "mse": "float64", "psnr": "float64", "ssim": "float64"},
}
# Columns added after a table's first release, with the value their older rows mean.
ADDED_COLUMNS: dict[str, dict[str, object]] = {"runs": {"precision": "fp32", "load_avg_1m": float("nan"), "batch": "",
                                                         "numpy_version": "", "scipy_version": "", "pandas_version": ""}}


def stage_folder(cache: Path, stage: str, stage_id: str) -> Path:
    """Where a stage's checkpoint and output live in a results dir's cache (shared between runs)."""
    return cache / "stages" / f"{stage}-{stage_id}"


def read_part(part: Path) -> pd.DataFrame:
    """One part file, or one line naming it when it cannot be read (a kill mid-copy, a full disk)."""
    try:
        return pd.read_parquet(part)
    except Exception as err:  # noqa: BLE001 - ArrowInvalid, OSError, ...: all mean an unreadable part
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise WorldbenchError(
            f"store file '{part}' is unreadable ({first}); delete it and the parts of that name in the other "
            f"store tables, then rerun `bench run` to record that run again"
        ) from None


def write_or_explain(path: Path, write: Callable[[Path], None]) -> None:
    """worldmodel.files.write_atomic, with a failed write (a full disk, a lost mount) one line naming the file;
    whatever was recorded before stays as it was."""
    try:
        write_atomic(path, write)
    except OSError as err:
        raise WorldbenchError(
            f"cannot write '{path}' ({err.strerror or err}); free disk space or fix the results dir, then rerun "
            f"the same command: runs recorded before are kept and the rest resume"
        ) from None


class Store:
    def __init__(self, root: Path, create: bool = True):
        self.root = Path(root)
        marker = self.root / MARKER_FILE
        if self.root.exists() and not self.root.is_dir():
            raise WorldbenchError(f"results path '{self.root}' is a file; pass a directory with --results")
        # Listed before the marker is looked for: a marker another process creates meanwhile is then found
        # below, and what was listed before it existed cannot be that process's files.
        entries = [p.name for p in self.root.iterdir()] if self.root.exists() else []
        if marker.exists():
            try:
                owner = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):
                owner = {}
            if owner.get("project") != "worldbench":
                raise WorldbenchError(
                    f"results dir '{self.root}' belongs to another project ({marker} says "
                    f"{owner.get('project')!r}); pass another --results dir"
                )
            return
        # Another process creating this dir right now leaves only its temp marker: not someone else's file.
        if any(not name.startswith(f".{MARKER_FILE}.") for name in entries):
            raise WorldbenchError(
                f"results dir '{self.root}' is not empty and was not made by worldbench; "
                f"pass an empty or worldbench results dir with --results"
            )
        if create:
            content = json.dumps({"project": "worldbench", "schema": SCHEMA_VERSION})
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                write_atomic(marker, lambda tmp: tmp.write_text(content))  # racing creators write the same file
            except OSError as err:
                raise WorldbenchError(f"cannot write results dir '{self.root}' ({err.strerror}); "
                                      f"pass a writable --results dir") from None
        elif not self.root.exists():
            raise WorldbenchError(f"results dir '{self.root}' does not exist; run `bench run` first or fix --results")

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def table_dir(self, table: str) -> Path:
        return self.root / "store" / table

    # ------------------------------------------------------------------ parquet tables

    def append(self, table: str, rows: pd.DataFrame | list[dict], key: str) -> None:
        """Add the rows of one run as part `key` of `table` (temp file + rename: all or nothing).

        A part is named by its run, so recording a run again (a resumed driver, --force)
        replaces that run's rows instead of duplicating them; other runs' parts are never touched.
        """
        frame = pd.DataFrame(rows, columns=list(TABLES[table])) if isinstance(rows, list) else rows
        if frame.empty:
            return
        frame = frame[list(TABLES[table])].astype(TABLES[table])
        folder = self.table_dir(table)
        folder.mkdir(parents=True, exist_ok=True)
        # the temp name carries the pid, which keeps two drivers recording one run apart
        write_or_explain(folder / f"part-{key}.parquet", lambda tmp: frame.to_parquet(tmp, index=False))

    def read(self, table: str) -> pd.DataFrame:
        folder = self.table_dir(table)
        if not folder.exists() or not any(folder.glob("part-*.parquet")):
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in TABLES[table].items()})
        try:
            frame = pd.read_parquet(folder)
        except Exception:  # noqa: BLE001 - pyarrow raises several types; find the part and name it
            frame = pd.concat([read_part(part) for part in sorted(folder.glob("part-*.parquet"))], ignore_index=True)
        added = ADDED_COLUMNS.get(table, {})
        if any(column not in frame.columns for column in added):
            # Parts written before a column existed: parquet takes one part's schema, so read each.
            frame = pd.concat([read_part(part) for part in sorted(folder.glob("part-*.parquet"))],
                              ignore_index=True)
        for column, value in added.items():
            frame[column] = frame[column].fillna(value) if column in frame.columns else value
        return frame

    def runs(self) -> pd.DataFrame:
        return self.read("runs")

    def for_runs(self, table: str, run_ids) -> pd.DataFrame:
        frame = self.read(table)
        return frame[frame["run_id"].isin(set(run_ids))].reset_index(drop=True)

    # ------------------------------------------------------------------ rollout frames

    def frames_path(self, run_id: str) -> Path:
        return self.root / "frames" / f"{run_id}.h5"

    def write_frames(self, run_id: str, ground_truth: np.ndarray, predictions: dict[str, np.ndarray],
                     context: int, reconstructions: np.ndarray | None = None) -> None:
        path = self.frames_path(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("ground_truth", data=ground_truth, compression="gzip", compression_opts=1)
                for mode, frames in predictions.items():
                    f.create_dataset(f"predictions/{mode}", data=frames, compression="gzip", compression_opts=1)
                if reconstructions is not None:  # the tokenizer's decode(encode(ground_truth))
                    f.create_dataset("reconstructions", data=reconstructions, compression="gzip", compression_opts=1)
                f.attrs["context"] = context

        write_or_explain(path, write)

    def read_frames(self, run_id: str) -> dict | None:
        path = self.frames_path(run_id)
        if not path.exists():
            return None
        with h5py.File(path, "r") as f:
            frames = {"ground_truth": f["ground_truth"][()], "context": int(f.attrs["context"]),
                      "predictions": {mode: f["predictions"][mode][()] for mode in f["predictions"]}}
            if "reconstructions" in f:  # files from before reconstructions were stored lack them
                frames["reconstructions"] = f["reconstructions"][()]
            return frames
