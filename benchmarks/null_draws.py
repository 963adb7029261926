"""How often the gate's rules PASS a null change, over many random draws of arms from recorded runs.

    python benchmarks/null_draws.py --results results/null_blocks            # after benchmarks/null_blocks.py
    python benchmarks/null_draws.py --results results/null_blocks --draws 400 --seed 0

benchmarks/null_blocks.py judges five disjoint blocks, a PASS rate in steps of 20%. This judges the same recorded
KPIs many more times: each draw takes n of the baseline's recorded seeds against n others (A/A, unpaired) and n of
the seeds `null_rounding` was recorded on against the baseline on the same seeds (paired), n the gate's default, and
judges them with harness.stats.compare_all and the suite's blocking and guard rules, as the gate does. Draws
overlap, so they are not independent samples; the rate is the rules' on these runs. It reads the store's tables
as they are, whatever code recorded them (the statistics are what is measured), one run per variant and seed.
Prints the verdicts of null_blocks.py's disjoint blocks where the store has them, then each row's verdict
counts over the draws and how often each hold-up rule held up a KPI.
"""
from __future__ import annotations

import argparse
import collections
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NULL = "null_rounding"


def main() -> None:
    from harness import stats
    from harness.gate import rules_for
    from harness.kpis import COMPARE_TIME_KPIS
    from harness.store import Store
    from harness.suite import load_suite
    from harness.types import Why

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "bench.toml"))
    parser.add_argument("--results", default="results/null_blocks")
    parser.add_argument("--profile", default="")
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    suite = load_suite(args.config)
    profile = args.profile or suite.comparison.profile
    baseline = suite.comparison.baseline
    n = len(suite.default_seeds(profile))
    rules = [rule for rule in rules_for(suite) if rule.can_fail]
    store = Store(Path(args.results), create=False)
    runs = store.runs()
    dataset = suite.comparison.dataset
    runs = runs[(runs["profile"] == profile) & (runs["dataset"] == dataset) & (runs["status"] == "ok")]
    runs = runs.drop_duplicates(["variant", "seed"], keep="last")
    values = store.for_runs("kpis", runs["run_id"]).merge(runs[["run_id", "variant", "seed"]], on="run_id")

    def arm(variant: str, seeds: list[int]) -> dict[str, dict[int, float]]:
        chosen = values[(values["variant"] == variant) & values["seed"].isin(seeds)]
        by_kpi = {kpi: dict(zip(group["seed"].astype(int), group["value"].astype(float)))
                  for kpi, group in chosen.groupby("kpi")}
        return {rule.name: stats.floor_log_scale(rule, by_kpi.get(rule.name, {}))[0] for rule in rules}

    seeds_of = {variant: sorted(runs.loc[runs["variant"] == variant, "seed"].astype(int))
                for variant in (baseline, NULL)}
    both = sorted(set(seeds_of[baseline]) & set(seeds_of[NULL]))
    if len(seeds_of[baseline]) < 2 * n or len(both) < n:
        raise SystemExit(f"null_draws: need {2 * n} seeds of {baseline} and {n} of {NULL} on the same seeds in "
                         f"{args.results}; run benchmarks/null_blocks.py first")
    print(f"{len(seeds_of[baseline])} seeds of {baseline}, {len(both)} also of {NULL}; {args.draws} draws of "
          f"{n} seeds a side, profile {profile}, dataset {dataset}")

    def verdict(baseline_seeds: list[int], variant: str, candidate_seeds: list[int]):
        arms = stats.ComparisonArms(rules, arm(baseline, baseline_seeds), arm(variant, candidate_seeds))
        return stats.compare_all([arms], censored_kpis=set(COMPARE_TIME_KPIS), alpha=suite.comparison.alpha)[0]

    # benchmarks/null_blocks.py's disjoint blocks first, where this store has them: seeds [2kn, (2k + 2)n)
    for k in range(len(seeds_of[baseline]) // (2 * n)):
        block = list(range(2 * k * n, (2 * k + 2) * n))
        if set(block) <= set(seeds_of[baseline]) and set(block[:n]) <= set(both):
            print(f"block {k} (seeds {block[0]}-{block[-1]}): A/A {verdict(block[:n], baseline, block[n:]).verdict}, "
                  f"{NULL} {verdict(block[:n], NULL, block[:n]).verdict}")
    draw = random.Random(args.seed)

    def a_a():  # n baseline seeds against n others of the baseline's
        seeds = draw.sample(seeds_of[baseline], 2 * n)
        return verdict(seeds[:n], baseline, seeds[n:])

    def paired_null():  # the baseline against null_rounding on the same n seeds
        seeds = draw.sample(both, n)
        return verdict(seeds, NULL, seeds)

    for name, judge in {"A/A": a_a, NULL: paired_null}.items():
        verdicts, held = collections.Counter(), collections.Counter()
        for _ in range(args.draws):
            comparison = judge()
            verdicts[str(comparison.verdict)] += 1
            held.update(str(kpi.why) for kpi in comparison.kpis if kpi.why in (Why.BEYOND_MARGIN, Why.WORSE))
        print(f"{name}: PASS {verdicts['PASS'] / args.draws:.1%} ({dict(sorted(verdicts.items()))}); KPIs holding "
              f"up a PASS: {dict(held) or 'none'}")


if __name__ == "__main__":
    from worldmodel.errors import WorldbenchError
    try:
        main()
    except WorldbenchError as error:
        print(f"null_draws: {error}", file=sys.stderr)
        raise SystemExit(2) from None
