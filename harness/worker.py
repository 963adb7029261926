"""One run, start to finish, in a worker process: data -> three stages (shared through the stage cache)
-> rollouts -> KPIs.

Runs execute in worker processes (local or Ray, harness/executors.py). A worker never writes the store:
it returns a RunRecord and the driver (harness/driver.py) appends it. Stages and datasets are cached
under results/cache, named by their content hashes (never by a user's name), each guarded by a file
lock so parallel runs that share a stage train it once.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import socket
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

from harness.kpis import every_run_kpi, stage_kpis
from harness.matrix import RunSpec
from harness.store import stage_folder
from harness.types import RunRow
from worldmodel import kernels, stages
from worldmodel.config import STAGES, WorldModelConfig
from worldmodel.data import VideoData, VideoWindows, generate, load_hdf5, save_hdf5
from worldmodel.errors import WorldbenchError
from worldmodel.files import write_atomic
from worldmodel.rollout import RolloutResult, evaluate_rollouts, rollout_clips
from worldmodel.train import Placement, StageDiverged, reset_peak_rss

Progress = Callable[[str, str, int, int, float], None]  # (run_id, stage, step, total, loss)


@dataclass
class RunRecord:
    run: RunRow  # the store's runs row, less the provenance harness.driver adds
    kpis: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    rollouts: list[dict] = field(default_factory=list)
    frames: dict | None = None  # ground_truth, predictions, reconstructions (tokenizer), context


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def library_version(name: str) -> str:
    """An installed distribution's version, read from its metadata (no import); "" when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@contextmanager
def file_lock(path: Path):
    """Exclusive lock released by the OS when the holder dies, so a killed run never wedges the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_held_elsewhere(path: Path) -> bool:
    """Whether another process holds the file lock at `path` now (a hint for ordering, not a guarantee)."""
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


# ----------------------------------------------------------------------------- data

def generate_procedural(data: dict) -> VideoData:
    """A procedural dataset from its spec (harness.matrix.dataset_spec): the one place its fields meet `generate`."""
    return generate(data["game"], data["episodes"], data["episode_len"], data["frame_size"], data["seed"],
                    data["repeat_prob"], data.get("options"), data["noop"])


def load_dataset(spec: RunSpec, cache: Path) -> VideoData:
    data = spec.data
    if data["kind"] == "hdf5":
        return load_hdf5(data["path"], frame_size=data["frame_size"] or None, dataset_name=spec.dataset)
    path = cache / "data" / f"{spec.data_id}.h5"
    with file_lock(path.with_suffix(".lock")):
        if not path.exists():
            save_hdf5(generate_procedural(data), path)
    return load_hdf5(path)


# ----------------------------------------------------------------------------- stages through the cache

def stage_order(spec: RunSpec, cache: Path) -> tuple[str, ...]:
    """The order to train a run's stages in: the LAM first while another worker trains the shared tokenizer.

    The LAM learns from frames, not tokens, so a run that would wait for the tokenizer (the other
    variant of the same seed, under --jobs 2) trains its LAM meanwhile. Each stage seeds its own RNG,
    so the order changes no number, only the wall time.
    """
    tokenizer_lock = stage_folder(cache, "tokenizer", spec.stage_ids["tokenizer"]).with_suffix(".lock")
    if lock_held_elsewhere(tokenizer_lock):
        return ("actions", "tokenizer", "dynamics")
    return STAGES


DIVERGED_FILE = "diverged.json"  # in a stage folder whose training diverged


def record_divergence(folder: Path, err: StageDiverged) -> None:
    """Mark a stage diverged, so every run that shares it is diverged at the same step, whichever path (seed by
    seed or seed-batched) reaches it next, instead of training it again from its last checkpoint."""
    record = {"stage": err.stage, "step": err.step, "loss": err.loss}
    write_atomic(folder / DIVERGED_FILE, lambda tmp: tmp.write_text(json.dumps(record)))


def recorded_divergence(folder: Path) -> StageDiverged | None:
    """The divergence record_divergence left in a stage folder, if any."""
    path = folder / DIVERGED_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return StageDiverged(record["stage"], int(record["step"]), float(record["loss"]))


OUTPUT_FILE = "output.json"  # in a stage folder: the finished stage's curve and metrics, beside checkpoint.pt


def finished_stage(folder: Path) -> bool:
    """Whether a stage folder holds a finished stage: its output and the checkpoint it came from. An output
    whose checkpoint is gone (deleted, or lost in a copy of the cache) is removed, so the stage is trained
    again from its first step rather than failing every run that shares it. Call it under the folder's lock."""
    output = folder / OUTPUT_FILE
    if not output.exists():
        return False
    if (folder / "checkpoint.pt").exists():
        return True
    output.unlink()
    return False


