"""Tests for the report renderer: content, size limits, escaping, self-containedness, rendering."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import matplotlib
import numpy as np
import pandas as pd
import pytest

from harness.gate import leaderboard_of
from harness.stats import KpiRule, compare
from harness.types import ArmProvenance, FloorNote, LookNote, TargetNote, TargetSource, Why
from reports import MARKER, CompatResult, ReportInput, render_html, render_json, render_markdown, write_reports
from reports import view
from reports.render import MAX_VISIBLE_BYTES, MAX_VISIBLE_LINES, visible_part
from reports.figures import curve_bands, forest_rows, horizon_columns, plan_figures, rollout_grid
from reports.text import (arm_description, fmt_estimate, md_escape, md_html_escape, note_text,
                          unresolved_guards_line)
from worldmodel.config import STAGES

BASELINE, CANDIDATE = "meanpool_concat", "windowed_attention"
EVIL = "<script>alert(1)</script> **bold** | pipe [link](http://x) `code` @someone"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # .ci/run installs it

RULES = [
    KpiRule("tokenizer.val_loss", "lower", "log", 0.05),
    KpiRule("dynamics.val_loss", "lower", "log", 0.05),
    KpiRule("rollout.psnr_ar", "higher", "linear", 0.5),
    KpiRule("speed.it_per_s", "higher", "log", 0.10, blocking=False),
]


# --------------------------------------------------------------------------- synthetic input


def _kpi_values(rules: list[KpiRule], seeds: list[int], effect: float, noise: float, rng) -> tuple[dict, dict]:
    """Per-KPI per-seed values; the candidate is better by `effect` (fraction) with seed-level noise."""
    baseline, candidate = {}, {}
    for rule in rules:
        base = {s: 1.0 + 0.1 * rng.standard_normal() for s in seeds}
        better = (1 - effect) if rule.direction == "lower" else (1 + effect)
        cand = {s: base[s] * better * math.exp(noise * rng.standard_normal()) for s in seeds}
        scale = 30.0 if rule.name.startswith("rollout") else 1.0
        baseline[rule.name] = {s: v * scale for s, v in base.items()}
        candidate[rule.name] = {s: v * scale for s, v in cand.items()}
    return baseline, candidate


def make_report(
    *,
    rules: list[KpiRule] = RULES,
    n_seeds: int = 3,
    effect: float = 0.2,
    noise: float = 0.005,
    candidate: str = CANDIDATE,
    candidate_description: str = "Windowed attention over LAM frames.",
    failed_candidate_seeds: tuple[int, ...] = (),
    error: str = "loss became NaN at step 130",
) -> ReportInput:
    rng = np.random.default_rng(0)
    seeds = list(range(n_seeds))
    base_values, cand_values = _kpi_values(rules, seeds, effect, noise, rng)
    for seed in failed_candidate_seeds:
        for values in cand_values.values():
            values[seed] = math.nan
    comparison = compare(
        rules, base_values, cand_values, failures_candidate=len(failed_candidate_seeds)
    )
    variants = [BASELINE, candidate]

    runs = pd.DataFrame(
        [
            {
                "run_id": f"{v[:8]}-{s}",
                "variant": v,
                "seed": s,
                "status": "diverged" if v == candidate and s in failed_candidate_seeds else "ok",
                "error": error if v == candidate and s in failed_candidate_seeds else "",
            }
            for v in variants
            for s in seeds
        ]
    )
    ok = {(r.variant, r.seed) for r in runs.itertuples() if r.status == "ok"}

    steps = np.arange(0, 60, 10)
    curves = pd.DataFrame(
        [
            {"variant": v, "seed": s, "stage": stage, "step": int(step), "metric": "loss",
             "value": float((1.5 if v == BASELINE else 1.2) * np.exp(-step / 30) * (1 + 0.15 * s) + 0.05 + 0.02 * rng.random())}
            for v in variants for s in seeds if (v, s) in ok for stage in STAGES for step in steps
        ]
    )

    horizon, context, clips, size = 4, 2, 2, 16
    rollouts = pd.DataFrame(
        [
            {"variant": v, "seed": s, "mode": mode, "clip": c, "horizon_step": h,
             "mse": 0.01 * h, "psnr": {"ar": 24.0, "tf": 26.0, "random": 18.0, "copy_last": 20.0}[mode]
             + (1.0 if v == candidate and mode in ("ar", "tf") else 0.0) - h, "ssim": 0.8 - 0.02 * h}
            for v in variants for s in seeds if (v, s) in ok
            for mode in ("ar", "tf", "random", "copy_last") for c in range(clips) for h in range(1, horizon + 1)
        ]
    )
    truth = rng.integers(0, 256, size=(clips, context + horizon, size, size, 3), dtype=np.uint8)
    frames = {
        v: {
            "seed": 0,
            "context": context,
            "ground_truth": truth,
            "predictions": {m: np.clip(truth[:, context:].astype(int) + 20 * i, 0, 255).astype(np.uint8)
                            for m in ("ar", "tf")},
        }
        for i, v in enumerate(variants)
    }
    speed = pd.DataFrame(
        [{"variant": v, "stage": stage, "it_per_s": 50.0 + 10 * i, "wall_s": 30.0 - 5 * i}
         for i, v in enumerate(variants) for stage in STAGES]
    )
    provenance = [
        {"run_id": f"{v[:8]}-{s}", "variant": v, "seed": s, "git_commit": "0123456789abcdef0123",
         "git_dirty": False, "code_hash": "c0ffee", "torch_version": "2.13.0+cpu", "device": "cpu",
         "cpu_model": "AMD EPYC 7B13", "host": "ci-runner-1", "started_at": f"2025-01-01T00:0{s}:00"}
        for v in variants for s in seeds
    ]
    return ReportInput(
        title="PR #42: windowed attention LAM encoder",
        baseline=BASELINE,
        candidate=candidate,
        descriptions={BASELINE: "Mean-pool then concat.", candidate: candidate_description},
        comparison=comparison,
        runs=runs,
        curves=curves,
        rollouts=rollouts,
        frames=frames,
        speed=speed,
        compat=CompatResult(True, ["tokenizer: golden checkpoint loads (strict keys)"]),
        provenance=provenance,
        reproduce_command=f"bench gate --profile ci --baseline {BASELINE} --candidate {candidate} --seeds 0-{n_seeds - 1}",
        profile="ci",
        notes=[TargetNote("tokenizer.steps_to_target", 0.2, TargetSource.CONFIG)],
    )


@pytest.fixture(scope="module")
def report() -> ReportInput:
    return make_report()


@pytest.fixture(scope="module")
def written(report, tmp_path_factory) -> dict[str, Path]:
    """All three formats written once (figures are the slow part)."""
    return write_reports(report, tmp_path_factory.mktemp("report"), ["md", "html", "json"])


def _strict_json(text: str) -> dict:
    def reject(token: str):
        raise ValueError(f"invalid JSON token {token}")

    return json.loads(text, parse_constant=reject)


# --------------------------------------------------------------------------- markdown


def test_markdown_starts_with_marker_and_has_verdict_and_every_kpi(report, written):
    md = written["md"].read_text()
    assert report.comparison.verdict == "PASS"
    assert md.splitlines()[0] == MARKER
    assert "PASS" in md.splitlines()[1]
    for kpi in report.comparison.kpis:
        assert md_escape(kpi.name) in md
    assert md_escape(BASELINE) in md and md_escape(CANDIDATE) in md
    assert "```bash\n" + report.reproduce_command + "\n```" in md
    assert "Not checked" not in md and "compatible" in md


def test_estimates_show_percent_change_for_log_and_signed_difference_for_linear(report):
    log_kpi, linear_kpi = report.comparison.kpis[0], report.comparison.kpis[2]
    assert log_kpi.rule.scale == "log" and linear_kpi.rule.scale == "linear"
    def with_effect(kpi, **interval):
        return dataclasses.replace(kpi, effect=dataclasses.replace(kpi.effect, **interval))

    log_kpi = with_effect(log_kpi, estimate=1.031, ci_low=0.98, ci_high=1.084)
    linear_kpi = with_effect(linear_kpi, estimate=0.012, ci_low=-0.003, ci_high=0.027)
    assert fmt_estimate(log_kpi) == "+3.1% [−2.0%, +8.4%]"
    assert fmt_estimate(linear_kpi) == "+0.0120 [−0.0030, +0.0270]"
    assert fmt_estimate(with_effect(log_kpi, estimate=math.nan)) == "—"

    comparison = dataclasses.replace(report.comparison, kpis=[log_kpi, linear_kpi])
    md = render_markdown(dataclasses.replace(report, comparison=comparison))
    # The table escapes "[" so GitHub cannot read it as a link; the text is the same.
    assert md_escape("+3.1% [−2.0%, +8.4%]", block_start=False) in md
    assert md_escape("+0.0120 [−0.0030, +0.0270]", block_start=False) in md


def test_statistics_are_labelled_exactly_in_markdown_html_and_json(report):
    """The interval column names the level the tests use (1 - 2 alpha), the probability of improvement
    says it is over all run pairs, and a bit-identical KPI is shown as identical."""
    identical = dataclasses.replace(report.comparison.kpis[0], verdict="identical", why=Why.IDENTICAL)
    comparison = dataclasses.replace(report.comparison, alpha=0.05, kpis=[identical, *report.comparison.kpis[1:]])
    labelled = dataclasses.replace(report, comparison=comparison)
    md, html_text = render_markdown(labelled), render_html(labelled, {})
    for text in (md, html_text):
        assert "90% t CI" in text and "95% CI" not in text
        assert "probability of improvement (all run pairs)" in text and "P(candidate better)" not in text
        assert "identical" in text
    assert "⚪ identical" in md
    assert _strict_json(render_json(labelled))["kpis"][1]["ci_level"] == pytest.approx(0.90)
    narrower = dataclasses.replace(labelled, comparison=dataclasses.replace(comparison, alpha=0.025))
    assert "95% t CI" in render_markdown(narrower)


def test_identical_kpis_share_one_explanation_where_the_first_stood(report):
    kpis = report.comparison.kpis
    assert len(kpis) >= 4
    same = [dataclasses.replace(kpi, verdict="identical", why=Why.IDENTICAL) for kpi in (kpis[1], kpis[3])]
    shown = dataclasses.replace(report, comparison=dataclasses.replace(
        report.comparison, kpis=[kpis[0], same[0], kpis[2], same[1], *kpis[4:]]))
    explanations = view.kpi_explanations(shown)
    assert [e.name for e in explanations] == [kpis[0].name, f"{kpis[1].name}, {kpis[3].name}", kpis[2].name,
                                              *(k.name for k in kpis[4:])]
    assert explanations[1].verdict == "identical" and explanations[1].detail == ""
    assert f"**{md_escape(kpis[1].name)}, {md_escape(kpis[3].name)}** (identical)" in render_markdown(shown)


def test_markdown_fits_a_pr_comment_with_30_kpis_and_20_seeds():
    rules = [KpiRule(f"kpi_{i:02d}.some_long_metric_name", "lower", "log", 0.05) for i in range(30)]
    big = make_report(
        rules=rules,
        n_seeds=20,
        noise=0.3,
        candidate_description="A very long description. " * 2000,
        failed_candidate_seeds=tuple(range(0, 20, 2)),
        error="Traceback (most recent call last): " + "frame | <b>x</b> " * 500,
    )
    md = render_markdown(big)
    assert len(md) < 65_000
    assert md.splitlines()[0] == MARKER
    assert big.comparison.verdict in md.splitlines()[1]
    for rule in rules:
        assert md_escape(rule.name) in md
    assert "Showing 12 of 20 seeds" in md  # the per-seed table was cut, with a note saying so
    assert "more characters" in md  # long errors / descriptions were cut, with a note


def test_markdown_drops_optional_sections_then_cuts_the_kpi_table_when_still_too_long():
    rules = [KpiRule(f"kpi_{i:03d}.a_rather_long_metric_name_for_width", "lower", "log", 0.05) for i in range(400)]
    huge = make_report(rules=rules, n_seeds=5, noise=0.3)
    md = render_markdown(huge)
    assert len(md) < 65_000
    assert md.splitlines()[0] == MARKER and huge.comparison.verdict in md.splitlines()[1]
    assert "per-seed values left out to fit a PR comment" in md
    assert "Showing" in md and "of 400 KPIs" in md
    assert "more (see the table and the details)" in md  # banner reasons capped
    visible = visible_part(md)
    assert len(visible.encode()) <= MAX_VISIBLE_BYTES and visible.count("\n") < MAX_VISIBLE_LINES
    assert "```bash\n" + huge.reproduce_command in md  # the essentials after the table survive
    shown = [k for k in huge.comparison.kpis if f"| {md_escape(k.name, block_start=False)} ↓ |" in md]
    hidden = [k for k in huge.comparison.kpis if k not in shown]
    assert shown and hidden
    urgency = {"regressed": 0, "inconclusive": 1, "non-inferior": 2, "improved": 3}
    assert max(urgency[k.verdict] for k in shown) <= min(urgency[k.verdict] for k in hidden)


def test_inconclusive_banner_recommends_more_seeds():
    noisy = make_report(effect=0.0, noise=0.1)
    assert noisy.comparison.verdict == "INCONCLUSIVE" and noisy.comparison.recommended_seeds
    md = render_markdown(noisy)
    assert f"about {noisy.comparison.recommended_seeds} seeds per variant" in md
    assert "[!WARNING]" in md.split("### KPIs")[0]


# Five seeds whose per-seed ratios run from 0.73 to 1.5: a guard that no five seeds settle (tests/test_stats.py
# works out its interval, +11.9% [−18.0%, +52.7%], and the +71.3% it FAILs from, by hand).
GUARD_BASE = {0: 1.0, 1: 1.1, 2: 0.95, 3: 1.05, 4: 1.02}
GUARD_NOISY = {0: 1.5, 1: 0.8, 2: 1.3, 3: 0.9, 4: 1.4}
GUARD_LINE = "rollout.tf_mse: +11.9% [−18.0%, +52.7%] — a guard: at 5 seeds it fails the change only from +71.3%"


def guarded_report(blocking_values: dict[int, float]) -> ReportInput:
    """A 5-seed report with one blocking KPI (candidate `blocking_values`) and the unsettled guard above."""
    report = make_report(n_seeds=5)
    rules = [KpiRule("rollout.action_response", "higher", "log", 0.5),
             KpiRule("rollout.tf_mse", "lower", "log", 0.10, blocking=False, guard=True)]
    report.comparison = compare(rules, {"rollout.action_response": GUARD_BASE, "rollout.tf_mse": GUARD_BASE},
                                {"rollout.action_response": blocking_values, "rollout.tf_mse": GUARD_NOISY})
    return report


def test_a_pass_names_the_guards_its_seeds_could_not_settle_in_every_format():
    """Under the PASS heading of the PR comment (within its limits), in the HTML banner and in the JSON; and each
    guard's explanation says its change and the worsening it FAILs from."""
    report = guarded_report(dict(GUARD_BASE))  # the blocking KPI identical: PASS
    assert report.comparison.verdict == "PASS"
    md = render_markdown(report)
    visible = visible_part(md).splitlines()
    assert "PASS" in visible[1]
    assert visible[2] == "**PASS** · guards not resolved at these seeds: rollout.tf\\_mse (fails from +71.3%)"
    assert len("\n".join(visible).encode()) <= MAX_VISIBLE_BYTES and len(visible) <= MAX_VISIBLE_LINES
    assert "| rollout.tf\\_mse ↓ (guard) |" in md  # a row of the table above the fold
    guard_resolution = GUARD_LINE.split(": ", 1)[1]
    assert f"<br>Resolution: {md_escape(guard_resolution)} (80% power; margin ≤ +10.0%)" in md  # in the details
    html = render_html(report, pngs={})
    assert "PASS · guards not resolved at these seeds: rollout.tf_mse (fails from +71.3%)" in html
    assert "<title>PASS · " in html  # the verdict first: a name cannot push it out of a narrow tab
    data = _strict_json(render_json(report))
    guard = next(k for k in data["kpis"] if k["name"] == "rollout.tf_mse")
    assert data["unresolved_guards"] == ["rollout.tf_mse"] and guard["tier"] == "guard" and guard["guard"]
    assert guard["failable_regression"] == pytest.approx(1.713, abs=5e-4)  # the ratio c/b it FAILs from
    assert guard["resolution"] == f"{guard_resolution} (80% power; margin ≤ +10.0%)"
    assert guard["change"] == "+11.9% [−18.0%, +52.7%]"  # worded as the comment's table and the guard line have it
    # Not a PASS (the blocking KPI unsettled): nothing calls the guard merely unresolved.
    inconclusive = guarded_report({0: 0.5, 1: 1.6, 2: 0.6, 3: 1.5, 4: 0.7})
    assert inconclusive.comparison.verdict == "INCONCLUSIVE"
    assert "guards not resolved" not in render_markdown(inconclusive)
    assert _strict_json(render_json(inconclusive))["unresolved_guards"] == []


