"""Native CPU kernels, compiled on first use.

`attention.cpp` is plain C++ with a C ABI (no torch headers), so building it takes a few seconds
with the system `g++` and needs no ninja. The shared library is cached under the user's cache
directory (`$XDG_CACHE_HOME/worldbench/kernels`, else `~/.cache/worldbench/kernels`; override with
`WORLDBENCH_KERNEL_CACHE`), keyed by a hash of the source, the flags and the compiler, so an edit
or another compiler triggers a rebuild and concurrent first uses do not clash (each compiles to a
temporary file and renames it into place).

The backend is chosen with the environment variable `WORLDBENCH_ATTENTION`:
  unset / "native"  the compiled kernel (an error if it cannot be built: no silent fallback),
  "torch"           the pure-PyTorch path (`F.scaled_dot_product_attention`), for debugging.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path

from worldmodel.errors import WorldbenchError

ENV_VAR = "WORLDBENCH_ATTENTION"
BACKENDS = ("native", "torch")
_SOURCE = Path(__file__).with_name("attention.cpp")
_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-fPIC", "-shared", "-std=c++17", "-fno-math-errno"]
_ABI_VERSION = 2

_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def attention_backend() -> str:
    """The backend named by WORLDBENCH_ATTENTION ("native" when unset)."""
    value = os.environ.get(ENV_VAR, "native").strip().lower() or "native"
    if value not in BACKENDS:
        raise WorldbenchError(f"{ENV_VAR}={value!r} is not a known attention backend; use one of: {', '.join(BACKENDS)}")
    return value


def _fail(reason: str) -> WorldbenchError:
    return WorldbenchError(
        f"the native attention kernel is unavailable ({reason}); "
        f"set {ENV_VAR}=torch to use the pure-PyTorch attention instead"
    )


def _cache_dir() -> Path:
    override = os.environ.get("WORLDBENCH_KERNEL_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "worldbench" / "kernels"


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


def _check_cpu() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise _fail(f"it needs an x86-64 CPU with AVX2 and FMA, this is {platform.machine()}")
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return  # not Linux: let the compiler and the loader decide
    for line in flags.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            missing = {"avx2", "fma"} - have
            if missing:
                raise _fail(f"this CPU lacks {', '.join(sorted(missing))}")
            return


def _build() -> Path:
    _check_cpu()
    compiler = _compiler()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise _fail(f"no working C++ compiler '{compiler}': {err}") from None
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(_FLAGS).encode() + version.encode()).hexdigest()[:16]
    directory = _cache_dir()
    target = directory / f"attention-{key}.so"
    if target.exists():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".so.tmp", dir=directory)
        os.close(fd)
    except OSError as err:
        raise _fail(f"cannot write the kernel cache {directory}: {err}") from None
    try:
        result = subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", tmp], capture_output=True, text=True)
        if result.returncode != 0:
            first = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip()[:300])
            raise _fail(f"'{compiler}' failed to compile {_SOURCE.name}: {first}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def library() -> ctypes.CDLL:
    """The loaded kernel library; builds it on first use."""
    global _library
    if _library is not None:
        return _library
    with _lock:
        if _library is None:
            path = _build()
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as err:
                raise _fail(f"cannot load {path}: {err}") from None
            if lib.wb_attention_abi_version() != _ABI_VERSION:
                raise _fail(f"{path} has an unexpected ABI version; delete it to rebuild")
            i64, ptr = ctypes.c_int64, ctypes.c_void_p
            lib.wb_attention_forward.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int,
                                                 ctypes.c_float, ctypes.c_int]
            lib.wb_attention_forward.restype = ctypes.c_int
            lib.wb_attention_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int,
                                                  ctypes.c_float, ctypes.c_int]
            lib.wb_attention_backward.restype = ctypes.c_int
            lib.wb_attention_stats_size.argtypes = [i64, i64, i64, i64, i64]
            lib.wb_attention_stats_size.restype = i64
            _library = lib
    return _library


# ----------------------------------------------------------------------------- autograd wrapper

import math  # noqa: E402

import torch  # noqa: E402


def _geometry(qkv: torch.Tensor, seq_dim: int, heads: int) -> tuple[int, int, int, int, int]:
    """(outer, S, inner, heads, head dim) of a contiguous qkv [..., S, ..., 3E] with attention over seq_dim."""
    shape = qkv.shape
    outer = math.prod(shape[:seq_dim])
    inner = math.prod(shape[seq_dim + 1 : -1])
    return outer, shape[seq_dim], inner, heads, shape[-1] // (3 * heads)


class _NativeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int, causal: bool, seq_dim: int) -> torch.Tensor:
        lib = library()
        qkv = qkv.contiguous()
        outer, S, inner, h, d = _geometry(qkv, seq_dim, heads)
        y = qkv.new_empty(*qkv.shape[:-1], h * d)
        stats = qkv.new_empty(lib.wb_attention_stats_size(outer, S, inner, h, d))  # lse or probabilities
        scale = 1.0 / math.sqrt(d)
        status = lib.wb_attention_forward(qkv.data_ptr(), y.data_ptr(), stats.data_ptr(), outer, S, inner, h, d,
                                          int(causal), scale, torch.get_num_threads())
        if status:
            raise WorldbenchError(f"native attention does not support head dim {d}; set {ENV_VAR}=torch")
        ctx.save_for_backward(qkv, y, stats)
        ctx.config = (outer, S, inner, h, d, int(causal), scale)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        qkv, y, stats = ctx.saved_tensors
        outer, S, inner, h, d, causal, scale = ctx.config
        dy = dy.contiguous()
        dqkv = torch.empty_like(qkv)
        library().wb_attention_backward(qkv.data_ptr(), y.data_ptr(), dy.data_ptr(), stats.data_ptr(), dqkv.data_ptr(),
                                        outer, S, inner, h, d, causal, scale, torch.get_num_threads())
        return dqkv, None, None, None


def native_attention(qkv: torch.Tensor, heads: int, causal: bool, seq_dim: int) -> torch.Tensor:
    """Multi-head attention over axis `seq_dim` (>= 0, not the last) of qkv [..., 3E] -> [..., E].

    qkv's last axis is (three heads d); float32 on the CPU only.
    """
    return _NativeAttention.apply(qkv, heads, causal, seq_dim)