def cached_stage(stage: str, stage_id: str, cache: Path, config: WorldModelConfig, train_fn) -> tuple:
    """Return (model, output dict) for a stage, training it (resumably) unless already finished; raise
    StageDiverged for a stage that diverged, here or before."""
    folder = stage_folder(cache, stage, stage_id)
    output_file = folder / OUTPUT_FILE
    with file_lock(folder.with_suffix(".lock")):
        if finished_stage(folder):
            return stages.load_stage(stage, config, folder / "checkpoint.pt"), json.loads(output_file.read_text())
        earlier = recorded_divergence(folder)
        if earlier is not None:
            raise earlier
        folder.mkdir(parents=True, exist_ok=True)
        try:
            model, out = train_fn(folder / "checkpoint.pt")
        except StageDiverged as err:
            record_divergence(folder, err)
            raise
        output = {"curve": out.train.curve, "metrics": out.metrics, "params": out.params,
                  "wall_s": out.train.wall_s, "peak_rss_mb": out.train.peak_rss_mb}
        write_atomic(output_file, lambda tmp: tmp.write_text(json.dumps(output)))
        return model.eval(), output


def device_label(device: str) -> str:
    """The runs table's device column: "cuda (<GPU name>)", or on the CPU the SIMD level PyTorch's own kernels
    dispatched to and whether the native kernels ran: "cpu (ATen AVX512, native kernels)". Either changes the
    float rounding, so the same run id on two machines (or with ATEN_CPU_CAPABILITY / WORLDBENCH_ATTENTION
    set) gives other numbers, and the gate must not tell such runs apart (benchmarks/cross_store.py)."""
    if torch.device(device).type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(torch.device(device))})"
    ops = "native kernels" if kernels.backend() == "native" else "PyTorch ops"
    return f"{device} (ATen {torch.backends.cpu.get_cpu_capability()}, {ops})"


def execute_run(spec: RunSpec, results_root: str, threads: int, executor: str,
                progress: Progress | None = None, device: str = "cpu") -> RunRecord:
    """Train and evaluate one run on `device`; never raises for a run's own failure (it is recorded instead).

    Stages, their evaluation and the rollouts run on `device` at the spec's precision; stage
    checkpoints hold CPU tensors either way.
    """
    torch.set_num_threads(threads)
    reset_peak_rss()
    record = RunRecord(run=run_row(spec, executor, device))
    cache = Path(results_root) / "cache"
    current = "data"  # the step under way: a failure names it
    try:
        placement = Placement(device, spec.precision)
        config = spec.config
        data = load_dataset(spec, cache)
        val_fraction = spec.data["val_fraction"]
        train = VideoWindows(data, config.window, "train", val_fraction)
        val = VideoWindows(data, config.window, "val", val_fraction)
        models, outputs = {}, {}
        for current in stage_order(spec, cache):
            models[current], outputs[current] = run_stage(spec, current, train, val, models, cache, placement,
                                                          progress)
        current = "rollout"
        clips = rollout_clips(data, config, val_fraction).to(placement.torch_device)
        result = evaluate_rollouts(models["tokenizer"], models["actions"], models["dynamics"], clips, config)
    except StageDiverged as err:
        record.run.update(diverged_fields(err))
    except WorldbenchError as err:
        record.run.update(status="failed", error=str(err), failed_stage=current)
    except BaseException as err:  # a bug, or a component that raises or exits: only this run fails
        last = traceback.extract_tb(err.__traceback__)[-1]
        record.run.update(status="failed", failed_stage=current,
                          error=f"{type(err).__name__}: {err} ({Path(last.filename).name}:{last.lineno})")
    else:
        add_results(record, spec, outputs, result)
    record.run["finished_at"] = now()
    return record


