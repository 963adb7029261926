"""Building blocks shared by every stage: position codes, norms, attention, the ST-transformer.

Token layout everywhere: x is [B, T, P, E] (batch, time, patches per frame, embed).
Every sub-layer is post-norm, `norm(x + f(x))`, as in the anchor implementation.

Speed path: for float32 CPU tensors the attention (spatial over the P patches of a frame, causal
temporal over T), the residual + norm and the SwiGLU activation run as native kernels
(worldmodel.kernels, compiled on first use) that compute the same math to float rounding; the
attention reads q/k/v straight from the fused projection's [B, T, P, 3E] output, so no layout copies
are made. WORLDBENCH_ATTENTION=torch selects the plain PyTorch ops everywhere, for comparison.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from worldmodel import kernels
from worldmodel.errors import WorldbenchError


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


def time_code(steps: int, embed_dim: int) -> torch.Tensor:
    """1-D code [T, E] occupying the last `time_dim` channels."""
    _, time_dim = position_code_split(embed_dim)
    code = torch.zeros(steps, embed_dim)
    code[:, embed_dim - time_dim :] = sincos(torch.arange(steps), time_dim)
    return code


# ----------------------------------------------------------------------------- norms
#
# Every norm has `forward(x, cond)` and `residual(x, f, cond)` = forward(x + f, cond); the latter
# is one fused native kernel (worldmodel.kernels) for float32 CPU tensors.

class RMSNorm(nn.Module):
    """Unconditioned norm; accepts (and ignores) a condition so blocks can treat norms alike."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(x)

    def residual(self, x: torch.Tensor, f: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """norm(x + f)."""
        if x.shape == f.shape and kernels.use_native(x, f, self.norm.weight):
            return kernels.add_rmsnorm(x, f, self.norm.weight, self.norm.eps)
        return self.norm(x + f)


class FiLMNorm(nn.Module):
    """Affine-free layer norm, then x * (1 + gamma) + beta with (gamma, beta) = Linear(SiLU(cond))."""

    eps = 1e-5  # F.layer_norm's default

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.to_scale_shift = nn.Linear(cond_dim, 2 * dim)
        # Starts as a plain layer norm: the actions' influence is learned from ~zero.
        nn.init.normal_(self.to_scale_shift.weight, std=1e-3)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # x [B, T, P, E], cond [B, T, A]
        gamma, beta = self.to_scale_shift(F.silu(cond)).unsqueeze(2).chunk(2, dim=-1)  # [B, T, 1, E] each
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + gamma) + beta

    def residual(self, x: torch.Tensor, f: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """norm(x + f, cond)."""
        if x.shape == f.shape and cond is not None and cond.shape[:-1] == x.shape[:-2] and kernels.use_native(x, f):
            film = self.to_scale_shift(F.silu(cond))  # [B, T, 2E] = (gamma | beta), one row per frame
            if kernels.use_native(film):
                return kernels.add_filmnorm(x, f, film, self.eps)
        return self(x + f, cond)


# ----------------------------------------------------------------------------- sub-layers

def _torch_attention(qkv: torch.Tensor, heads: int, causal: bool, seq_dim: int) -> torch.Tensor:
    """Reference path: F.scaled_dot_product_attention over axis seq_dim of qkv [..., 3E] -> [..., E]."""
    moved = qkv.movedim(seq_dim, -2)  # [..., S, 3E]
    q, k, v = rearrange(moved.reshape(-1, *moved.shape[-2:]), "n s (three h d) -> three n h s d", three=3, h=heads)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [N, h, S, d]
    y = rearrange(y, "n h s d -> n s (h d)").reshape(*moved.shape[:-1], -1)
    return y.movedim(-2, seq_dim)


def attend(qkv: torch.Tensor, heads: int, causal: bool = False, seq_dim: int = -2) -> torch.Tensor:
    """Multi-head softmax attention over axis `seq_dim` of qkv [..., 3E] -> [..., E].

    qkv's last axis is (three heads d): q, k, v, each heads x d. Every position along the other
    axes (but the last) is an independent sequence; `causal` lets position s see keys <= s.
    """
    seq_dim = seq_dim % qkv.dim()
    if seq_dim == qkv.dim() - 1:
        raise WorldbenchError("attention cannot run over the channel axis; pass seq_dim < -1")
    if qkv.shape[-1] % (3 * heads):
        raise WorldbenchError(f"qkv width {qkv.shape[-1]} is not 3 x heads x head dim for {heads} heads")
    if kernels.use_native(qkv):
        return kernels.attention(qkv, heads, causal, seq_dim)
    return _torch_attention(qkv, heads, causal, seq_dim)


class Attention(nn.Module):
    """Multi-head self-attention over one axis (default: second-to-last); q/k/v/out projections with biases."""

    def __init__(self, dim: int, heads: int, causal: bool = False):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)  # q, k and v fused: same parameters, one matmul
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, seq_dim: int = -2) -> torch.Tensor:
        # x [..., S, ..., E]: attention over axis seq_dim, independently at every other position.
        # The attention reads q/k/v straight from the projection's layout: no rearranges.
        return self.out(attend(self.qkv(x), self.heads, self.causal, seq_dim))


