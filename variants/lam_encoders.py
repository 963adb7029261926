"""`lam_encoder` variants: frames [B, T, 3, H, W] -> pre-quantisation actions [B, T-1, A].

They share the anchor encoder's trunk (patch embed -> causal ST-transformer) and action head
(worldmodel/lam.py, where the baseline `meanpool_concat` lives) and differ in how the tokens of
frames t and t+1 become the latent action of transition t.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from worldmodel.config import WorldModelConfig
from worldmodel.lam import EncoderTrunk, action_head
from worldmodel.layers import Attention
from worldmodel.norms import RMSNorm
from worldmodel.registry import register


@register("lam_encoder", "windowed_attention")
class WindowedAttention(nn.Module):
    """Length-2 windowed attention: the 2P tokens of frames t, t+1 attend jointly, then mean."""

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        dim = config.actions.embed_dim
        self.trunk = EncoderTrunk(config)
        self.window_attention = Attention(dim, config.actions.heads)
        self.window_norm = RMSNorm(dim)
        self.head = action_head(dim, config.action_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk(frames)  # [B, T, P, E]
        B = tokens.shape[0]
        windows = rearrange(torch.cat([tokens[:, :-1], tokens[:, 1:]], dim=2), "b t q e -> (b t) q e")  # [B(T-1), 2P, E]
        windows = self.window_norm(windows + self.window_attention(windows))
        pooled = rearrange(windows.mean(dim=1), "(b t) e -> b t e", b=B)  # [B, T-1, E]
        return self.head(pooled)


@register("lam_encoder", "query_pool")
class QueryPool(nn.Module):
    """Learned-query attention pooling over the tokens of frames t, t+1 and their difference.

    Mean-pooling averages away *where* something moved; a learned query can instead attend to the
    patches that changed. The query reads [tokens_t+1 - tokens_t ; tokens_t+1] per patch, so both
    the change and its context are visible, and multi-head attention picks what to pool.
    """

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        dim = config.actions.embed_dim
        self.heads = config.actions.heads
        self.trunk = EncoderTrunk(config)
        self.query = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.keys_values = nn.Linear(2 * dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.head = action_head(dim, config.action_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk(frames)  # [B, T, P, E]
        change = torch.cat([tokens[:, 1:] - tokens[:, :-1], tokens[:, 1:]], dim=-1)  # [B, T-1, P, 2E]
        keys, values = rearrange(self.keys_values(change), "b t p (two h d) -> two b t h p d", two=2, h=self.heads)
        query = rearrange(self.query, "(h d) -> h 1 d", h=self.heads).expand(*keys.shape[:3], 1, -1)
        pooled = nn.functional.scaled_dot_product_attention(query, keys, values)  # [B, T-1, h, 1, d]
        return self.head(self.out(rearrange(pooled, "b t h 1 d -> b t (h d)")))  # [B, T-1, A]
