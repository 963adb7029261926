"""Render a `ReportInput` as a PR comment (markdown), a self-contained page (HTML) and JSON.

The three share one plain-text view of the content (`reports.view`) and one set of figures
(`reports.figures`); this module only lays them out and escapes.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path

import jinja2
import numpy as np
from markupsafe import Markup
import pandas as pd

from harness.seeds import format_seeds
from harness.types import KpiComparison, Leaderboard, ReportInput, RulesNote
from reports import view
from reports.figures import Figure, plan_figures
from reports.template import KPI_TABLE_SCRIPT, TEMPLATES
from reports.text import (VERDICT_EMOJI, VERDICT_SYMBOL, comparison_reasons, fmt_estimate, kpi_reason, md_escape,
                          resolution_text, truncate, worse_by)

MARKER = "<!-- worldbench-report -->"  # first line of the markdown: a bot finds and updates its PR comment by it
FORMATS = ("md", "html", "json")
FILENAMES = {"md": "report.md", "html": "report.html", "json": "report.json"}
GIF_FILENAME = "rollouts.gif"  # the animated rollouts, written next to report.md with the PNGs

# GitHub rejects comments over 65,536 characters; stay well under so the bot can add a footer.
MAX_MD_CHARS = 60_000
# What shows before anything is expanded must fit on a screen.
MAX_VISIBLE_BYTES = 4_096
MAX_VISIBLE_LINES = 40
MAX_HEADLINE_ROWS = 12
VISIBLE_REASONS = 3  # verdict reasons shown above the fold (the rest are in the KPI table and the details)
VISIBLE_REASON_CHARS = 220
VISIBLE_NAME_CHARS = 60  # variant and KPI names above the fold
MD_MAX_SEEDS = 12  # per-seed columns in the markdown (HTML and JSON have all of them)
MD_DESCRIPTION_CHARS = 1_500
MD_REASON_CHARS = 400
MD_MAX_REASONS = 12
MD_ERROR_CHARS = 400
MD_MAX_RUN_ROWS = 60

GITHUB_ALERT = {"PASS": "TIP", "FAIL": "CAUTION", "INCONCLUSIVE": "WARNING"}  # green / red / amber boxes
# The pictures a maintainer looks at first (the rollouts and what the tokenizer keeps), shown above the fold.
HEADLINE_PICTURES = ("rollouts.png", "reconstructions.png")


# --------------------------------------------------------------------------- markdown


def md_table(table: view.Table, max_rows: int | None = None) -> str:
    if not table.rows:
        return ""
    rows = table.rows if max_rows is None else table.rows[:max_rows]
    lines = [
        "| " + " | ".join(md_escape(c, block_start=False) for c in table.columns) + " |",
        "|" + "|".join(":--" if i == 0 else "--:" if _numeric_column(table, i) else ":--" for i in range(len(table.columns))) + "|",
    ]
    lines += ["| " + " | ".join(md_escape(cell, block_start=False) or " " for cell in row) + " |" for row in rows]
    note = table.note
    if len(rows) < len(table.rows):
        note = f"{note} Showing {len(rows)} of {len(table.rows)} rows; see report.html for all.".strip()
    if note:
        lines += ["", f"<sub>{md_escape(note)}</sub>"]
    return "\n".join(lines)


def _numeric_column(table: view.Table, index: int) -> bool:
    cells = [row[index] for row in table.rows if index < len(row) and row[index]]
    return bool(cells) and all(re.match(r"^[+−\-]?[\d∞—<≤≥]", cell) for cell in cells)


def details(summary: str, body: str) -> str:
    """A collapsed section; the blank lines let GitHub render the markdown inside it."""
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def visible_part(markdown: str) -> str:
    """What GitHub shows before anything is expanded: the markdown less its outermost <details> blocks."""
    kept, depth = [], 0
    for piece in re.split(r"(<details>|</details>)", markdown):
        if piece == "<details>":
            depth += 1
        elif piece == "</details>":
            depth = max(0, depth - 1)
        elif depth == 0:
            kept.append(piece)
    return "".join(kept)


# ----------------------------------------------------------------- above the fold


def with_emoji(verdict: str) -> str:
    return f"{VERDICT_EMOJI.get(verdict, '')} {verdict}".strip()


def _md_counts(report: ReportInput) -> str:
    """One line: how many KPIs got each verdict, and the compatibility check."""
    counts = " · ".join(f"{VERDICT_EMOJI.get(v, '')} {n} {v}" for v, n in view.verdict_counts(report).items())
    compat = "" if report.compat is None else (" · compatibility ✅" if report.compat.ok else " · compatibility ❌")
    return f"**KPIs:** {counts}{compat}"


def _md_context(report: ReportInput) -> str:
    """Profile, seeds, alpha, and the links to the full report and the CI run."""
    seeds = view.seeds_by_variant(report)
    paired = len({tuple(s) for s in seeds.values()}) == 1
    seed_text = (f"seeds {format_seeds(next(iter(seeds.values()), [])) or '—'} (paired)" if paired else
                 "; ".join(f"{view.role_of(report, v)} seeds {format_seeds(s) or '—'}" for v, s in seeds.items()))
    links = [f"[full report (HTML)]({FILENAMES['html']})"]
    if report.ci_run_url:
        links.append(f"[CI run]({report.ci_run_url})")
    return (f"<sub>profile {md_escape(truncate(report.profile, VISIBLE_NAME_CHARS), block_start=False)} · {seed_text} · "
            f"α = {report.comparison.alpha:g} · {' · '.join(links)}</sub>")


def md_alert(banner: view.Banner, warnings: list[str], reasons: int, reason_chars: int) -> str:
    """The verdict's reasons (the first few), the seeds that would settle it, and what else went wrong."""
    lines = [f"> [!{GITHUB_ALERT.get(banner.verdict, 'NOTE')}]"]
    lines += [f"> - {md_escape(truncate(reason, reason_chars))}" for reason in banner.reasons[:reasons]]
    if len(banner.reasons) > reasons:
        lines.append(f"> - … and {len(banner.reasons) - reasons} more (see the table and the details)")
    if banner.recommended_seeds:
        lines.append(f"> - **Recommended:** about {banner.recommended_seeds} seeds per variant would settle it.")
    lines += [f"> - ⚠️ {md_escape(truncate(w, reason_chars))}" for w in warnings[:reasons]]
    if len(warnings) > reasons:
        lines.append(f"> - ⚠️ … and {len(warnings) - reasons} more warnings (details)")
    return "\n".join(lines)


