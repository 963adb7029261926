"""This checkout's native kernels against a git ref's: ci training steps, and whether they agree bit for bit.

    python benchmarks/kernels_ab.py --ref HEAD~1               # the ci baseline's three stages, one thread
    python benchmarks/kernels_ab.py --ref HEAD~1 --rounds 16   # more rounds on a noisy machine

The ref's kernel sources (worldmodel/kernels/*.cpp, *.h at that commit) are compiled with this checkout's compiler
and flags into a temporary dir and loaded beside this checkout's build; the model code is this checkout's either
way. First every kernel (attention over a grid of lengths, head dims, head counts, masks and thread counts; the
residual norms; SwiGLU) runs forward and backward on the same random inputs under both builds, and the outputs and
gradients are compared bit for bit. Then both builds train their own copy of the same model on the same batches,
alternating in rounds of 8 steps in one process (benchmarks/interleaved.py). Prints, per stage, the fastest
round's ms per step of each, the median of the rounds' paired savings, and whether the weights are still identical
after every round.
"""
from __future__ import annotations

import ctypes
import itertools
import subprocess
import tempfile
from pathlib import Path

import torch

from interleaved import STAGES, Arm, ci_config, interleaved
from worldmodel import kernels
from worldmodel.train import make_optimizer

KERNELS_REPO = Path(kernels.__file__).resolve().parents[2]  # the checkout whose worldmodel is imported


def build_ref(ref: str, folder: Path) -> ctypes.CDLL:
    """The kernels of `ref`, compiled as this checkout's are (its compiler and flags)."""
    for source in kernels._SOURCES + kernels._HEADERS:
        relative = source.resolve().relative_to(KERNELS_REPO).as_posix()
        text = subprocess.run(["git", "show", f"{ref}:{relative}"], cwd=KERNELS_REPO, capture_output=True,
                              text=True, check=True).stdout
        (folder / source.name).write_text(text)
    target = folder / "ref.so"
    kernels.compile_library([folder / source.name for source in kernels._SOURCES], target)
    library = ctypes.CDLL(str(target))
    kernels._declare(library)
    return library


def use(library: ctypes.CDLL) -> None:
    kernels._library = library


def kernel_cases() -> list:
    """(name, fn, inputs): each kernel over the shapes that pick its different code paths."""
    cases = []
    for S, d, heads, causal in itertools.product([1, 3, 4, 16, 17, 40], [3, 4, 8, 16], [3, 8, 16], [False, True]):
        qkv = torch.randn(2, S, 5, 3 * heads * d) * 2  # attention over axis 1, 5 independent positions beside it
        cases.append((f"attention S={S} d={d} heads={heads} causal={causal}",
                      lambda t, heads=heads, causal=causal: kernels.attention(t, heads, causal, 1), [qkv]))
    for E in (24, 32):
        cases.append((f"residual RMSNorm E={E}", lambda x, f, w: kernels.add_rmsnorm(x, f, w, 1e-6),
                      [torch.randn(3, 70, E), torch.randn(3, 70, E), torch.rand(E) + 0.5]))
        cases.append((f"residual FiLM norm E={E}", lambda x, f, film: kernels.add_filmnorm(x, f, film, 1e-6),
                      [torch.randn(3, 4, 9, E), torch.randn(3, 4, 9, E), torch.randn(3, 4, 2 * E)]))
    for width in (8, 88):
        cases.append((f"SwiGLU width={width}", kernels.swiglu, [torch.randn(300, 2 * width) * 3]))
    return cases


def outputs(fn, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """fn's output and the gradients of sum(output * R) for its inputs, R fixed."""
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    return [out.detach(), *torch.autograd.grad((out * weight).sum(), leaves)]


def bitwise_mismatches(ref: ctypes.CDLL, here: ctypes.CDLL) -> tuple[int, list[str]]:
    """How many (case, thread count) pairs ran, and the names of those whose bits differ between the builds."""
    torch.manual_seed(0)
    cases, mismatches, threads = kernel_cases(), [], torch.get_num_threads()
    try:
        for (name, fn, inputs), count in itertools.product(cases, (1, 2)):
            torch.set_num_threads(count)
            results = []
            for library in (ref, here):
                use(library)
                results.append(outputs(fn, inputs))
            if not all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(*results)):
                mismatches.append(f"{name} threads={count}")
    finally:
        torch.set_num_threads(threads)
        use(here)
    return 2 * len(cases), mismatches


def main() -> None:
    def ref_flag(parser):
        parser.add_argument("--ref", required=True, help="git ref whose kernels to compare against, e.g. HEAD~1")

    args, config = ci_config(__doc__.splitlines()[0], ref_flag)
    optimizer = lambda model: make_optimizer(model, 1e-3, 0.01)  # noqa: E731
    with tempfile.TemporaryDirectory() as folder:
        ref, here = build_ref(args.ref, Path(folder)), kernels.library()
        ran, mismatches = bitwise_mismatches(ref, here)
        print(f"kernels: {ran - len(mismatches)} of {ran} cases bit-identical to {args.ref}"
              + "".join(f"\n  differs: {name}" for name in mismatches), flush=True)
        arms = {"ref": Arm(optimizer, lambda: use(ref)), "here": Arm(optimizer, lambda: use(here))}
        for stage in STAGES:
            timing = interleaved(stage, config, arms, args.rounds)
            print(f"{stage:<10} {args.ref} {timing.best_ms['ref']:6.1f} ms/step  here {timing.best_ms['here']:6.1f} "
                  f"ms/step  median saving {100 * (1 - timing.median_ratio):+5.1f}%  "
                  f"identical weights: {timing.identical}", flush=True)
        use(here)


if __name__ == "__main__":
    main()