def test_the_unresolved_guards_line_keeps_whole_names_within_its_length():
    briefs = [f"dynamics.val_loss_{i} (fails from +85.0%)" for i in range(5)]
    assert unresolved_guards_line([]) == ""
    assert unresolved_guards_line(briefs) == "guards not resolved at these seeds: " + ", ".join(briefs)
    cut = unresolved_guards_line(briefs, 140)
    assert cut == f"guards not resolved at these seeds: {briefs[0]}, {briefs[1]}, … (3 more)" and len(cut) <= 140


# --------------------------------------------------------------------------- JSON


def test_json_is_strict_and_has_verdict_estimates_and_per_seed_values(report, written):
    data = _strict_json(written["json"].read_text())
    assert data["verdict"] == report.comparison.verdict
    assert [k["name"] for k in data["kpis"]] == [k.name for k in report.comparison.kpis]
    for entry, kpi in zip(data["kpis"], report.comparison.kpis):
        assert entry["estimate"] == pytest.approx(kpi.effect.estimate)
        assert entry["ci_low"] == pytest.approx(kpi.effect.ci_low)
        assert entry["verdict"] == kpi.verdict
        assert entry["baseline_values"]["0"] == pytest.approx(kpi.baseline.values[0])


def test_json_turns_nan_into_null():
    failed = make_report(failed_candidate_seeds=(1,))
    data = _strict_json(render_json(failed))
    assert data["kpis"][0]["candidate_values"]["1"] is None
    assert data["kpis"][0]["candidate_values"]["0"] is not None


