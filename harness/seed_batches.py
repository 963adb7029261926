"""Runs whose seeds train together: `--seed-batch K` trains each stage of up to K runs of one variant as one
seed-batched model (worldmodel/batched.py), then evaluates each run as the per-seed path does.

A run of one variant differs from the same variant's other runs only by its seed, so their stages have one
config and the engine can stack them. For each stage, in order, the runs of a group whose stage the cache does
not hold finished train together (those a stopped batched run left at one step resume together), each into the
stage folder and checkpoint format its own run would use; the per-seed path (harness.worker.execute_run) then finds each finished checkpoint,
skips training and evaluates. So the stage cache, resuming and the records are the per-seed path's; what
differs is the float rounding of training, which the runs table's device column names ("seed-batched xK") on
the runs a stage of which trained batched in their group (a stage another run trained, batched or not, is
reused as always). A seed whose stage diverges is recorded as diverged there and then, in the run and in the
stage folder (as the per-seed path records it); the others train on.

On a GPU this keeps the device busy where one small model leaves it idle; on these CPUs it is slower than the
per-seed path with its native kernels (docs/measurements.md), so the default is 1: off.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from contextlib import ExitStack
from pathlib import Path

import torch

from harness.matrix import RunSpec
from harness.store import stage_folder
from harness.worker import (Progress, RunRecord, diverged_fields, execute_run, file_lock, finished_stage, load_dataset,
                            now, record_divergence, recorded_divergence, run_row, stage_order)
from worldmodel import batched, stages
from worldmodel.config import STAGES
from worldmodel.data import VideoWindows
from worldmodel.errors import WorldbenchError
from worldmodel.train import Placement, StageDiverged, load_checkpoint

BATCHED = "seed-batched"  # in the runs table's device column of a run a stage of which trained batched


def group_specs(specs: list[RunSpec], size: int) -> list[list[RunSpec]]:
    """The runs in groups that can train together: one (profile, dataset, variant, model, data) each, at most
    `size` runs, in the order the plan lists them (so a seed's arms still run side by side)."""
    groups: dict[tuple, list[list[RunSpec]]] = {}
    order: list[list[RunSpec]] = []
    for spec in specs:
        key = (spec.profile, spec.dataset, spec.variant, json.dumps(spec.model, sort_keys=True), spec.data_id,
               spec.precision)
        chunks = groups.setdefault(key, [])
        if not chunks or len(chunks[-1]) == size:
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(spec)
    return order


def check_batchable(specs: list[RunSpec], device: str = "cpu") -> None:
    """Refuse, before anything is written, a variant whose stages the engine cannot batch (an optimiser that is
    not elementwise, an operation vmap has no rule for): one training step of two seeds of each stage on zero
    inputs of the run's shapes, on the run's device."""
    checked = set()
    for spec in specs:
        key = json.dumps(spec.model, sort_keys=True)
        if key in checked:
            continue
        checked.add(key)
        config, placement = spec.config, Placement(device, spec.precision)
        frames = torch.zeros(2, config.window, 3, config.frame_size, config.frame_size)  # [B, T, 3, H, W]
        with torch.no_grad():
            torch.manual_seed(0)
            tokenizer, lam = (stages.build_model(stage, config).eval() for stage in ("tokenizer", "actions"))
            codes = tokenizer.fsq.to_indices(tokenizer.encode(frames))  # [B, T, P]
            actions = lam.infer_actions(frames)[1]  # [B, T-1, A]
        inputs = {"tokenizer": lambda _: (frames,), "actions": lambda _: (frames,),
                  "dynamics": lambda _: (codes.long(), actions.float())}
        for stage in STAGES:
            one_step = dataclasses.replace(config.stage(stage), steps=1, log_every=1, checkpoint_every=1)
            try:
                with warnings.catch_warnings():  # a probe: what vmap says about speed on the way is not for the user
                    warnings.simplefilter("ignore")
                    batched.train_seeds(stage, batched.model_builder(stage, config), one_step, [0, 1], inputs[stage],
                                        placement=placement)
            except WorldbenchError as err:
                raise WorldbenchError(f"variant {spec.variant}: {err} (drop --seed-batch)") from None


def execute_group(specs: list[RunSpec], results_root: str, threads: int, executor: str,
                  progress: Progress | None = None, device: str = "cpu") -> list[RunRecord]:
    """Train the group's fresh stages seed-batched, then run each run as the per-seed path does; one record
    per run, in order. Never raises for the runs' own failures: a batched stage that fails fails its runs."""
    torch.set_num_threads(threads)
    cache = Path(results_root) / "cache"
    diverged: dict[str, StageDiverged] = {}
    trained: set[str] = set()  # run ids a stage of which trained batched here
    try:
        pretrain(specs, cache, Placement(device, specs[0].precision), progress, diverged, trained)
    except BaseException as err:  # a bug, or a component that raises or exits: these runs fail, as in execute_run
        message = f"seed-batched training: {type(err).__name__}: {err}"
        return [failed(spec, executor, device, message) for spec in specs]
    records = []
    for spec in specs:
        if spec.run_id in diverged:
            record = RunRecord(run=run_row(spec, executor, device))
            record.run.update(diverged_fields(diverged[spec.run_id]), finished_at=now())
        else:
            record = execute_run(spec, results_root, threads, executor, progress, device)
        if spec.run_id in trained:
            record.run["device"] += f", {BATCHED} x{len(specs)}"
        records.append(record)
    return records


def failed(spec: RunSpec, executor: str, device: str, error: str) -> RunRecord:
    record = RunRecord(run=run_row(spec, executor, device))
    record.run.update(status="failed", error=error, failed_stage="", finished_at=now())
    return record


def pretrain(specs: list[RunSpec], cache: Path, placement: Placement, progress: Progress | None,
             diverged: dict[str, StageDiverged], trained: set[str]) -> None:
    """Each stage, in order, of the group's runs whose stage is not finished and whose earlier stages are, as one
    batched model per step they stand at (0, or where a stopped batched run left them: they resume), the stage
    folders locked (in one order) while it trains. A run alone at its step is left to the per-seed path, which
    trains or resumes it."""
    config = specs[0].config
    data = load_dataset(specs[0], cache)
    train, = stages.on_device(placement, VideoWindows(data, config.window, "train", specs[0].data["val_fraction"]))
    ready = list(specs)  # the runs whose stages so far are finished
    for stage in stage_order(specs[0], cache):  # the LAM first while another group trains the shared tokenizers
        folders = {spec.run_id: stage_folder(cache, stage, spec.stage_ids[stage]) for spec in ready}
        done, at_step = [], {}  # at_step: the step an unfinished stage stands at -> its runs
        with ExitStack() as locks:
            for folder in sorted(set(folders.values())):
                locks.enter_context(file_lock(folder.with_suffix(".lock")))
            for spec in ready:
                earlier = recorded_divergence(folders[spec.run_id])
                if earlier is not None:  # this stage diverged for another run: so does this one, untrained
                    diverged[spec.run_id] = earlier
                    continue
                step = unfinished_step(folders[spec.run_id], stage, config)
                if step is None:
                    done.append(spec)
                else:
                    at_step.setdefault(step, []).append(spec)
            for together in (runs for runs in at_step.values() if len(runs) > 1):  # one alone: seed by seed
                train_together(stage, together, folders, cache, train, placement, progress, diverged)
                trained.update(spec.run_id for spec in together)
                done += [spec for spec in together if spec.run_id not in diverged]
        ready = done


def train_together(stage: str, specs: list[RunSpec], folders: dict[str, Path], cache: Path, train: VideoWindows,
                   placement: Placement, progress: Progress | None, diverged: dict[str, StageDiverged]) -> None:
    """One stage of runs that stand at one step, as one batched model, into each run's own stage folder."""
    config = specs[0].config
    if stage == "dynamics":
        samplers = [upstream_sampler(spec, cache, train, placement) for spec in specs]
    else:
        samplers = stages.sampler(train, config.stage(stage).batch_size)
    for spec in specs:
        folders[spec.run_id].mkdir(parents=True, exist_ok=True)
    hooks = [(lambda step, total, loss, run_id=spec.run_id: progress(run_id, stage, step, total, loss))
             if progress else None for spec in specs]
    outcomes = batched.train_seeds(stage, batched.model_builder(stage, config), config.stage(stage),
                                   [spec.seed for spec in specs], samplers,
                                   checkpoints=[folders[spec.run_id] / "checkpoint.pt" for spec in specs],
                                   config_json=stages.stage_config_json(config, stage), progress=hooks,
                                   placement=placement)
    for spec, outcome in zip(specs, outcomes):
        if outcome.diverged is not None:
            record_divergence(folders[spec.run_id], outcome.diverged)
            diverged[spec.run_id] = outcome.diverged


def unfinished_step(folder: Path, stage: str, config) -> int | None:
    """The step a stage folder's training stands at (0: not started), or None when the stage is finished:
    evaluated (output.json), or trained to its last step (by another group, whose runs evaluate it)."""
    if finished_stage(folder):
        return None
    checkpoint = folder / "checkpoint.pt"
    if not checkpoint.exists():
        return 0
    payload = load_checkpoint(checkpoint, stage, stages.stage_config_json(config, stage))
    return None if payload["finished"] else int(payload["step"])


def upstream_sampler(spec: RunSpec, cache: Path, train: VideoWindows, placement: Placement):
    """The dynamics' batches of one seed: its own tokenizer's codes and LAM's actions of the train windows,
    from their finished checkpoints, as stages.run_dynamics draws them."""
    config = spec.config
    tokenizer, lam = (stages.load_stage(stage, config, stage_folder(cache, stage, spec.stage_ids[stage])
                                        / "checkpoint.pt").to(placement.torch_device)
                      for stage in ("tokenizer", "actions"))
    return stages.dynamics_sampler(*stages.encode_windows(tokenizer, lam, train), config.dynamics.batch_size)
