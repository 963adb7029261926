"""The anchor's roadmap, gated: every roadmap variant against the baseline in one leaderboard, as a markdown table.

    python benchmarks/roadmap.py                                   # ci, the profile's seeds, all roadmap items
    python benchmarks/roadmap.py --seeds 0-2 --results results/roadmap
    python benchmarks/roadmap.py --profile pong --dataset pong --variants moe_muon   # PR #20 on its own game

Runs `bench gate --candidates ...` (runs are recorded in --results and reused by a second call), reads the
leaderboard's JSON and prints one row per candidate: the verdict, the blocking and guard KPIs' changes with
their intervals, and the cost in training steps per second of the stages the change retrains.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROADMAP = ["rope", "alibi", "adaln_zero", "maskgit_cosine", "maskgit_halton", "action_token", "moe_ffn", "muon",
           "moe_muon"]
SPEED = ["tokenizer.it_per_s", "actions.it_per_s", "dynamics.it_per_s"]


def change_text(kpi: dict) -> str:
    """The change with its interval on the KPI's own scale: +12% [-3%, +30%] (log: the JSON holds the ratio
    candidate/baseline) or +0.010 [-0.005, +0.020] (linear: the difference)."""
    if kpi["estimate"] is None:
        return "n/a"
    if kpi["scale"] == "log":
        return f"{kpi['estimate'] - 1:+.0%} [{kpi['ci_low'] - 1:+.0%}, {kpi['ci_high'] - 1:+.0%}]"
    return f"{kpi['estimate']:+.3f} [{kpi['ci_low']:+.3f}, {kpi['ci_high']:+.3f}]"


def speed_ratio(report: dict) -> str:
    """Candidate/baseline training steps per second, for each stage the candidate retrained."""
    parts = []
    for kpi in report["kpis"]:
        if kpi["name"] in SPEED and kpi["verdict"] != "identical":
            base, cand = sorted(kpi["baseline_values"].values()), sorted(kpi["candidate_values"].values())
            if base and cand:
                ratio = cand[len(cand) // 2] / base[len(base) // 2]
                parts.append(f"{kpi['name'].split('.')[0]} {ratio:.2f}×")
    return ", ".join(parts) or "unchanged"


def table(board: dict, kpis: list[str]) -> str:
    header = "| candidate | verdict | " + " | ".join(kpis) + " | steps/s vs baseline |"
    lines = [header, "|" + "---|" * (len(kpis) + 3)]
    for report in board["comparisons"]:
        by_name = {kpi["name"]: kpi for kpi in report["kpis"]}
        cells = [change_text(by_name[name]) if name in by_name else "n/a" for name in kpis]
        needs = f" (≈{report['recommended_seeds']} seeds)" if report["verdict"] == "INCONCLUSIVE" \
            and report.get("recommended_seeds") else ""
        lines.append(f"| `{report['candidate']}` | {report['verdict']}{needs} | " + " | ".join(cells)
                     + f" | {speed_ratio(report)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--dataset", default="sprite_world")
    parser.add_argument("--variants", default=",".join(ROADMAP))
    parser.add_argument("--seeds", default="", help="default: the profile's")
    parser.add_argument("--results", default="results/roadmap")
    parser.add_argument("--kpis", default="actions.majority_accuracy,rollout.tf_action_response,rollout.ar_mse,"
                                          "rollout.tf_mse,dynamics.val_loss")
    args = parser.parse_args()
    out = Path(args.results) / f"report-{args.profile}-{args.dataset}"
    command = ["bench", "gate", "--profile", args.profile, "--dataset", args.dataset, "--candidates", args.variants,
               "--results", args.results, "--out", str(out), "--quiet"]
    if args.seeds:
        command += ["--seeds", args.seeds]
    finished = subprocess.run(command)
    if finished.returncode not in (0, 1, 3):
        print(f"bench gate exited {finished.returncode}; no leaderboard to read", file=sys.stderr)
        return finished.returncode
    board = json.loads(next(out.glob("*.json")).read_text())
    if "comparisons" not in board:  # one candidate: its report is the leaderboard's only row
        board = {"baseline": board["baseline"], "verdict": board["verdict"], "comparisons": [board],
                 "decided_by": [board["candidate"]] if board["verdict"] != "PASS" else []}
    print(f"{args.profile}/{args.dataset}, baseline {board['baseline']}, verdict {board['verdict']} "
          f"(decided by {', '.join(board['decided_by']) or '-'})\n")
    print(table(board, args.kpis.split(",")))
    print(f"\n`{' '.join(command)}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
