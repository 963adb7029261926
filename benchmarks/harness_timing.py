"""Harness timings for the README: overhead vs bare stage trainers, --jobs scaling, profile wall time.

    python benchmarks/harness_timing.py overhead --profile ci      # one run: `bench run` vs a bare script
    python benchmarks/harness_timing.py jobs --profile ci --seeds 0-1   # --jobs 1 vs --jobs 2
    python benchmarks/harness_timing.py wall --profile ci --seeds 0-4   # the gate's matrix, --jobs 2

Each mode trains from scratch in a temporary results dir and prints one JSON line. Both sides
of `overhead` are timed as whole commands (interpreter start and imports included).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def bench_run(results: Path, profile: str, variants: str, seeds: str, jobs: int) -> float:
    command = [sys.executable, "-m", "harness.cli", "run", "--config", str(REPO / "bench.toml"), "--profile", profile,
               "--variants", variants, "--seeds", seeds, "--jobs", str(jobs), "--results", str(results), "--quiet"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def bare_run(profile: str, variant: str, seed: int) -> float:
    """The same run with no harness: generate data, train the three stages, roll out, in this process."""
    from harness.matrix import dataset_spec
    from harness.suite import load_suite
    from harness.worker import generate_procedural
    from worldmodel import stages
    from worldmodel.data import VideoWindows
    from worldmodel.rollout import evaluate_rollouts, rollout_clips

    started = time.perf_counter()
    suite = load_suite(REPO / "bench.toml")
    config = suite.model_config(profile, variant)
    spec = dataset_spec(suite, profile, suite.comparison.dataset, config.frame_size)
    data = generate_procedural(spec)
    train, val = (VideoWindows(data, config.window, split, spec["val_fraction"]) for split in ("train", "val"))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        tokenizer, _ = stages.run_tokenizer(config, train, val, folder / "t.pt", seed)
        lam, _ = stages.run_actions(config, train, val, folder / "a.pt", seed)
        dynamics, _ = stages.run_dynamics(config, train, val, tokenizer, lam, folder / "d.pt", seed)
        evaluate_rollouts(tokenizer, lam, dynamics, rollout_clips(data, config, spec["val_fraction"]), config)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["overhead", "jobs", "wall", "bare"])
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--variants", default="meanpool_concat,windowed_attention")
    parser.add_argument("--seeds", default="0-4")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if args.mode == "bare":  # used by `overhead`, as a command of its own like `bench run`
            torch.set_num_threads(2)  # what `bench run --jobs 1` gives its worker on this 2-core machine
            bare_run(args.profile, args.variants.split(",")[0], 0)
            return
        if args.mode == "overhead":
            variant = args.variants.split(",")[0]
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "bare", "--profile", args.profile, "--variants", variant],
                           check=True)
            bare = time.perf_counter() - started
            harness = bench_run(folder / "r", args.profile, variant, "0", jobs=1)
            result = {"bare_s": bare, "bench_run_s": harness, "overhead": harness / bare - 1}
        elif args.mode == "jobs":
            one = bench_run(folder / "one", args.profile, args.variants, args.seeds, jobs=1)
            two = bench_run(folder / "two", args.profile, args.variants, args.seeds, jobs=2)
            result = {"jobs1_s": one, "jobs2_s": two, "speedup": one / two}
        else:
            result = {"wall_s": bench_run(folder / "r", args.profile, args.variants, args.seeds, jobs=2)}
    print(json.dumps({"mode": args.mode, "profile": args.profile, "variants": args.variants, "seeds": args.seeds,
                      **{k: round(v, 3) for k, v in result.items()}}))


if __name__ == "__main__":
    main()
