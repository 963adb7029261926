"""Wording, number formatting and escaping shared by the markdown, HTML and JSON renderers and the CLI.

Every formatter returns plain text ("—" for a missing number).  Escaping is the renderer's
job: HTML escapes through Jinja's autoescape, markdown through `md_escape` below.  The
statistics (harness.stats) return numbers and enums; the sentences that explain a verdict are
written here (`kpi_reason`, `comparison_reasons`), and so are the report's notes (`note_text`) and
the line on the code each arm of `bench gate` ran (`arm_description`).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable

from harness.power import MAX_RECOMMENDED_SEEDS, MIN_SEEDS, TARGET_POWER
from harness.types import (ArmProvenance, Comparison, Finding, FloorNote, KpiComparison, KpiRule, LookNote, Note,
                           RulesNote, TargetNote, TargetSource, Why)

MISSING = "—"
MINUS = "−"  # typographic minus: "−2.0%" reads better than "-2.0%" next to "+8.4%"

VERDICT_EMOJI = {  # markdown (GitHub renders emoji)
    "improved": "🟢",
    "non-inferior": "✅",
    "identical": "⚪",
    "regressed": "🔴",
    "inconclusive": "🟡",
    "PASS": "✅",
    "FAIL": "❌",
    "INCONCLUSIVE": "⚠️",
}
VERDICT_SYMBOL = {  # HTML: symbols every common font has (screenshots lack emoji fonts)
    "improved": "▲",
    "non-inferior": "✔",
    "identical": "=",
    "regressed": "✘",
    "inconclusive": "?",
    "PASS": "✔",
    "FAIL": "✘",
    "INCONCLUSIVE": "?",
}


# --------------------------------------------------------------------------- numbers


def to_float(value: object) -> float:
    """A float for anything number-like; NaN for None / pd.NA / junk."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def is_missing(value: object) -> bool:
    return math.isnan(to_float(value))


def _minus(text: str) -> str:
    return text.replace("-", MINUS)


def fmt_number(value: object, digits: int = 4) -> str:
    """4 significant digits; "—" for missing, "∞" for never-reached (censored) values."""
    x = to_float(value)
    if math.isnan(x):
        return MISSING
    if math.isinf(x):
        return "∞" if x > 0 else f"{MINUS}∞"
    return _minus(f"{x + 0.0:.{digits}g}")  # + 0.0 turns -0.0 into 0.0: no "−0"


def _decimals_for(values: Iterable[float], significant: int = 3) -> int:
    """Decimals that give the largest |value| `significant` digits, shared by a whole cell."""
    finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
    if not finite:
        return 2
    return min(6, max(0, significant - 1 - math.floor(math.log10(max(finite)))))


def _signed(x: float, decimals: int, suffix: str = "") -> str:
    if math.isnan(x):
        return MISSING
    if math.isinf(x):
        return ("+∞" if x > 0 else f"{MINUS}∞") + suffix
    return _minus(f"{x:+.{decimals}f}") + suffix


def fmt_change(kpi: KpiComparison, value: float) -> str:
    """A value on the estimate's scale as the reader wants it: % change (log) or signed difference."""
    return _change_cell(kpi.rule.scale, [value])[0]


def worse_by(rule: KpiRule, amount: float) -> float:
    """`amount` of worsening on the statistics' axis (a log ratio or a difference, harness.stats) as a value on the
    estimate's scale: the ratio c/b (log) or the difference c - b (linear), moved in the worse direction."""
    oriented = rule.badness_sign * amount
    return math.exp(oriented) if rule.scale == "log" else oriented


def _change_cell(scale: str, values: list[float]) -> list[str]:
    if scale == "log":
        changes = [(v - 1.0) * 100.0 for v in values]
        # 1 decimal normally; 2 when every change is under 1% so small effects don't print as "+0.0%"
        decimals = 2 if all(abs(c) < 1 for c in changes if math.isfinite(c)) else 1
        return [_signed(c, decimals, "%") for c in changes]
    decimals = _decimals_for(values)
    return [_signed(v, decimals) for v in values]


def fmt_estimate(kpi: KpiComparison) -> str:
    """E.g. "+3.1% [−2.0%, +8.4%]" (log scale) or "+0.012 [−0.003, +0.027]" (linear)."""
    effect = kpi.effect
    est, low, high = _change_cell(kpi.rule.scale, [effect.estimate, effect.ci_low, effect.ci_high])
    if est == MISSING:
        return MISSING
    if low == MISSING or high == MISSING:
        return f"{est} (no CI)"
    return f"{est} [{low}, {high}]"


def fmt_margin(kpi: KpiComparison) -> str:
    """The non-inferiority boundary on the estimate's scale: "≤ +5.0%" or "≥ −0.05" (see `fmt_rule_margin`)."""
    return fmt_rule_margin(kpi.rule)