class SwiGLU(nn.Module):
    """Wo(silu(Wv x) * Wg x) with inner width floor(2 * hidden / 3)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        inner = 2 * hidden // 3
        self.inner = inner
        self.value_gate = nn.Linear(dim, 2 * inner)  # Wv and Wg fused
        self.out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.use_native(x):
            return self._native(x)
        value, gate = self.value_gate(x).chunk(2, dim=-1)
        return self.out(F.silu(value) * gate)

    def _native(self, x: torch.Tensor) -> torch.Tensor:
        # The same products with the inner width zero-padded to a multiple of 8: value and gate
        # each get `pad` zero rows in the weights (so zero columns in the activations, and
        # silu(0) * 0 = 0), the output weight `pad` zero columns. Odd widths such as 85 make
        # MKL's GEMMs several times slower; the padding adds only exact zeros.
        w, b, w_out = self.value_gate.weight, self.value_gate.bias, self.out.weight
        pad = -self.inner % 8
        if pad:
            value_w, gate_w = w.split(self.inner)
            value_b, gate_b = b.split(self.inner)
            zeros_w, zeros_b = w.new_zeros(pad, w.shape[1]), b.new_zeros(pad)
            w = torch.cat([value_w, zeros_w, gate_w, zeros_w])
            b = torch.cat([value_b, zeros_b, gate_b, zeros_b])
            w_out = torch.cat([w_out, w_out.new_zeros(w_out.shape[0], pad)], dim=1)
        h = F.linear(x, w, b)  # float32 x can still give bf16 h under autocast: check what the kernel gets
        if kernels.use_native(h):
            return F.linear(kernels.swiglu(h), w_out, self.out.bias)
        value, gate = h.chunk(2, dim=-1)
        return F.linear(F.silu(value) * gate, w_out, self.out.bias)


def make_norm(dim: int, cond_dim: int | None) -> nn.Module:
    return RMSNorm(dim) if cond_dim is None else FiLMNorm(dim, cond_dim)


class STBlock(nn.Module):
    """Spatial attention -> causal temporal attention -> SwiGLU, each post-normed."""

    def __init__(self, dim: int, heads: int, hidden: int, cond_dim: int | None = None):
        super().__init__()
        self.spatial = Attention(dim, heads)
        self.temporal = Attention(dim, heads, causal=True)
        self.ffn = SwiGLU(dim, hidden)
        self.norm_spatial = make_norm(dim, cond_dim)
        self.norm_temporal = make_norm(dim, cond_dim)
        self.norm_ffn = make_norm(dim, cond_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # x [B, T, P, E]; cond [B, T, A] or None. Each line is norm(x + f(x), cond).
        x = self.norm_spatial.residual(x, self.spatial(x, seq_dim=2), cond)  # over the P patches of a frame
        x = self.norm_temporal.residual(x, self.temporal(x, seq_dim=1), cond)  # causal over T, per patch
        return self.norm_ffn.residual(x, self.ffn(x), cond)


class STTransformer(nn.Module):
    """A stack of ST blocks; adds the 1-D time code at the start."""

    def __init__(self, dim: int, heads: int, hidden: int, blocks: int, max_steps: int, cond_dim: int | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(STBlock(dim, heads, hidden, cond_dim) for _ in range(blocks))
        self.register_buffer("time_code", time_code(max_steps, dim), persistent=False)  # [T, E]

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # x [B, T, P, E]
        x = x + self.time_code[: x.shape[1], None, :]
        for block in self.blocks:
            x = block(x, cond)
        return x


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
