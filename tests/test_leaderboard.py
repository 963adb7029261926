"""Several candidates in one report (`bench gate --candidates`): Holm across all of them, the worst verdict decides,
shared runs and stages, a PR comment that still fits a screen, and the usage errors."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.driver import finished_runs
from harness.exits import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_PASS, VERDICT_EXIT
from harness.gate import Selection, leaderboard_of, plan_lineup
from harness.stats import ComparisonArms, KpiRule, compare, compare_all, holm_adjust, iqm_interval
from harness.store import Store
from harness.suite import load_suite
from harness.types import Verdict, worst_verdict
from reports.figures import forest_rows, plan_figures
from reports.publish import render_html, render_json, render_markdown
from reports.render import MARKER, MAX_VISIBLE_BYTES, MAX_VISIBLE_LINES, visible_part
from reports.text import MISSING, fmt_estimate
from test_reports import CHROMIUM, EVIL, RULES, make_report
from test_schedule import undecidable_kpis
from tiny import record_fabricated

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "bench.toml"
FAULT = "fault_tokenizer_undertrained"  # caught on smoke at three seeds (tests/test_validate.py), Holm or not
# A harmless change that trains nothing: the baseline under another name has the baseline's stage ids, so its runs
# only evaluate the cached stages, and every KPI is identical.
RENAMED = """
[variants.baseline_renamed]
description = "the baseline under another name"
components = { lam_encoder = "meanpool_concat" }
"""


# --------------------------------------------------------------------------- statistics

BASE = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
BORDERLINE = {s: 1.1 + x for s, x in enumerate((0.00357, 0.02357, 0.04357, 0.06357))}  # one-sided p ~ 0.04
LATENCY = KpiRule("latency", "lower", "linear", 0.1)
LOSS = KpiRule("loss", "lower", "log", 0.05)


def test_holm_spans_every_candidates_blocking_and_guard_kpis():
    """Alone, each candidate's borderline regression is claimed; in one leaderboard the family is every candidate's
    blocking and guard KPIs (the loss a guard here), so neither is: a set of harmless candidates must not FAIL more
    often the more it holds."""
    same = {0: 1.0, 1: 1.1, 2: 0.9, 3: 1.05}
    info = KpiRule("info", "lower", "log", 0.05, blocking=False)
    guard = dataclasses.replace(LOSS, blocking=False, guard=True)
    arms = [ComparisonArms([LATENCY, guard, info], {"latency": BASE, "loss": same, "info": same},
                           {"latency": BORDERLINE, "loss": {**same, 3: 1.06}, "info": {**same, 3: 1.2}})
            for _ in range(2)]
    alone = compare(arms[0].rules, arms[0].baseline, arms[0].candidate)
    assert compare_all(arms[:1]) == [alone]  # compare is the one-candidate case
    assert alone.kpis[0].verdict == "inconclusive"  # Holm over its own blocking and guard KPIs already
    together = compare_all(arms)
    for family in (True, False):
        kpis = [kpi for comparison in together for kpi in comparison.kpis if kpi.rule.can_fail == family]
        expected = holm_adjust([kpi.test.p_regressed for kpi in kpis])
        assert [kpi.test.p_regressed_adjusted for kpi in kpis] == pytest.approx(expected)
    latency = [comparison.kpis[0].test for comparison in together]
    assert latency[0].p_regressed_adjusted == pytest.approx(min(1.0, 4 * latency[0].p_regressed))  # 4 in the family
    single = compare_all([ComparisonArms([LATENCY], {"latency": BASE}, {"latency": BORDERLINE})])[0]
    assert single.verdict == "FAIL" and all(c.verdict != "FAIL" for c in together)


def test_the_worst_verdict_decides_fail_then_inconclusive_then_pass():
    assert worst_verdict([Verdict.PASS, Verdict.INCONCLUSIVE, Verdict.PASS]) == Verdict.INCONCLUSIVE
    assert worst_verdict([Verdict.INCONCLUSIVE, Verdict.FAIL, Verdict.PASS]) == Verdict.FAIL
    assert [VERDICT_EXIT[v] for v in (Verdict.PASS, Verdict.INCONCLUSIVE, Verdict.FAIL)] == \
        [EXIT_PASS, EXIT_INCONCLUSIVE, EXIT_FAIL]


def test_an_arms_iqm_interval_is_a_percentile_bootstrap_of_its_seeds():
    low, high = iqm_interval([1.0, 2.0, 3.0, 4.0, 100.0], 0.9)
    assert 1.0 <= low < 3.0 < high <= 100.0 and (low, high) == iqm_interval([1.0, 2.0, 3.0, 4.0, 100.0], 0.9)
    assert iqm_interval([5.0, 5.0, 5.0], 0.9) == (5.0, 5.0)
    # the same seeds' values listed in another order (arms sharing a stage): the same interval
    by_seed = {0: 0.00615, 1: 0.00037, 2: 0.00778, 3: 0.00087, 4: 0.00369}
    assert iqm_interval([by_seed[s] for s in (4, 0, 2, 1, 3)], 0.9) == iqm_interval(list(by_seed.values()), 0.9)
    assert all(math.isnan(end) for end in iqm_interval([1.0], 0.9))


# --------------------------------------------------------------------------- the report of many candidates

def test_twenty_candidates_fit_the_pr_comment_one_line_each_worst_first():
    names = [f"candidate_{i:02d}_with_a_rather_long_name_for_a_variant" for i in range(19)] + [EVIL]
    reports = [make_report(candidate=name, effect=effect, noise=0.1 if effect == 0 else 0.005)
               for name, effect in zip(names, [0.2] * 9 + [0.0, -0.5] + [0.2] * 9)]
    board = leaderboard_of(reports, "bench gate --candidates ...")
    assert [report.comparison.verdict for report in reports[9:11]] == ["INCONCLUSIVE", "FAIL"]
    assert board.verdict == "FAIL" and board.decided_by == [names[10]]
    markdown = render_markdown(board)
    visible = visible_part(markdown)
    assert len(visible.encode()) <= MAX_VISIBLE_BYTES and visible.count("\n") + 1 <= MAX_VISIBLE_LINES
    assert visible.splitlines()[0] == MARKER and "FAIL" in visible.splitlines()[1]
    assert "**Decided by:** candidate\\_10" in visible
    rows = [line for line in visible.splitlines() if line.startswith("| candidate\\_")]
    assert rows[0].startswith("| candidate\\_10") and rows[1].startswith("| candidate\\_09") and "INCONCLUSIVE" in rows[1]
    assert 5 <= len(rows) < 20 and f"{20 - len(rows)} more candidates (better verdicts) are in the details" in visible
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown  # a candidate's name is user text
    for name in names[:-1]:  # every candidate's KPIs are folded below, its name as HTML (no markdown there)
        assert f"· {name}</summary>" in markdown
    evil = "&lt;script&gt;alert(1)&lt;/script&gt; **bold** | pipe [link](http://x) `code` @\u200bsomeone"
    assert f"· {evil}</summary>" in markdown  # GitHub shows it as the text it is
    figures = {figure.filename: figure for figure in plan_figures(leaderboard_of(reports[9:12], ""))}  # 3: quick
    assert figures["forest.png"].png()[:4] == b"\x89PNG"  # a row per candidate and blocking KPI
    assert figures["rollouts.png"].png()[:4] == b"\x89PNG"  # ground truth and every arm
    assert "Pictures (rollouts, tokenizer reconstructions): in the PR comment" in render_markdown(board, pictures=False)
    html = render_html(board, pngs={})
    assert "<script>alert(1)</script>" not in html and html.count('id="kpi-table"') == 1
    data = json.loads(render_json(board))
    assert len(forest_rows(board)) == 20 * 3 and forest_rows(board)[:2] == [
        (f"tokenizer.val_loss · {names[0]}", reports[0].comparison.kpis[0]),
        (f"tokenizer.val_loss · {names[1]}", reports[1].comparison.kpis[0])]  # grouped by KPI
    assert data["schema"] == "worldbench-leaderboard/1" and data["decided_by"] == [names[10]]
    assert [c["candidate"] for c in data["comparisons"]] == names
    assert {arm["variant"] for arm in data["arms"]} == {reports[0].baseline, *names}


def test_the_html_kpi_table_has_a_row_per_kpi_and_a_column_per_candidate():
    """The candidates side by side: each KPI once, with the baseline and the margin once, and in each candidate's
    column that candidate's change and verdict (a KPI of a component only one candidate has: a dash for the
    others); the table keeps the id, filter and classes the script uses."""
    own = KpiRule("dynamics.moe_load_cv", "lower", "log", 0.1, blocking=False)
    reports = [make_report(candidate=name, effect=effect, noise=0.05, rules=rules)
               for name, effect, rules in (("better", 0.2, RULES), ("same", 0.0, RULES), ("worse", -0.5, RULES + [own]))]
    html = render_html(leaderboard_of(reports, ""), pngs={})
    table = html.split('id="kpi-table"')[1].split("</table>")[0]
    header = re.findall(r"<th>([^<]*)</th>", table)
    assert header == ["KPI", "tier", "margin", "baseline", "better", "same", "worse"]
    rows = re.findall(r'<tr class="([^"]*)">(.*?)</tr>', table, re.S)
    assert [classes for classes, _ in rows] == [kpi.rule.tier for kpi in reports[2].comparison.kpis]
    for (_, row), kpi_of_worse in zip(rows, reports[2].comparison.kpis):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert len(cells) == 4 + len(reports) and cells[0].startswith(kpi_of_worse.name)
        for cell, report in zip(cells[4:], reports):
            kpi = next((kpi for kpi in report.comparison.kpis if kpi.name == kpi_of_worse.name), None)
            assert cell == MISSING if kpi is None else f'title="{kpi.verdict}"' in cell and fmt_estimate(kpi) in cell
    assert rows[-1][1].startswith("<td>dynamics.moe_load_cv") and 'id="blocking-only"' in html


def test_each_candidates_explanations_hold_the_kpis_that_decide_its_verdict():
    """Under "Why each KPI got its verdict", each candidate explains its blocking and guard KPIs, in the report's
    order; an informational KPI (speed.it_per_s in RULES, and a guard-less KPI) has its row in the KPI table only."""
    guard = KpiRule("rollout.tf_mse", "lower", "log", 0.1, blocking=False, guard=True)
    rules = RULES + [guard]
    reports = [make_report(candidate=name, effect=effect, noise=0.05, rules=rules)
               for name, effect in (("better", 0.2), ("worse", -0.5))]
    html = render_html(leaderboard_of(reports, ""), pngs={})
    section = html.split('id="explanations"')[1].split('id="variants"')[0]
    lists = re.findall(r"<summary>[^<]*· ([^<]*)</summary>(.*?)</details>", section, re.S)
    by_name = {report.candidate: report for report in reports}
    assert sorted(name for name, _ in lists) == ["better", "worse"]
    for name, body in lists:
        explained = re.findall(r"<li><strong>([^<]*)</strong>", body)
        assert explained == [kpi.name for kpi in by_name[name].comparison.kpis if kpi.rule.tier != "informational"]
        assert explained == ["tokenizer.val_loss", "dynamics.val_loss", "rollout.psnr_ar", "rollout.tf_mse"]
    assert "speed.it_per_s" not in section and "speed.it_per_s" in html.split('id="kpi-table"')[1]


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian package: chromium; .ci/run installs it)")
def test_the_leaderboards_kpi_table_filters_in_headless_chromium(tmp_path):
    """The one script runs on the leaderboard's KPI table too: "#blocking-only" hides every row but the blocking
    and guard KPIs'."""
    reports = [make_report(candidate=name, effect=effect, noise=0.05) for name, effect in (("a", 0.2), ("b", -0.5))]
    page = tmp_path / "report.html"
    page.write_text(render_html(leaderboard_of(reports, ""), pngs={}))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                             f"--user-data-dir={tmp_path / 'profile'}", page.as_uri() + "#blocking-only"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and 'data-interactive="ready"' in result.stdout, result.stderr[-2000:]
    rows = re.findall(r'<tr class="([^"]*)"([^>]*)>', result.stdout.split('id="kpi-table"')[1].split("</table>")[0])
    assert len(rows) == len(reports[0].comparison.kpis) and any("hidden" in attributes for _, attributes in rows)
    assert all(("hidden" in attributes) == (classes not in ("blocking", "guard")) for classes, attributes in rows)


