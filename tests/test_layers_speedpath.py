"""The fast paths of worldmodel.fused (what worldmodel.layers runs) equal the straightforward math.

The native kernels (worldmodel.kernels: attention, residual + norm, SwiGLU) are checked against
references written naively (explicit softmax in float64, the norms' formulas) and against the
pure-PyTorch path that WORLDBENCH_ATTENTION=torch selects, in the forward pass and in the
gradients; plus causality over time, bit-determinism and the build-failure message.
"""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from worldmodel import kernels
from worldmodel.errors import WorldbenchError
from worldmodel.fused import add_norm, attend
from worldmodel.layers import Attention, STBlock, STTransformer, SwiGLU
from worldmodel.norms import FiLMNorm, RMSNorm

TOL = 2e-5  # float32 rounding, relative to the largest magnitude of the compared tensor


@pytest.fixture(autouse=True)
def native_backend(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "native")


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = TOL) -> None:
    scale = expected.abs().max().item() + 1e-6
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= tol * scale, f"max abs error {error:.3g} vs scale {scale:.3g}"


def naive_attention(qkv: torch.Tensor, heads: int, causal: bool, seq_dim: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over axis seq_dim, in float64, with an explicit softmax."""
    x = qkv.double().movedim(seq_dim, -2)  # [..., S, 3E]
    S, E = x.shape[-2], x.shape[-1] // 3
    d = E // heads
    q, k, v = (x[..., i * E : (i + 1) * E].unflatten(-1, (heads, d)).transpose(-3, -2) for i in range(3))  # [..., h, S, d]
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if causal:
        scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    weights = (scores - scores.amax(-1, keepdim=True)).exp()
    weights = weights / weights.sum(-1, keepdim=True)
    y = (weights @ v).transpose(-3, -2).flatten(-2)  # [..., S, E]
    return y.movedim(-2, seq_dim)


def grads(fn, *inputs: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fn(*inputs) and the gradients of sum(fn * R) for a fixed random R."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return out.detach(), list(torch.autograd.grad((out * weight).sum(), inputs))


def native_equals_torch_path(fn, inputs: list[torch.Tensor], params: list[torch.Tensor], tol: float = TOL) -> None:
    """fn(*inputs) and the gradients of sum(fn * R) (fixed random R) for inputs and params: the native
    path equals the pure-PyTorch path."""
    def run(backend):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(kernels.ENV_VAR, backend)
            leaves = [t.clone().requires_grad_(True) for t in inputs]
            out = fn(*leaves)
            weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
            return out.detach(), torch.autograd.grad((out * weight).sum(), leaves + params)

    out, gradients = run("native")
    ref, ref_gradients = run("torch")
    close(out, ref, tol)
    for a, b in zip(gradients, ref_gradients, strict=True):
        close(a, b, tol)


# ----------------------------------------------------------------------------- attention

ATTENTION_CASES = {
    # name: (qkv shape, heads, causal, seq_dim)
    "spatial-16": ((2, 3, 16, 96), 8, False, 2),  # the ci profile's 4x4 patches: heads in lanes, d = 4
    "spatial-16-d8": ((2, 3, 16, 96), 4, False, 2),  # d = 8 in registers, half a vector of heads
    "temporal-12-heads": ((2, 4, 5, 144), 12, True, 1),  # d = 4, heads spilling into a second vector
    "spatial-64": ((2, 3, 64, 96), 8, False, 2),  # [B, T, P, 3E], 8x8 patches per frame
    "spatial-256": ((1, 2, 256, 96), 8, False, 2),  # 16x16 patches per frame
    "temporal-T4": ((2, 4, 64, 96), 8, True, 1),  # causal over the T = 4 frames of each patch
    "windowed-2P": ((2, 128, 96), 8, False, 1),  # the windowed LAM encoder's [B(T-1), 2P, E]
    "causal-long-odd": ((3, 37, 48), 4, True, 1),  # odd length, causal, d = 3
    "temporal-odd-heads": ((2, 5, 3, 54), 3, True, 1),  # heads not a multiple of 8, d = 6
}


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_native_attention_matches_naive_softmax(case):
    shape, heads, causal, seq_dim = ATTENTION_CASES[case]
    qkv = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 2
    out, (dqkv,) = grads(lambda t: attend(t, heads, causal, seq_dim), qkv)
    ref_out, (ref_dqkv,) = grads(lambda t: naive_attention(t, heads, causal, seq_dim), qkv.double())
    close(out, ref_out)
    close(dqkv, ref_dqkv)
    # and the pure-PyTorch path (F.scaled_dot_product_attention) agrees too
    torch_out, (torch_dqkv,) = grads(lambda t: attend_torch(t, heads, causal, seq_dim), qkv)
    close(out, torch_out)
    close(dqkv, torch_dqkv)


def padded_head_dim(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., heads * d] -> [..., heads * (d + 1)]: each head gets one more dim, zero."""
    split = t.unflatten(-1, (heads, -1))
    return torch.cat([split, split.new_zeros(*split.shape[:-1], 1)], dim=-1).flatten(-2)


@pytest.mark.parametrize("d", [4, 8])
@pytest.mark.parametrize("seq_dim, causal", [(2, 0), (1, 1)], ids=["spatial", "temporal"])
def test_head_dims_with_their_own_code_give_the_bits_of_the_generic_code(d, seq_dim, causal):
    # d = 4 and 8 (the shipped models' head dims) run transposing packs and register accumulators; d + 1
    # runs the generic loops. A zero extra dim adds only exact zeros, so both must give the same bits.
    heads, lib, ptr = 8, kernels.library(), (lambda t: t.data_ptr())
    qkv = torch.randn(2, 4, 16, 3 * heads * d, generator=torch.Generator().manual_seed(5))
    dy = torch.randn(2, 4, 16, heads * d, generator=torch.Generator().manual_seed(6))
    outer, S, inner = (8, 16, 1) if seq_dim == 2 else (2, 4, 16)

    def run(qkv, dy, d):
        y, dqkv = torch.empty_like(dy), torch.empty_like(qkv)
        stats = torch.empty(lib.wb_attention_stats_size(outer, S, inner, heads, d))
        assert lib.wb_attention_forward(ptr(qkv), ptr(y), ptr(stats), outer, S, inner, heads, d, causal, 0.5, 1) == 0
        lib.wb_attention_backward(ptr(qkv), ptr(y), ptr(dy), ptr(stats), ptr(dqkv), outer, S, inner, heads, d, causal,
                                  0.5, 1)
        return y, dqkv

    y, dqkv = run(qkv, dy, d)
    padded_qkv = torch.cat([padded_head_dim(part, heads) for part in qkv.chunk(3, dim=-1)], dim=-1)
    padded_y, padded_dqkv = run(padded_qkv, padded_head_dim(dy, heads), d + 1)
    assert torch.equal(y, padded_y.unflatten(-1, (heads, d + 1))[..., :d].flatten(-2))
    generic = padded_dqkv.unflatten(-1, (3 * heads, d + 1))[..., :d].flatten(-2)
    assert torch.equal(dqkv, generic)


def attend_torch(qkv, heads, causal, seq_dim):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(kernels.ENV_VAR, "torch")
        return attend(qkv, heads, causal, seq_dim)


def test_native_attention_handles_large_score_ranges():
    # scores spanning hundreds of nats: exp underflows for most keys but never yields NaN or inf
    qkv = torch.randn(2, 64, 96, generator=torch.Generator().manual_seed(2)) * 12
    out, (dqkv,) = grads(lambda t: attend(t, 8, False, 1), qkv)
    ref_out, (ref_dqkv,) = grads(lambda t: naive_attention(t, 8, False, 1), qkv.double())
    assert torch.isfinite(out).all() and torch.isfinite(dqkv).all()
    close(out, ref_out)
    close(dqkv, ref_dqkv, tol=1e-4)


@pytest.mark.parametrize("shape, seq_dim", [((2, 4, 64, 96), 1), ((2, 40, 96), 1)], ids=["temporal-T4", "rows-40"])
def test_causal_attention_ignores_the_future(shape, seq_dim):
    qkv = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    base = attend(qkv, 8, True, seq_dim)
    S = shape[seq_dim]
    for t in range(S - 1):
        changed = qkv.clone()
        changed.narrow(seq_dim, t + 1, S - t - 1).normal_()
        out = attend(changed, 8, True, seq_dim)
        assert torch.equal(out.narrow(seq_dim, 0, t + 1), base.narrow(seq_dim, 0, t + 1)), t
        assert not torch.equal(out.narrow(seq_dim, t + 1, 1), base.narrow(seq_dim, t + 1, 1))


def test_attention_module_over_any_axis_equals_moving_that_axis():
    torch.manual_seed(4)
    module = Attention(32, 8, causal=True)
    x = torch.randn(2, 4, 16, 32)
    over_time = module(x, seq_dim=1)
    moved = module(x.transpose(1, 2), seq_dim=-2).transpose(1, 2)  # the original [N, S, E] call
    close(over_time, moved, tol=1e-6)


# ----------------------------------------------------------------------------- norms and SwiGLU

@pytest.mark.parametrize("dim", [32, 24, 18])  # 32: compiled width; 24: runtime, vectorised; 18: scalar
def test_residual_rmsnorm_matches_formula(dim):
    torch.manual_seed(5)
    norm = RMSNorm(dim)
    with torch.no_grad():
        norm.norm.weight.normal_()
    x = torch.randn(2, 4, 64, dim, requires_grad=True)
    f = torch.randn(2, 4, 64, dim, requires_grad=True)
    weight = torch.randn(2, 4, 64, dim)
    out = add_norm(norm, x, f)
    native = torch.autograd.grad((out * weight).sum(), [x, f, norm.norm.weight])
    z = (x + f).double()
    ref = z / (z.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * norm.norm.weight.double()
    expected = torch.autograd.grad((ref * weight.double()).sum(), [x, f, norm.norm.weight])
    close(out, ref)
    for a, b in zip(native, expected):
        close(a, b)


@pytest.mark.parametrize("dim", [32, 24, 18])
def test_residual_filmnorm_matches_torch_path(dim):
    torch.manual_seed(6)
    norm = FiLMNorm(dim, 2)
    with torch.no_grad():
        norm.to_scale_shift.weight.normal_()
        norm.to_scale_shift.bias.normal_()
    x, f, cond = torch.randn(2, 4, 64, dim), torch.randn(2, 4, 64, dim), torch.randn(2, 4, 2)
    native_equals_torch_path(lambda *inputs: add_norm(norm, *inputs), [x, f, cond], list(norm.parameters()))


def test_swiglu_matches_torch_path():
    torch.manual_seed(7)
    ffn = SwiGLU(32, 128)  # inner width 85: the native path pads it to 88
    native_equals_torch_path(ffn, [torch.randn(2, 4, 64, 32)], list(ffn.parameters()))
    silu_ref = F.silu(torch.linspace(-100, 100, 4001))
    h = torch.cat([torch.linspace(-100, 100, 4001).view(-1, 1).expand(-1, 8), torch.ones(4001, 8)], dim=1)
    close(kernels.swiglu(h)[:, 0], silu_ref)


# ----------------------------------------------------------------------------- whole blocks

@pytest.mark.parametrize("cond_dim", [None, 2], ids=["rmsnorm", "film"])
def test_st_block_native_equals_torch_path(cond_dim):
    torch.manual_seed(8)
    block = STBlock(32, 8, 128, cond_dim)
    x = torch.randn(2, 4, 64, 32)
    cond = torch.randn(2, 4, 2) if cond_dim else None
    native_equals_torch_path(lambda inp: block(inp, cond), [x], list(block.parameters()), tol=1e-4)


@pytest.mark.parametrize("cond_dim, norm_kernel", [(None, "add_rmsnorm"), (2, "add_filmnorm")], ids=["rmsnorm", "film"])
def test_st_block_runs_every_sub_layer_natively(monkeypatch, cond_dim, norm_kernel):
    """For float32 CPU tensors worldmodel.fused takes the native path: 2 attentions, 3 residual norms, 1 SwiGLU."""
    calls = Counter()

    def counted(name):
        kernel = getattr(kernels, name)

        def call(*args):
            calls[name] += 1
            return kernel(*args)
        return call

    for name in ("attention", norm_kernel, "swiglu"):
        monkeypatch.setattr(kernels, name, counted(name))
    block = STBlock(32, 8, 128, cond_dim)
    block(torch.randn(2, 4, 64, 32), torch.randn(2, 4, 2) if cond_dim else None).sum().backward()
    assert calls == {"attention": 2, norm_kernel: 3, "swiglu": 1}


def test_st_transformer_is_causal_in_time():
    torch.manual_seed(9)
    model = STTransformer(32, 8, 128, blocks=2, max_steps=4, cond_dim=2)
    x, cond = torch.randn(2, 4, 64, 32), torch.randn(2, 4, 2)
    base = model(x, cond)
    for t in range(3):
        changed_x, changed_cond = x.clone(), cond.clone()
        changed_x[:, t + 1 :].normal_()
        changed_cond[:, t + 1 :].normal_()
        out = model(changed_x, changed_cond)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1]), t
        assert not torch.equal(out[:, t + 1], base[:, t + 1])