# --------------------------------------------------------------------------- HTML


def test_html_is_one_self_contained_file_with_its_one_script_allowed_by_hash(report, written):
    html = written["html"].read_text()
    assert 'src="http' not in html and 'href="http' not in html and "<link" not in html.lower()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    svgs = re.findall(r"<figure id=\"figure-[^\"]+\"><svg", html)
    # forest, curves per stage, grid, PSNR: the pixel grid a PNG, line art SVG where that is smaller
    assert len(images) + len(svgs) == len(plan_figures(report)) == len(STAGES) + 3
    assert 'src="data:image/png' in html.split('id="figure-rollouts"')[1][:200]
    for image in images:
        assert base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n")
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1 and html.lower().count("<script") == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in html  # the CSP runs this script and no other
    assert 'class="banner pass"' in html
    assert 'id="contents"' in html and 'href="#forest"' in html and 'id="forest"' in html


def test_an_inline_svg_is_compacted_without_changing_its_text_or_structure():
    """The forest plot's SVG as the page embeds it against matplotlib's own: well-formed, the same text elements
    with the same content (a variant's name that looks like markup included), no group without attributes,
    coordinates to 0.01 pt, and styles as classes named after the figure (a page's SVGs share one CSS namespace)."""
    hostile = 'id="a" style="b: 1.23456" <g>'  # short enough for the plot's labels
    board = leaderboard_of([make_report(candidate=hostile), make_report(candidate="plain")], "")
    forest = next(f for f in plan_figures(board) if f.filename == "forest.png")
    raw = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        forest.draw().savefig(raw, format="svg")
    compact = forest.svg()
    assert len(compact) < 0.7 * len(raw.getvalue())

    def texts(svg: bytes) -> list[str]:
        return [" ".join(node.itertext()) for node in ElementTree.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]

    assert texts(compact) == texts(raw.getvalue()) and f"tokenizer.val_loss · {hostile}" in texts(compact)
    tags = b"".join(re.findall(rb"<[^>]*>", compact))  # the text between them is the labels': checked above
    assert b"<g>" not in tags and b"rotate(-0 " not in tags and not re.search(rb'="[^"]*\d\.\d{3}', tags)
    classes = set(re.findall(rb' class="([^"]+)"', tags))
    assert classes and all(name.startswith(b"svg-forest_png-") and b"." + name + b"{" in compact for name in classes)


