"""Latent action model: infer a discrete action per transition, trained by predicting the next frame."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from variants.registry import lookup
from worldmodel.config import WorldModelConfig
from worldmodel.fsq import FSQ
from worldmodel.layers import PatchEmbed, STTransformer, unpatchify


class LatentActionModel(nn.Module):
    def __init__(self, config: WorldModelConfig):
        super().__init__()
        stage = config.actions
        E, A = stage.embed_dim, config.action_dim
        self.patch_size = config.patch_size
        self.variance_floor = stage.variance_floor
        self.variance_weight = stage.variance_weight
        self.fsq = FSQ(A, 2)
        self.encoder = lookup("lam_encoder", stage.encoder)(config)
        self.mask_later_frames = stage.decoder_context == "first"
        # One (step, dim) feature per transition: [B, T-1, A] -> [B, (T-1) A] for a plain BatchNorm.
        self.action_norm = (nn.BatchNorm1d((config.window - 1) * A, affine=False)
                            if stage.action_norm == "batch" else None)
        self.embed = PatchEmbed(config.frame_size, config.patch_size, E)
        self.mask_token = nn.Parameter(torch.zeros(E))
        self.decoder = STTransformer(E, stage.heads, stage.hidden, stage.blocks, config.window, cond_dim=A)
        self.to_pixels = nn.Sequential(nn.LayerNorm(E), nn.Linear(E, 3 * config.patch_size**2), nn.Tanh())

    def infer_actions(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # [B, T, 3, H, W] -> (pre-quantisation [B, T-1, A], quantised [B, T-1, A])
        return self._encode(frames)[1:]

    def _encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(encoder output, pre-quantisation latents, quantised actions), each [B, T-1, A]."""
        raw = self.encoder(frames)  # [B, T-1, A]
        pre = raw
        if self.action_norm is not None:
            steps = raw.shape[1]
            pre = rearrange(self.action_norm(rearrange(raw, "b t a -> b (t a)")), "b (t a) -> b t a", t=steps)
        return raw, pre, self.fsq.quantize(pre)

    def decode(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        # frames 0..T-2 [B, T-1, 3, H, W], actions [B, T-1, A] -> predicted frames 1..T-1
        tokens = self.embed.proj(self.embed.patchify(frames))  # [B, T-1, P, E]
        if self.mask_later_frames:
            # Only frame 0 is seen: the actions must carry what changes afterwards.
            tokens = torch.cat([tokens[:, :1], self.mask_token.expand_as(tokens[:, 1:])], dim=1)
        tokens = tokens + self.embed.spatial_code
        return unpatchify(self.to_pixels(self.decoder(tokens, actions)), self.patch_size)

    def loss(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raw, _, actions = self._encode(frames)
        predicted = self.decode(frames[:, :-1], actions)
        reconstruction = F.smooth_l1_loss(predicted, frames[:, 1:])
        # Hinge on the batch variance of the pre-quantisation latents keeps the actions from collapsing.
        # With action_norm it is taken before the norm (whose rescaling would hide a shrinking encoder output)
        # and per transition step, so an output that only tracks the step index cannot satisfy it.
        variance = raw.var(dim=0).mean() if self.action_norm is not None else raw.flatten(0, 1).var(dim=0).mean()
        variance_penalty = F.relu(self.variance_floor - variance)
        loss = reconstruction + self.variance_weight * variance_penalty
        extras = {"encoder_variance": variance, "reconstruction": reconstruction, "variance_penalty": variance_penalty}
        return loss, {name: value.detach() for name, value in extras.items()}  # tensors: read at log points only
