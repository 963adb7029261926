"""Native CPU kernels for the ST blocks, compiled on first use.

`attention.cpp` (multi-head attention, forward and backward) and `fused.cpp` (residual + norm,
SwiGLU activation) are plain C++ with a C ABI and no torch headers, so building them takes a few
seconds with the system `g++` (or `$CXX`) and needs no ninja or Python headers. They are called
through ctypes on the data pointers of contiguous float32 CPU tensors, and parallelised with
OpenMP, which shares the thread pool (and `torch.set_num_threads`) of PyTorch's own libgomp.

The shared library is cached under the user's cache directory (`$XDG_CACHE_HOME/worldbench/kernels`,
else `~/.cache/worldbench/kernels`; `WORLDBENCH_KERNEL_CACHE` overrides), keyed by a hash of the
sources, the flags and the compiler version: an edit or another compiler triggers a rebuild, and
concurrent first uses do not clash (each compiles to a temporary file and renames it into place:
worldmodel.files.write_atomic).

The environment variable `WORLDBENCH_ATTENTION` picks the implementation, read at every call:
  unset / "native"  these kernels (a clear error if they cannot be built: no silent fallback);
  "torch"           pure PyTorch everywhere (`F.scaled_dot_product_attention`, `nn.RMSNorm`, ...),
                    for debugging and comparison.
Tensors that are not float32 on the CPU always take the PyTorch path.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import subprocess
import threading
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from worldmodel.errors import WorldbenchError
from worldmodel.files import write_atomic

ENV_VAR = "WORLDBENCH_ATTENTION"
BACKENDS = ("native", "torch")
_SOURCES = [Path(__file__).with_name(name) for name in ("attention.cpp", "fused.cpp")]
_HEADERS = [Path(__file__).with_name("simd_exp.h")]
_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-fPIC", "-shared", "-std=c++17", "-fno-math-errno"]
_ABI_VERSION = 3

_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def backend() -> str:
    """The implementation named by WORLDBENCH_ATTENTION: "native" (the default) or "torch"."""
    value = os.environ.get(ENV_VAR, "native").strip().lower() or "native"
    if value not in BACKENDS:
        raise WorldbenchError(f"{ENV_VAR}={value!r} is not a known backend; use one of: {', '.join(BACKENDS)}")
    return value


def use_native(*tensors: torch.Tensor) -> bool:
    """True when the native kernels apply: backend "native" and every tensor float32 on the CPU."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and backend() == "native"


def _fail(reason: str) -> WorldbenchError:
    return WorldbenchError(
        f"the native worldbench kernels are unavailable ({reason}); "
        f"set {ENV_VAR}=torch to use the pure-PyTorch implementation instead"
    )