def diverged_fields(err: StageDiverged) -> dict:
    """A run row's fields for a run a stage of which diverged: the stage and step that stopped it."""
    return {"status": "diverged", "error": str(err), "failed_stage": err.stage, "diverged_step": err.step}


def run_row(spec: RunSpec, executor: str, device: str) -> RunRow:
    """The run's row as it starts: status ok until something fails."""
    started = now()
    return RunRow(
        run_id=spec.run_id, profile=spec.profile, dataset=spec.dataset, variant=spec.variant,
        seed=spec.seed, status="ok", error="", failed_stage="", diverged_step=-1,
        config_json=spec.resolved_json(), stage_ids_json=json.dumps(spec.stage_ids),
        torch_version=torch.__version__, numpy_version=library_version("numpy"),
        scipy_version=library_version("scipy"), pandas_version=library_version("pandas"),
        device=device_label(device), precision=spec.precision,
        cpu_model=cpu_model(), host=socket.gethostname(), executor=executor, started_at=started,
        load_avg_1m=os.getloadavg()[0],
    )


def run_stage(spec: RunSpec, stage: str, train: VideoWindows, val: VideoWindows, models: dict, cache: Path,
              placement: Placement, progress: Progress | None) -> tuple[torch.nn.Module, dict]:
    """One stage's model, on the run's device, and its output: trained through the stage cache, or loaded from it
    (`models` holds the stages before this one)."""
    config, seed = spec.config, spec.seed
    hook = (lambda step, total, loss: progress(spec.run_id, stage, step, total, loss)) if progress else None

    def train_fn(checkpoint: Path):
        if stage == "tokenizer":
            return stages.run_tokenizer(config, train, val, checkpoint, seed, hook, placement)
        if stage == "actions":
            return stages.run_actions(config, train, val, checkpoint, seed, hook, placement)
        return stages.run_dynamics(config, train, val, models["tokenizer"], models["actions"], checkpoint, seed, hook,
                                   placement)

    model, output = cached_stage(stage, spec.stage_ids[stage], cache, config, train_fn)
    model = model.to(placement.torch_device)  # a cached stage loads onto the CPU
    if progress:
        progress(spec.run_id, stage, config.stage(stage).steps, config.stage(stage).steps, float("nan"))
    return model, output


def add_results(record: RunRecord, spec: RunSpec, outputs: dict[str, dict], result: RolloutResult) -> None:
    """A finished run's KPIs (every one, NaN where not measured), loss curves, per-clip rollout scores and
    rollout frames, into its record."""
    values = {f"rollout.{k}": v for k, v in result.kpis.items()}
    for stage, output in outputs.items():
        values.update(stage_kpis(stage, output["curve"], output["metrics"], output["params"], output["wall_s"],
                                 output["peak_rss_mb"]))
        record.curves += [{"run_id": spec.run_id, "stage": stage, "step": row["step"], "metric": metric,
                           "value": value}
                          for row in output["curve"] for metric, value in row.items() if metric != "step"]
    record.kpis = [{"run_id": spec.run_id, "kpi": k, "value": v} for k, v in every_run_kpi(values).items()]
    for mode, scores in result.scores.items():
        clips_count, horizon = scores["mse"].shape
        record.rollouts += [{"run_id": spec.run_id, "mode": mode, "clip": c, "horizon_step": h + 1,
                             "mse": float(scores["mse"][c, h]), "psnr": float(scores["psnr"][c, h]),
                             "ssim": float(scores["ssim"][c, h])}
                            for c in range(clips_count) for h in range(horizon)]
    record.frames = {"ground_truth": result.ground_truth, "predictions": result.predictions,
                     "reconstructions": result.reconstructions, "context": spec.config.window - 1}
