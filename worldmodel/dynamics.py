"""MaskGIT dynamics: predict masked tokenizer codes from visible ones and the latent actions.

Three component slots are the dynamics' own (worldmodel/registry.py), each taking the WorldModelConfig:
`action_input` (what it makes of the latent actions), `action_injection` (how they enter the transformer)
and `maskgit_schedule` (which tokens a decoding round unmasks). The anchor's choices are defined here;
the others in variants/.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.config import WorldModelConfig
from worldmodel.errors import WorldbenchError
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


# ----------------------------------------------------------------------------- action injection
#
# An `action_injection` component takes the patch tokens [B, T, P, E] and the per-frame actions [B, T, A]
# (action t-1 leads into frame t, frame 0 gets zeros) and returns (the transformer's tokens, its condition or
# None). `cond_dim` is the condition's width (None: an unconditioned transformer); `strip` drops whatever
# tokens it added from the transformer's output.

@register("action_injection", "norm_conditioning")
class NormConditioning(nn.Module):
    """The anchor's: the action conditions every norm of the dynamics transformer (the `conditioning` slot's)."""

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.cond_dim = config.action_dim

    def forward(self, tokens: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tokens, actions  # [B, T, P, E], [B, T, A]

    def strip(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden  # [B, T, P, E]


# ----------------------------------------------------------------------------- MaskGIT schedules
#
# A `maskgit_schedule` component says, for each decoding round, how many masked tokens to unmask (`counts`)
# and which (`choose`). Subclasses of ConfidenceSchedule change only `unmasked_fraction`.

@register("maskgit_schedule", "exponential")
class ConfidenceSchedule:
    """The anchor's: cumulative unmasked N expm1(k s / S) / expm1(k), k = 5, the most confident tokens first."""

    def __init__(self, config: WorldModelConfig):
        self.grid = config.grid

    def unmasked_fraction(self, round_index: int, rounds: int) -> float:
        """Share of the frame's tokens unmasked by the end of round `round_index` of `rounds` (1-based)."""
        return math.expm1(SCHEDULE_SHARPNESS * round_index / rounds) / math.expm1(SCHEDULE_SHARPNESS)

    def counts(self, rounds: int, positions: int) -> list[int]:
        """Tokens to unmask in each round but the last, which fills whatever is left (MaskGIT, Chang et al. 2022).

        Each round unmasks at least positions / 16, and the list stops once every position is unmasked.
        """
        minimum_per_round, already, counts = math.ceil(positions / 16), 0, []
        for round_index in range(1, rounds):
            target = positions * self.unmasked_fraction(round_index, rounds)
            count = min(max(math.ceil(target) - already, minimum_per_round), positions - already)
            counts.append(count)
            already += count
            if already == positions:
                break
        return counts

    def choose(self, confidence: torch.Tensor, already: int, count: int) -> torch.Tensor:
        """The positions [B, count] to unmask, from confidence [B, P] (-1 where already unmasked)."""
        return confidence.topk(count, dim=-1).indices


