"""Render a Leaderboard (several candidates against one baseline) as a PR comment, an HTML page and JSON.

The layout of reports/render.py with a leaderboard on top: one line per candidate, worst verdict first, the
arms' IQMs, a forest plot with a row per candidate and blocking or guard KPI, and each candidate's own tables folded below.
reports/publish.py renders a Leaderboard with these and a single report with reports/render.py; a leaderboard of one candidate is that
candidate's report.
"""

from __future__ import annotations


from harness.seeds import format_seeds
from harness.types import Leaderboard, ReportInput
from reports import view
from reports.figures import Figure, plan_figures
from reports.render import (FILENAMES, HEADLINE_PICTURES, MARKER, MAX_VISIBLE_BYTES, MAX_VISIBLE_LINES,
                            SHARED_MIDDLE_TOC, VISIBLE_NAME_CHARS, VISIBLE_REASON_CHARS, VISIBLE_REASONS, Section,
                            closing_toc, cut_to_fit, details, drop_optional, environment, forest_toc, html_figures,
                            join_details, jsonable, md_alert, md_compat, md_figures, md_guards, md_notes, md_pictures,
                            md_provenance, md_reproduce, md_rollouts, md_runs, md_table, md_variants, md_verdict,
                            page_fields, report_data, warning_lines, with_emoji)
from reports.text import comparison_reasons, md_escape, md_html_escape, truncate

SCHEMA = "worldbench-leaderboard/1"
# The KPIs whose reasons the page explains per candidate: those that decide a verdict. An informational KPI's
# change and interval stand in the KPI table (and every reason in report.json): a line per KPI and candidate
# would grow the page by about 6 KB a candidate.
DECIDING_TIERS = ("blocking", "guard")
DETAILS_SUMMARY = ("<b>Details</b>: each arm's IQM, the forest plot and figures, each candidate's KPIs and reasons, "
                   "runs, compatibility, provenance, the command that reproduces this")


# --------------------------------------------------------------------------- markdown


def _md_context(board: Leaderboard) -> str:
    """Profile, seeds, alpha and the multiplicity, and the links to the full report and the CI run."""
    seeds = {tuple(seeds) for seeds in view.seeds_by_variant(board.reports[0]).values()}
    seed_text = f"seeds {format_seeds(min(seeds)) or '—'}" + (" (paired)" if len(seeds) == 1 else "")
    links = [f"[full report (HTML)]({FILENAMES['html']})"] + ([f"[CI run]({board.ci_run_url})"] if board.ci_run_url
                                                               else [])
    return (f"<sub>profile {md_escape(truncate(board.profile, VISIBLE_NAME_CHARS), block_start=False)} · {seed_text} · "
            f"α = {board.alpha:g}, {md_escape(view.multiplicity_text(board), block_start=False)} · "
            f"{' · '.join(links)}</sub>")


def _md_leaderboard(board: Leaderboard, reason_chars: int, max_rows: int) -> str:
    """The leaderboard table, one line per candidate (the worst `max_rows` when there are more)."""
    table = view.leaderboard_table(board, reason_chars)
    for row in table.rows:
        row[0] = truncate(row[0], VISIBLE_NAME_CHARS)
        row[1] = with_emoji(row[1])
    hidden = len(table.rows) - max_rows
    table.rows = table.rows[:max_rows]
    if hidden > 0:
        table.note += f" {hidden} more candidates (better verdicts) are in the details."
    return md_table(table)


def _visible(board: Leaderboard, figures: list[Figure], pictures: bool, has_gif: bool) -> str:
    """Above the fold, shrunk until it fits MAX_VISIBLE_BYTES and MAX_VISIBLE_LINES: fewer and shorter reasons,
    then fewer candidates (the worst kept)."""
    title = (f"{MARKER}\n## {md_verdict(board.verdict)} · "
             f"{md_escape(truncate(board.title, 2 * VISIBLE_NAME_CHARS))}")
    deciders = ", ".join(truncate(name, VISIBLE_NAME_CHARS) for name in board.decided_by)
    compat = "" if board.compat is None else (" · compatibility ✅" if board.compat.ok else " · compatibility ❌")
    decided = ("**Every candidate PASSes**" if board.verdict == "PASS" else
               f"**Decided by:** {md_escape(deciders, block_start=False)}") + f"{compat}<br>\n{_md_context(board)}"
    banner = view.leaderboard_banner(board)
    warnings = warning_lines(view.problem_summary(board), view.provenance_warnings(board),
                             view.leaderboard_collapsed_lam_warnings(board))
    text = ""
    rows = len(board.reports)
    for reasons, chars, max_rows in ((VISIBLE_REASONS, VISIBLE_REASON_CHARS, rows), (2, 140, rows), (1, 100, rows),
                                     (1, 80, min(rows, 12)), (1, 60, min(rows, 8)), (0, 60, min(rows, 5))):
        parts = ["\n".join(filter(None, [title, md_guards(banner, chars)])), decided,
                 md_alert(banner, warnings, reasons, chars),
                 _md_leaderboard(board, chars, max_rows),
                 md_pictures(figures, pictures, has_gif)]
        text = "\n\n".join(part for part in parts if part)
        if len(text.encode()) <= MAX_VISIBLE_BYTES and text.count("\n") + 1 <= MAX_VISIBLE_LINES:
            break
    return text


