"""The three stages end to end: build, feed, train (resumable) and evaluate each one.

tokenizer: frames -> codes.  actions: frames -> latent actions.  dynamics: trained on the
codes and latent actions of the frozen upstream stages, encoded once per stage (not per step).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.auxiliary import measurements, reset_measurements
from worldmodel.config import DECODE_ONLY, OPT_IN, STAGES, WorldModelConfig
from worldmodel.data import VideoWindows
from worldmodel.dynamics import Dynamics
from worldmodel.errors import WorldbenchError
from worldmodel.lam import LatentActionModel
from worldmodel.metrics import (action_agreement, codebook_stats, moving_squared_errors, mse_per_frame, psnr_from_mse,
                                psnr_per_frame, to_unit)
from worldmodel.tokenizer import VideoTokenizer
from worldmodel.train import CPU, Placement, ProgressHook, TrainResult, load_weights, train_stage

MODELS = {"tokenizer": VideoTokenizer, "actions": LatentActionModel, "dynamics": Dynamics}
ENCODE_BATCH = 64


@dataclass
class StageOutput:
    train: TrainResult
    metrics: dict[str, float]  # evaluation on the val split, names without the stage prefix
    params: int


def build_model(stage: str, config: WorldModelConfig) -> nn.Module:
    return MODELS[stage](config)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def stage_config_json(config: WorldModelConfig, stage: str) -> str:
    """What a stage's weights depend on: the shared shapes plus that stage's own section, less its decoding."""
    values = {k: v for k, v in asdict(config).items() if k not in (*STAGES, "rollout")}
    section = config.stage(stage)
    # Opt-in switches appear only when on, so a new switch changes no id or checkpoint of a config without it.
    values.update({f"{stage}.{f.name}": getattr(section, f.name) for f in fields(section)
                   if not (f.metadata.get(DECODE_ONLY)
                           or (f.metadata.get(OPT_IN) and getattr(section, f.name) == f.default))})
    return json.dumps(values, sort_keys=True)


def decoding_json(config: WorldModelConfig) -> str:
    """The decode-only settings stage_config_json leaves out, every stage's: part of what a run's rollouts depend on."""
    values = {f"{stage}.{f.name}": getattr(config.stage(stage), f.name)
              for stage in STAGES for f in fields(config.stage(stage)) if f.metadata.get(DECODE_ONLY)}
    return json.dumps(values, sort_keys=True)


def config_from_stage_json(stage: str, text: str) -> WorldModelConfig:
    """Inverse of stage_config_json: the config a stage checkpoint was trained with (others default)."""
    values: dict = {}
    for key, value in json.loads(text).items():
        if key.startswith(f"{stage}."):
            values.setdefault(stage, {})[key.split(".", 1)[1]] = value
        else:
            values[key] = value
    try:
        return WorldModelConfig.from_dict(values)
    except TypeError as err:  # a key this code does not know
        raise WorldbenchError(f"{stage} checkpoint config does not fit the current code ({err})") from None


def check_data_matches(config: WorldModelConfig, windows: VideoWindows) -> None:
    """Refuse data frames of another size than the model's: resized silently, they would train a model on
    pictures it was not built for and every KPI would still look plausible."""
    if windows.frame_size != config.frame_size:
        raise WorldbenchError(
            f"dataset frames are {windows.frame_size}x{windows.frame_size} but the model's frame_size is "
            f"{config.frame_size}; set frame_size = {windows.frame_size} or resize the dataset to {config.frame_size}"
        )
    if windows.window != config.window:
        raise WorldbenchError(f"data windows hold {windows.window} frames but the model's window is {config.window}")


def eval_indices(windows: VideoWindows, config: WorldModelConfig, stage: str) -> list[np.ndarray]:
    """A fixed, evenly spread set of val windows, in batches."""
    count = min(len(windows), config.stage(stage).eval_batches * config.stage(stage).batch_size)
    chosen = np.linspace(0, len(windows) - 1, count).round().astype(np.int64)
    return np.array_split(chosen, max(1, count // ENCODE_BATCH))


class DeviceWindows:
    """VideoWindows whose batches' frames are on `device` (ground-truth actions stay on the CPU)."""

    def __init__(self, windows: VideoWindows, device: torch.device):
        self.windows, self.device = windows, device

    def __len__(self) -> int:
        return len(self.windows)

    def __getattr__(self, name: str):
        return getattr(self.windows, name)

    def batch(self, which):
        frames, actions = self.windows.batch(which)
        return frames.to(self.device), actions


