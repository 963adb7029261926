"""This checkout's native kernels against a git ref's: ci training steps, and whether they agree bit for bit.

    python benchmarks/kernels_ab.py --ref HEAD~1               # the ci baseline's three stages, one thread
    python benchmarks/kernels_ab.py --ref HEAD~1 --rounds 16   # more rounds on a noisy machine

The ref's kernel sources (worldmodel/kernels/*.cpp, *.h at that commit) are compiled with this checkout's flags
into a temporary dir and loaded beside this checkout's build; the model code is this checkout's either way.
Both builds train their own copy of the same model on the same batches, alternating in rounds of 8 steps in
one process (benchmarks/interleaved.py). Prints, per stage, the fastest round's ms per step of each, the
median of the rounds' paired savings, and whether the weights are still identical after every round.
"""
from __future__ import annotations

import ctypes
import subprocess
import tempfile
from pathlib import Path

from interleaved import STAGES, Arm, ci_config, interleaved
from worldmodel import kernels
from worldmodel.train import make_optimizer

KERNELS_REPO = Path(kernels.__file__).resolve().parents[2]  # the checkout whose worldmodel is imported


def build_ref(ref: str, folder: Path) -> ctypes.CDLL:
    """The kernels of `ref`, compiled with this checkout's flags."""
    for source in kernels._SOURCES + kernels._HEADERS:
        relative = source.resolve().relative_to(KERNELS_REPO).as_posix()
        text = subprocess.run(["git", "show", f"{ref}:{relative}"], cwd=KERNELS_REPO, capture_output=True,
                              text=True, check=True).stdout
        (folder / source.name).write_text(text)
    target = folder / "ref.so"
    subprocess.run(["g++", *kernels._FLAGS, *(str(folder / s.name) for s in kernels._SOURCES), "-o", str(target)],
                   check=True)
    library = ctypes.CDLL(str(target))
    kernels._declare(library)
    return library


def use(library: ctypes.CDLL) -> None:
    kernels._library = library


def main() -> None:
    def ref_flag(parser):
        parser.add_argument("--ref", required=True, help="git ref whose kernels to compare against, e.g. HEAD~1")

    args, config = ci_config(__doc__.splitlines()[0], ref_flag)
    optimizer = lambda model: make_optimizer(model, 1e-3, 0.01)  # noqa: E731
    with tempfile.TemporaryDirectory() as folder:
        ref, here = build_ref(args.ref, Path(folder)), kernels.library()
        arms = {"ref": Arm(optimizer, lambda: use(ref)), "here": Arm(optimizer, lambda: use(here))}
        for stage in STAGES:
            timing = interleaved(stage, config, arms, args.rounds)
            print(f"{stage:<10} {args.ref} {timing.best_ms['ref']:6.1f} ms/step  here {timing.best_ms['here']:6.1f} "
                  f"ms/step  median saving {100 * (1 - timing.median_ratio):+5.1f}%  "
                  f"identical weights: {timing.identical}", flush=True)
        use(here)


if __name__ == "__main__":
    main()
