"""`action_injection` component "prepend_token": the latent action as one extra token per frame (Jasmine).

Jasmine (Mahajan et al. 2025) found that prepending the latent action to each frame's tokens, rather than
adding it to them, was what made its Genie-style dynamics follow the actions. Here the action leading into
frame t (zeros for frame 0) becomes Linear(A, E) and sits before that frame's P patches: the spatial attention
lets every patch read it, the temporal attention carries it along time, and it is dropped from the output.
The transformer's norms are then unconditioned (RMSNorm): the token is the only way in, not an extra one.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from worldmodel.config import WorldModelConfig
from worldmodel.registry import register


@register("action_injection", "prepend_token")
class PrependToken(nn.Module):
    """Jasmine's: the action as an extra token before each frame's patches; the norms unconditioned."""

    cond_dim = None  # an unconditioned transformer

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.embed = nn.Linear(config.action_dim, config.dynamics.embed_dim)

    def forward(self, tokens: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, None]:
        # tokens [B, T, P, E], actions [B, T, A] -> ([B, T, 1 + P, E], no condition)
        action_tokens = rearrange(self.embed(actions), "b t e -> b t 1 e")  # [B, T, 1, E]
        return torch.cat([action_tokens, tokens], dim=2), None

    def strip(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, :, 1:]  # [B, T, P, E]