def _md_candidate(report: ReportInput) -> str:
    """One candidate, folded: its reasons and its table of blocking and guard (and regressed) KPIs."""
    kpis, _ = view.headline_kpis(report, len(report.comparison.kpis))
    table = view.headline_table(report, kpis)
    for row in table.rows:
        row[-1] = with_emoji(row[-1])
    reasons = "\n".join(f"- {md_escape(truncate(reason, 400))}" for reason in comparison_reasons(report.comparison))
    verdict = report.comparison.verdict
    return details(f"{md_verdict(verdict)} · {md_html_escape(report.candidate)}",
                   "\n\n".join(part for part in (reasons, md_table(table)) if part))


def render_markdown(board: Leaderboard, figures: list[Figure] | None = None, pictures: bool = True,
                    has_gif: bool = True) -> str:
    """GitHub-flavoured markdown for a PR comment: the verdict, which candidate decided it and one line per candidate
    on one screen; each arm's IQM, the figures and each candidate's KPIs folded; under MAX_MD_CHARS."""
    figures = plan_figures(board) if figures is None else figures
    visible = _visible(board, figures, pictures, has_gif and any(f.filename in HEADLINE_PICTURES for f in figures))
    arms = view.arms_table(board)
    sections = {
        "arms": Section("arms", "### Each arm's IQM\n\n" + md_table(arms) if arms.rows else ""),
        "figures": Section("figure list", md_figures(figures, pictures), 4),
        "candidates": Section("candidates' KPI tables", "### Each candidate\n\n" + "\n\n".join(
            _md_candidate(report) for report in view.by_severity(board)), 5),
        "rollouts": Section("rollout table", md_rollouts(board), 2),
        "compat": Section("backward compatibility", md_compat(board)),
        "runs": Section("runs", md_runs(board)),
        "variants": Section("variant descriptions", md_variants(board), 1),
        "provenance": Section("provenance", md_provenance(board), 3),
        "reproduce": Section("reproduce command", md_reproduce(board)),
        "notes": Section("notes", md_notes(board), 6),
    }
    drop_optional(visible, sections, DETAILS_SUMMARY)
    return cut_to_fit(join_details(visible, sections, DETAILS_SUMMARY))


# --------------------------------------------------------------------------- HTML


def render_html(board: Leaderboard, pngs: dict[str, bytes] | None = None) -> str:
    """One self-contained HTML page, as reports.render.render_html, with the leaderboard on top."""
    inline = html_figures(board, pngs)
    forest = inline.pop("forest.png", None)
    notes = view.notes(board)
    toc = [("verdict", "Verdict"), ("leaderboard", "Leaderboard"), ("arms", "Each arm's IQM")] + forest_toc(forest) + [
        ("kpis", "KPIs of every candidate"), ("explanations", "Why each KPI got its verdict"), *SHARED_MIDDLE_TOC,
        ("speed", "Speed"), *closing_toc(notes)]
    candidates = [{"name": report.candidate, "verdict": report.comparison.verdict,
                   "decided": report.candidate in board.decided_by,
                   "reasons": comparison_reasons(report.comparison),
                   "explanations": view.kpi_explanations(report, DECIDING_TIERS), "speed": view.speed_table(report)}
                  for report in view.by_severity(board)]
    return environment().get_template("leaderboard").render(
        **page_fields(board, inline, notes),
        banner=view.leaderboard_banner(board),
        toc=toc,
        forest=forest,
        collapsed_lam_warnings=view.leaderboard_collapsed_lam_warnings(board),
        leaderboard=view.leaderboard_table(board),
        arms=view.arms_table(board),
        kpis=view.leaderboard_kpi_table(board),
        candidates=candidates,
    )


# --------------------------------------------------------------------------- JSON


def leaderboard_data(board: Leaderboard) -> dict:
    """The verdict, the candidates that decided it, each arm's IQM and each candidate's report (report_data)."""
    return jsonable({
        "schema": SCHEMA,
        "title": board.title,
        "profile": board.profile,
        "baseline": board.baseline,
        "candidates": board.candidates,
        "verdict": board.verdict,
        "decided_by": board.decided_by,
        "alpha": board.alpha,
        "multiplicity": view.multiplicity_text(board),
        "arms": arm_records(board),
        "comparisons": [report_data(report) for report in board.reports],
        "reproduce_command": board.reproduce_command,
    })


def arm_records(board: Leaderboard) -> list[dict]:
    """Each arm's IQM rows as plain records."""
    return [{"variant": arm.variant, "kpi": arm.kpi, "n": arm.n, "iqm": arm.iqm, "ci_low": arm.low,
             "ci_high": arm.high, "ci_level": arm.level} for arm in board.arms]
