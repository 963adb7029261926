"""What a maintainer reads, on a real gate report (smoke profile): the PR comment, its pictures published to an
assets branch, and the HTML report (in headless Chromium when it is installed)."""
from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.kpis import KPIS
from reports.render import (MAX_HEADLINE_ROWS, MAX_VISIBLE_BYTES, MAX_VISIBLE_LINES, MARKER, cut_to_fit,
                            visible_part)
from test_reports import CHROMIUM

REPO = Path(__file__).resolve().parents[1]
PUBLISH = REPO / ".github" / "scripts" / "publish_assets.py"
HTML_BUDGET = 250_000


@pytest.fixture(scope="module")
def gate_report(smoke_results, tmp_path_factory) -> Path:
    """`bench gate --profile smoke` from an empty folder (no bench.toml above it: the packaged default suite),
    reusing the session's smoke runs; the report dir."""
    work = tmp_path_factory.mktemp("empty")
    out = work / "report"
    before, printed = os.getcwd(), io.StringIO()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(printed):
            code = main(["gate", "--profile", "smoke", "--results", str(smoke_results), "--out", str(out), "--quiet",
                         "--json"])
    finally:
        os.chdir(before)
    assert code in (0, 1, 3)
    assert json.loads(printed.getvalue()) == json.loads((out / "report.json").read_text())  # --json: the same data
    return out


# --------------------------------------------------------------------------- the PR comment


def test_the_comment_shows_counts_the_blocking_and_guard_kpis_and_the_pictures_on_one_screen(gate_report):
    markdown = (gate_report / "report.md").read_text()
    data = json.loads((gate_report / "report.json").read_text())
    visible = visible_part(markdown)
    assert len(visible.encode()) <= MAX_VISIBLE_BYTES and visible.count("\n") + 1 <= MAX_VISIBLE_LINES, \
        (len(visible.encode()), visible.count("\n") + 1)
    assert visible.splitlines()[0] == MARKER and data["verdict"] in visible.splitlines()[1]
    counts = {verdict: sum(k["verdict"] == verdict for k in data["kpis"])
              for verdict in ("improved", "non-inferior", "inconclusive", "regressed", "identical")}
    counts_line = next(line for line in visible.splitlines() if line.startswith("**KPIs:**"))
    assert [int(n) for n in re.findall(r"(\d+) (?:improved|non-inferior|inconclusive|regressed|identical)",
                                       counts_line)] == list(counts.values())
    # The table: a row per blocking and guard KPI and per regressed other one, nothing else.
    shown = [k for k in data["kpis"] if k["tier"] in ("blocking", "guard") or k["verdict"] == "regressed"]
    rows = [line for line in visible.splitlines() if line.startswith("| ") and ("↓" in line or "↑" in line)]
    assert len(rows) == len(shown) <= MAX_HEADLINE_ROWS
    for kpi in shown:
        assert any(line.startswith(f"| {kpi['name'].replace('_', chr(92) + '_')} ") for line in rows), kpi["name"]
    assert "p regressed" not in visible and "identical" in visible  # the Holm column only in the details
    for picture in ("rollouts.gif", "rollouts.png", "reconstructions.png"):
        assert f"]({picture})" in visible and (gate_report / picture).is_file()
    assert "](report.html)" in visible
    # Everything else is folded: the full table, per-seed values, provenance, the command.
    for heading in ("### All KPIs", "### Why each KPI got its verdict", "### Provenance", "### Reproduce"):
        assert heading in markdown and heading not in visible


def test_a_comment_cut_to_fit_ends_whole_closing_what_it_cut_into():
    """Cut inside a code fence inside a <details>: the cut falls at a line end (no half entity such as `&lt;`),
    the fence and the <details> are closed, the note is last, and the whole stays within the limit."""
    markdown = ("verdict\n\n<details><summary>Details</summary>\n\n```bash\n"
                + "".join(f"bench gate --candidate &lt;v{i}&gt;\n" for i in range(200)) + "```\n\n</details>\n")
    cut = cut_to_fit(markdown, limit=1000)
    assert len(cut) <= 1000 and cut.endswith("**Report truncated to fit a PR comment; see report.html / report.json.**\n")
    body = cut.split("\n\n…")[0]
    assert body.endswith("&gt;\n```")  # a whole line, then the fence closed
    assert cut.count("```") == 2 and cut.count("<details>") == cut.count("</details>") == 1
    assert cut_to_fit(markdown, limit=len(markdown)) == markdown


def test_each_row_is_one_statistic_the_arms_ratio_is_the_change_the_test_uses(gate_report):
    """Log scale: geometric means, whose ratio is exp(mean per-seed log ratio), the estimate; linear: means."""
    from reports.view import arm_center
    from harness.types import ArmSummary

    data = json.loads((gate_report / "report.json").read_text())
    checked = 0
    for kpi in data["kpis"]:
        if kpi["name"].endswith("steps_to_target") or kpi["estimate"] is None or not kpi["paired"]:
            continue
        values = [{int(s): (math.nan if v is None else v) for s, v in kpi[f"{arm}_values"].items()}
                  for arm in ("baseline", "candidate")]
        if any(math.isnan(v) for arm in values for v in arm.values()):
            continue
        fake = type("Kpi", (), {"name": kpi["name"], "rule": KPIS[kpi["name"]]})
        b, c = (arm_center(fake, ArmSummary(v, len(v), math.nan, math.nan)) for v in values)
        change = c / b if kpi["scale"] == "log" else c - b
        assert change == pytest.approx(kpi["estimate"], rel=1e-9, abs=1e-12), kpi["name"]
        checked += 1
    assert checked >= 10


