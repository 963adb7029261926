"""Video tokenizer: frames -> FSQ codes per patch -> frames."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.config import WorldModelConfig
from worldmodel.fsq import FSQ
from worldmodel.layers import PatchEmbed, STTransformer, unpatchify


class VideoTokenizer(nn.Module):
    def __init__(self, config: WorldModelConfig):
        super().__init__()
        stage = config.tokenizer
        E, L = stage.embed_dim, config.latent_dim
        self.patch_size = config.patch_size
        self.fsq = FSQ(L, config.bins)
        self.embed = PatchEmbed(config.frame_size, config.patch_size, E)
        self.encoder = STTransformer(E, stage.heads, stage.hidden, stage.blocks, config.window,
                                     rotary_grid=config.rotary_grid("tokenizer"))
        self.to_latent = nn.Sequential(nn.LayerNorm(E), nn.Linear(E, L))
        self.from_latent = nn.Linear(L, E)
        self.decoder = STTransformer(E, stage.heads, stage.hidden, stage.blocks, config.window,
                                     rotary_grid=config.rotary_grid("tokenizer"))
        self.to_pixels = nn.Linear(E, 3 * config.patch_size**2)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        # [B, T, 3, H, W] -> quantised latents [B, T, P, L]
        return self.fsq.quantize(self.to_latent(self.encoder(self.embed(frames))))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        # [B, T, P, L] -> frames [B, T, 3, H, W]
        tokens = self.from_latent(latents) + self.embed.spatial_code
        return unpatchify(self.to_pixels(self.decoder(tokens)), self.patch_size)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.encode(frames)
        return self.decode(latents), latents

    def loss(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        recon, _ = self(frames)
        loss = F.smooth_l1_loss(recon, frames)
        return loss, {}
