"""The seam between the model code and the native kernels: the one place that picks native or PyTorch.

Each function computes what its docstring says. For float32 CPU tensors it runs the native kernels
(worldmodel.kernels, compiled on first use), which compute the same math to float rounding; for any
other dtype or device, or with WORLDBENCH_ATTENTION=torch, it runs the plain PyTorch ops. The model
code (layers.py) calls only these three, so it reads as the math and this file alone decides how it runs:

  attend    multi-head attention over one axis, reading q/k/v straight from the fused projection's
            [..., 3E] output (no layout copies)
  add_norm  a post-norm block's norm(x + f, cond), the residual add and the norm as one kernel
  swiglu    the SwiGLU feed-forward, its inner width zero-padded for the GEMMs
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from worldmodel import kernels
from worldmodel.errors import WorldbenchError
from worldmodel.norms import FiLMNorm, RMSNorm


# ----------------------------------------------------------------------------- attention

def _torch_attention(qkv: torch.Tensor, heads: int, causal: bool, seq_dim: int,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference path: F.scaled_dot_product_attention over axis seq_dim of qkv [..., 3E] -> [..., E]."""
    moved = qkv.movedim(seq_dim, -2)  # [..., S, 3E]
    q, k, v = rearrange(moved.reshape(-1, *moved.shape[-2:]), "n s (three h d) -> three n h s d", three=3, h=heads)
    if bias is not None and causal:  # SDPA takes a mask or is_causal, not both
        seq = q.shape[-2]
        future = torch.ones(seq, seq, dtype=torch.bool, device=q.device).triu(1)
        bias, causal = bias.masked_fill(future, float("-inf")), False
    bias = None if bias is None else bias.to(q.dtype)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal)  # [N, h, S, d]
    y = rearrange(y, "n h s d -> n s (h d)").reshape(*moved.shape[:-1], -1)
    return y.movedim(-2, seq_dim)


def attend(qkv: torch.Tensor, heads: int, causal: bool = False, seq_dim: int = -2,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head softmax attention over axis `seq_dim` of qkv [..., 3E] -> [..., E].

    qkv's last axis is (three heads d): q, k, v, each heads x d. Every position along the other
    axes (but the last) is an independent sequence; `causal` lets position s see keys <= s.
    `bias` [heads, S, S] is added to the scores (ALiBi); the native kernel has no such input, so a
    biased attention always runs the PyTorch path.
    """
    seq_dim = seq_dim % qkv.dim()
    if seq_dim == qkv.dim() - 1:
        raise WorldbenchError("attention cannot run over the channel axis; pass seq_dim < -1")
    if qkv.shape[-1] % (3 * heads):
        raise WorldbenchError(f"qkv width {qkv.shape[-1]} is not 3 x heads x head dim for {heads} heads")
    if bias is None and kernels.use_native(qkv):
        return kernels.attention(qkv, heads, causal, seq_dim)
    return _torch_attention(qkv, heads, causal, seq_dim, bias)


# ----------------------------------------------------------------------------- residual + norm

def add_norm(norm: nn.Module, x: torch.Tensor, f: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """norm(x + f, cond): x, f [B, T, P, E], cond [B, T, A] or None.

    One native kernel for the norms of worldmodel.norms; any other norm module runs as written.
    """
    if x.shape == f.shape:
        if isinstance(norm, RMSNorm) and kernels.use_native(x, f, norm.norm.weight):
            return kernels.add_rmsnorm(x, f, norm.norm.weight, norm.norm.eps)
        if isinstance(norm, FiLMNorm) and cond is not None and cond.shape[:-1] == x.shape[:-2] \
                and kernels.use_native(x, f):
            film = norm.film(cond)  # [B, T, 2E] = (gamma | beta); under autocast it can be bf16
            if kernels.use_native(film):
                return kernels.add_filmnorm(x, f, film, norm.eps)
    return norm(x + f, cond)


# ----------------------------------------------------------------------------- SwiGLU

def swiglu(x: torch.Tensor, value_gate: nn.Linear, out: nn.Linear) -> torch.Tensor:
    """out(silu(value) * gate) with (value | gate) = value_gate(x): x [..., E] -> [..., E]."""
    if not kernels.use_native(x):
        value, gate = value_gate(x).chunk(2, dim=-1)  # [..., W] each
        return out(F.silu(value) * gate)
    # The same products with the inner width W zero-padded to a multiple of 8: value and gate each get
    # `pad` zero rows in the weights (so zero columns in the activations, and silu(0) * 0 = 0), the
    # output weight `pad` zero columns. Odd widths such as 85 make MKL's GEMMs several times slower;
    # the padding adds only exact zeros.
    w, b, w_out = value_gate.weight, value_gate.bias, out.weight  # [2W, E], [2W], [E, W]
    inner = w.shape[0] // 2
    pad = -inner % 8
    if pad:
        value_w, gate_w = w.split(inner)
        value_b, gate_b = b.split(inner)
        zeros_w, zeros_b = w.new_zeros(pad, w.shape[1]), b.new_zeros(pad)
        w = torch.cat([value_w, zeros_w, gate_w, zeros_w])  # [2(W + pad), E]
        b = torch.cat([value_b, zeros_b, gate_b, zeros_b])
        w_out = torch.cat([w_out, w_out.new_zeros(w_out.shape[0], pad)], dim=1)  # [E, W + pad]
    h = F.linear(x, w, b)  # [..., 2(W + pad)]; float32 x can still give bf16 h under autocast: check again
    if kernels.use_native(h):
        return F.linear(kernels.swiglu(h), w_out, out.bias)
    value, gate = h.chunk(2, dim=-1)
    return F.linear(F.silu(value) * gate, w_out, out.bias)