def test_margins_are_written_in_one_form(gate_report):
    markdown = (gate_report / "report.md").read_text()
    # action_response: higher is better, log scale, a 50% margin: the change may reach 1/1.5 - 1 = -33.3%
    assert "≥ −33.3%" in markdown and "50% margin" not in markdown and "the 50%" not in markdown


# --------------------------------------------------------------------------- pictures on an assets branch


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def publish(checkout: Path, report: Path, out: Path, dest: str = "pr-7") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PUBLISH), "--report", str(report), "--repo", "octo/world",
                           "--dest", dest, "--checkout", str(checkout), "--out", str(out)],
                          capture_output=True, text=True)


def test_the_pictures_are_published_to_an_orphan_branch_and_the_comment_links_them_by_commit(gate_report, tmp_path):
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    checkout = tmp_path / "checkout"  # the comment job's checkout of the base repository
    git(tmp_path, "clone", "-q", str(origin), str(checkout))
    for key, value in (("user.email", "t@example.com"), ("user.name", "t")):
        git(checkout, "config", key, value)
    (checkout / "README.md").write_text("base\n")
    git(checkout, "add", "README.md")
    git(checkout, "commit", "-q", "-m", "base")
    git(checkout, "push", "-q", "origin", "main")
    report = tmp_path / "artifact"  # untrusted: also a link, a bad name and a markdown file
    shutil.copytree(gate_report, report)
    (report / "evil.png").symlink_to("/etc/passwd")
    (report / "notes .png").write_bytes(b"x")

    result = publish(checkout, report, tmp_path / "comment.md")
    assert result.returncode == 0, result.stderr
    commit = git(origin, "rev-parse", "worldbench-assets")
    assert commit in result.stdout
    files = set(git(origin, "ls-tree", "-r", "--name-only", commit).splitlines())
    pictures = {p.name for p in gate_report.iterdir() if p.suffix in (".png", ".gif")}
    assert files == {f"pr-7/{name}" for name in pictures | {"report.html"}}
    assert git(origin, "rev-list", "--count", commit) == "1"  # an orphan: no history shared with main
    assert git(origin, "rev-parse", "main") == git(checkout, "rev-parse", "HEAD")
    assert git(checkout, "status", "--porcelain") == ""  # the checkout's tree and index untouched
    comment = (tmp_path / "comment.md").read_text()
    for name in ("rollouts.gif", "rollouts.png", "reconstructions.png"):
        assert f"](https://raw.githubusercontent.com/octo/world/{commit}/pr-7/{name})" in comment
    assert f"](https://github.com/octo/world/blob/{commit}/pr-7/report.html)" in comment
    assert "](rollouts.png)" not in comment
    blob = subprocess.run(["git", "show", f"{commit}:pr-7/rollouts.png"], cwd=origin, capture_output=True).stdout
    assert blob == (gate_report / "rollouts.png").read_bytes()

    # The next push of the same PR replaces its folder in a new commit; another PR's folder stays.
    assert publish(checkout, report, tmp_path / "other.md", dest="pr-8").returncode == 0
    (report / "rollouts.gif").unlink()
    assert publish(checkout, report, tmp_path / "again.md").returncode == 0
    latest = git(origin, "rev-parse", "worldbench-assets")
    files = set(git(origin, "ls-tree", "-r", "--name-only", latest).splitlines())
    assert "pr-7/rollouts.gif" not in files and "pr-8/rollouts.gif" in files and "pr-7/rollouts.png" in files
    assert git(origin, "rev-list", "--count", latest) == "3"
    assert git(origin, "cat-file", "-t", f"{commit}:pr-7/rollouts.gif") == "blob"  # old links still resolve


# --------------------------------------------------------------------------- the HTML report


def test_the_html_report_has_a_forest_plot_contents_and_a_sortable_table_within_budget(gate_report):
    html = (gate_report / "report.html").read_text()
    assert len(html.encode()) <= HTML_BUDGET, len(html.encode())
    assert 'id="contents"' in html and 'id="forest"' in html and 'id="kpi-table"' in html
    ids = re.findall(r'\sid="([^"]+)"', html)  # the inline SVGs' too: one page, one namespace
    assert html.count("<svg") >= 2 and len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    forest = html.split('id="figure-forest"')[1].split("</figure>")[0]
    assert "<svg" in forest or "data:image/png" in forest
    if "<svg" in forest:  # text stays text in the SVG: every blocking and guard KPI is named
        assert all(name in forest for name, rule in KPIS.items() if rule.can_fail and not rule.timing)
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert len(scripts) == 1 and f"'sha256-{digest}'" in html


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian package: chromium; .ci/run installs it)")
def test_the_html_report_works_in_headless_chromium(gate_report, tmp_path):
    """Chromium loads the page, runs its one script (the CSP allows it by hash) and filters the KPI table to the
    blocking and guard KPIs when asked; the forest plot and the contents are there."""
    def dom(fragment: str = "") -> str:
        result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                                 f"--user-data-dir={tmp_path / 'profile'}",
                                 (gate_report / "report.html").as_uri() + fragment],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    page = dom()
    assert 'data-interactive="ready"' in page  # the script ran
    assert 'id="contents"' in page and 'id="figure-forest"' in page
    filtered = dom("#blocking-only")
    rows = re.findall(r"<tr class=\"([^\"]*)\"([^>]*)>", filtered.split('id="kpi-table"')[1].split("</table>")[0])
    assert rows and all(("hidden" in attributes) == (not {"blocking", "guard"} & set(classes.split()))
                        for classes, attributes in rows)
