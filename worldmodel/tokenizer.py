"""Video tokenizer: frames -> FSQ codes per patch -> frames."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.config import WorldModelConfig
from worldmodel.fsq import FSQ
from worldmodel.layers import PatchEmbed, STTransformer, unpatchify
from worldmodel.metrics import moving_pixels, moving_weighted_mean


class VideoTokenizer(nn.Module):
    def __init__(self, config: WorldModelConfig):
        super().__init__()
        stage = config.tokenizer
        E, L = stage.embed_dim, config.latent_dim
        self.patch_size = config.patch_size
        self.latent_penalty = stage.latent_penalty
        self.moving_weight = stage.moving_weight
        self.fsq = FSQ(L, config.bins)
        self.embed = PatchEmbed(config.frame_size, config.patch_size, E)
        self.encoder = STTransformer(E, stage.heads, stage.hidden, stage.blocks, config.window,
                                     choices=config.block_choices("tokenizer"))
        self.to_latent = nn.Sequential(nn.LayerNorm(E), nn.Linear(E, L))
        self.from_latent = nn.Linear(L, E)
        self.decoder = STTransformer(E, stage.heads, stage.hidden, stage.blocks, config.window,
                                     choices=config.block_choices("tokenizer"))
        self.to_pixels = nn.Linear(E, 3 * config.patch_size**2)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        # [B, T, 3, H, W] -> quantised latents [B, T, P, L]
        return self.fsq.quantize(self.pre_latents(frames))

    def pre_latents(self, frames: torch.Tensor) -> torch.Tensor:
        # [B, T, 3, H, W] -> latents before quantisation [B, T, P, L]
        return self.to_latent(self.encoder(self.embed(frames)))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        # [B, T, P, L] -> frames [B, T, 3, H, W]
        tokens = self.from_latent(latents) + self.embed.spatial_code
        return unpatchify(self.to_pixels(self.decoder(tokens)), self.patch_size)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.encode(frames)
        return self.decode(latents), latents

    def reconstruction_loss(self, recon: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """The reconstruction term trained on: the plain smooth-L1 mean, or with the moving pixels weighed up."""
        if not self.moving_weight:
            return F.smooth_l1_loss(recon, frames)
        errors = F.smooth_l1_loss(recon, frames, reduction="none")  # [B, T, 3, H, W]
        changed = moving_pixels(frames)  # [B, T-1, 1, H, W]: frame t+1 differs from frame t
        # [B, T, 1, H, W]: a pixel moving into frame t (from t-1) or out of it (to t+1)
        moving = F.pad(changed, (0, 0, 0, 0, 0, 0, 1, 0)) | F.pad(changed, (0, 0, 0, 0, 0, 0, 0, 1))
        return moving_weighted_mean(errors, moving, self.moving_weight)

    def loss(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not self.latent_penalty:
            recon, _ = self(frames)
            return self.reconstruction_loss(recon, frames), {}
        pre = self.pre_latents(frames)  # [B, T, P, L]
        recon = self.decode(self.fsq.quantize(pre))  # [B, T, 3, H, W]
        range_penalty = F.relu(pre.abs() - 1.0).pow(2).mean()
        loss = self.reconstruction_loss(recon, frames) + self.latent_penalty * range_penalty
        return loss, {"range_penalty": range_penalty.detach()}
