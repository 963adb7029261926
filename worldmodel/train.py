"""The stage training loop: AdamW, clipping, logging, atomic checkpoints with full RNG state.

A stage killed at any point resumes from its last checkpoint and produces exactly the losses
an uninterrupted run would have: model, optimiser, step, curve and both RNG streams (the
global torch RNG used for masking, and the batch sampler's) are all in the checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import resource
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from worldmodel.config import StageConfig
from worldmodel.errors import WorldbenchError

CHECKPOINT_FORMAT = "worldbench-checkpoint-1"

BatchSampler = Callable[[torch.Generator], tuple]
ProgressHook = Callable[[int, int, float], None]  # (step, total steps, last loss)


class StageDiverged(Exception):
    def __init__(self, stage: str, step: int, loss: float):
        super().__init__(f"{stage} loss became {loss} at step {step}")
        self.stage, self.step, self.loss = stage, step, loss


@dataclass
class TrainResult:
    curve: list[dict] = field(default_factory=list)  # one row per log point: step, loss, it_per_s, extras
    wall_s: float = 0.0  # training time summed over every attempt (resumes included)
    peak_rss_mb: float = 0.0


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start or since the last reset_peak_rss()."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_rss() -> None:
    """Restart the peak-memory count (Linux), so a worker process reused for several runs reports each."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, payload: dict) -> None:
    """Write to a temporary file and rename, so a kill never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, stage: str, config_json: str) -> dict:
    """Load a checkpoint safely (no pickle execution) and check it belongs to this stage config."""
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise WorldbenchError(f"checkpoint '{path}' does not exist; train the stage first") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WorldbenchError(
            f"checkpoint '{path}' is corrupted or not a plain-tensor worldbench checkpoint ({first[:120]}); "
            f"delete it to retrain the stage"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise WorldbenchError(f"checkpoint '{path}' is not a worldbench checkpoint; delete it to retrain the stage")
    if payload.get("stage") != stage or payload.get("config") != config_json:
        theirs = json.loads(payload.get("config") or "{}")
        ours = json.loads(config_json)
        diff = next((k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)), "stage")
        raise WorldbenchError(
            f"checkpoint '{path}' was trained for another config ({payload.get('stage')}, '{diff}': "
            f"{theirs.get(diff)!r} vs {ours.get(diff)!r} now); delete it or point at the right one"
        )
    return payload


def load_weights(model: nn.Module, path: Path, stage: str, config_json: str) -> nn.Module:
    payload = load_checkpoint(path, stage, config_json)
    if not payload.get("finished"):
        raise WorldbenchError(f"checkpoint '{path}' is from an unfinished {stage} stage; finish training it first")
    model.load_state_dict(payload["model"], strict=True)
    return model


# ----------------------------------------------------------------------------- training loop

def learning_rate(config: StageConfig, step: int) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr


def train_stage(
    stage: str,
    model: nn.Module,
    config: StageConfig,
    sample_batch: BatchSampler,
    checkpoint_path: Path,
    config_json: str,
    seed: int,
    progress: ProgressHook | None = None,
) -> TrainResult:
    """Train `model` with `model.loss(*sample_batch(generator))`, resuming from `checkpoint_path`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sampler = torch.Generator().manual_seed(seed)
    result = TrainResult()
    step = 0
    if checkpoint_path.exists():
        payload = load_checkpoint(checkpoint_path, stage, config_json)
        model.load_state_dict(payload["model"], strict=True)
        optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["rng_torch"])
        sampler.set_state(payload["rng_sampler"])
        step = int(payload["step"])
        result.curve = json.loads(payload["curve"])
        result.wall_s = float(payload["wall_s"])
        if payload["finished"]:
            result.peak_rss_mb = float(payload["peak_rss_mb"])
            return result

    def checkpoint(finished: bool) -> None:
        save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "stage": stage, "config": config_json, "step": step,
            "finished": finished, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng_torch": torch.get_rng_state(), "rng_sampler": sampler.get_state(),
            "curve": json.dumps(result.curve), "wall_s": result.wall_s, "peak_rss_mb": peak_rss_mb(),
        })

    model.train()
    interval_loss, interval_extras, interval_start = 0.0, {}, time.perf_counter()
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        loss, extras = model.loss(*sample_batch(sampler))
        value = loss.item()
        if not math.isfinite(value):
            raise StageDiverged(stage, step + 1, value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        interval_loss += value
        for key, extra in extras.items():
            interval_extras[key] = interval_extras.get(key, 0.0) + extra
        if step % config.log_every == 0 or step == config.steps:
            steps_in_interval = step - (result.curve[-1]["step"] if result.curve else 0)
            elapsed = time.perf_counter() - interval_start
            result.wall_s += elapsed
            result.curve.append({
                "step": step, "loss": interval_loss / steps_in_interval, "it_per_s": steps_in_interval / elapsed,
                **{key: total / steps_in_interval for key, total in interval_extras.items()},
            })
            if progress:
                progress(step, config.steps, result.curve[-1]["loss"])
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint(finished=step == config.steps)
            interval_loss, interval_extras, interval_start = 0.0, {}, time.perf_counter()
    result.peak_rss_mb = peak_rss_mb()
    return result
