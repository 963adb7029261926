"""`conditioning` component "adaln_zero": DiT's AdaLN-Zero in place of FiLM (Peebles & Xie 2023).

Each sub-layer becomes pre-norm: x + gate * f(LN(x) (1 + scale) + shift), with (shift, scale, gate) a
Linear(SiLU(action)) that starts at zero, so every block starts as the identity and the action's influence
(and each block's) is learned from nothing. The stack ends with DiT's final layer, LN(x) (1 + scale) + shift,
so the heads read a normed stream as they do after the anchor's post-norm blocks.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from worldmodel.registry import register


def zero_linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class AdaLNFinal(nn.Module):
    """DiT's final adaptive norm: LN(x) (1 + scale) + shift, (shift, scale) a zero-initialised Linear(SiLU(cond))."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.modulation = zero_linear(cond_dim, 2 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x [B, T, P, E], cond [B, T, A]
        shift, scale = rearrange(self.modulation(F.silu(cond)), "b t (two e) -> two b t 1 e", two=2)
        return F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift


@register("conditioning", "adaln_zero")
class AdaLNZero(nn.Module):
    """DiT's AdaLN-Zero (Peebles & Xie 2023): pre-norm, shift/scale/gate from the action, the gate zero-initialised."""

    final_norm = AdaLNFinal  # the stack's last layer (worldmodel.layers.STTransformer)

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.modulation = zero_linear(cond_dim, 3 * dim)

    def residual(self, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
        # x [B, T, P, E], cond [B, T, A]: one per frame, the same for its P patches
        shift, scale, gate = rearrange(self.modulation(F.silu(cond)), "b t (three e) -> three b t 1 e", three=3)
        return x + gate * f(F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift)  # [B, T, P, E]
