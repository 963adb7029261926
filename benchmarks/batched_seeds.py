"""Samples/s of the seed-batched engine (worldmodel/batched.py) against K per-seed runs, per stage.

    python benchmarks/batched_seeds.py --device cpu --threads 1 --ks 1,2,4 --steps 30
    python benchmarks/batched_seeds.py --device cuda --ks 1,2,4,8 --steps 100 --precision tf32

The model is the ci profile's (bench.toml [profiles.ci]: 16x16 frames, the reference widths and block
counts, batch 16, its LAM recipe), trained on the ci profile's sprite world. A row is one stage at one
K: `batched` trains K seeds with train_seeds; `per seed` is train_stage, the path a run takes today,
whose K runs one after the other move the same samples/s as one run, so it is measured once per stage
(two seeds), on the default backend (the native CPU kernels on the CPU) and, on the CPU, also on the
plain PyTorch ops that batched mode runs (WORLDBENCH_ATTENTION=torch). Both engines log every `--warmup`
steps and each log interval is timed (it ends at a log point, where both wait for the device); the first
interval (warm-up: allocation, lazy init, cuDNN/cuBLAS autotuning) is left out, and a row reports the
fastest of the other intervals, K x batch x steps / seconds: on a shared machine the least disturbed
interval is the best estimate of the speed itself (as bench_steps.py reports its fastest round).
`--repeats` measures everything again, interleaved, and keeps the best. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from harness.suite import load_suite
from worldmodel import kernels, stages
from worldmodel.batched import model_builder, train_seeds
from worldmodel.config import WorldModelConfig
from worldmodel.data import VideoWindows, generate
from worldmodel.train import Placement, TrainResult, train_stage

REPO = Path(__file__).resolve().parents[1]
STAGES = ("tokenizer", "actions")


def device_name(device: torch.device) -> str:
    from harness.worker import cpu_model

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def steady_samples_per_s(results: list[TrainResult], batch: int) -> float:
    """Samples/s of the fastest log interval after the first (warm-up) over the runs given."""
    return batch * max(row["it_per_s"] for result in results for row in result.curve[1:])


def stage_config(config: WorldModelConfig, stage: str, steps: int, warmup: int):
    section = config.stage(stage)
    section.steps, section.log_every, section.checkpoint_every = warmup + steps, warmup, warmup + steps
    return section


def per_seed(stage: str, config: WorldModelConfig, sample, placement: Placement, backend: str, tmp: Path) -> float:
    """Samples/s of train_stage (two seeds, one after the other) on `backend` (WORLDBENCH_ATTENTION)."""
    previous = os.environ.get(kernels.ENV_VAR)
    os.environ[kernels.ENV_VAR] = backend
    try:
        results = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            model = stages.build_model(stage, config)
            path = tmp / f"{stage}-{backend}-{seed}.pt"
            results.append(train_stage(stage, model, config.stage(stage), sample, path, "{}", seed,
                                       placement=placement))
            path.unlink(missing_ok=True)
    finally:
        if previous is None:
            os.environ.pop(kernels.ENV_VAR, None)
        else:
            os.environ[kernels.ENV_VAR] = previous
    return steady_samples_per_s(results, config.stage(stage).batch_size)


def batched(stage: str, config: WorldModelConfig, sample, placement: Placement, k: int) -> float:
    outcomes = train_seeds(stage, model_builder(stage, config), config.stage(stage), list(range(k)), sample,
                           placement=placement)
    return steady_samples_per_s([outcomes[0].result], k * config.stage(stage).batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", help="fp32, or on cuda tf32 / bf16")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--ks", default="1,2,4,8", help="comma-separated seed counts")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (also the log interval)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--repeats", type=int, default=1, help="measure everything this many times, keep the best")
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--json", help="append one JSON line per row to this file")
    args = parser.parse_args(argv)
    if args.steps % args.warmup:
        parser.error("--steps must be a multiple of --warmup (the log interval)")
    if args.threads:
        torch.set_num_threads(args.threads)

    placement = Placement(args.device, args.precision)
    suite = load_suite(REPO / "bench.toml")
    data_options = suite.profile(args.profile).data
    config = suite.model_config(args.profile, suite.comparison.baseline)
    data = generate("sprite_world", data_options.get("episodes", 120), data_options.get("episode_len", 32),
                    config.frame_size, seed=0)
    train = VideoWindows(data, config.window, "train")
    backends = ("native", "torch") if placement.torch_device.type == "cpu" else ("torch",)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages.split(","):
            stage_config(config, stage, args.steps, args.warmup)
            sample = stages.sampler(train, config.stage(stage).batch_size)
            baseline = dict.fromkeys(backends, 0.0)
            rates = dict.fromkeys(map(int, args.ks.split(",")), 0.0)
            for _ in range(args.repeats):  # interleaved, so a busy spell on a shared machine hits every column alike
                for backend in backends:
                    baseline[backend] = max(baseline[backend],
                                            per_seed(stage, config, sample, placement, backend, Path(tmp)))
                for k in rates:
                    rates[k] = max(rates[k], batched(stage, config, sample, placement, k))
            for k, rate in rates.items():
                per_seed_columns = {f"per_seed_{backend}": value for backend, value in baseline.items()}
                rows.append({"stage": stage, "k": k, "batched": rate, **per_seed_columns,
                             "speedup": rate / baseline[backends[0]]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                if args.json:
                    with open(args.json, "a") as handle:
                        handle.write(json.dumps({**rows[-1], "device": device_name(placement.torch_device)}) + "\n")

    batch = {stage: config.stage(stage).batch_size for stage in args.stages.split(",")}
    print(f"**{device_name(placement.torch_device)}** · torch {torch.__version__} · "
          f"{torch.get_num_threads()} threads · "
          f"{args.precision} · profile {args.profile} ({config.frame_size}x{config.frame_size}, batch "
          f"{', '.join(f'{s} {b}' for s, b in batch.items())}) · {args.steps} steps after {args.warmup} of warm-up, "
          f"fastest {args.warmup}-step interval of {args.repeats} repeat(s)\n")
    names = {"native": "per seed, native kernels", "torch": "per seed, PyTorch ops"}
    print("| stage | K | batched samples/s | " + " | ".join(f"{names[b]} samples/s" for b in backends)
          + f" | batched / per seed ({backends[0]}) |")
    print("|:--|--:|--:|" + "--:|" * len(backends) + "--:|")
    for row in rows:
        print(f"| {row['stage']} | {row['k']} | {row['batched']:.0f} | "
              + " | ".join(f"{row[f'per_seed_{b}']:.0f}" for b in backends) + f" | {row['speedup']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
