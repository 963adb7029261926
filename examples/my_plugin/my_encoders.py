"""A worldbench plugin: a latent-action-model encoder that takes the max over patches instead of the mean.

`[plugins] modules = ["my_encoders"]` in bench.toml imports this module (it must be importable: run `bench` with
`PYTHONPATH=.` in this folder); `@register` makes the component choosable as `lam_encoder = "max_pool"` in a
`[variants.x]` table. A LAM encoder maps frames [B, T, 3, H, W] to pre-quantisation latents [B, T-1, A].
"""
import torch
from torch import nn

from variants import register  # the registry's decorator (worldmodel.registry.register)
from worldmodel.lam import EncoderTrunk, action_head


@register("lam_encoder", "max_pool")
class MaxPool(nn.Module):
    """LAM encoder: max over patches, then concat(frame t, frame t+1) -> MLP."""

    def __init__(self, config):
        super().__init__()
        self.trunk = EncoderTrunk(config)  # patch embedding + causal ST-transformer, as the baseline's
        self.head = action_head(2 * config.actions.embed_dim, config.action_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        pooled = self.trunk(frames).amax(dim=2)  # [B, T, E]: max over the patches of each frame
        return self.head(torch.cat([pooled[:, :-1], pooled[:, 1:]], dim=-1))  # [B, T-1, A]