def test_a_leaderboards_forest_plot_shows_a_kpi_identical_for_several_candidates_once():
    same = [make_report(candidate=name, effect=0.0, noise=0.0) for name in ("a", "b")]
    changed = make_report(candidate="c", effect=0.3, noise=0.05)
    assert {kpi.verdict for kpi in same[0].comparison.kpis} == {"identical"}
    rows = forest_rows(leaderboard_of(same + [changed], ""))
    blocking = [kpi.name for kpi in changed.comparison.kpis if kpi.rule.can_fail]
    assert [label for label, _ in rows] == [f"{name} · {who}" for name in blocking for who in ("2 candidates", "c")]
    assert [label for label, _ in forest_rows(leaderboard_of(same, ""))] == [f"{name} · every candidate"
                                                                          for name in blocking]


def test_untrusted_text_is_escaped_in_html_and_markdown():
    evil = make_report(candidate="evil|name*_", candidate_description=EVIL, failed_candidate_seeds=(2,), error=EVIL)
    html = render_html(evil)
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html

    md = render_markdown(evil)
    assert "<script>" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert r"\*\*bold\*\* \| pipe" in md
    assert r"\[link\](http://x)" in md and r"\`code\`" in md
    # A pipe in a variant name or error must not add table columns.
    for block in re.findall(r"((?:^\|.*\|\n)+)", md, flags=re.MULTILINE):
        rows = block.strip("\n").split("\n")
        widths = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
        assert len(widths) == 1, rows


