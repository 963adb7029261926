"""Training steps/s of each stage on one device, per precision (the GPU counterpart of bench_steps.py).

    python benchmarks/gpu_steps.py --device cuda                      # 64x64, batch 16, fp32/tf32/bf16
    python benchmarks/gpu_steps.py --device cuda --batches 16,64,256 --precisions tf32
    python benchmarks/gpu_steps.py --device cpu --steps 3 --warmup 1  # a dry run of the script

One step is what worldmodel.train.train_stage does: forward (under the precision's autocast) +
backward + grad-norm clipping (1.0) + AdamW, on a fixed synthetic batch already on the device, at
the reference config (E 32, reference block counts; frame size and batch from the flags). The
clock is read after a device synchronisation, after `--warmup` untimed steps. One JSON line per
(stage, precision, batch) goes to stdout and, with --json, to that file; a table to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from harness.compat import one_batch
from worldmodel import stages
from worldmodel.config import WorldModelConfig
from worldmodel.train import Placement, make_optimizer, update

STAGES = ("tokenizer", "actions", "dynamics")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(stage: str, config: WorldModelConfig, batch: int, device: torch.device):
    torch.manual_seed(0)
    inputs = tuple(t.to(device) for t in one_batch(stage, config, batch))
    return stages.build_model(stage, config), inputs


def time_stage(stage: str, config: WorldModelConfig, batch: int, placement: Placement, steps: int,
               warmup: int, compile_model: bool = False) -> dict:
    device = placement.torch_device
    placement.apply()
    model, inputs = build(stage, config, batch, device)
    model.to(device).train()
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.compile(model.loss) if compile_model else model.loss

    def step() -> torch.Tensor:
        with placement.autocast():
            loss, _ = loss_fn(*inputs)
        update(model, optimizer, loss, grad_clip=1.0)
        return loss.detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warm_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    synchronize(device)
    elapsed = time.perf_counter() - started
    row = {"stage": stage, "device": str(device), "precision": placement.precision, "batch": batch,
           "frame_size": config.frame_size, "steps": steps, "it_per_s": round(steps / elapsed, 2),
           "ms_per_step": round(1000 * elapsed / steps, 3), "warmup_s": round(warm_s, 2),
           "final_loss": round(float(loss), 5), "compiled": compile_model}
    if device.type == "cuda":
        row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        row["gpu"] = torch.cuda.get_device_name(device)
    else:
        row["threads"] = torch.get_num_threads()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", default="fp32,tf32,bf16")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--batches", default="16", help="comma-separated batch sizes")
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model.loss)")
    parser.add_argument("--json", help="append the JSON lines to this file too")
    args = parser.parse_args(argv)

    config = WorldModelConfig(frame_size=args.frame_size).validate()
    rows = []
    for batch in map(int, args.batches.split(",")):
        for precision in args.precisions.split(","):
            for stage in args.stages.split(","):
                for compiled in ((False, True) if args.compile else (False,)):
                    try:
                        row = time_stage(stage, config, batch, Placement(args.device, precision), args.steps,
                                         args.warmup, compiled)
                    except Exception as err:  # report and go on: one bad combination must not lose the rest
                        row = {"stage": stage, "precision": precision, "batch": batch, "compiled": compiled,
                               "error": f"{type(err).__name__}: {str(err)[:300]}"}
                    rows.append(row)
                    line = json.dumps(row)
                    print(line, flush=True)
                    if args.json:
                        with open(args.json, "a") as handle:
                            handle.write(line + "\n")
    print(f"\n{'stage':>9} {'prec':>5} {'batch':>5} {'comp':>5} {'it/s':>9} {'ms/step':>9} {'peak MB':>8}",
          file=sys.stderr)
    for row in rows:
        if "error" in row:
            print(f"{row['stage']:>9} {row['precision']:>5} {row['batch']:>5} {str(row['compiled']):>5} "
                  f"ERROR {row['error']}", file=sys.stderr)
        else:
            print(f"{row['stage']:>9} {row['precision']:>5} {row['batch']:>5} {str(row['compiled']):>5} "
                  f"{row['it_per_s']:>9.2f} {row['ms_per_step']:>9.3f} {row.get('peak_mem_mb', 0):>8.1f}",
                  file=sys.stderr)
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
