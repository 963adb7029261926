"""The norms of the ST blocks, as plain PyTorch: an RMSNorm, and a FiLM norm conditioned on the actions.

Both take `(x, cond)`, so a block treats them alike. A block's post-norm `norm(x + f(x), cond)` goes
through `worldmodel.fused.add_norm`, which runs the add and the norm as one native kernel where it can.
A conditioned block's norm is a `conditioning` component (the anchor's `film` here; `adaln_zero` in
variants/adaln_zero.py). One that defines `residual(x, f, cond)` wires its sub-layer itself (pre-norm);
one that does not is a post-norm, called as `norm(x + f(x), cond)`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.registry import lookup, register


class RMSNorm(nn.Module):
    """Unconditioned norm; accepts (and ignores) a condition so blocks can treat norms alike."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(x)


@register("conditioning", "film")
class FiLMNorm(nn.Module):
    """The anchor's FiLM (Perez et al. 2018): affine-free layer norm, x (1 + gamma) + beta from Linear(SiLU(cond))."""

    eps = 1e-5  # F.layer_norm's default

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.to_scale_shift = nn.Linear(cond_dim, 2 * dim)
        # Starts as a plain layer norm: the actions' influence is learned from ~zero.
        nn.init.normal_(self.to_scale_shift.weight, std=1e-3)
        nn.init.zeros_(self.to_scale_shift.bias)

    def film(self, cond: torch.Tensor) -> torch.Tensor:
        # cond [B, T, A] -> [B, T, 2E] = (gamma | beta), one row per frame
        return self.to_scale_shift(F.silu(cond))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # x [B, T, P, E], cond [B, T, A]
        gamma, beta = self.film(cond).unsqueeze(2).chunk(2, dim=-1)  # [B, T, 1, E] each
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + gamma) + beta


def make_norm(dim: int, cond_dim: int | None, conditioning: str = "film") -> nn.Module:
    """RMSNorm without a condition; else the registered `conditioning` component (dim, cond_dim)."""
    return RMSNorm(dim) if cond_dim is None else lookup("conditioning", conditioning)(dim, cond_dim)