def md_guards(banner: view.Banner, max_chars: int) -> str:
    """The line right under a PASS's heading that names the guards its seeds could not settle, "PASS · guards not
    resolved at these seeds: rollout.tf_mse (fails from +85.0%), …"; "" for none."""
    line = banner.guards_line(max_chars)
    return f"**{md_escape(banner.verdict)}** · {md_escape(line, block_start=False)}" if line else ""


def warning_lines(problems: list[str], provenance: list[str], collapsed_lam: list[str]) -> list[str]:
    """What else went wrong, one line each, for the alert above the fold."""
    return ([f"Runs that did not finish: {p}" for p in problems] + [f"Provenance: {w}" for w in provenance]
            + [f"Collapsed LAM: {w}" for w in collapsed_lam])


def _md_headline(report: ReportInput, max_rows: int) -> str:
    kpis, hidden = view.headline_kpis(report, max_rows)
    if not kpis:
        return "No blocking or guard KPI was compared."
    table = view.headline_table(report, kpis)
    for row in table.rows:
        row[0] = truncate(row[0], VISIBLE_NAME_CHARS)
        row[-1] = with_emoji(row[-1])
    more = f" {hidden} more blocking, guard or regressed KPIs are in the details." if hidden else ""
    table.note = ("Blocking and guard KPIs (a guard FAILs the merge when regressed, but need not be non-inferior to "
                  "PASS), and any other that regressed. Arms: geometric mean (ratio KPIs) or mean (differences) over "
                  f"seeds, so their ratio or difference is the change the test uses.{more}")
    return md_table(table)


def md_pictures(figures: list[Figure], pictures: bool, has_gif: bool) -> str:
    shown = [f for f in figures if f.filename in HEADLINE_PICTURES]
    if not shown:
        return ""
    if not pictures:
        return "<sub>Pictures (rollouts, tokenizer reconstructions): in the PR comment and in report.html.</sub>"
    images = ([f"![rollouts, animated: ground truth, then each variant]({GIF_FILENAME})"] if has_gif else [])
    images += [f"![{md_escape(f.title)}]({f.filename})" for f in shown]
    return "**Rollouts** (rows: ground truth, then each variant) **and tokenizer reconstructions**\n\n" + " ".join(images)