def test_native_paths_are_bit_deterministic():
    torch.manual_seed(10)
    block = STBlock(32, 8, 128, cond_dim=2)
    x, cond = torch.randn(2, 4, 64, 32), torch.randn(2, 4, 2)
    qkv = torch.randn(2, 4, 64, 96)
    threads = torch.get_num_threads()

    def kernels_once():
        q = qkv.clone().requires_grad_(True)
        spatial, temporal = attend(q, 8, False, 2), attend(q, 8, True, 1)
        (spatial.sum() + temporal.square().sum()).backward()
        return [spatial, temporal, q.grad]

    def block_once():
        inp = x.clone().requires_grad_(True)
        out = block(inp, cond)
        out.square().sum().backward()
        return [out, inp.grad] + [p.grad.clone() for p in block.parameters()]

    try:
        torch.set_num_threads(1)
        single = kernels_once()
        torch.set_num_threads(2)
        double = kernels_once()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single, double):
        assert torch.equal(a, b)  # the kernels give the same bits for any thread count
    first = block_once()
    block.zero_grad()
    for a, b in zip(first, block_once()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- backend selection

def test_torch_backend_never_touches_the_native_library(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    monkeypatch.setattr(kernels, "library", lambda: pytest.fail("native library used"))
    block = STBlock(32, 8, 128, cond_dim=2)
    out = block(torch.randn(1, 4, 16, 32, requires_grad=True), torch.randn(1, 4, 2))
    out.sum().backward()


def test_unknown_backend_is_one_line_error(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "cuda-please")
    with pytest.raises(WorldbenchError, match="WORLDBENCH_ATTENTION='cuda-please' is not a known backend") as err:
        attend(torch.randn(1, 8, 96), 8)
    assert "\n" not in str(err.value)


def test_failed_build_says_how_to_use_the_torch_path(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_library", None)
    monkeypatch.setenv("WORLDBENCH_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(WorldbenchError) as err:
        attend(torch.randn(1, 8, 96), 8)
    message = str(err.value)
    assert "\n" not in message and "set WORLDBENCH_ATTENTION=torch" in message