def test_untrusted_text_cannot_mention_anyone_or_reference_an_issue():
    """In markdown and in raw HTML alike: @someone, #12, GH-12 and owner/repo#12 get a zero-width space."""
    text = "ping @bob, fixes #12 and GH-3, see owner/repo#1; C# and #tag stay"
    expected = "ping @\u200bbob, fixes #\u200b12 and GH-\u200b3, see owner/repo#\u200b1; C# and #tag stay"
    assert md_escape(text, block_start=False) == expected and md_html_escape(text) == expected


def test_missing_pieces_render_everywhere():
    broken = make_report(failed_candidate_seeds=(0, 1, 2))
    empty = pd.DataFrame()
    broken = dataclasses.replace(broken, curves=empty, rollouts=empty, speed=empty, frames={}, compat=None, provenance=[])
    assert [f.filename for f in plan_figures(broken)] == ["forest.png"]  # the blocking KPIs, without data
    md = render_markdown(broken)
    html = render_html(broken)
    data = _strict_json(render_json(broken))
    assert "Not checked" in md and "Not checked" in html
    assert "ALL runs failed" in md and "ALL runs failed" in html
    assert "—" in md  # NaN medians of the candidate
    assert "No training curves" in html and "data:image/png" not in html
    assert data["compat"] is None and data["verdict"] == broken.comparison.verdict