def _visible(report: ReportInput, figures: list[Figure], pictures: bool, has_gif: bool) -> str:
    """Above the fold, shrunk until it fits MAX_VISIBLE_BYTES and MAX_VISIBLE_LINES: fewer reasons and shorter,
    then fewer KPI rows."""
    title = f"{MARKER}\n## {md_verdict(report.comparison.verdict)} · {md_escape(truncate(report.title, 2 * VISIBLE_NAME_CHARS))}"
    banner = view.banner(report)
    warnings = warning_lines(view.problem_summary(report), view.provenance_warnings(report),
                             view.collapsed_lam_warnings(report))
    text = ""
    for reasons, chars, rows in ((VISIBLE_REASONS, VISIBLE_REASON_CHARS, MAX_HEADLINE_ROWS),
                                 (2, 140, MAX_HEADLINE_ROWS), (1, 100, MAX_HEADLINE_ROWS), (1, 100, 8), (1, 80, 5),
                                 (0, 80, 3)):
        parts = ["\n".join(filter(None, [title, md_guards(banner, chars)])),
                 _md_counts(report) + "<br>\n" + _md_context(report),
                 md_alert(banner, warnings, reasons, chars),
                 _md_headline(report, rows), md_pictures(figures, pictures, has_gif)]
        text = "\n\n".join(part for part in parts if part)
        if len(text.encode()) <= MAX_VISIBLE_BYTES and text.count("\n") + 1 <= MAX_VISIBLE_LINES:
            break
    return text


# ----------------------------------------------------------------- below the fold


def md_variants(report: ReportInput | Leaderboard) -> str:
    parts = ["### Variants"]
    for variant in report.variants:
        description = view.description_of(report, variant)
        parts.append(f"**{view.role_of(report, variant)}**: {md_escape(variant)}")
        if description.strip():
            text = md_escape(truncate(description.strip(), MD_DESCRIPTION_CHARS), multiline=True)
            parts.append("\n".join(f"> {line}" if line.strip() else ">" for line in text.split("\n")))
    return "\n\n".join(parts)


# When the KPI table must be cut, the rows a maintainer has to act on come first.
_KPI_URGENCY = {"regressed": 0, "inconclusive": 1, "non-inferior": 2, "identical": 2, "improved": 3}


def _md_kpis(report: ReportInput, max_rows: int | None = None) -> str:
    table = view.kpi_table(report)
    if not table.rows:
        return "### All KPIs\n\nNo KPIs were compared."
    if max_rows is not None and max_rows < len(table.rows):
        kpis = report.comparison.kpis
        order = sorted(range(len(kpis)),
                       key=lambda i: (not kpis[i].rule.can_fail, _KPI_URGENCY.get(kpis[i].verdict, 1), i))
        kept = sorted(order[:max_rows])
        table.rows = [table.rows[i] for i in kept]
        table.note += (
            f" Showing {len(kept)} of {len(kpis)} KPIs (blocking and guard, regressed and inconclusive first) to "
            "fit a PR comment; report.html and report.json have all of them."
        )
    for row in table.rows:  # the verdict column gets its emoji (markdown only: HTML uses badges)
        row[-1] = with_emoji(row[-1])
    return "### All KPIs\n\n" + md_table(table)


def _md_explanations(report: ReportInput) -> str:
    items = [
        f"- {VERDICT_EMOJI.get(e.verdict, '')} **{md_escape(e.name)}** ({md_escape(e.verdict)}): "
        f"{md_escape(truncate(e.reason, MD_REASON_CHARS))}"
        + (f"<br>Resolution: {md_escape(e.resolution)}" if e.resolution else "")
        + (f"<br><sub>{md_escape(e.detail)}</sub>" if e.detail else "")
        for e in view.kpi_explanations(report)
    ]
    return "### Why each KPI got its verdict\n\n" + "\n".join(items) if items else ""