# --------------------------------------------------------------------------- the command

def test_the_lineup_plans_each_run_once_seed_by_seed():
    """The baseline's runs serve every candidate: planned once, and each seed's runs of all arms next to each other."""
    suite = load_suite(SUITE)
    selections = [Selection("smoke", "sprite_world", "meanpool_concat", name, [0, 1], [0, 1])
                  for name in ("windowed_attention", "query_pool", FAULT)]
    specs, arms = plan_lineup(suite, selections)
    assert [(spec.variant, spec.seed) for spec in specs] == [
        (variant, seed) for seed in (0, 1) for variant in ("meanpool_concat", "windowed_attention", "query_pool", FAULT)]
    assert sorted(arms) == sorted(["meanpool_concat", "windowed_attention", "query_pool", FAULT])
    assert {run_id for ids in arms.values() for run_id in ids} == {spec.run_id for spec in specs}



@pytest.mark.parametrize("commands, args, expected", [
    (("gate", "report"), ["--candidate", "query_pool", "--candidates", "windowed_attention"], "both given"),
    (("gate", "report"), ["--candidates", "windowed_attention,,query_pool"], "has an empty name"),
    (("gate", "report"), ["--candidates", "query_pool,windowed_attention,query_pool"], "given more than once"),
    (("gate", "report"), ["--candidates", "windowed_attention,nope"], "unknown variant 'nope'"),
    (("gate", "report"), ["--candidates", "windowed_attention,meanpool_concat"], "'meanpool_concat' is the baseline"),
    (("gate", "report"), ["--candidates", "meanpool_concat"], "is the baseline, on the same seeds"),
    (("gate",), ["--candidates", "windowed_attention,query_pool", "--baseline-ref", "HEAD"],
     "--candidates with --baseline-ref"),
])
def test_candidates_usage_errors_exit_2_before_anything_is_written(tmp_path, capsys, commands, args, expected):
    for command in commands:
        code = main([command, "--config", str(SUITE), "--profile", "smoke", "--results", str(tmp_path / "r"), *args])
        err = capsys.readouterr().err
        assert code == 2 and expected in " ".join(err.split()) and len(err.strip().splitlines()) == 1, (command, err)
        assert not (tmp_path / "r").exists()