def test_a_collapsed_lam_is_flagged_in_markdown_and_html(report):
    perplexity = KpiRule("actions.codebook_perplexity", "higher", "log", 0.10, blocking=False)
    healthy, collapsed = {0: 3.1, 1: 2.8, 2: 3.4}, {0: 1.0, 1: 1.3, 2: 1.6}  # candidate median 1.3 < 1.5

    def with_perplexity(baseline: dict, candidate: dict) -> ReportInput:
        comparison = compare([perplexity], {perplexity.name: baseline}, {perplexity.name: candidate})
        return dataclasses.replace(report, comparison=comparison)

    flagged = with_perplexity(healthy, collapsed)
    md, html = render_markdown(flagged), render_html(flagged)
    for text in (md, html):
        assert "Collapsed LAM" in text and "ΔtPSNR" in text
        assert text.count("the LAM has collapsed") == 1  # the candidate's, not the baseline's
        assert "perplexity 1.3 &lt; 1.5" in text  # the median, escaped
    for fine in (report, with_perplexity(healthy, healthy)):
        assert "the LAM has collapsed" not in render_markdown(fine) + render_html(fine)
    both = with_perplexity(collapsed, collapsed)
    assert render_markdown(both).count("the LAM has collapsed") == 2


def test_tokenizer_reconstructions_get_their_own_grid_next_to_the_rollouts(report):
    assert "reconstructions.png" not in [f.filename for f in plan_figures(report)]  # none stored: no figure
    frames = {v: {**f, "reconstructions": f["ground_truth"] // 2} for v, f in report.frames.items()}
    figures = plan_figures(dataclasses.replace(report, frames=frames))
    names = [f.filename for f in figures]
    assert names.index("reconstructions.png") == names.index("rollouts.png") + 1
    grid = figures[names.index("reconstructions.png")]
    assert "tokenizer reconstruction" in grid.caption and grid.png().startswith(b"\x89PNG")
    # the same reconstructions (a shared tokenizer) show once
    assert f"one row for {BASELINE}, {CANDIDATE}: their frames are identical" in grid.caption


def test_candidate_without_frames_still_gets_a_grid_of_the_others(report):
    partial = dataclasses.replace(report, frames={BASELINE: report.frames[BASELINE]})
    grid = [f for f in plan_figures(partial) if f.filename == "rollouts.png"]
    assert grid and f"no frames for {CANDIDATE}" in grid[0].caption
    assert grid[0].png().startswith(b"\x89PNG")


# --------------------------------------------------------------------------- files and figures


def test_write_reports_writes_the_requested_files_and_the_pngs_markdown_refers_to(report, written):
    assert set(written) == {"md", "html", "json"}
    assert [p.name for p in written.values()] == ["report.md", "report.html", "report.json"]
    md = written["md"].read_text()
    referenced = set(re.findall(r"\]\(([^)]+\.png)\)", md))
    assert referenced == {f.filename for f in plan_figures(report)}
    for name in referenced:
        assert (written["md"].parent / name).read_bytes().startswith(b"\x89PNG")
    assert "](report.html)" in md
    assert "](rollouts.gif)" in md and (written["md"].parent / "rollouts.gif").read_bytes().startswith(b"GIF89a")


def test_write_reports_rejects_unknown_formats(report, tmp_path):
    with pytest.raises(ValueError, match="pdf"):
        write_reports(report, tmp_path, ["md", "pdf"])
    only_json = write_reports(report, tmp_path / "j", ["json"])
    assert list(only_json) == ["json"] and not list((tmp_path / "j").glob("*.png"))


def test_rollout_grid_is_nearest_neighbour_upscaled_and_white_separated():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)  # [steps, H, W, 3]
    predicted = 255 - truth
    grid = rollout_grid([truth, predicted], factor=3, gap=2)
    assert grid.shape == (2 * 12 + 2, 3 * 12 + 2 * 2, 3)
    cell = grid[14:26, 14:26]  # row 1 (prediction), column 1
    assert np.array_equal(cell, np.kron(predicted[1], np.ones((3, 3, 1), dtype=np.uint8)))
    assert (grid[12:14] == 255).all() and (grid[:, 12:14] == 255).all()
    assert horizon_columns(4) == [0, 1, 2, 3]
    assert horizon_columns(20, max_steps=5) == [0, 5, 10, 14, 19]


def test_the_copy_last_frame_reference_has_one_row_when_every_arm_scores_the_same(report):
    """Copying the last frame is a property of the clips: arms on the same clips share one row, placed last;
    arms whose copy-last scores differ (other clips) keep one row each."""
    table = view.rollout_table(report)
    copy_rows = [row for row in table.rows if row[2] == "copy last frame"]
    # the fixture: PSNR 20 − h at horizon steps h = 1..4, SSIM 0.8 − 0.02h
    assert copy_rows == [["every arm", "reference", "copy last frame", "19 dB", "16 dB", "17.5 dB", "0.75"]]
    assert table.rows[-1] == copy_rows[0] and table.row_classes[-1] == "reference" and "one row" in table.note
    assert len(table.rows) == len(table.row_classes) == 2 * 3 + 1
    rollouts = report.rollouts.copy()
    rollouts.loc[(rollouts["variant"] == CANDIDATE) & (rollouts["mode"] == "copy_last"), "psnr"] += 1.0
    table = view.rollout_table(dataclasses.replace(report, rollouts=rollouts))
    assert [row[0] for row in table.rows if row[2] == "copy last frame"] == [BASELINE, CANDIDATE]
    assert "one row" not in table.note


def test_curve_bands_are_mean_min_max_over_seeds_and_drop_nan():
    curves = pd.DataFrame(
        [{"variant": "a", "seed": s, "stage": "tokenizer", "step": step, "metric": "loss", "value": v}
         for s, values in enumerate([[1.0, 0.5], [3.0, math.nan], [2.0, 0.7]]) for step, v in zip((0, 10), values)]
    )
    band = curve_bands(curves, "tokenizer")["a"]
    assert band["step"].tolist() == [0, 10]
    assert band["mean"].tolist() == pytest.approx([2.0, 0.6])
    assert band["low"].tolist() == [1.0, 0.5] and band["high"].tolist() == [3.0, 0.7]
    assert band["seeds"].tolist() == [3, 2]


# --------------------------------------------------------------------------- headless browser


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian package: chromium; .ci/run installs it)")
def test_html_renders_in_headless_chromium(written, tmp_path):
    image = _screenshot(written["html"], tmp_path)
    assert image.shape[0] == 900 and image.shape[1] == 1200
    rgb = image[..., :3]
    assert rgb.std() > 0.05, "screenshot is blank"
    assert rgb.mean() < 0.97, "screenshot is all white"
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    green = (g > r + 0.2) & (g > b + 0.1)
    assert green.mean() > 0.01, "the green PASS banner is not visible"