def _cache_dir() -> Path:
    override = os.environ.get("WORLDBENCH_KERNEL_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "worldbench" / "kernels"


def _check_cpu() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise _fail(f"they need an x86-64 CPU with AVX2 and FMA, this is {platform.machine()}")
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return  # not Linux: let the compiler and the loader decide
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            missing = {"avx2", "fma"} - set(line.split(":", 1)[1].split())
            if missing:
                raise _fail(f"this CPU lacks {', '.join(sorted(missing))}")
            return


def compiler() -> str:
    """The C++ compiler the kernels are built with: $CXX, else g++."""
    return os.environ.get("CXX", "g++")


def compile_library(sources: list[Path], target: Path) -> None:
    """Compiles kernel sources into the shared library `target` with the kernels' flags; a one-line error if not."""
    result = subprocess.run([compiler(), *_FLAGS, *map(str, sources), "-o", str(target)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        lines = result.stderr.splitlines()
        first = next((line for line in lines if "error" in line), " ".join(lines)[:300])
        raise _fail(f"'{compiler()}' failed to compile them: {first}")


def _build() -> Path:
    _check_cpu()
    try:
        version = subprocess.run([compiler(), "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise _fail(f"no working C++ compiler '{compiler()}': {err}") from None
    digest = hashlib.sha256(" ".join(_FLAGS).encode() + version.encode())
    for source in _SOURCES + _HEADERS:
        digest.update(source.read_bytes())
    directory = _cache_dir()
    target = directory / f"worldbench-kernels-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # concurrent first uses each compile their own temp file
        write_atomic(target, lambda tmp: compile_library(_SOURCES, tmp))
    except OSError as err:
        raise _fail(f"cannot write the kernel cache {directory}: {err}") from None
    _prune(directory, keep=4)
    return target


def _prune(directory: Path, keep: int) -> None:
    """Delete all but the `keep` newest builds (older sources, compilers); loaded copies stay mapped."""
    builds = sorted(directory.glob("worldbench-kernels-*.so"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[keep:]:
        try:
            old.unlink()
        except OSError:
            pass


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, f32, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
    signatures = {
        "wb_attention_abi_version": ([], i32),
        "wb_attention_stats_size": ([i64] * 5, i64),
        "wb_attention_forward": ([ptr] * 3 + [i64] * 5 + [i32, f32, i32], i32),
        "wb_attention_backward": ([ptr] * 5 + [i64] * 5 + [i32, f32, i32], i32),
        "wb_add_rmsnorm_forward": ([ptr] * 3 + [f32] + [ptr] * 3 + [i64, i64, i32], None),
        "wb_add_rmsnorm_backward": ([ptr] * 7 + [i64, i64, i32], None),
        "wb_add_filmnorm_forward": ([ptr] * 3 + [f32] + [ptr] * 3 + [i64, i64, i64, i32], None),
        "wb_add_filmnorm_backward": ([ptr] * 6 + [i64, i64, i64, i32], None),
        "wb_swiglu_forward": ([ptr] * 2 + [i64, i64, i32], None),
        "wb_swiglu_backward": ([ptr] * 3 + [i64, i64, i32], None),
    }
    for name, (args, result) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = result


def library() -> ctypes.CDLL:
    """The loaded kernel library; builds it on first use (a few seconds)."""
    global _library
    if _library is not None:
        return _library
    with _lock:
        if _library is None:
            path = _build()
            try:
                lib = ctypes.CDLL(str(path))
                _declare(lib)
            except (OSError, AttributeError) as err:
                raise _fail(f"cannot load {path}: {err}") from None
            if lib.wb_attention_abi_version() != _ABI_VERSION:
                raise _fail(f"{path} has an unexpected ABI version; delete it to rebuild")
            _library = lib
    return _library


def _threads() -> int:
    return torch.get_num_threads()


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _checked(kernel: str, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors as the C code reads them (contiguous float32 on the CPU), or a one-line error.

    The kernels index raw pointers with the sizes they are given, so any other dtype (bf16 under
    autocast), device or layout would read and write out of bounds: refuse it here, never in C.
    The caller (worldmodel/fused.py) checks `use_native` first and takes the PyTorch path otherwise.
    """
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != torch.float32:
            raise WorldbenchError(f"the native {kernel} takes float32 CPU tensors, got {t.dtype} on {t.device}; "
                                  f"use the PyTorch path (or set {ENV_VAR}=torch)")
    return [t.contiguous() for t in tensors]


def _check_shape(kernel: str, ok: bool, detail: str) -> None:
    if not ok:
        raise WorldbenchError(f"the native {kernel} got mismatched shapes: {detail}")


# ----------------------------------------------------------------------------- attention

class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int, causal: bool, seq_dim: int) -> torch.Tensor:
        lib = library()
        (qkv,) = _checked("attention", qkv)
        shape = qkv.shape
        _check_shape("attention", heads >= 1 and 0 <= seq_dim < qkv.dim() - 1 and shape[-1] % (3 * heads) == 0,
                     f"qkv {list(shape)}, {heads} heads, sequence axis {seq_dim}")
        outer, S, inner = math.prod(shape[:seq_dim]), shape[seq_dim], math.prod(shape[seq_dim + 1 : -1])
        d = shape[-1] // (3 * heads)
        y = qkv.new_empty(*shape[:-1], heads * d)
        stats = qkv.new_empty(lib.wb_attention_stats_size(outer, S, inner, heads, d))  # lse or probabilities
        scale = 1.0 / math.sqrt(d)
        if lib.wb_attention_forward(_ptr(qkv), _ptr(y), _ptr(stats), outer, S, inner, heads, d, int(causal), scale,
                                    _threads()):
            raise WorldbenchError(f"the native attention supports head dims 1..64, not {d}; set {ENV_VAR}=torch")
        ctx.save_for_backward(qkv, y, stats)
        ctx.config = (outer, S, inner, heads, d, int(causal), scale)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        qkv, y, stats = ctx.saved_tensors
        (dy,) = _checked("attention", dy)
        _check_shape("attention", dy.shape == y.shape, f"gradient {list(dy.shape)} for output {list(y.shape)}")
        dqkv = torch.empty_like(qkv)
        library().wb_attention_backward(_ptr(qkv), _ptr(y), _ptr(dy), _ptr(stats), _ptr(dqkv), *ctx.config, _threads())
        return dqkv, None, None, None


def attention(qkv: torch.Tensor, heads: int, causal: bool, seq_dim: int) -> torch.Tensor:
    """Multi-head softmax attention over axis `seq_dim` (>= 0, not the last) of qkv [..., 3E] -> [..., E].

    qkv's last axis is (three heads d), as the fused q/k/v projection makes it; every position
    along the other axes is an independent sequence. Scale 1/sqrt(d), causal: key <= query.
    """
    return _Attention.apply(qkv, heads, causal, seq_dim)


# ----------------------------------------------------------------------------- residual + norm

class _AddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, f: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x, f, weight = _checked("residual RMSNorm", x, f, weight)
        _check_shape("residual RMSNorm", x.shape == f.shape and weight.shape == x.shape[-1:],
                     f"x {list(x.shape)}, f {list(f.shape)}, weight {list(weight.shape)}")
        E = x.shape[-1]
        N = x.numel() // E
        y, zhat = torch.empty_like(x), torch.empty_like(x)
        rstd = x.new_empty(N)
        library().wb_add_rmsnorm_forward(_ptr(x), _ptr(f), _ptr(weight), eps, _ptr(y), _ptr(zhat), _ptr(rstd), N, E,
                                         _threads())
        ctx.save_for_backward(zhat, rstd, weight)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        zhat, rstd, weight = ctx.saved_tensors
        (dy,) = _checked("residual RMSNorm", dy)
        _check_shape("residual RMSNorm", dy.shape == zhat.shape, f"gradient {list(dy.shape)} for {list(zhat.shape)}")
        E = zhat.shape[-1]
        N = zhat.numel() // E
        dz = torch.empty_like(zhat)
        dw = torch.empty_like(weight)
        scratch = zhat.new_empty((N + 255) // 256, E)
        library().wb_add_rmsnorm_backward(_ptr(dy), _ptr(zhat), _ptr(rstd), _ptr(weight), _ptr(dz), _ptr(dw),
                                          _ptr(scratch), N, E, _threads())
        return dz, dz, dw, None


def add_rmsnorm(x: torch.Tensor, f: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(x + f) with a learned weight, fused; x and f [..., E] of the same shape."""
    return _AddRMSNorm.apply(x, f, weight, eps)


class _AddFiLMNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, f: torch.Tensor, film: torch.Tensor, group: int, eps: float) -> torch.Tensor:
        x, f, film = _checked("residual FiLM norm", x, f, film)
        _check_shape("residual FiLM norm", x.dim() >= 2 and x.shape == f.shape
                     and film.shape == (*x.shape[:-2], 2 * x.shape[-1]) and group == x.shape[-2],
                     f"x {list(x.shape)}, f {list(f.shape)}, film {list(film.shape)}")
        E = x.shape[-1]
        N = x.numel() // E
        y, zhat = torch.empty_like(x), torch.empty_like(x)
        rstd = x.new_empty(N)
        library().wb_add_filmnorm_forward(_ptr(x), _ptr(f), _ptr(film), eps, _ptr(y), _ptr(zhat), _ptr(rstd), N, E,
                                          group, _threads())
        ctx.save_for_backward(zhat, rstd, film)
        ctx.group = group
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        zhat, rstd, film = ctx.saved_tensors
        (dy,) = _checked("residual FiLM norm", dy)
        _check_shape("residual FiLM norm", dy.shape == zhat.shape, f"gradient {list(dy.shape)} for {list(zhat.shape)}")
        E = zhat.shape[-1]
        N = zhat.numel() // E
        dz = torch.empty_like(zhat)
        dfilm = torch.empty_like(film)
        library().wb_add_filmnorm_backward(_ptr(dy), _ptr(zhat), _ptr(rstd), _ptr(film), _ptr(dz), _ptr(dfilm), N, E,
                                           ctx.group, _threads())
        return dz, dz, dfilm, None, None


def add_filmnorm(x: torch.Tensor, f: torch.Tensor, film: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm(x + f) * (1 + gamma) + beta, fused.

    x, f [G..., R, E]; film [G..., 2E] = (gamma | beta), one row per group of R rows.
    """
    group = x.shape[-2]
    return _AddFiLMNorm.apply(x, f, film, group, eps)


# ----------------------------------------------------------------------------- SwiGLU activation

class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        (h,) = _checked("SwiGLU", h)
        width = h.shape[-1] // 2
        N = h.numel() // h.shape[-1]
        u = h.new_empty(*h.shape[:-1], width)
        library().wb_swiglu_forward(_ptr(h), _ptr(u), N, width, _threads())
        ctx.save_for_backward(h)
        return u

    @staticmethod
    @once_differentiable
    def backward(ctx, du: torch.Tensor):
        (h,) = ctx.saved_tensors
        (du,) = _checked("SwiGLU", du)
        width = h.shape[-1] // 2
        _check_shape("SwiGLU", du.shape == (*h.shape[:-1], width), f"gradient {list(du.shape)} for {list(h.shape)}")
        N = h.numel() // h.shape[-1]
        dh = torch.empty_like(h)
        library().wb_swiglu_backward(_ptr(h), _ptr(du), _ptr(dh), N, width, _threads())
        return dh


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(value) * gate for h [..., 2W] = (value | gate) -> [..., W]; W must be a multiple of 8."""
    if h.shape[-1] % 16:
        raise WorldbenchError(f"the native SwiGLU needs (value | gate) widths that are multiples of 8, got {h.shape[-1]}")
    return _SwiGLU.apply(h)
