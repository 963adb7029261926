"""PR-acceptance reports: markdown for the PR comment, a self-contained HTML page, and JSON."""

from harness.types import CompatResult, ReportInput

__all__ = ["MARKER", "CompatResult", "ReportInput", "render_html", "render_json", "render_markdown", "write_reports"]
_RENDERED = ("MARKER", "render_html", "render_json", "render_markdown", "write_reports")


def __getattr__(name: str):
    """The renderers, imported on first use: they import matplotlib, which writes a font cache, and the wording
    in reports.text (used by `bench list`) must not."""
    if name in _RENDERED:
        from reports import publish

        return getattr(publish, name)
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
