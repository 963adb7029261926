"""Render a `bench validate` result as markdown (validate.md) and JSON (validate.json)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

from harness.validate import Validation
from reports.text import comparison_reasons, md_escape

FILENAMES = {"md": "validate.md", "json": "validate.json"}


def fmt_p(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2g}"


def render_markdown(result: Validation) -> str:
    status = "every check as expected" if result.ok else "some checks NOT as expected"
    lines = [
        f"## Planted-fault suite: {status}",
        "",
        f"Profile {md_escape(result.profile)}, dataset {md_escape(result.dataset)}, baseline "
        f"{md_escape(result.baseline)}, seeds {', '.join(map(str, result.seeds))} (A/A candidate seeds "
        f"{', '.join(map(str, result.aa_seeds))}), alpha {result.alpha:g}. A fault is caught only when a blocking "
        "quality or controllability KPI regressed.",
        "",
        "| check | candidate | expected | observed | caught by | adjusted p | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result.rows:
        lines.append(f"| {md_escape(row.name)} | {md_escape(row.candidate)} | {row.expected} | {row.observed} | "
                     f"{md_escape(row.caught_by) or '—'} | {fmt_p(row.p_adjusted)} | {'✅' if row.ok else '❌'} |")
    return "\n".join(lines) + "\n"


def render_json(result: Validation) -> str:
    data = asdict(replace(result, rows=[replace(row, comparison=None) for row in result.rows]))
    data["ok"] = result.ok
    for row, check in zip(data["rows"], result.rows):
        row["p_adjusted"] = None if math.isnan(row["p_adjusted"]) else row["p_adjusted"]
        del row["comparison"]  # its wording instead, where the schema has always had it
        row["reasons"] = comparison_reasons(check.comparison) if check.comparison else []
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_validation(result: Validation, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {fmt: out_dir / name for fmt, name in FILENAMES.items()}
    paths["md"].write_text(render_markdown(result), encoding="utf-8")
    paths["json"].write_text(render_json(result), encoding="utf-8")
    return paths