def _md_seeds(report: ReportInput) -> str:
    table = view.seed_table(report, max_seeds=MD_MAX_SEEDS)
    return details("Per-seed values", md_table(table)) if table.rows else ""


def md_figures(figures: list[Figure], pictures: bool) -> str:
    if not figures:
        return "### Figures\n\nNo figures: no training curves, rollout frames or rollout scores were recorded."
    if not pictures:
        return f"### Figures\n\n{len(figures)} figures are in the PR comment and in report.html."
    items = [
        f"**{md_escape(f.title)}**<br>\n![{md_escape(f.title)}]({f.filename})<br>\n<sub>{md_escape(f.caption)}</sub>"
        for f in figures
    ]
    return "### Figures\n\n" + "\n\n".join(items)


def md_rollouts(report: ReportInput | Leaderboard) -> str:
    table = view.rollout_table(report)
    return "### Rollout scores\n\n" + (md_table(table) if table.rows else "No rollout scores were recorded.")


def _md_speed(report: ReportInput) -> str:
    table = view.speed_table(report)
    return "### Speed\n\n" + (md_table(table) if table.rows else "No speed measurements.")


def md_compat(report: ReportInput | Leaderboard) -> str:
    compat = report.compat
    if compat is None:
        return "### Backward compatibility\n\nNot checked."
    head = "✅ compatible" if compat.ok else "❌ **INCOMPATIBLE**"
    lines = [f"- {md_escape(truncate(line, MD_ERROR_CHARS))}" for line in compat.lines]
    return "### Backward compatibility\n\n" + "\n".join([head, ""] + lines)


def md_runs(report: ReportInput | Leaderboard) -> str:
    counts = view.run_counts(report)
    if not counts.rows:
        return "### Runs\n\nNo runs recorded."
    parts = ["### Runs", md_table(counts)]
    problems = view.problem_runs(report, error_limit=MD_ERROR_CHARS)
    if problems.rows:
        parts.append("**Failed or diverged runs**\n\n" + md_table(problems, max_rows=MD_MAX_RUN_ROWS))
    return "\n\n".join(parts)


def md_all_runs(report: ReportInput | Leaderboard) -> str:
    table = view.all_runs(report)
    return details(f"All {len(table.rows)} runs", md_table(table, max_rows=MD_MAX_RUN_ROWS)) if table.rows else ""


def md_provenance(report: ReportInput | Leaderboard) -> str:
    table = view.provenance_table(report)
    if not table.rows:
        return "### Provenance\n\nNo provenance recorded."
    return "### Provenance\n\n" + md_table(table)


