"""Render a `bench validate` result as markdown (validate.md) and JSON (validate.json)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

from harness.validate import EXPECT_PASS, Validation
from reports.text import comparison_reasons, fails_from, fmt_change, fmt_rule_margin, md_escape, worse_by

FILENAMES = {"md": "validate.md", "json": "validate.json"}


def fmt_p(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2g}"


def render_markdown(result: Validation) -> str:
    status = "every check as expected" if result.ok else "some checks NOT as expected"
    lines = [
        f"## Planted faults and null changes: {status}",
        "",
        f"Profile {md_escape(result.profile)}, dataset {md_escape(result.dataset)}, baseline "
        f"{md_escape(result.baseline)}, seeds {', '.join(map(str, result.seeds))} (A/A candidate seeds "
        f"{', '.join(map(str, result.aa_seeds))}), alpha {result.alpha:g}. A fault is caught only when a blocking or "
        "guard quality or controllability KPI regressed; a null change (float rounding only, or the baseline on other "
        "seeds) must PASS.",
        "",
        "| check | candidate | expected | observed | caught by | adjusted p | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result.rows:
        lines.append(f"| {md_escape(row.name)} | {md_escape(row.candidate)} | {row.expected} | {row.observed} | "
                     f"{md_escape(row.caught_by) or '—'} | {fmt_p(row.p_adjusted)} | {'✅' if row.ok else '❌'} |")
    return "\n".join(lines + resolution_lines(result)) + "\n"


def resolution_lines(result: Validation) -> list[str]:
    """Per blocking KPI and null row: the smallest worsening its seeds detect with 80% power, and the seeds it
    needs to show a zero difference non-inferior (harness.power): where that exceeds the seeds run, the KPI
    cannot settle and the row cannot PASS however harmless the change. Per guard KPI, which never has to settle:
    the smallest worsening it FAILs with 80% power at these seeds."""
    nulls = [row for row in result.rows if row.expected == EXPECT_PASS and row.comparison]
    if not nulls:
        return []
    lines = ["", "### Can each blocking KPI settle at these seeds?", "",
             "Smallest worsening detected with 80% power, and seeds needed to show a zero difference non-inferior "
             "(80% power), from the spread each null row's seeds showed; for a guard (it FAILs a regression but "
             "need not settle), the smallest worsening it FAILs with 80% power.", "",
             "| KPI | margin | " + " | ".join(md_escape(row.name) for row in nulls) + " |",
             "|---|---|" + "---|" * len(nulls)]
    rules = {k.name: k.rule for k in nulls[0].comparison.kpis if k.rule.can_fail}
    for name, rule in rules.items():
        cells = []
        for row in nulls:
            kpi = next(k for k in row.comparison.kpis if k.name == name)
            resolution = kpi.resolution
            if resolution is None:
                cells.append("—")
            elif rule.guard:
                cells.append(f"fails from {fails_from(kpi)} at {resolution.seeds}")
            else:
                detectable = fmt_change(kpi, worse_by(kpi.rule, resolution.detectable))
                settles = "settles" if resolution.settles else "**cannot settle**"
                cells.append(f"{detectable} at {resolution.seeds}; needs {resolution.seeds_needed} ({settles})")
        label = f"{md_escape(name)} (guard)" if rule.guard else md_escape(name)
        lines.append(f"| {label} | {fmt_rule_margin(rule)} | " + " | ".join(cells) + " |")
    return lines


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