def test_a_sequential_leaderboard_grows_every_arm_by_the_same_seeds(tmp_path, monkeypatch):
    """--sequential with --candidates, its training replaced by recorded runs that no seed count settles: each look
    adds the same new seeds to every arm, trains only those, and all candidates stay in one report."""
    trained = []

    def train(suite, specs, execution, quiet):  # as harness.driver.execute: skip what is recorded, record the rest
        new = [spec for spec in specs if spec.run_id not in finished_runs(execution.results)]
        trained.append(sorted((spec.variant, spec.seed) for spec in new))
        for spec in new:
            record_fabricated(Store(execution.results), spec, undecidable_kpis(spec.seed))
        return Store(execution.results).runs()

    monkeypatch.setattr("harness.cli.run_with_progress", train)
    code = main(["gate", "--config", str(SUITE), "--profile", "smoke", "--candidates", "windowed_attention,query_pool",
                 "--seeds", "0-1", "--candidate-seeds", "10-11", "--sequential", "--max-seeds", "4",
                 "--results", str(tmp_path / "r"), "--format", "json", "--quiet"])
    assert code == EXIT_INCONCLUSIVE
    looks = [((0, 1), (10, 11)), ((12, 14), (13, 15))]  # unpaired arms take turns from one sequence of new seeds
    assert trained == [sorted([("meanpool_concat", s) for s in baseline] + [(v, s) for v in ("query_pool",
                       "windowed_attention") for s in candidates]) for baseline, candidates in looks]
    data = json.loads((tmp_path / "r" / "report" / "report.json").read_text())
    assert [c["candidate"] for c in data["comparisons"]] == ["windowed_attention", "query_pool"]
    assert all(any("look 2 of 2: 4 seeds" in note for note in c["notes"]) for c in data["comparisons"])