def md_reproduce(report: ReportInput | Leaderboard) -> str:
    command = report.reproduce_command or ""
    # A fence longer than any backtick run inside, so the command cannot close it early.
    longest = max((len(run) for run in re.findall(r"`+", command)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"### Reproduce\n\n{fence}bash\n{command}\n{fence}"


def md_notes(report: ReportInput | Leaderboard) -> str:
    if not report.notes:
        return ""
    return "### Notes\n\n" + "\n".join(f"- {md_escape(truncate(note, MD_REASON_CHARS))}"
                                       for note in view.notes(report))


@dataclasses.dataclass
class Section:
    label: str  # how the "left out" note names it
    text: str
    drop_order: int | None = None  # optional sections are replaced by a note, lowest first, when too long


DETAILS_SUMMARY = ("<b>Details</b>: every KPI and why it got its verdict, per-seed values, figures, rollout scores, "
                   "speed, compatibility, runs, provenance, the command that reproduces this")


def shown(report: ReportInput | Leaderboard) -> ReportInput | Leaderboard:
    """What a report shows: a leaderboard of one candidate is that candidate's report (with the board's CI link)."""
    if not isinstance(report, Leaderboard) or len(report.reports) > 1:
        return report
    only = report.reports[0]
    only.ci_run_url = report.ci_run_url or only.ci_run_url
    return only


def render_markdown(report: ReportInput, figures: list[Figure] | None = None, pictures: bool = True,
                    has_gif: bool = True) -> str:
    """GitHub-flavoured markdown for a PR comment: a part that fits on a screen (the verdict, counts, the blocking
    KPIs, the pictures, links) and everything else folded in one <details>; under MAX_MD_CHARS whatever the input.

    The pictures are linked by their file names next to report.md (.github/scripts/publish_assets.py pins them to
    a commit of the assets branch before the comment is posted); `pictures=False` (the job summary, which nothing
    publishes for) says where they are instead. When too long: drop optional sections (each replaced by a one-line
    note), then cut the KPI table to its most important rows, and only then truncate the text itself.
    """
    figures = plan_figures(report) if figures is None else figures
    visible = _visible(report, figures, pictures, has_gif and any(f.filename in HEADLINE_PICTURES for f in figures))
    sections = {
        "kpis": Section("KPIs", _md_kpis(report)),
        "explanations": Section("KPI explanations", _md_explanations(report), 3),
        "seeds": Section("per-seed values", _md_seeds(report), 2),
        "figures": Section("figure list", md_figures(figures, pictures), 6),
        "rollouts": Section("rollout table", md_rollouts(report), 7),
        "speed": Section("speed", _md_speed(report)),
        "compat": Section("backward compatibility", md_compat(report)),
        "runs": Section("runs", md_runs(report)),
        "all_runs": Section("list of all runs", md_all_runs(report), 1),
        "variants": Section("variant descriptions", md_variants(report), 5),
        "provenance": Section("provenance", md_provenance(report), 4),
        "reproduce": Section("reproduce command", md_reproduce(report)),
        "notes": Section("notes", md_notes(report), 8),
    }

    def joined() -> str:
        return join_details(visible, sections)

    drop_optional(visible, sections)
    n_kpis = len(report.comparison.kpis)
    while len(joined()) > MAX_MD_CHARS and n_kpis > 1:
        excess = len(joined()) - MAX_MD_CHARS
        row_chars = max(1, len(sections["kpis"].text) // max(1, n_kpis))
        n_kpis = max(1, n_kpis - excess // row_chars - 1)
        sections["kpis"].text = _md_kpis(report, max_rows=n_kpis)
    return cut_to_fit(joined())


def drop_optional(visible: str, sections: dict[str, Section], summary: str = DETAILS_SUMMARY) -> None:
    """Replace optional sections by a one-line note, lowest drop_order first, until the comment fits MAX_MD_CHARS."""
    optional = sorted((s for s in sections.values() if s.drop_order is not None), key=lambda s: s.drop_order)
    for section in optional:
        if len(join_details(visible, sections, summary)) <= MAX_MD_CHARS:
            break
        section.text = f"<sub>({section.label} left out to fit a PR comment; see report.html / report.json)</sub>"
        section.drop_order = -1  # marks "shortened" for the footer


TRUNCATED = "\n\n**Report truncated to fit a PR comment; see report.html / report.json.**\n"


def cut_to_fit(markdown: str, limit: int = MAX_MD_CHARS) -> str:
    """The last resort when even the essentials are too long: the comment cut at a line end within `limit`,
    closing the code fence and the <details> it cut into (so the note after it renders), saying so."""
    if len(markdown) <= limit:
        return markdown
    kept = markdown[: limit - len(TRUNCATED) - 200]  # 200: room for what closes it
    kept = kept[: kept.rfind("\n")]  # whole lines only: no half tag or entity
    fence = "\n```" if sum(line.lstrip().startswith("```") for line in kept.splitlines()) % 2 else ""
    depth = max(0, kept.count("<details>") - kept.count("</details>"))
    return kept + fence + "\n\n…" + "\n\n</details>" * depth + TRUNCATED


def join_details(visible: str, sections: dict[str, Section], summary: str = DETAILS_SUMMARY) -> str:
    """The visible part, then every section folded in one <details> under `summary`."""
    body = "\n\n".join(s.text for s in sections.values() if s.text)
    if any(s.drop_order == -1 for s in sections.values()):
        body += "\n\n<sub>This comment was shortened to fit GitHub's size limit.</sub>"
    return f"{visible}\n\n{details(summary, body)}\n"


def md_verdict(verdict: str) -> str:
    return f"{VERDICT_EMOJI.get(verdict, '')} {md_escape(verdict)}".strip()


# --------------------------------------------------------------------------- HTML


@dataclasses.dataclass
class InlineFigure:
    anchor: str
    title: str
    caption: str
    svg: Markup | None  # the inline <svg> element, for line art where it is smaller than its PNG
    png: str  # otherwise the PNG, base64


def inline_figure(figure: Figure, png: bytes) -> InlineFigure:
    """A figure as the page embeds it: inline SVG when that is smaller than the PNG as a data URI (4/3 of its
    bytes), else the PNG. matplotlib writes the SVG and escapes its text, so it is markup we made."""
    anchor = "figure-" + Path(figure.filename).stem
    svg = figure.svg() if figure.vector else None
    if svg is not None and len(svg) < len(png) * 4 / 3:
        return InlineFigure(anchor, figure.title, figure.caption, Markup(svg.decode("utf-8")), "")
    return InlineFigure(anchor, figure.title, figure.caption, None, base64.b64encode(png).decode("ascii"))


def sort_key(value: float) -> str:
    """A KPI table cell's data-sort attribute: a number JavaScript's parseFloat reads (7 significant digits, finer
    than any value the table shows), "" for none (the cell is then sorted by its text)."""
    if math.isnan(value):
        return ""
    return ("Infinity" if value > 0 else "-Infinity") if math.isinf(value) else f"{value:.7g}"


def script_hash(script: str) -> str:
    """The CSP source that allows exactly this inline script."""
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


def environment() -> jinja2.Environment:
    """The report templates (reports.template.TEMPLATES) by name."""
    # autoescape=True: every {{ value }} is HTML-escaped, untrusted or not.
    return jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def html_figures(report: ReportInput | Leaderboard, pngs: dict[str, bytes] | None) -> dict[str, InlineFigure]:
    """The report's figures inlined for its HTML page, drawn unless `pngs` already holds them."""
    figures = plan_figures(report)
    pngs = pngs if pngs is not None else {f.filename: f.png() for f in figures}
    return {f.filename: inline_figure(f, pngs[f.filename]) for f in figures if f.filename in pngs}


# Contents entries of the sections both pages render through the same template macros (reports/template.py).
SHARED_MIDDLE_TOC = [("variants", "Variants"), ("curves", "Training curves"), ("rollouts", "Rollouts")]


def forest_toc(forest: InlineFigure | None) -> list[tuple[str, str]]:
    return [("forest", "Blocking and guard KPIs against their margins")] if forest else []


def closing_toc(notes: list[str]) -> list[tuple[str, str]]:
    """The `bottom` macro's sections: compatibility, runs, provenance, reproduce, and notes when there are any."""
    return [("compat", "Backward compatibility"), ("runs", "Runs"), ("provenance", "Provenance"),
            ("reproduce", "Reproduce")] + ([("notes", "Notes")] if notes else [])


def page_fields(report: ReportInput | Leaderboard, inline: dict[str, InlineFigure], notes: list[str]) -> dict:
    """What the report's and the leaderboard's HTML pages both show, from either."""
    return dict(
        title=report.title, symbols=VERDICT_SYMBOL, script=Markup(KPI_TABLE_SCRIPT),
        script_hash=script_hash(KPI_TABLE_SCRIPT), sort_key=sort_key,
        problems=view.problem_summary(report), provenance_warnings=view.provenance_warnings(report),
        variants=[{"role": view.role_of(report, v), "name": v, "description": view.description_of(report, v)}
                  for v in report.variants],
        curve_figures=[fig for name, fig in inline.items() if name.startswith("curves_")],
        rollout_figures=[fig for name, fig in inline.items() if not name.startswith("curves_")],
        rollouts=view.rollout_table(report), compat=report.compat, run_counts=view.run_counts(report),
        problem_runs=view.problem_runs(report, error_limit=5_000), all_runs=view.all_runs(report, error_limit=300),
        provenance=view.provenance_table(report), reproduce_command=report.reproduce_command, notes=notes,
    )


def render_html(report: ReportInput, pngs: dict[str, bytes] | None = None) -> str:
    """One self-contained HTML page. `pngs` (filename -> bytes) reuses figures already drawn; only the figures
    it holds are shown."""
    inline = html_figures(report, pngs)
    forest = inline.pop("forest.png", None)
    notes = view.notes(report)
    toc = [("verdict", "Verdict")] + forest_toc(forest) + [
        ("kpis", "KPIs"), ("explanations", "Why each KPI got its verdict"), ("seeds", "Per-seed values"),
        *SHARED_MIDDLE_TOC, ("speed", "Speed"), *closing_toc(notes)]
    return environment().get_template("report").render(
        **page_fields(report, inline, notes),
        banner=view.banner(report),
        toc=toc,
        forest=forest,
        collapsed_lam_warnings=view.collapsed_lam_warnings(report),
        kpis=view.kpi_table(report),
        explanations=view.kpi_explanations(report),
        seeds=view.seed_table(report),
        speed=view.speed_table(report),
    )


# --------------------------------------------------------------------------- JSON


def jsonable(value: object) -> object:
    """Plain JSON types; NaN -> null, ±inf -> "inf"/"-inf" (a never-reached target is not missing)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        x = float(value)
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def records(frame: pd.DataFrame | None) -> list[dict]:
    return [] if frame is None or frame.empty else frame.to_dict("records")


def _kpi_data(kpi: KpiComparison) -> dict:
    """One KPI as the schema (worldbench-report/1) has it: flat keys, in this order."""
    baseline, candidate, effect, test, rule = kpi.baseline, kpi.candidate, kpi.effect, kpi.test, kpi.rule
    failable = None if kpi.resolution is None else worse_by(rule, kpi.resolution.failable)
    return {
        "name": kpi.name,
        "n_baseline": baseline.n,
        "n_candidate": candidate.n,
        "n_paired": test.n_paired,
        "paired": test.paired,
        "baseline_values": baseline.values,
        "candidate_values": candidate.values,
        "baseline_median": baseline.median,
        "candidate_median": candidate.median,
        "baseline_iqm": baseline.iqm,
        "candidate_iqm": candidate.iqm,
        "estimate": effect.estimate,
        "ci_low": effect.ci_low,
        "ci_high": effect.ci_high,
        "change": fmt_estimate(kpi),  # the estimate and its interval, worded as the PR comment's table has them
        "margin": effect.margin,
        "p_noninferior": test.p_noninferior,
        "p_improved": test.p_improved,
        "p_regressed": test.p_regressed,
        "p_regressed_adjusted": test.p_regressed_adjusted,
        "hedges_g": effect.hedges_g,
        "prob_improvement": effect.prob_improvement,
        "verdict": kpi.verdict,
        "reason": kpi_reason(kpi),  # the statistics' `why`, worded
        "recommended_seeds": kpi.recommended_seeds,
        "p_worse": test.p_worse,
        "method": test.method,
        "ci_level": effect.ci_level,
        "direction": rule.direction,
        "scale": rule.scale,
        "blocking": rule.blocking,
        "margin_rule": rule.margin,
        "guard": rule.guard,
        "tier": rule.tier,
        # the smallest worsening its regression test FAILs with 80% power at these seeds, on the estimate's scale
        "failable_regression": failable,
        "resolution": resolution_text(kpi),  # what these seeds can tell apart, worded
    }


def report_data(report: ReportInput) -> dict:
    """Everything a machine needs to act on the report (no pictures, no curves)."""
    comparison = report.comparison
    return jsonable(
        {
            "schema": "worldbench-report/1",
            "title": report.title,
            "profile": report.profile,
            "baseline": report.baseline,
            "candidate": report.candidate,
            "descriptions": view.descriptions(report),
            "verdict": comparison.verdict,
            "reasons": comparison_reasons(comparison),
            "unresolved_guards": [kpi.name for kpi in view.passed_unresolved_guards(comparison)],
            "recommended_seeds": comparison.recommended_seeds,
            "alpha": comparison.alpha,
            "kpis": [_kpi_data(kpi) for kpi in comparison.kpis],
            "runs": records(report.runs),
            "speed": records(report.speed),
            "compat": None if report.compat is None else dataclasses.asdict(report.compat),
            "provenance": report.provenance,
            "reproduce_command": report.reproduce_command,
            "notes": view.notes(report),
            # bench gate --baseline-ref: the rules that judged this (REF's) and what this change's own would alter
            "judged_by_rules_of": next((note for note in report.notes if isinstance(note, RulesNote)), None),
        }
    )


def to_json(data: dict) -> str:
    # allow_nan=False: fail loudly rather than emit the invalid JSON tokens NaN/Infinity.
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def render_json(report: ReportInput) -> str:
    return to_json(report_data(report))


# --------------------------------------------------------------------------- files