def _screenshot(html: Path, tmp_path: Path) -> np.ndarray:
    from matplotlib.image import imread

    png = tmp_path / "shot.png"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={png}", "--window-size=1200,900", html.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert png.exists(), f"chromium wrote no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    return imread(png)


def test_notes_and_arm_provenance_are_worded_in_reports():
    """harness.gate returns notes and each arm's code as data; reports/text.py words them."""
    assert note_text(TargetNote("tokenizer.steps_to_target", 0.185321, TargetSource.AUTO, 0.05)) == (
        "tokenizer.steps_to_target: target loss 0.18532 (auto = (1 + 0.05) x the largest baseline final loss)")
    assert note_text(TargetNote("dynamics.steps_to_target", 2.0, TargetSource.CONFIG)) == (
        "dynamics.steps_to_target: target loss 2 (from bench.toml)")
    assert note_text(FloorNote("actions.val_loss", "base", 2, 1e-12)) == (
        "actions.val_loss: base has 2 values <= 0, read as 1e-12 on its log scale")
    assert note_text(LookNote(2, 2, 4, 0.04444)) == "sequential look 2 of 2: 4 seeds, alpha 0.0444 spent at this look"
    here = ArmProvenance("abc123", dirty=True, reused=3, total=4)
    assert arm_description("Mean-pool.", here) == (
        "Mean-pool.\n\nCode: commit abc123 with uncommitted changes (this checkout). "
        "Runs: 3 of 4 reused from the store, 1 trained now.")
    assert arm_description("", ArmProvenance("def456", ref="main", total=2)) == (
        "Code: commit def456 (--baseline-ref main). Runs: 0 of 2 reused from the store, 2 trained now.")
    assert arm_description("x", ArmProvenance("def456", dirty=True, changes=("a.py", "b.py", "c.py", "d.py"))) == (
        "x\n\nCode: commit def456 with uncommitted changes to a.py, b.py, c.py (this checkout). "
        "Runs: 0 of 0 reused from the store, 0 trained now.")
    report = dataclasses.replace(make_report(), arm_provenance={BASELINE: here})
    data = json.loads(render_json(report))
    assert data["notes"] == ["tokenizer.steps_to_target: target loss 0.2 (from bench.toml)"]
    assert data["descriptions"][BASELINE].endswith("Runs: 3 of 4 reused from the store, 1 trained now.")
    assert "Runs: 3 of 4 reused from the store" in render_markdown(report)