def test_a_leaderboard_shows_fewer_rollout_clips_as_its_arms_grow():
    """The rollout grid keeps to about MAX_GRID_ROWS rows: all the clips for one candidate, one for five; candidates
    whose predictions are identical (all of make_report's are) share one row, and the clips come back."""
    def rollout_caption(report) -> str:
        return next(f.caption for f in plan_figures(report) if f.filename == "rollouts.png")

    reports = [make_report(candidate=f"candidate_{i}") for i in range(5)]
    caption = rollout_caption(leaderboard_of(reports, ""))
    assert "the first 2 clips," in caption and "one row for candidate_0, candidate_1, candidate_2, candidate_3, " \
        "candidate_4: their frames are identical" in caption
    for i, report in enumerate(reports):
        frames = report.frames[report.candidate]
        report.frames[report.candidate] = {**frames, "predictions": {
            mode: np.clip(predicted.astype(int) + 7 * i, 0, 255).astype(np.uint8)
            for mode, predicted in frames["predictions"].items()}}
    caption = rollout_caption(leaderboard_of(reports, ""))
    assert "the first clip," in caption and "one row for" not in caption
    assert "the first 2 clips," in rollout_caption(reports[0])


def test_the_suites_candidates_all_join_the_leaderboard_when_none_is_named(tmp_path, monkeypatch, capsys):
    """`[comparison] candidates = [a, b]` and no --candidate(s): both are gated, in one leaderboard, whose PASS
    names no candidate as its cause."""
    monkeypatch.setattr("harness.cli.run_with_progress", lambda suite, specs, execution, quiet: [
        record_fabricated(Store(execution.results), spec, undecidable_kpis(spec.seed)) for spec in specs])
    suite = tmp_path / "bench.toml"
    suite.write_text(SUITE.read_text().replace('candidates = ["windowed_attention"]',
                                               'candidates = ["windowed_attention", "query_pool"]', 1))
    code = main(["gate", "--config", str(suite), "--profile", "smoke", "--seeds", "0-1",
                 "--results", str(tmp_path / "r"), "--format", "json", "--quiet"])
    data = json.loads((tmp_path / "r" / "report" / "report.json").read_text())
    assert code == EXIT_PASS  # the fabricated runs are the same for every variant: identical KPIs
    assert [c["candidate"] for c in data["comparisons"]] == ["windowed_attention", "query_pool"]
    assert "PASS: 2 candidates vs meanpool_concat, every candidate PASSes" in capsys.readouterr().err
    board = leaderboard_of([make_report(), make_report(candidate="query_pool")], "bench gate --candidates ...")
    markdown = render_markdown(board)
    assert board.verdict == "PASS" and "**Every candidate PASSes**" in markdown and "Decided by" not in markdown


