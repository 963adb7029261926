"""How often the gate PASSes a change that changes nothing: A/A and float-rounding nulls over disjoint seed blocks.

    python benchmarks/null_blocks.py --blocks 5                 # the gate's profile and seeds per block
    python benchmarks/null_blocks.py --blocks 5 --profile ci --seeds-per-block 5 --results results/nulls

Block k holds the seeds [2k n, (2k + 2) n) for n seeds per block (the gate's default). In each block the
baseline's first n seeds are compared, exactly as `bench gate` compares, with
  - A/A: the baseline's next n seeds (disjoint, unpaired), and
  - null: the built-in null change `null_rounding` on the same n seeds (paired; initial weights x (1 + 1e-6
    N(0, 1)), float rounding only).
Both must PASS. Prints each block's verdicts (with the guard nearest to holding up the PASS: its p of a regression
beyond the margin before Holm, which holds it up below alpha), the PASS rate of each row, and per blocking KPI the
seeds each comparison needs to show a zero difference non-inferior with 80% power (harness.power), the median over blocks.
Runs are recorded in --results and reused by a second call.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from harness.driver import Execution, execute
    from harness.gate import Selection, compare_runs, plan_lineup, require_complete
    from harness.store import Store
    from harness.suite import load_suite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "bench.toml"))
    parser.add_argument("--profile", default="")
    parser.add_argument("--dataset", default="")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--seeds-per-block", type=int, default=0, help="default: the gate's seeds per arm")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", default="results/null_blocks")
    args = parser.parse_args()

    suite = load_suite(args.config)
    profile = args.profile or suite.comparison.profile
    dataset = args.dataset or suite.comparison.dataset
    baseline = suite.comparison.baseline
    n = args.seeds_per_block or len(suite.default_seeds(profile))
    blocks = [list(range(2 * k * n, (2 * k + 2) * n)) for k in range(args.blocks)]
    results = Path(args.results)
    rows_per_block = [{"A/A": Selection(profile, dataset, baseline, baseline, seeds[:n], seeds[n:]),
                       "null_rounding": Selection(profile, dataset, baseline, "null_rounding", seeds[:n], seeds[:n])}
                      for seeds in blocks]
    # a block at a time, so an interrupted call leaves whole blocks behind
    specs = [spec for rows in rows_per_block for spec in plan_lineup(suite, list(rows.values()))[0]]
    started = time.perf_counter()
    execute(suite, specs, Execution(results, args.jobs))
    print(f"{len(specs)} runs of {profile}/{dataset} in {results} ({time.perf_counter() - started:.0f} s)")

    store = Store(results)
    for rows in rows_per_block:  # run ids hash the source: a code change while this ran leaves unmatched runs
        for selection in rows.values():
            require_complete(store, [selection], plan_lineup(suite, [selection])[1], "benchmarks/null_blocks.py")
    verdicts: dict[str, list[str]] = {"A/A": [], "null_rounding": []}
    needed: dict[tuple[str, str], list[int]] = {}
    for k, (seeds, rows) in enumerate(zip(blocks, rows_per_block)):
        line = [f"block {k} (seeds {seeds[0]}-{seeds[-1]}):"]
        for name, selection in rows.items():
            comparison = compare_runs(suite, store, selection, suite.comparison.alpha)[0]
            verdicts[name].append(comparison.verdict)
            unsettled = []
            for kpi in comparison.kpis:
                if kpi.rule.blocking and kpi.resolution is not None:
                    needed.setdefault((kpi.name, name), []).append(kpi.resolution.seeds_needed)
                if kpi.rule.blocking and kpi.verdict not in ("non-inferior", "improved", "identical"):
                    unsettled.append(f"{kpi.name} {kpi.verdict}")
            # How near a guard came to holding up the PASS: its interval beyond the margin is p_regressed < alpha.
            guards = [kpi for kpi in comparison.kpis if kpi.rule.guard and not math.isnan(kpi.test.p_regressed)]
            nearest = min(guards, key=lambda kpi: kpi.test.p_regressed, default=None)
            if nearest is not None:
                unsettled.append(f"nearest guard {nearest.name} p {nearest.test.p_regressed:.2f}")
            line.append(f"{name} {comparison.verdict}" + (f" ({', '.join(unsettled)})" if unsettled else ""))
        print(" ".join(line))
    for name, got in verdicts.items():
        print(f"{name}: PASS in {got.count('PASS')} of {len(got)} blocks")
    print(f"\n| blocking KPI | seeds needed, A/A (median of {args.blocks}) | seeds needed, null (median) |")
    print("|---|---|---|")
    for kpi in dict.fromkeys(name for name, _ in needed):
        cells = [str(int(statistics.median(needed.get((kpi, row), [0])))) for row in verdicts]
        print(f"| {kpi} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    from worldmodel.errors import WorldbenchError
    try:
        main()
    except WorldbenchError as error:
        print(f"null_blocks: {error}", file=sys.stderr)
        raise SystemExit(2) from None
