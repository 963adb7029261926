"""A report of one candidate or a leaderboard of several, rendered or written by the module that knows it.

reports/render.py renders one candidate's report and holds the building blocks; reports/leaderboard.py builds
a leaderboard from them. This module sits above both and picks by type, so neither imports the other back.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.types import Leaderboard, ReportInput
from reports import leaderboard, render
from reports.figures import Figure, plan_figures, rollout_gif
from reports.render import FILENAMES, FORMATS, GIF_FILENAME, MARKER, shown

__all__ = ["MARKER", "render_html", "render_json", "render_markdown", "write_reports"]


def render_markdown(report: ReportInput | Leaderboard, figures: list[Figure] | None = None, pictures: bool = True,
                    has_gif: bool = True) -> str:
    """The PR comment's markdown (reports.render.render_markdown says what it holds)."""
    report = shown(report)
    if isinstance(report, Leaderboard):
        return leaderboard.render_markdown(report, figures, pictures, has_gif)
    return render.render_markdown(report, figures, pictures, has_gif)


def render_html(report: ReportInput | Leaderboard, pngs: dict[str, bytes] | None = None) -> str:
    """One self-contained HTML page; `pngs` (filename -> bytes) reuses figures already drawn."""
    report = shown(report)
    if isinstance(report, Leaderboard):
        return leaderboard.render_html(report, pngs)
    return render.render_html(report, pngs)


def render_json(report: ReportInput | Leaderboard) -> str:
    report = shown(report)
    if isinstance(report, Leaderboard):
        return render.to_json(leaderboard.leaderboard_data(report))
    return render.render_json(report)


def write_reports(report: ReportInput | Leaderboard, out_dir: Path, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Write report.md (+ its PNGs and the rollout GIF), report.html and/or report.json into out_dir."""
    report = shown(report)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown report format(s) {unknown}; choose from {list(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = plan_figures(report)
    # Draw each figure once, only if a format needs pictures.
    pngs = {f.filename: f.png() for f in figures} if {"md", "html"} & set(formats) else {}
    written: dict[str, Path] = {}
    for fmt in dict.fromkeys(formats):
        path = out_dir / FILENAMES[fmt]
        if fmt == "md":
            for name, data in pngs.items():
                (out_dir / name).write_bytes(data)
            gif = rollout_gif(report)
            if gif is not None:
                (out_dir / GIF_FILENAME).write_bytes(gif)
            path.write_text(render_markdown(report, figures, has_gif=gif is not None), encoding="utf-8")
        elif fmt == "html":
            path.write_text(render_html(report, pngs), encoding="utf-8")
        else:
            path.write_text(render_json(report), encoding="utf-8")
        written[fmt] = path
    return written
