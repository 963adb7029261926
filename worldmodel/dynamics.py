"""MaskGIT dynamics: predict masked tokenizer codes from visible ones and the latent actions."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.config import WorldModelConfig
from worldmodel.fsq import FSQ
from worldmodel.layers import STTransformer, spatial_code
from worldmodel.registry import lookup, register

SCHEDULE_SHARPNESS = 5.0  # k in N * expm1(k s / steps) / expm1(k)


@register("action_input", "latent_actions")
class LatentActions(nn.Module):
    """The latent actions as the LAM inferred them (the anchor's dynamics)."""

    def __init__(self, config: WorldModelConfig):
        super().__init__()

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return actions  # [B, T-1, A]


class Dynamics(nn.Module):
    def __init__(self, config: WorldModelConfig):
        super().__init__()
        stage = config.dynamics
        E, L = stage.embed_dim, config.latent_dim
        self.fsq = FSQ(L, config.bins)
        self.action_input = lookup("action_input", stage.action_input)(config)  # no parameters: ids unchanged
        self.masked_frames = stage.masked_frames
        self.mask_latent = nn.Parameter(torch.zeros(L))
        self.from_latent = nn.Linear(L, E)
        self.register_buffer("spatial_code", spatial_code(config.grid, E), persistent=False)
        self.transformer = STTransformer(E, stage.heads, stage.hidden, stage.blocks, config.window,
                                         cond_dim=config.action_dim, rotary_grid=config.rotary_grid("dynamics"))
        self.to_logits = nn.Linear(E, self.fsq.codebook_size)

    def hidden(self, latents: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # latents [B, T, P, L], actions [B, T-1, A], mask [B, T, P] bool -> [B, T, P, E]
        visible = torch.where(mask.unsqueeze(-1), self.mask_latent, latents)
        tokens = self.from_latent(visible) + self.spatial_code
        actions = self.action_input(actions)  # [B, T-1, A]
        # Left-pad with a zero action so action t-1 conditions frame t.
        cond = F.pad(actions, (0, 0, 1, 0))  # [B, T, A]
        return self.transformer(tokens, cond)

    @staticmethod
    def training_mask(batch: int, steps: int, patches: int, device: torch.device | str = "cpu",
                      frames: str = "all") -> torch.Tensor:
        """Mask ratio U[0.5, 1) per batch, Bernoulli per token: a bool mask [B, T, P].

        frames "all" (the anchor): every frame is masked so, and one random step per (b, p) is kept
        visible. "last": only the last frame is, and the frames before it stay whole, as the context
        does when a rollout predicts the next frame.
        Drawn on `device` from that device's global RNG (seeded per stage), so a mask follows from the seed.
        """
        ratio = 0.5 + 0.5 * torch.rand((), device=device)
        if frames == "last":
            mask = torch.zeros(batch, steps, patches, dtype=torch.bool, device=device)
            mask[:, -1] = torch.rand(batch, patches, device=device) < ratio
            return mask
        mask = torch.rand(batch, steps, patches, device=device) < ratio  # [B, T, P]
        keep = torch.randint(steps, (batch, 1, patches), device=device)
        return mask.scatter(1, keep, False)

    def loss(self, indices: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # indices [B, T, P] codes, actions [B, T-1, A] quantised latent actions
        # Extras are detached 0-d tensors: the trainer reads them at log points, not every step.
        mask = self.training_mask(*indices.shape, device=indices.device, frames=self.masked_frames)
        hidden = self.hidden(self.fsq.from_indices(indices), actions, mask)
        logits = self.to_logits(hidden[mask])  # only masked positions are scored: [M, V]
        targets = indices[mask]
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(-1) == targets).float().mean().detach()
        return loss, {"token_accuracy": accuracy}

    @torch.no_grad()
    def predict_next(self, context: torch.Tensor, actions: torch.Tensor, rounds: int, temperature: float = 0.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """MaskGIT decoding of one new frame.

        context [B, Tc, P, L] latents, actions [B, Tc, A] (the last one leads into the new frame)
        -> codes of the new frame [B, P].
        """
        B, Tc, P, L = context.shape
        device = context.device
        codes = torch.zeros(B, P, dtype=torch.long, device=device)
        masked = torch.ones(B, P, dtype=torch.bool, device=device)
        frame_mask = torch.zeros(B, Tc + 1, P, dtype=torch.bool, device=device)
        minimum_per_round = math.ceil(P / 16)
        already = 0  # positions unmasked so far, the same in every row: counted here, never read off the device
        for round_index in range(1, rounds + 1):
            new_frame = torch.where(masked.unsqueeze(-1), 0.0, self.fsq.from_indices(codes))
            latents = torch.cat([context, new_frame.unsqueeze(1)], dim=1)  # [B, Tc+1, P, L]
            frame_mask[:, -1] = masked
            logits = self.to_logits(self.hidden(latents, actions, frame_mask)[:, -1])  # [B, P, V]
            if temperature <= 0:
                confidence, sample = logits.softmax(-1).max(-1)
            else:
                probs = (logits / temperature).softmax(-1)
                sample = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(B, P)
                confidence = probs.gather(-1, sample.unsqueeze(-1)).squeeze(-1)
            if round_index == rounds:
                return torch.where(masked, sample, codes)  # fill whatever is left
            target = P * math.expm1(SCHEDULE_SHARPNESS * round_index / rounds) / math.expm1(SCHEDULE_SHARPNESS)
            count = min(max(math.ceil(target) - already, minimum_per_round), P - already)
            confidence = confidence.masked_fill(~masked, -1.0)
            chosen = confidence.topk(count, dim=-1).indices  # [B, count]
            codes.scatter_(1, chosen, sample.gather(1, chosen))
            masked.scatter_(1, chosen, False)
            already += count
            if already == P:
                return codes
        return codes