class Dynamics(nn.Module):
    def __init__(self, config: WorldModelConfig):
        super().__init__()
        stage = config.dynamics
        E, L = stage.embed_dim, config.latent_dim
        self.fsq = FSQ(L, config.bins)
        self.action_input = lookup("action_input", stage.action_input)(config)  # no parameters: ids unchanged
        self.inject = lookup("action_injection", stage.action_injection)(config)
        if self.inject.cond_dim is None and stage.conditioning != "film":
            raise WorldbenchError(f"dynamics.conditioning {stage.conditioning!r} conditions nothing with "
                                  f"action_injection {stage.action_injection!r}; leave conditioning at 'film'")
        self.schedule = lookup("maskgit_schedule", stage.maskgit_schedule)(config)
        self.masked_frames = stage.masked_frames
        self.mask_latent = nn.Parameter(torch.zeros(L))
        self.from_latent = nn.Linear(L, E)
        self.register_buffer("spatial_code", spatial_code(config.grid, E), persistent=False)
        self.transformer = STTransformer(E, stage.heads, stage.hidden, stage.blocks, config.window,
                                         cond_dim=self.inject.cond_dim, choices=config.block_choices("dynamics"))
        self.to_logits = nn.Linear(E, self.fsq.codebook_size)

    def hidden(self, latents: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # latents [B, T, P, L], actions [B, T-1, A], mask [B, T, P] bool -> [B, T, P, E]
        tokens, cond = self.inject(self.tokens(latents, mask), self.frame_actions(actions))
        return self.inject.strip(self.transformer(tokens, cond))  # [B, T, P, E]

    def tokens(self, latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # latents [B, T, P, L], mask [B, T, P] bool (True: masked) -> [B, T, P, E]
        visible = torch.where(mask.unsqueeze(-1), self.mask_latent, latents)
        return self.from_latent(visible) + self.spatial_code

    def frame_actions(self, actions: torch.Tensor) -> torch.Tensor:
        # actions [B, T-1, A] -> [B, T, A]: left-padded with a zero action, so action t-1 conditions frame t
        return F.pad(self.action_input(actions), (0, 0, 1, 0))

    @staticmethod
    def training_mask(batch: int, steps: int, patches: int, device: torch.device | str = "cpu",
                      frames: str = "all", generator: torch.Generator | None = None) -> torch.Tensor:
        """Mask ratio U[0.5, 1) per batch, Bernoulli per token: a bool mask [B, T, P].

        frames "all" (the anchor): every frame is masked so, and one random step per (b, p) is kept
        visible. "last": only the last frame is, and the frames before it stay whole, as the context
        does when a rollout predicts the next frame.
        Drawn on `device` from `generator`, by default that device's global RNG (seeded per stage), so a
        mask follows from the seed.
        """
        ratio = 0.5 + 0.5 * torch.rand((), device=device, generator=generator)
        if frames == "last":
            mask = torch.zeros(batch, steps, patches, dtype=torch.bool, device=device)
            mask[:, -1] = torch.rand(batch, patches, device=device, generator=generator) < ratio
            return mask
        mask = torch.rand(batch, steps, patches, device=device, generator=generator) < ratio  # [B, T, P]
        keep = torch.randint(steps, (batch, 1, patches), device=device, generator=generator)
        return mask.scatter(1, keep, False)

    def loss(self, indices: torch.Tensor, actions: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # indices [B, T, P] codes, actions [B, T-1, A] quantised latent actions; generator: the masks' RNG
        # Extras are detached 0-d tensors: the trainer reads them at log points, not every step.
        mask = self.training_mask(*indices.shape, device=indices.device, frames=self.masked_frames,
                                  generator=generator)
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
        counts = self.schedule.counts(rounds, P)
        already = 0  # positions unmasked so far, the same in every row: counted here, never read off the device
        # The context runs through the transformer once; each round runs only the new frame against its cache
        # (the temporal attention is causal, so the context never sees the new frame).
        cond = self.frame_actions(actions)  # [B, Tc + 1, A]
        tokens, context_cond = self.inject(self.tokens(context, masked.new_zeros(B, Tc, P)), cond[:, :Tc])
        _, cache = self.transformer.extend(tokens, context_cond)
        for round_index in range(1, rounds + 1):
            new_frame = self.fsq.from_indices(codes).unsqueeze(1)  # [B, 1, P, L]; masked positions: mask_latent
            tokens, new_cond = self.inject(self.tokens(new_frame, masked.unsqueeze(1)), cond[:, Tc:])
            hidden, _ = self.transformer.extend(tokens, new_cond, cache)
            logits = self.to_logits(self.inject.strip(hidden)[:, -1])  # [B, P, V]
            if temperature <= 0:
                confidence, sample = logits.softmax(-1).max(-1)
            else:
                probs = (logits / temperature).softmax(-1)
                sample = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(B, P)
                confidence = probs.gather(-1, sample.unsqueeze(-1)).squeeze(-1)
            if round_index == rounds:
                return torch.where(masked, sample, codes)  # fill whatever is left
            count = counts[round_index - 1]
            confidence = confidence.masked_fill(~masked, -1.0)
            chosen = self.schedule.choose(confidence, already, count)  # [B, count]
            codes.scatter_(1, chosen, sample.gather(1, chosen))
            masked.scatter_(1, chosen, False)
            already += count
            if already == P:
                return codes
        return codes
