"""`bench export`: a results dir's recorded runs in an experiment tracker's own format.

Each finished run becomes one tracker run, named `<variant>-s<seed>-<run id>`, with its identity as
parameters (profile, dataset, variant, seed, run id, commit), its training curves as scalars
`<stage>/<metric>` by step, and its KPIs as one value each (`kpi/<name>`; NaN, i.e. not measured,
left out). Written with each tracker's own writer, offline, under --out only:
  - tensorboard: event files, one folder per run (torch.utils.tensorboard, which needs the tensorboard extra);
  - mlflow: a file store (`mlruns/`), one experiment per results dir;
  - wandb: offline runs (`wandb/offline-run-*`), which `wandb sync` can upload later.
Each tracker is an optional dependency (pyproject.toml extras); a missing one is exit 2 with the install
command, before anything is written.
"""
from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.store import Store
from worldmodel.errors import WorldbenchError

# tracker -> (the module its writer needs, the pyproject extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
PROJECT = "worldbench"  # the MLflow experiment and W&B project the runs go to


@dataclass
class TrackedRun:
    """One recorded run as a tracker takes it."""
    name: str
    params: dict[str, str]
    curves: pd.DataFrame  # stage, step, metric, value
    kpis: dict[str, float]  # finite values only

    def scalars(self) -> Iterator[tuple[str, int, float]]:
        """(tag, step, value) of every finite curve point, tag `<stage>/<metric>`, in step order."""
        points = self.curves[self.curves["value"].map(math.isfinite)].sort_values(["step", "stage", "metric"])
        for row in points.itertuples():
            yield f"{row.stage}/{row.metric}", int(row.step), float(row.value)


@dataclass
class Exported:
    tracker: str
    out: Path
    runs: int
    points: int  # curve points written, over all runs


def check_tracker(tracker: str) -> None:
    """Exit 2 unless the tracker is known and its extra is installed: nothing is written before this."""
    if tracker not in TRACKERS:
        raise WorldbenchError(f"--to {tracker!r}: not a tracker; use one of: {', '.join(TRACKERS)}")
    module, extra = TRACKERS[tracker]
    if importlib.util.find_spec(module) is None:
        raise WorldbenchError(f"--to {tracker} needs the {module} package; install it with "
                              f"pip install 'worldbench[{extra}]'")


def tracked_runs(store: Store) -> list[TrackedRun]:
    """The store's finished runs, oldest first."""
    runs = store.runs()
    runs = runs[runs["status"] == "ok"].sort_values(["started_at", "variant", "seed"])
    curves, kpis = store.read("curves"), store.read("kpis")
    tracked = []
    for run in runs.itertuples():
        values = kpis[kpis["run_id"] == run.run_id]
        tracked.append(TrackedRun(
            name=f"{run.variant}-s{run.seed}-{run.run_id[:8]}",
            params={"run_id": run.run_id, "profile": run.profile, "dataset": run.dataset, "variant": run.variant,
                    "seed": str(run.seed), "git_commit": str(run.git_commit)},
            curves=curves[curves["run_id"] == run.run_id],
            kpis={row.kpi: float(row.value) for row in values.itertuples() if math.isfinite(row.value)}))
    return tracked


def export(results: Path, out: Path, tracker: str) -> Exported:
    """Write the results dir's finished runs into `out` in the tracker's format (check_tracker first)."""
    runs = tracked_runs(Store(results, create=False))
    if not runs:
        raise WorldbenchError(f"no finished runs in '{results}' to export; run `bench run` first")
    out.mkdir(parents=True, exist_ok=True)
    writer = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}[tracker]
    with _only_under(out):
        for run in runs:
            writer(run, out)
    return Exported(tracker, out, len(runs), sum(1 for run in runs for _ in run.scalars()))


@contextmanager
def _only_under(out: Path):
    """While the trackers write, every place they would otherwise use (home-dir config, caches, telemetry) is
    under `out` or off: nothing is written outside --out."""
    root = str(out.absolute())
    settings = {"WANDB_MODE": "offline", "WANDB_DIR": root, "WANDB_CACHE_DIR": f"{root}/.cache/wandb",
                "WANDB_CONFIG_DIR": f"{root}/.config/wandb", "WANDB_DATA_DIR": f"{root}/.cache/wandb-data",
                "WANDB_ARTIFACT_DIR": f"{root}/.cache/wandb-artifacts", "WANDB_SILENT": "true",
                "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true", "WANDB_CONSOLE": "off",
                # MLflow 3 keeps its file store only on request (in maintenance, but the one store without a database)
                "MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _tensorboard(run: TrackedRun, out: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(out / run.name))
    try:
        writer.add_text("run", "\n".join(f"{key}: {value}" for key, value in run.params.items()), 0)
        for tag, step, value in run.scalars():
            writer.add_scalar(tag, value, step)
        for name, value in run.kpis.items():
            writer.add_scalar(f"kpi/{name}", value, 0)
    finally:
        writer.close()


def _mlflow(run: TrackedRun, out: Path) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(out / "mlruns").absolute().as_uri())
    experiment = client.get_experiment_by_name(PROJECT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(PROJECT)
    created = client.create_run(experiment_id, run_name=run.name)
    metrics = [Metric(tag, value, 0, step) for tag, step, value in run.scalars()]
    metrics += [Metric(f"kpi/{name}", value, 0, 0) for name, value in run.kpis.items()]
    params = [Param(key, value) for key, value in run.params.items()]
    for start in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(created.info.run_id, metrics=metrics[start:start + 1000], params=params if start == 0 else [])
    client.set_terminated(created.info.run_id)


def _wandb(run: TrackedRun, out: Path) -> None:
    import wandb

    live = wandb.init(project=PROJECT, name=run.name, config=run.params, dir=str(out), mode="offline",
                      reinit="create_new")
    try:
        # Each stage counts its own steps: `<stage>/step` is the x axis of that stage's curves.
        rows: dict[tuple[str, int], dict[str, float]] = {}
        for tag, step, value in run.scalars():
            stage = tag.split("/")[0]
            rows.setdefault((stage, step), {f"{stage}/step": step})[tag] = value
        for stage in dict.fromkeys(stage for stage, _ in rows):
            live.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
        for (stage, step), values in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0])):
            live.log(values)
        for name, value in run.kpis.items():
            live.summary[f"kpi/{name}"] = value
    finally:
        live.finish()