def on_device(placement: Placement, *windows: VideoWindows) -> list:
    """`windows` as they are on the CPU, else wrapped so batches land on the placement's device."""
    device = placement.torch_device
    return [w if device.type == "cpu" else DeviceWindows(getattr(w, "windows", w), device) for w in windows]


def sampler(windows: VideoWindows, batch_size: int):
    """Batches of random windows: (frames [B, T, 3, H, W],)."""
    def sample(generator: torch.Generator) -> tuple[torch.Tensor]:
        return (windows.batch(torch.randint(len(windows), (batch_size,), generator=generator).numpy())[0],)
    return sample


def train_and_evaluate(stage: str, model: nn.Module, config: WorldModelConfig, sample, checkpoint: Path, seed: int,
                       progress: ProgressHook | None, evaluate, placement: Placement = CPU) -> StageOutput:
    result = train_stage(stage, model, config.stage(stage), sample, checkpoint, stage_config_json(config, stage),
                         seed, progress, placement)  # leaves the model on the placement's device
    model.eval()
    torch.manual_seed(seed)  # evaluation randomness (dynamics masks) is fixed per seed
    with torch.no_grad():
        reset_measurements(model)
        metrics = evaluate(model)
        metrics.update(measurements(model))  # the components' own (an MoE's expert load), over the evaluation
    return StageOutput(result, metrics, count_params(model))


# ----------------------------------------------------------------------------- tokenizer

def run_tokenizer(config: WorldModelConfig, train: VideoWindows, val: VideoWindows, checkpoint: Path, seed: int,
                  progress: ProgressHook | None = None,
                  placement: Placement = CPU) -> tuple[VideoTokenizer, StageOutput]:
    check_data_matches(config, train)
    train, val = on_device(placement, train, val)
    torch.manual_seed(seed)
    model = VideoTokenizer(config)

    def evaluate(model: VideoTokenizer) -> dict[str, float]:
        losses, mses, psnrs, moving_errors, codes = [], [], [], [], []
        for which in eval_indices(val, config, "tokenizer"):
            frames, _ = val.batch(which)
            recon, latents = model(frames)
            losses.append(F.smooth_l1_loss(recon, frames).item())
            mses.append(mse_per_frame(to_unit(recon), to_unit(frames)).flatten())
            psnrs.append(psnr_per_frame(to_unit(recon), to_unit(frames)).flatten())
            moving_errors.append(moving_squared_errors(to_unit(recon), to_unit(frames)))
            codes.append(model.fsq.to_indices(latents).flatten())
        usage, perplexity = codebook_stats(torch.cat(codes), model.fsq.codebook_size)
        return {"val_loss": float(np.mean(losses)), "val_mse": torch.cat(mses).mean().item(),
                "val_psnr": torch.cat(psnrs).mean().item(),
                "val_moving_psnr": psnr_from_mse(torch.cat(moving_errors).mean()).item(),  # = moving_psnr, pooled
                "codebook_usage": usage,
                "codebook_perplexity": perplexity}

    return model, train_and_evaluate("tokenizer", model, config, sampler(train, config.tokenizer.batch_size),
                                     checkpoint, seed, progress, evaluate, placement)


# ----------------------------------------------------------------------------- latent actions

