"""Building blocks shared by every stage: position codes, attention, SwiGLU, the ST-transformer.

Token layout everywhere: x is [B, T, P, E] (batch, time, patches per frame, embed).
Every sub-layer is post-norm, `norm(x + f(x))`, as in the anchor implementation (a `conditioning`
component may wire its sub-layers otherwise: AdaLN-Zero is pre-norm).

Three component slots are filled here (worldmodel/registry.py), chosen per stage by `BlockChoices`:
`ffn` (the anchor's dense `swiglu`), `position` (`absolute`, the anchor's; `rotary`) and, through
worldmodel/norms.py, `conditioning` (`film`). The other choices live in variants/.

The attention, the residual + norm and the SwiGLU run through worldmodel/fused.py, which picks the
native CPU kernels (float32 CPU tensors) or plain PyTorch (anything else, or WORLDBENCH_ATTENTION=torch):
this file is the model, that one the speed path. The norms are in worldmodel/norms.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange
from torch import nn

from worldmodel.errors import WorldbenchError
from worldmodel.fused import add_norm, attend, swiglu
from worldmodel.norms import make_norm
from worldmodel.registry import lookup, register


@dataclass(frozen=True)
class BlockChoices:
    """The components one ST-transformer is built from, by registered name, with their options.

    Defaults are the anchor's. WorldModelConfig.block_choices(stage) fills it from a stage's config.
    """
    ffn: str = "swiglu"  # slot `ffn`: factory (dim, hidden, choices) -> module [..., E] -> [..., E]
    experts: int = 4  # ffn "moe": experts, each a full SwiGLU
    top_k: int = 2  # ffn "moe": experts per token
    balance_weight: float = 0.01  # ffn "moe": weight of the load-balancing loss
    conditioning: str = "film"  # slot `conditioning`: (dim, cond_dim) -> norm, for conditioned stacks only
    position: str = "absolute"  # slot `position`: (grid, head_dim, heads) -> module or None, spatial attention
    grid: int = 0  # patches along a side of a frame (the position codes need it)


# ----------------------------------------------------------------------------- position codes

def position_code_split(embed_dim: int) -> tuple[int, int]:
    """(width of the x and of the y spatial code, width of the time code).

    The time code takes the last third of E rounded down to even; the spatial code takes the
    first two thirds, split into equal x and y halves that are each even.
    """
    time_dim = (embed_dim // 3) // 2 * 2
    half_spatial = (embed_dim - time_dim) // 4 * 2
    if time_dim < 2 or half_spatial < 2:
        raise WorldbenchError(
            f"embed_dim {embed_dim} is too small for the position codes "
            f"(needs an even time code and even x/y codes of width >= 2); use embed_dim >= 6"
        )
    return half_spatial, time_dim


def sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """1-D sin/cos code of `positions` [N] -> [N, dim] (dim even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = positions.float()[:, None] * freqs[None]  # [N, half]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def spatial_code(grid: int, embed_dim: int) -> torch.Tensor:
    """2-D code [P, E] for a grid x grid patch layout: x code then y code, rest zero."""
    half_spatial, _ = position_code_split(embed_dim)
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    code = torch.zeros(grid * grid, embed_dim)
    code[:, :half_spatial] = sincos(xs.flatten(), half_spatial)
    code[:, half_spatial : 2 * half_spatial] = sincos(ys.flatten(), half_spatial)
    return code


def rotary_tables(grid: int, head_dim: int, heads: int) -> torch.Tensor:
    """The 2-D rotary code for a grid x grid patch layout, as unit complex numbers: [P, 2 heads head_dim / 2].

    Each head's q and k split into an x half and a y half of head_dim / 4 adjacent pairs each; pair k
    turns by position * pi / (grid * 2^k). The fastest pair turns by less than pi across the grid, so
    every offset in -(grid - 1)..grid - 1 gets its own angle: q.k then depends on the patches' offset,
    which is what "the patch one to the left" needs (an absolute code makes that a learned lookup).
    Repeated over q's heads, then k's, as rotate() reads them.
    """
    if head_dim % 4:
        raise WorldbenchError(f"head dim {head_dim} is not a multiple of 4; the 2-D rotary code needs x and y pairs")
    freqs = math.pi / grid / 2.0 ** torch.arange(head_dim // 4, dtype=torch.float32)  # [head_dim / 4]
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = torch.cat([xs.flatten()[:, None] * freqs, ys.flatten()[:, None] * freqs], dim=-1)  # [P, head_dim / 2]
    return torch.polar(torch.ones_like(angles), angles).repeat(1, 2 * heads)  # [P, 2 heads head_dim / 2]


def rotate(qkv: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Apply the rotary code to the q and k of qkv [B, T, P, 3E] (P the patch axis); v is left as it is.

    Each adjacent pair (a, b) of q and k is the complex number a + ib, turned by multiplying with the table.
    """
    width = qkv.shape[-1] // 3
    q_and_k = qkv[..., : 2 * width].float()  # complex numbers need float32 (under bf16 autocast too)
    pairs = torch.view_as_complex(q_and_k.unflatten(-1, (width, 2)))  # [B, T, P, E] complex
    rotated = torch.view_as_real(pairs * tables).flatten(-2)  # [B, T, P, 2E]
    return torch.cat([rotated.to(qkv.dtype), qkv[..., 2 * width :]], dim=-1)


@register("position", "absolute")
def absolute(grid: int, head_dim: int, heads: int) -> None:
    """The anchor's: the 2-D sin/cos code added to the patch embeddings, nothing inside the attention."""
    return None


@register("position", "rotary")
class Rotary(nn.Module):
    """Absolute code plus a 2-D rotary code in the spatial attention (RoFormer, Su et al. 2021; x and y halves)."""

    def __init__(self, grid: int, head_dim: int, heads: int):
        super().__init__()
        self.register_buffer("tables", rotary_tables(grid, head_dim, heads), persistent=False)  # complex [P, E]

    def forward(self, qkv: torch.Tensor) -> tuple[torch.Tensor, None]:
        # qkv [B, T, S, 3E], S = P patches, after any prepended tokens (an action token), which are not turned
        tables = self.tables
        if extra := qkv.shape[-2] - tables.shape[0]:
            tables = torch.cat([torch.ones_like(tables[:1]).expand(extra, -1), tables])  # [S, E] complex
        return rotate(qkv, tables), None


def time_code(steps: int, embed_dim: int) -> torch.Tensor:
    """1-D code [T, E] occupying the last `time_dim` channels."""
    _, time_dim = position_code_split(embed_dim)
    code = torch.zeros(steps, embed_dim)
    code[:, embed_dim - time_dim :] = sincos(torch.arange(steps), time_dim)
    return code


# ----------------------------------------------------------------------------- sub-layers

class Attention(nn.Module):
    """Multi-head self-attention over one axis (default: second-to-last); q/k/v/out projections with biases."""

    def __init__(self, dim: int, heads: int, causal: bool = False, position: nn.Module | None = None):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)  # q, k and v fused: same parameters, one matmul
        self.out = nn.Linear(dim, dim)
        # Spatial attention only: a `position` component, qkv -> (qkv, score bias or None); no parameters.
        self.position = position

    def forward(self, x: torch.Tensor, seq_dim: int = -2) -> torch.Tensor:
        # x [..., S, ..., E]: attention over axis seq_dim, independently at every other position.
        # The attention reads q/k/v straight from the projection's layout: no rearranges.
        qkv = self.qkv(x)  # [..., 3E]
        bias = None
        if self.position is not None:
            qkv, bias = self.position(qkv)  # x is [B, T, P, E], seq_dim the patch axis; bias [heads, P, P]
        return self.out(attend(qkv, self.heads, self.causal, seq_dim, bias))

    def extend(self, x: torch.Tensor, past: torch.Tensor, seq_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal attention for new positions x after `past`, the qkv of the positions before them along seq_dim:
        (the output for x's positions [..., E], the qkv of past's and x's positions [..., 3E]).

        Causal and without a position code only (the temporal attention): the earlier positions never see the
        new ones, so their qkv is the same whether or not the new positions are there.
        """
        if not self.causal or self.position is not None:
            raise WorldbenchError("only a causal attention without a position code can extend cached positions")
        qkv = torch.cat([past, self.qkv(x)], dim=seq_dim)  # [..., Sp + Sx, ..., 3E]
        y = attend(qkv, self.heads, True, seq_dim).narrow(seq_dim, past.shape[seq_dim], x.shape[seq_dim])
        return self.out(y), qkv


class SwiGLU(nn.Module):
    """Wo(silu(Wv x) * Wg x) with inner width floor(2 * hidden / 3)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        inner = 2 * hidden // 3
        self.value_gate = nn.Linear(dim, 2 * inner)  # Wv and Wg fused
        self.out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x, self.value_gate, self.out)  # [..., E]


@register("ffn", "swiglu")
def dense_swiglu(dim: int, hidden: int, choices: BlockChoices) -> SwiGLU:
    """The anchor's dense SwiGLU feed-forward (Shazeer 2020), inner width floor(2 hidden / 3)."""
    return SwiGLU(dim, hidden)


def sublayer(norm: nn.Module, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor],
             cond: torch.Tensor | None) -> torch.Tensor:
    """x after one sub-layer f: the anchor's post-norm norm(x + f(x), cond), unless the norm wires it itself."""
    if hasattr(norm, "residual"):  # a pre-norm conditioning component (AdaLN-Zero)
        return norm.residual(x, f, cond)
    return add_norm(norm, x, f(x), cond)  # [B, T, P, E]


class STBlock(nn.Module):
    """Spatial attention -> causal temporal attention -> feed-forward, each post-normed (or as its norm wires it)."""

    def __init__(self, dim: int, heads: int, hidden: int, cond_dim: int | None = None,
                 choices: BlockChoices = BlockChoices()):
        super().__init__()
        position = lookup("position", choices.position)(choices.grid, dim // heads, heads)  # no parameters
        self.spatial = Attention(dim, heads, position=position)
        self.temporal = Attention(dim, heads, causal=True)
        self.ffn = lookup("ffn", choices.ffn)(dim, hidden, choices)
        self.norm_spatial = make_norm(dim, cond_dim, choices.conditioning)
        self.norm_temporal = make_norm(dim, cond_dim, choices.conditioning)
        self.norm_ffn = make_norm(dim, cond_dim, choices.conditioning)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # x [B, T, P, E]; cond [B, T, A] or None
        return self.sublayers(x, cond, lambda h: self.temporal(h, seq_dim=1))

    def extend(self, x: torch.Tensor, cond: torch.Tensor | None,
               past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames x [B, Tx, P, E] after the frames whose temporal qkv is `past` [B, Tp, P, 3E]: (x's output
        [B, Tx, P, E], the temporal qkv of past's and x's frames [B, Tp + Tx, P, 3E]). cond [B, Tx, A] or None.

        The output equals forward's on all Tp + Tx frames, to float rounding: the temporal attention is causal.
        """
        qkv = []

        def temporal(h: torch.Tensor) -> torch.Tensor:
            out, all_qkv = self.temporal.extend(h, past, seq_dim=1)
            qkv.append(all_qkv)
            return out

        return self.sublayers(x, cond, temporal), qkv[0]

    def sublayers(self, x: torch.Tensor, cond: torch.Tensor | None,
                  temporal: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        # Each line is x = norm(x + f(x), cond) in the anchor.
        x = sublayer(self.norm_spatial, x, lambda h: self.spatial(h, seq_dim=2), cond)  # over the P patches of a frame
        x = sublayer(self.norm_temporal, x, temporal, cond)  # causal over T, per patch
        return sublayer(self.norm_ffn, x, self.ffn, cond)  # [B, T, P, E]


class STTransformer(nn.Module):
    """A stack of ST blocks; adds the 1-D time code at the start. choices: the blocks' components."""

    def __init__(self, dim: int, heads: int, hidden: int, blocks: int, max_steps: int, cond_dim: int | None = None,
                 choices: BlockChoices = BlockChoices()):
        super().__init__()
        self.blocks = nn.ModuleList(STBlock(dim, heads, hidden, cond_dim, choices) for _ in range(blocks))
        self.register_buffer("time_code", time_code(max_steps, dim), persistent=False)  # [T, E]
        # A pre-norm conditioning leaves the stream un-normed: it brings the final norm the heads expect (DiT's).
        final = getattr(lookup("conditioning", choices.conditioning), "final_norm", None) if cond_dim else None
        self.final_norm = None if final is None else final(dim, cond_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # x [B, T, P, E]
        x = x + self.time_code[: x.shape[1], None, :]
        for block in self.blocks:
            x = block(x, cond)
        return x if self.final_norm is None else self.final_norm(x, cond)

    def extend(self, x: torch.Tensor, cond: torch.Tensor | None,
               past: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Frames x [B, Tx, P, E] after the frames cached in `past` (each block's temporal qkv [B, Tp, P, 3E];
        None: no earlier frames): (x's output [B, Tx, P, E], the cache of past's and x's frames).

        Decoding one frame at a time reuses the earlier frames' cache instead of running them again; the output
        equals forward's on every frame, to float rounding. cond [B, Tx, A] or None: x's frames only.
        """
        if past is None:
            past = [x.new_zeros(*x.shape[:1], 0, *x.shape[2:-1], 3 * x.shape[-1])] * len(self.blocks)
        start = past[0].shape[1]  # frames already cached
        x = x + self.time_code[start : start + x.shape[1], None, :]
        cache = []
        for block, block_past in zip(self.blocks, past):
            x, qkv = block.extend(x, cond, block_past)
            cache.append(qkv)
        return (x if self.final_norm is None else self.final_norm(x, cond)), cache


class PatchEmbed(nn.Module):
    """Non-overlapping S x S patches -> Linear(3 S^2, E) + 2-D spatial code."""

    def __init__(self, frame_size: int, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.grid = frame_size // patch_size
        self.proj = nn.Linear(3 * patch_size**2, dim)
        self.register_buffer("spatial_code", spatial_code(self.grid, dim), persistent=False)  # [P, E]

    def patchify(self, frames: torch.Tensor) -> torch.Tensor:
        # [B, T, 3, H, W] -> [B, T, P, 3 S^2]
        s = self.patch_size
        return rearrange(frames, "b t c (h s1) (w s2) -> b t (h w) (s1 s2 c)", s1=s, s2=s)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.proj(self.patchify(frames)) + self.spatial_code  # [B, T, P, E]


def unpatchify(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, T, P, 3 S^2] -> [B, T, 3, H, W]."""
    grid = math.isqrt(patches.shape[2])
    s = patch_size
    return rearrange(patches, "b t (h w) (s1 s2 c) -> b t c (h s1) (w s2)", h=grid, w=grid, s1=s, s2=s)
