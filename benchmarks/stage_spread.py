"""How much one stage's KPIs vary from seed to seed, and under a float-rounding null change, alone.

    python benchmarks/stage_spread.py --stage tokenizer --seeds 0-7                  # the ci tokenizer
    python benchmarks/stage_spread.py --stage actions --seeds 0-7 --null 1e-6        # + the paired null
    python benchmarks/stage_spread.py --stage actions --set actions.ema=0.99 --set n_actions=8

Trains the stage of the profile's baseline (bench.toml) on the profile's data for every seed, one
thread per process, `--jobs` at a time, and prints each seed's KPIs. For the blocking KPIs of the stage
it prints the spread on the statistics' axis (log for ratio KPIs) and the seeds a gate would need to
show non-inferiority at a true difference of zero with 80% power (harness.power.recommended_seeds):
`A/A` treats two disjoint groups of seeds (the spread of a difference is sqrt(2) x the spread of one
seed), `null` pairs each seed with its twin whose initial weights differ by `--null` (relative), as a
refactor that only changes float rounding does. `power@n` is the chance such a null change settles the
KPI at the profile's n seeds. The dynamics needs trained upstream stages: measure it through `bench run`.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGE_RUNNERS = {"tokenizer": "run_tokenizer", "actions": "run_actions"}


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build(args: argparse.Namespace, seed: int, noise: float):
    """(config, train windows, val windows) as a run of the profile's baseline builds them."""
    from harness.matrix import dataset_spec
    from harness.schema import set_dotted
    from harness.suite import load_suite
    from harness.worker import generate_procedural
    from worldmodel.config import WorldModelConfig
    from worldmodel.data import VideoWindows

    suite = load_suite(args.config)
    config = suite.model_config(args.profile, suite.comparison.baseline).to_dict()
    for item in args.set:
        key, _, value = item.partition("=")
        set_dotted(config, key, parse_value(value))
    config[args.stage]["init_noise"] = noise
    config = WorldModelConfig.from_dict(config)
    spec = dataset_spec(suite, args.profile, args.dataset or suite.comparison.dataset, config.frame_size)
    data = generate_procedural(spec)
    return (config, VideoWindows(data, config.window, "train", spec["val_fraction"]),
            VideoWindows(data, config.window, "val", spec["val_fraction"]))


def train_one(args: argparse.Namespace, seed: int, noise: float) -> dict:
    import torch

    from worldmodel import stages

    torch.set_num_threads(1)
    config, train, val = build(args, seed, noise)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        _, out = getattr(stages, STAGE_RUNNERS[args.stage])(config, train, val, Path(scratch) / "stage.pt", seed)
    return {"seed": seed, "noise": noise, "wall_s": time.perf_counter() - started, **out.metrics,
            "curve": [[row["step"], row["loss"]] for row in out.train.curve]}


def spread_table(stage: str, rows: list[dict], null: float, gate_seeds: int, config_path: str) -> list[str]:
    from scipy import stats as scipy_stats

    from harness import power
    from harness.suite import load_suite

    rules = [rule for rule in load_suite(config_path).kpis.values()
             if rule.blocking and rule.name.startswith(f"{stage}.")]
    plain = {row["seed"]: row for row in rows if row["noise"] == 0}
    twins = {row["seed"]: row for row in rows if row["noise"] != 0}
    lines = ["| KPI | mean | sd (axis) | seeds A/A | sd null | seeds null | power@n null |", "|---|---|---|---|---|---|---|"]
    for rule in rules:
        key = rule.name.split(".", 1)[1]
        if not all(key in row for row in rows):
            continue
        axis = (lambda v: np.log(v)) if rule.scale == "log" else (lambda v: np.asarray(v, dtype=float))
        values = axis(np.array([plain[s][key] for s in sorted(plain)]))
        sd = float(np.std(values, ddof=1))
        margin = rule.analysis_margin
        aa = power.recommended_seeds(math.sqrt(2) * sd, margin) if sd > 0 else 2
        cells = [rule.name, f"{np.mean([plain[s][key] for s in plain]):.4g}", f"{sd:.4f}", str(aa)]
        if twins:
            d = np.array([axis(twins[s][key]) - axis(plain[s][key]) for s in sorted(twins)])
            sd_null = float(np.std(d, ddof=1))
            seeds = power.recommended_seeds(sd_null, margin) if sd_null > 0 else 2
            effect = margin / sd_null * math.sqrt(gate_seeds) if sd_null > 0 else math.inf
            critical = scipy_stats.t.isf(0.05, gate_seeds - 1)
            power = float(scipy_stats.nct.sf(critical, gate_seeds - 1, effect)) if math.isfinite(effect) else 1.0
            cells += [f"{sd_null:.4f}", str(seeds), f"{power:.2f}"]
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    from harness.seeds import parse_seeds
    from harness.suite import load_suite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=sorted(STAGE_RUNNERS), required=True)
    parser.add_argument("--config", default=str(REPO / "bench.toml"))
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--dataset", default="")
    parser.add_argument("--seeds", default="0-7")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--null", type=float, default=0.0, help="also train each seed with this init_noise")
    parser.add_argument("--set", action="append", default=[], help="model key=value over the profile's (JSON value)")
    parser.add_argument("--out", default="", help="append the rows as JSON lines to this file")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    jobs = [(seed, 0.0) for seed in seeds] + ([(seed, args.null) for seed in seeds] if args.null else [])
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(train_one, [args] * len(jobs), *zip(*jobs)))
    keys = [k for k in rows[0] if k not in ("seed", "noise", "curve")]
    print(f"{args.stage} on {args.profile}, {' '.join(args.set) or 'as in bench.toml'}"
          f" ({time.perf_counter() - started:.0f} s)")
    print("seed noise " + " ".join(f"{k[:12]:>12}" for k in keys))
    for row in rows:
        print(f"{row['seed']:>4} {row['noise']:>5.0e} " + " ".join(f"{row[k]:>12.5g}" for k in keys))
    gate_seeds = len(load_suite(args.config).default_seeds(args.profile))
    print("\n".join(spread_table(args.stage, rows, args.null, gate_seeds, args.config)))
    if args.out:
        with open(args.out, "a") as handle:
            for row in rows:
                handle.write(json.dumps({"stage": args.stage, "profile": args.profile, "set": args.set, **row}) + "\n")


if __name__ == "__main__":
    main()