def fmt_rule_margin(rule: KpiRule) -> str:
    """The one form every report writes a margin in: the boundary the change may reach and still be non-inferior,
    on the change's own scale. A 50% margin of a higher-is-better log KPI reads "≥ −33.3%" (the candidate may
    be worse by a ratio of 1/1.5), of a lower-is-better one "≤ +50.0%"; a linear margin of 0.05 "≥ −0.05"."""
    bound = _change_cell(rule.scale, [worse_by(rule, rule.analysis_margin)])[0]
    if bound == MISSING:
        return MISSING
    return f"≤ {bound}" if rule.direction == "lower" else f"≥ {bound}"


def fmt_worsening(rule: KpiRule, amount: float) -> str:
    """An amount on the statistics' axis as a change in the worse direction, e.g. "+4.2%" or "−0.031"."""
    return _change_cell(rule.scale, [worse_by(rule, amount)])[0]


def fmt_p(p: object) -> str:
    x = to_float(p)
    if math.isnan(x):
        return MISSING
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def fmt_seconds(value: object) -> str:
    x = to_float(value)
    if not math.isfinite(x):
        return MISSING
    if x < 120:
        return f"{x:.1f} s"
    if x < 7200:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.1f} h"


def truncate(text: str, limit: int) -> str:
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit].rstrip()}… ({len(text) - limit} more characters)"


# --------------------------------------------------------------------------- reasons


def describe_effect(kpi: KpiComparison) -> str:
    """E.g. 'candidate 12.0% higher (worse)' or 'candidate 0.031 lower (better)'."""
    rule, estimate = kpi.rule, kpi.effect.estimate
    if math.isnan(estimate):
        return "candidate effect undefined"
    change = estimate - 1.0 if rule.scale == "log" else estimate
    if change == 0:
        return "candidate equal to baseline"
    side = "higher" if change > 0 else "lower"
    quality = "worse" if (change > 0) == (rule.direction == "lower") else "better"
    if math.isinf(change):  # censored runs dominate the median
        return f"candidate {side} ({quality}), driven by runs that never reached the target"
    size = f"{abs(change):.1%}" if rule.scale == "log" else f"{abs(change):.3g}"
    return f"candidate {size} {side} ({quality})"


def kpi_reason(kpi: KpiComparison) -> str:
    """Why the KPI got its verdict, in one sentence (kpi.why says which rule decided it)."""
    effect, margin = describe_effect(kpi), fmt_rule_margin(kpi.rule)
    baseline, candidate, test = kpi.baseline, kpi.candidate, kpi.test
    if kpi.why == Why.TOO_FEW_VALUES:
        return (f"missing data: {baseline.n} usable baseline and {candidate.n} "
                f"candidate values (need {MIN_SEEDS} each)")
    if kpi.why == Why.REGRESSED:
        return f"{effect}, beyond its margin ({margin}; adjusted p={test.p_regressed_adjusted:.2g})"
    if kpi.why == Why.BEYOND_MARGIN:
        return (f"{effect}, beyond its margin ({margin}; p={test.p_regressed:.2g}), but not after Holm "
                f"(adjusted p={test.p_regressed_adjusted:.2g}): too weak to FAIL, too strong to PASS"
                + seeds_to_settle_clause(kpi))
    if kpi.why == Why.WORSE:
        return (f"{effect}, worse than the baseline (p={test.p_worse:.2g}) and beyond its margin ({margin}) "
                f"at its estimate, though its interval reaches inside: too weak to FAIL, too strong to PASS"
                + seeds_to_settle_clause(kpi))
    if kpi.why == Why.NO_VALUE:
        missing_baseline, missing_candidate = baseline.missing, candidate.missing
        return (f"{effect}; {missing_baseline + missing_candidate} run(s) have no value for this KPI "
                f"({missing_baseline} baseline, {missing_candidate} candidate)")
    if kpi.why == Why.IDENTICAL:
        return (f"identical to the baseline in all {test.n_paired} paired seeds "
                "(a shared stage, or ties): no evidence either way, left out of the Holm family")
    if kpi.why == Why.IMPROVED:
        return f"{effect}, significantly better than baseline (p={test.p_improved:.2g})"
    if kpi.why == Why.NON_INFERIOR:
        return f"{effect}, confidently within its margin ({margin}; p={test.p_noninferior:.2g})"
    n_used = test.n_paired if test.paired else min(baseline.n, candidate.n)
    reason = f"{effect}; {n_used} seeds cannot tell whether it is within its margin ({margin})"
    if candidate.censored > baseline.censored:
        reason += f"; candidate missed the target in {candidate.censored} runs vs {baseline.censored} for baseline"
    return reason + seeds_to_settle_clause(kpi)