def run_actions(config: WorldModelConfig, train: VideoWindows, val: VideoWindows, checkpoint: Path, seed: int,
                progress: ProgressHook | None = None,
                placement: Placement = CPU) -> tuple[LatentActionModel, StageOutput]:
    check_data_matches(config, train)
    train, val = on_device(placement, train, val)
    torch.manual_seed(seed)
    model = LatentActionModel(config)

    def evaluate(model: LatentActionModel) -> dict[str, float]:
        losses, penalties, entropy_penalties, variances, codes, truths, decoder_spread = [], [], [], [], [], [], []
        device = model.mask_token.device
        all_codes = model.fsq.from_indices(torch.arange(config.n_actions, device=device))  # [n_actions, A]
        for which in eval_indices(val, config, "actions"):
            frames, true_actions = val.batch(which)
            _, extras, quantised = model.loss_and_actions(frames)
            losses.append(float(extras["reconstruction"]))  # the task loss: the variance hinge is a KPI of its own
            penalties.append(float(extras["variance_penalty"]))
            entropy_penalties.append(float(extras["entropy_penalty"]))
            variances.append(float(extras["encoder_variance"]))  # the training curve's definition, raw latents
            codes.append(model.fsq.to_indices(quantised).flatten())
            truths.append(true_actions.flatten())
            # How much the decoder's prediction depends on the action: variance across every code.
            first = frames[:8, :-1]  # [b, T-1, 3, H, W]
            predictions = torch.stack([
                model.decode(first, code.expand(first.shape[0], first.shape[1], -1))
                for code in all_codes
            ])  # [n_actions, b, T-1, 3, H, W]
            decoder_spread.append(predictions.var(dim=0).mean().item())
        codes_all, truth_all = torch.cat(codes).cpu(), torch.cat(truths)
        usage, perplexity = codebook_stats(codes_all, config.n_actions)
        metrics = {"val_loss": float(np.mean(losses)), "variance_penalty": float(np.mean(penalties)),
                   "entropy_penalty": float(np.mean(entropy_penalties)),
                   "codebook_usage": usage, "codebook_perplexity": perplexity,
                   "encoder_variance": float(np.mean(variances)),
                   "decoder_variance": float(np.mean(decoder_spread))}
        known = truth_all >= 0
        if known.any():
            metrics["nmi"], metrics["majority_accuracy"] = action_agreement(
                codes_all[known].numpy(), truth_all[known].numpy())
        return metrics

    return model, train_and_evaluate("actions", model, config, sampler(train, config.actions.batch_size),
                                     checkpoint, seed, progress, evaluate, placement)


# ----------------------------------------------------------------------------- dynamics

@torch.no_grad()
def encode_windows(tokenizer: VideoTokenizer, lam: LatentActionModel, windows: VideoWindows,
                   which: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [N, T, P] and quantised latent actions [N, T-1, A] of windows, with frozen models."""
    tokenizer.eval()
    lam.eval()
    which = np.arange(len(windows)) if which is None else which
    codes, actions = [], []
    for chunk in np.array_split(which, max(1, len(which) // ENCODE_BATCH)):
        frames, _ = windows.batch(chunk)
        codes.append(tokenizer.fsq.to_indices(tokenizer.encode(frames)).to(torch.int16))
        actions.append(lam.infer_actions(frames)[1].to(torch.int8))  # values are exactly +-1
    return torch.cat(codes), torch.cat(actions)


def dynamics_sampler(codes: torch.Tensor, actions: torch.Tensor, batch_size: int):
    """Batches of random encoded windows (encode_windows, once per stage: training never re-tokenizes):
    (codes [B, T, P] long, actions [B, T-1, A] float)."""
    def sample(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        which = torch.randint(len(codes), (batch_size,), generator=generator)
        return codes[which].long(), actions[which].float()
    return sample


# The val masks come from a generator of their own, the same for every seed and variant: val losses then
# differ between runs by what the models predict, not by which tokens each run happened to mask.
EVAL_MASK_SEED = 0


def run_dynamics(config: WorldModelConfig, train: VideoWindows, val: VideoWindows, tokenizer: VideoTokenizer,
                 lam: LatentActionModel, checkpoint: Path, seed: int,
                 progress: ProgressHook | None = None, placement: Placement = CPU) -> tuple[Dynamics, StageOutput]:
    check_data_matches(config, train)
    train, val = on_device(placement, train, val)
    tokenizer.to(placement.torch_device)
    lam.to(placement.torch_device)
    sample = dynamics_sampler(*encode_windows(tokenizer, lam, train), config.dynamics.batch_size)
    torch.manual_seed(seed)
    model = Dynamics(config)

    def evaluate(model: Dynamics) -> dict[str, float]:
        losses, accuracies = [], []
        masks = torch.Generator(placement.torch_device).manual_seed(EVAL_MASK_SEED)
        for which in eval_indices(val, config, "dynamics"):
            val_codes, val_actions = encode_windows(tokenizer, lam, val, which)
            loss, extras = model.loss(val_codes.long(), val_actions.float(), generator=masks)
            losses.append(loss.item())
            accuracies.append(float(extras["token_accuracy"]))
        return {"val_loss": float(np.mean(losses)), "val_token_accuracy": float(np.mean(accuracies))}

    return model, train_and_evaluate("dynamics", model, config, sample, checkpoint, seed, progress, evaluate,
                                     placement)


def load_stage(stage: str, config: WorldModelConfig, checkpoint: Path) -> nn.Module:
    """A finished stage's model from its checkpoint, in eval mode."""
    model = load_weights(build_model(stage, config), checkpoint, stage, stage_config_json(config, stage))
    return model.eval()
