"""`position` component "alibi": a 2-D ALiBi bias in the spatial attention (Press et al. 2022).

Each head's score between patches i and j is lowered by slope_h x (Euclidean distance between them, in
patches), the slopes the geometric sequence 2^(-8 h / heads) of the paper, so heads range from local to
global. Like the rotary code it adds no parameters and keeps the absolute sin/cos code; tokens placed before
the patches (an action token) get no bias. The native attention kernel takes no bias, so these attentions
run the PyTorch path (slower on the CPU; the it/s KPIs show it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.registry import register


def alibi_slopes(heads: int) -> torch.Tensor:
    """2^(-8 h / heads) for h = 1..heads: [heads]."""
    return 2.0 ** (-8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads)


@register("position", "alibi")
class ALiBi(nn.Module):
    """Absolute code plus a 2-D ALiBi bias in the spatial attention (Press et al. 2022): -slope x patch distance."""

    def __init__(self, grid: int, head_dim: int, heads: int):
        super().__init__()
        ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        centres = torch.stack([xs.flatten(), ys.flatten()], dim=-1).float()  # [P, 2]
        distance = torch.cdist(centres, centres)  # [P, P]
        bias = -alibi_slopes(heads)[:, None, None] * distance  # [heads, P, P]
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # qkv [B, T, S, 3E], S = P patches after any prepended tokens -> (qkv, bias [heads, S, S])
        extra = qkv.shape[-2] - self.bias.shape[-1]
        return qkv, F.pad(self.bias, (extra, 0, extra, 0)) if extra else self.bias