def seeds_to_settle_clause(kpi: KpiComparison) -> str:
    """'; about N seeds would settle it …' for an inconclusive KPI's recommended_seeds, "" without one."""
    if kpi.recommended_seeds is None:
        return ""
    if kpi.recommended_seeds >= MAX_RECOMMENDED_SEEDS:
        return f"; at least {MAX_RECOMMENDED_SEEDS} seeds would be needed"
    return f"; about {kpi.recommended_seeds} seeds would settle it with {TARGET_POWER:.0%} power"


def fails_from(kpi: KpiComparison) -> str:
    """The smallest worsening the KPI's regression test FAILs with TARGET_POWER at its seeds (Resolution.failable),
    on the change's own scale, e.g. "+85.0%"; "" where no t-test ran (rank tests, too few values)."""
    return "" if kpi.resolution is None else fmt_worsening(kpi.rule, kpi.resolution.failable)


def resolution_text(kpi: KpiComparison) -> str:
    """What the KPI's seeds can tell apart (its harness.types.Resolution), on the KPI's own scale. A guard: its
    change and the smallest worsening it FAILs with TARGET_POWER, e.g. "+18.0% [−20.0%, +60.0%] — a guard: at 5
    seeds it fails the change only from +85.0% (…)". Otherwise the smallest true worsening detected with
    TARGET_POWER, against the margin, and, when a harmless change could not be shown non-inferior, why. "" where no
    t-test ran (rank tests, too few values)."""
    res = kpi.resolution
    if res is None:
        return ""
    rule = kpi.rule
    if rule.guard:  # "only": its interval is wider than its margin, so a regression up to there may go unnoticed
        which = "a change" if res.settles else "the change only"
        return (f"{fmt_estimate(kpi)} — a guard: at {res.seeds} seeds it fails {which} from {fails_from(kpi)} "
                f"({TARGET_POWER:.0%} power; margin {fmt_rule_margin(rule)})")
    detectable = fmt_worsening(rule, res.detectable) if math.isfinite(res.detectable) else "nothing"
    text = f"detectable at {res.seeds} seeds: {detectable} (margin {fmt_rule_margin(rule)})"
    if res.settles:
        return text
    spread = (f"{math.expm1(res.spread):.1%}" if rule.scale == "log" else fmt_number(res.spread, 3)) \
        if math.isfinite(res.spread) else MISSING
    needed = (f"at least {MAX_RECOMMENDED_SEEDS}" if res.seeds_needed >= MAX_RECOMMENDED_SEEDS
              else str(res.seeds_needed))
    return f"{text}. Cannot settle at {res.seeds} seeds: its per-seed spread {spread} needs {needed} seeds"


def guard_brief(kpi: KpiComparison) -> str:
    """A guard in a few words: "rollout.tf_mse (fails from +85.0%)"."""
    failable = fails_from(kpi)
    return f"{kpi.name} (fails from {failable})" if failable else kpi.name


def unresolved_guards_line(briefs: list[str], max_chars: int | None = None) -> str:
    """The line a PASS adds for the guards its seeds could not settle (harness.types.Comparison.unresolved_guards),
    "guards not resolved at these seeds: rollout.tf_mse (fails from +85.0%), …", whole guards only, cut to
    `max_chars` with the number left out; "" for none."""
    if not briefs:
        return ""
    lead = "guards not resolved at these seeds: "
    line = lead + ", ".join(briefs)
    shown = len(briefs)
    while max_chars is not None and len(line) > max_chars and shown > 1:
        shown -= 1
        line = f"{lead}{', '.join(briefs[:shown])}, … ({len(briefs) - shown} more)"
    return line


def comparison_reasons(comparison: Comparison) -> list[str]:
    """The merge verdict's reasons, one line each, in the order the statistics found them."""
    kpis = {kpi.name: kpi for kpi in comparison.kpis}
    failed, baseline_failed = comparison.failures_candidate, comparison.failures_baseline
    words = {
        Finding.MORE_FAILURES: f"candidate failed in {failed} runs vs {baseline_failed} for baseline",
        Finding.CANDIDATE_FAILURES: f"candidate failed in {failed} runs; any candidate failure prevents PASS",
        Finding.NO_BLOCKING_KPI: "no blocking KPI to decide on",
        Finding.ALL_BLOCKING_OK: (f"all {sum(kpi.rule.blocking for kpi in comparison.kpis)} blocking KPIs improved, "
                                  "non-inferior or identical"),
        Finding.COMPAT_BROKEN: "backward compatibility: a baseline checkpoint no longer loads or runs",
    }
    return [f"{reason.kpi}: {kpi_reason(kpis[reason.kpi])}" if reason.finding == Finding.KPI else words[reason.finding]
            for reason in comparison.reasons]