def test_three_candidates_one_planted_only_it_fails_and_decides_the_exit_code(smoke_results, tmp_path, capsys):
    """The smoke profile's recorded runs plus a third seed; a planted fault among a real change and a harmless one:
    only the fault FAILs (through a regressed KPI, Holm across all three), the gate exits 1 and names it, the
    baseline's runs serve every candidate and each stage trains once for all the candidates that share it."""
    results = tmp_path / "results"
    shutil.copytree(smoke_results, results)  # the session's store stays as other tests expect it
    suite = tmp_path / "bench.toml"
    suite.write_text(SUITE.read_text() + RENAMED)
    candidates = ["windowed_attention", "baseline_renamed", FAULT]
    out = tmp_path / "report"
    # JSON only, so no figure is drawn (the rendering of a leaderboard is tested above)
    code = main(["gate", "--config", str(suite), "--profile", "smoke", "--seeds", "0-2", "--candidates",
                 ",".join(candidates), "--results", str(results), "--out", str(out), "--format", "json", "--quiet"])
    data = json.loads((out / "report.json").read_text())
    verdicts = {c["candidate"]: c["verdict"] for c in data["comparisons"]}
    assert verdicts[FAULT] == "FAIL" and verdicts["baseline_renamed"] == "PASS" and \
        verdicts["windowed_attention"] != "FAIL", verdicts
    assert code == EXIT_FAIL and data["verdict"] == "FAIL" and data["decided_by"] == [FAULT]
    assert f"FAIL: 3 candidates vs meanpool_concat, decided by {FAULT}" in " ".join(capsys.readouterr().err.split())
    fault = next(c for c in data["comparisons"] if c["candidate"] == FAULT)
    assert any(k["tier"] in ("blocking", "guard") and k["verdict"] == "regressed" for k in fault["kpis"])
    # One Holm family: every candidate's blocking and guard "regressed" p values, adjusted together.
    family = [k for c in data["comparisons"] for k in c["kpis"]
              if (k["blocking"] or k["guard"]) and k["p_regressed"] is not None]
    assert {c["candidate"] for c in data["comparisons"] if any(k in family for k in c["kpis"])} == \
        {"windowed_attention", FAULT}  # the renamed baseline's identical KPIs carry no test
    assert [k["p_regressed_adjusted"] for k in family] == pytest.approx(holm_adjust([k["p_regressed"]
                                                                                     for k in family]))
    assert "--candidates windowed_attention,baseline_renamed,fault_tokenizer_undertrained" in data["reproduce_command"]
    # `bench report` makes the same leaderboard from the recorded runs (exit 0: it reports, it does not gate)
    assert main(["report", "--config", str(suite), "--profile", "smoke", "--seeds", "0-2", "--candidates",
                 ",".join(candidates), "--results", str(results), "--out", str(tmp_path / "again"),
                 "--format", "json"]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert (again["verdict"], again["decided_by"]) == ("FAIL", [FAULT])
    # Each run once, the baseline's serving every candidate; each stage trained once for the candidates that share
    # it: tokenizers the baseline's (also windowed_attention's and baseline_renamed's) and the fault's, LAMs the
    # baseline's (also baseline_renamed's and the fault's) and windowed_attention's, dynamics all but
    # baseline_renamed's (the baseline's).
    runs = pd.read_parquet(results / "store" / "runs")
    assert sorted(runs.groupby("variant")["seed"].apply(sorted).items()) == sorted(
        (variant, [0, 1, 2]) for variant in ["meanpool_concat", *candidates])
    stages = [p.name.split("-")[0] for p in (results / "cache" / "stages").iterdir() if p.is_dir()]
    assert (stages.count("tokenizer"), stages.count("actions"), stages.count("dynamics")) == (6, 6, 9)
