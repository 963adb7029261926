"""The same runs recorded twice (another CPU, the PyTorch ops instead of the native kernels, other library
versions): would the gate tell the two recordings apart, and does each give the same verdict?

    python benchmarks/cross_store.py results/epyc results/xeon           # the gate's default arms and seeds
    python benchmarks/cross_store.py A B --seeds 0-4 --profile ci

Each store must hold the gate's two arms (`bench gate` with the same profile, dataset and seeds). Prints
  - each store's own verdict (baseline vs candidate), as `bench gate` computes it;
  - for each arm, the runs in A against the same seeds' runs in B, paired by seed, judged exactly as the gate
    judges a change (harness.stats.compare_all, Holm across both arms): the machines' A/A, which must PASS;
  - what each store's runs recorded about the machine (CPU, device and kernels, library versions).
Run ids do not name the machine, so two machines' runs of one change have the same ids in their own stores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MACHINE = ["cpu_model", "device", "torch_version", "numpy_version", "scipy_version", "pandas_version"]


def main() -> int:
    from harness.gate import Selection, compare_lineup, compare_recordings, require_recorded
    from harness.seeds import parse_seeds
    from harness.store import Store
    from harness.suite import load_suite
    from reports.text import fmt_estimate
    from worldmodel.errors import WorldbenchError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs=2, metavar="RESULTS", help="two results dirs (A, then B)")
    parser.add_argument("--config", default=str(REPO / "bench.toml"))
    parser.add_argument("--profile", default="")
    parser.add_argument("--dataset", default="")
    parser.add_argument("--seeds", default="", help="default: the profile's")
    args = parser.parse_args()
    for path in args.stores:
        if not (Path(path) / "store").is_dir():
            parser.error(f"{path} is not a results dir (no store/ in it); pass the --results of a bench gate")

    try:
        suite = load_suite(args.config)
        comparison = suite.comparison
        profile = args.profile or comparison.profile
        dataset = args.dataset or comparison.dataset
        seeds = parse_seeds(args.seeds) if args.seeds else suite.default_seeds(profile)
        candidate = comparison.candidates[0]
        selection = Selection(profile, dataset, comparison.baseline, candidate, seeds, seeds)
        stores = [Store(Path(path)) for path in args.stores]
        for path, store in zip(args.stores, stores):
            require_recorded(suite, store, [selection], Path(path))
            own, = compare_lineup(suite, store, [selection], comparison.alpha)
            runs = own.recorded.runs
            machine = "; ".join(f"{key} {', '.join(sorted(set(runs[key].astype(str))))}" for key in MACHINE)
            print(f"{path}: {candidate} vs {comparison.baseline}: {own.comparison.verdict}\n  {machine}")
        judged = compare_recordings(suite, (stores[0], stores[1]), selection, comparison.alpha)
    except WorldbenchError as error:
        print(f"cross_store: {error}", file=sys.stderr)
        return 2

    rules = [kpi.rule for kpi in judged[0].kpis if kpi.rule.can_fail]
    print(f"\nB against A, paired by seed ({len(seeds)} seeds), Holm across both arms:\n")
    print("| arm | verdict | " + " | ".join(rule.name for rule in rules) + " |")
    print("|---|---|" + "---|" * len(rules))
    for variant, result in zip((comparison.baseline, candidate), judged):
        cells = [f"{fmt_estimate(kpi)} {kpi.verdict}" for kpi in result.kpis if kpi.rule.can_fail]
        print(f"| `{variant}` | {result.verdict} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