def note_text(note: Note) -> str:
    """One note of the report (harness.gate returns them as data), in one line."""
    if isinstance(note, TargetNote):
        how = (f"auto = (1 + {note.epsilon:g}) x the largest baseline final loss"
               if note.source == TargetSource.AUTO else "from bench.toml")
        return f"{note.kpi}: target loss {note.target:.5g} ({how})"
    if isinstance(note, FloorNote):
        return f"{note.kpi}: {note.arm} has {note.count} values <= 0, read as {note.floor:g} on its log scale"
    if isinstance(note, LookNote):
        return (f"sequential look {note.look} of {note.looks}: {note.seeds} seeds, "
                f"alpha {note.alpha:.4f} spent at this look")
    if isinstance(note, RulesNote):
        judged = f"judged by the gate rules of --baseline-ref {note.ref} ({note.commit[:12]})"
        if not note.changes:
            return f"{judged}, which this change leaves as they are"
        changes = ", ".join(f"{change.key} {rule_value(change.ref_value)} → {rule_value(change.value)}"
                            for change in note.changes)
        return f"{judged}, not by this change's own rules, which would set {changes} (they apply once it is merged)"
    raise TypeError(f"not a report note: {note!r}")


def rule_value(value: object) -> str:
    """A rule's value as bench.toml writes it: 0.1, true, "log"."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def arm_code_text(provenance: ArmProvenance) -> str:
    """The code an arm ran: "commit <sha> (--baseline-ref REF)" or "commit <sha>[ with ...] (this checkout)"."""
    if provenance.ref:
        return f"commit {provenance.commit} (--baseline-ref {provenance.ref})"
    if provenance.changes:
        dirty = f" with uncommitted changes to {', '.join(provenance.changes[:3])}"
    else:
        dirty = " with uncommitted changes" if provenance.dirty else ""
    return f"commit {provenance.commit}{dirty} (this checkout)"


def arm_provenance_text(provenance: ArmProvenance) -> str:
    """The line `bench gate` adds to an arm's description: its code and its reused and newly trained runs."""
    return (f"Code: {arm_code_text(provenance)}. Runs: {provenance.reused} of {provenance.total} reused from the "
            f"store, {provenance.total - provenance.reused} trained now.")


def arm_description(description: str | None, provenance: ArmProvenance | None) -> str | None:
    """An arm's description from the config, followed by its provenance line where there is one."""
    if provenance is None:
        return description
    return "\n\n".join(filter(None, [description or "", arm_provenance_text(provenance)]))


# --------------------------------------------------------------------------- markdown escaping

# Inline markup GitHub would interpret: emphasis, code, links/images, tables, strikethrough, math.
_MD_INLINE = re.compile(r"([\\`*_\[\]|~$])")
# Block markup that only counts at the start of a line: headings, lists, setext/thematic rules.
_MD_LINE_START = re.compile(r"^([ \t]*)([#+\-=]|\d+[.)])", re.MULTILINE)
# What GitHub turns into a notification or a cross-reference: @someone, #12, GH-12 (owner/repo#12 ends in #12).
_PINGS = re.compile(r"(@|#(?=\d)|\bGH-(?=\d))", re.IGNORECASE)


def _no_pings(text: str) -> str:
    """A zero-width space after each @, # and GH- that would mention someone or reference an issue."""
    return _PINGS.sub(lambda m: m.group(1) + "\u200b", text)


def md_escape(text: object, *, multiline: bool = False, block_start: bool = True) -> str:
    """Make untrusted text render literally in GitHub markdown.

    HTML is neutralised by entity-escaping `&<>` (so `<script>` shows as text), markdown by
    backslash-escaping its punctuation.  `block_start`: the text may begin a line or a list
    item, where "# ", "- ", "1. " would start a heading or list (not so in a table cell).
    @mentions and issue references (#12, GH-12) get a zero-width space so a variant description cannot ping
    people or leave a cross-reference on another issue.
    """
    s = "" if text is None else str(text)
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    if not multiline:
        s = " ".join(s.split("\n"))  # a newline would end a table row or list item
    s = _MD_INLINE.sub(r"\\\1", s)
    if block_start or multiline:
        s = _MD_LINE_START.sub(lambda m: m.group(1) + _escape_block_marker(m.group(2)), s)
    return _no_pings(html.escape(s, quote=False))


def md_html_escape(text: object) -> str:
    """Untrusted text inside raw HTML in markdown (a <summary>), where GitHub processes no markdown, so a backslash
    escape would show: one line, HTML entity-escaped, mentions and issue references broken as in `md_escape`."""
    return _no_pings(html.escape(" ".join(("" if text is None else str(text)).splitlines()), quote=False))


def _escape_block_marker(marker: str) -> str:
    if marker[0].isdigit():  # "1." -> "1\." (an ordered-list marker no more)
        return marker[:-1] + "\\" + marker[-1]
    return "\\" + marker
