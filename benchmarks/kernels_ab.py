"""This checkout's native kernels against a git ref's: ci training steps, and whether they agree bit for bit.

    python benchmarks/kernels_ab.py --ref HEAD~1               # the ci baseline's three stages, one thread
    python benchmarks/kernels_ab.py --ref HEAD~1 --rounds 16   # more rounds on a noisy machine

The ref's kernel sources (worldmodel/kernels/*.cpp, *.h at that commit) are compiled with this checkout's flags
into a temporary dir and loaded beside this checkout's build; the model code is this checkout's either way.
Both libraries train their own copy of the same model on the same batches (the global RNG is re-seeded before
each step, so the dynamics masks agree too), alternating in rounds of 8 steps in one process, so a slower
minute of a shared machine slows both. Prints, per stage, the fastest round's ms per step of each, the median
of the rounds' paired ratios, and whether the weights are still identical after every round.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from harness.compat import one_batch
from harness.suite import load_suite
from worldmodel import kernels, stages
from worldmodel.train import make_optimizer, update

REPO = Path(__file__).resolve().parents[1]
KERNELS_REPO = Path(kernels.__file__).resolve().parents[2]  # the checkout whose worldmodel is imported
STEPS_PER_ROUND = 8


def build_ref(ref: str, folder: Path) -> ctypes.CDLL:
    """The kernels of `ref`, compiled with this checkout's flags."""
    for source in kernels._SOURCES + kernels._HEADERS:
        relative = source.resolve().relative_to(KERNELS_REPO).as_posix()
        text = subprocess.run(["git", "show", f"{ref}:{relative}"], cwd=KERNELS_REPO, capture_output=True, text=True,
                              check=True).stdout
        (folder / source.name).write_text(text)
    target = folder / "ref.so"
    subprocess.run(["g++", *kernels._FLAGS, *(str(folder / s.name) for s in kernels._SOURCES), "-o", str(target)],
                   check=True)
    library = ctypes.CDLL(str(target))
    kernels._declare(library)
    return library


def compare(stage: str, config, libraries: dict[str, ctypes.CDLL], rounds: int) -> dict:
    torch.manual_seed(0)
    models = {"ref": stages.build_model(stage, config)}
    models["here"] = copy.deepcopy(models["ref"])
    optimizers = {name: make_optimizer(model, 1e-3, 0.01) for name, model in models.items()}
    inputs = [one_batch(stage, config, getattr(config, stage).batch_size) for _ in range(4)]
    times = {name: [] for name in models}
    identical = True
    for round_index in range(rounds):
        for name, model in models.items():
            kernels._library = libraries[name]
            started = time.perf_counter()
            for step in range(STEPS_PER_ROUND):
                torch.manual_seed(round_index * STEPS_PER_ROUND + step)
                loss, _ = model.loss(*inputs[step % len(inputs)])
                update(model, optimizers[name], loss, 1.0)
            times[name].append((time.perf_counter() - started) / STEPS_PER_ROUND)
        identical &= all(torch.equal(a, b) for a, b in zip(models["ref"].state_dict().values(),
                                                           models["here"].state_dict().values()))
    kernels._library = libraries["here"]
    ratio = statistics.median(here / ref for here, ref in zip(times["here"], times["ref"]))
    return {"stage": stage, "ref_ms": 1000 * min(times["ref"]), "here_ms": 1000 * min(times["here"]),
            "median_saving": 1 - ratio, "identical": identical}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="git ref whose kernels to compare against, e.g. HEAD~1")
    parser.add_argument("--config", default=str(REPO / "bench.toml"))
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    suite = load_suite(args.config)
    config = suite.model_config(args.profile, suite.comparison.baseline)
    with tempfile.TemporaryDirectory() as folder:
        libraries = {"ref": build_ref(args.ref, Path(folder)), "here": kernels.library()}
        for stage in ("tokenizer", "actions", "dynamics"):
            row = compare(stage, config, libraries, args.rounds)
            print(f"{row['stage']:<10} {args.ref} {row['ref_ms']:6.1f} ms/step  here {row['here_ms']:6.1f} ms/step  "
                  f"median saving {100 * row['median_saving']:+5.1f}%  identical weights: {row['identical']}",
                  flush=True)


if __name__ == "__main__":
    main()
