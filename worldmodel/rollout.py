"""Rollouts of the trained world model on fixed val clips, scored on predicted frames only.

Modes (each predicts `horizon` frames after `window - 1` ground-truth context frames):
  ar         own predictions fed back, actions inferred by the LAM from the ground-truth clip
  tf         teacher-forced: the context is always the ground truth, LAM actions
  random     like ar but with uniformly random latent actions (for Genie's Delta_t PSNR)
  tf_shuffled  like tf but with the LAM's actions shuffled across clips and steps (for tf_action_response)
  copy_last  repeat the last context frame: the bar any world model must clear
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange

from worldmodel.config import WorldModelConfig
from worldmodel.data import VideoData, VideoWindows
from worldmodel.dynamics import Dynamics
from worldmodel.errors import WorldbenchError
from worldmodel.lam import LatentActionModel
from worldmodel.metrics import mse_per_frame, psnr_per_frame, ssim_per_frame, to_unit
from worldmodel.tokenizer import VideoTokenizer

RANDOM_ACTION_SEED = 1234  # the same random actions for every variant and seed


@dataclass
class RolloutResult:
    scores: dict[str, dict[str, np.ndarray]]  # mode -> metric -> [clips, horizon]
    ground_truth: np.ndarray  # uint8 [clips, context + horizon, H, W, 3]
    predictions: dict[str, np.ndarray]  # mode -> uint8 [clips, horizon, H, W, 3]
    kpis: dict[str, float]  # rollout.* KPIs without the prefix
    reconstructions: np.ndarray  # uint8 [clips, context + horizon, H, W, 3]: the tokenizer's decode(encode(clip))


def rollout_clips(data: VideoData, config: WorldModelConfig, val_fraction: float) -> torch.Tensor:
    """The fixed val clips every variant is scored on: frames [clips, context + horizon, 3, H, W]."""
    length = config.window - 1 + config.rollout.horizon
    try:
        clips = VideoWindows(data, length, split="val", val_fraction=val_fraction)
    except WorldbenchError as err:
        raise WorldbenchError(f"rollout clips of {length} frames do not fit: {err}") from None
    count = min(config.rollout.clips, len(clips))
    return clips.batch(np.linspace(0, len(clips) - 1, count).round().astype(np.int64))[0]


@torch.no_grad()
def infer_clip_actions(lam: LatentActionModel, frames: torch.Tensor, window: int) -> torch.Tensor:
    """Quantised LAM actions for every transition of a clip longer than one window: [B, N-1, A].

    The LAM only knows windows of `window` frames, so the clip is covered by windows that overlap
    by one frame (the last one shifted back to end at the clip's end).
    """
    steps = frames.shape[1]
    actions = None
    start = 0
    while True:
        start = min(start, steps - window)
        _, quantised = lam.infer_actions(frames[:, start : start + window])  # [B, window-1, A]
        if actions is None:
            actions = quantised.new_zeros(frames.shape[0], steps - 1, quantised.shape[-1])
        actions[:, start : start + window - 1] = quantised
        if start + window >= steps:
            return actions
        start += window - 1


@torch.no_grad()
def reconstruct_clips(tokenizer: VideoTokenizer, frames: torch.Tensor, window: int) -> torch.Tensor:
    """The tokenizer's reconstruction of every frame of clips longer than one window: [B, N, 3, H, W].

    The tokenizer only knows windows of `window` frames, so the clip goes through it `window`
    frames at a time; the last window is shifted back to end at the clip's end and only its
    new frames are kept (a frame keeps the reconstruction with the most temporal context).
    """
    steps = frames.shape[1]
    reconstructions = torch.empty_like(frames)  # [B, N, 3, H, W]
    done = 0  # frames reconstructed so far
    while done < steps:
        start = max(0, min(done, steps - window))
        reconstructed = tokenizer(frames[:, start : start + window])[0]  # [B, window, 3, H, W]
        reconstructions[:, done : start + window] = reconstructed[:, done - start :]
        done = start + window
    return reconstructions


@torch.no_grad()
def predict(tokenizer: VideoTokenizer, dynamics: Dynamics, frames: torch.Tensor, actions: torch.Tensor,
            context: int, horizon: int, teacher_forced: bool, config: WorldModelConfig) -> torch.Tensor:
    """Predicted frames [B, horizon, 3, H, W] after `context` ground-truth frames of `frames`."""
    history = tokenizer.encode(frames[:, :context])  # [B, context, P, L]
    predicted = []
    for offset in range(horizon):
        target = context + offset  # index of the frame being predicted
        codes = dynamics.predict_next(history, actions[:, target - context : target],
                                      config.dynamics.maskgit_steps, config.dynamics.temperature)
        new = dynamics.fsq.from_indices(codes).unsqueeze(1)  # [B, 1, P, L]
        predicted.append(tokenizer.decode(torch.cat([history, new], dim=1))[:, -1])
        if teacher_forced:
            history = tokenizer.encode(frames[:, target - context + 1 : target + 1])
        else:
            history = torch.cat([history[:, 1:], new], dim=1)
    return torch.stack(predicted, dim=1)


def shuffled_actions(actions: torch.Tensor) -> torch.Tensor:
    """The same latent actions [B, N, A] reassigned to other clips and steps, by one fixed permutation.

    They keep the distribution the dynamics was trained on (no code the LAM never uses), and they are the
    actions themselves when the LAM has only one code.
    """
    generator = torch.Generator().manual_seed(RANDOM_ACTION_SEED)
    flat = rearrange(actions, "b n a -> (b n) a")  # [B*N, A]
    order = torch.randperm(flat.shape[0], generator=generator, device="cpu").to(actions.device)  # drawn on the CPU
    return rearrange(flat[order], "(b n) a -> b n a", b=actions.shape[0])  # [B, N, A]


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    # [..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3]
    return (to_unit(frames) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


@torch.no_grad()
def evaluate_rollouts(tokenizer: VideoTokenizer, lam: LatentActionModel, dynamics: Dynamics, clips: torch.Tensor,
                      config: WorldModelConfig) -> RolloutResult:
    for model in (tokenizer, lam, dynamics):
        model.eval()
    context, horizon = config.window - 1, config.rollout.horizon
    lam_actions = infer_clip_actions(lam, clips, config.window)
    generator = torch.Generator().manual_seed(RANDOM_ACTION_SEED)
    # Drawn on the CPU, so every device scores the same random actions.
    random_codes = torch.randint(config.n_actions, lam_actions.shape[:2], generator=generator, device="cpu")
    random_actions = lam.fsq.from_indices(random_codes.to(lam_actions.device))

    predictions = {
        "ar": predict(tokenizer, dynamics, clips, lam_actions, context, horizon, False, config),
        "tf": predict(tokenizer, dynamics, clips, lam_actions, context, horizon, True, config),
        "random": predict(tokenizer, dynamics, clips, random_actions, context, horizon, False, config),
        "copy_last": clips[:, context - 1 : context].expand(-1, horizon, -1, -1, -1),
    }
    tf_shuffled = to_unit(predict(tokenizer, dynamics, clips, shuffled_actions(lam_actions), context, horizon, True,
                                  config))  # [B, horizon, 3, H, W]: scored against tf only, not shown
    truth = to_unit(clips[:, context:])
    unit = {mode: to_unit(frames) for mode, frames in predictions.items()}  # [B, horizon, 3, H, W] in [0, 1]
    scores = {}
    for mode, pred in unit.items():
        scores[mode] = {"mse": mse_per_frame(pred, truth).cpu().numpy(),
                        "psnr": psnr_per_frame(pred, truth).cpu().numpy(),
                        "ssim": ssim_per_frame(pred, truth).cpu().numpy()}
    step = config.rollout.delta_psnr_step - 1
    kpis = {
        "ar_mse": float(scores["ar"]["mse"].mean()), "tf_mse": float(scores["tf"]["mse"].mean()),
        "ar_psnr": float(scores["ar"]["psnr"].mean()), "tf_psnr": float(scores["tf"]["psnr"].mean()),
        "ar_ssim": float(scores["ar"]["ssim"].mean()), "copy_last_mse": float(scores["copy_last"]["mse"].mean()),
        "delta_psnr": float(scores["ar"]["psnr"][:, step].mean() - scores["random"]["psnr"][:, step].mean()),
        # How far the rollout moves when the actions change: exactly 0 for a dynamics that ignores them.
        # Unlike delta_psnr it needs no correct actions, so it is steady across seeds where delta_psnr is not.
        "action_response": float(mse_per_frame(unit["ar"], unit["random"]).mean()),
        # The same question one step at a time from true context, under the LAM's own actions shuffled: no
        # compounding over the horizon and no action the dynamics never saw, so it varies 4x less across seeds.
        "tf_action_response": float(mse_per_frame(unit["tf"], tf_shuffled).mean()),
    }
    reconstructions = reconstruct_clips(tokenizer, clips, config.window)  # deterministic: after the sampling
    return RolloutResult(scores, to_uint8(clips), {m: to_uint8(f) for m, f in predictions.items()}, kpis,
                         to_uint8(reconstructions))
