"""Components that are broken on purpose, for `bench validate`'s planted-fault suite.

A benchmark is only as good as what it can tell apart: each of these must make the gate FAIL
against the baseline. They are registered like any other component so a variant can choose them.
"""
from __future__ import annotations

import torch
from torch import nn

from worldmodel.config import WorldModelConfig
from worldmodel.registry import register


@register("lam_encoder", "blind")
class Blind(nn.Module):
    """Planted fault: ignores the frames; one learned constant action for every transition."""

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.action = nn.Parameter(0.1 * torch.randn(config.action_dim))  # [A]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        B, T = frames.shape[:2]
        return self.action.expand(B, T - 1, -1)  # [B, T-1, A]


@register("action_input", "blind")
class BlindActions(nn.Module):
    """Planted fault: the dynamics conditions on zeros instead of the latent actions."""

    def __init__(self, config: WorldModelConfig):
        super().__init__()

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(actions)  # [B, T-1, A]
