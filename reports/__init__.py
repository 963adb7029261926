"""PR-acceptance reports: markdown for the PR comment, a self-contained HTML page, and JSON."""

from harness.types import CompatResult, ReportInput
from reports.render import MARKER, render_html, render_json, render_markdown, write_reports

__all__ = ["MARKER", "CompatResult", "ReportInput", "render_html", "render_json", "render_markdown", "write_reports"]
