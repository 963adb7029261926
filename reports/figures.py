"""Plots for the report: PNG (the PR comment, the HTML's pixel grids), SVG (the HTML's line art, where smaller)
and an animated GIF of the rollouts.

We use matplotlib's object-oriented API on an Agg canvas (no pyplot): nothing touches the
global figure registry or the user's backend, and a figure is garbage once it is saved.
Figures are small (about 6x3.5 in at 90 dpi) and PNGs are palette-quantised so the
self-contained HTML stays light.
"""

from __future__ import annotations

import collections
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from PIL import Image, ImageDraw
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from harness.types import KpiComparison, KpiVerdict, Leaderboard, ReportInput
from worldmodel.config import STAGES
from reports.text import fmt_estimate, fmt_margin
from reports.view import MODE_LABELS, ci_label, has_columns, ordered, role_of

DPI = 90
FIGSIZE = (6.0, 3.5)
MAX_CLIPS = 3  # rollout grids: a few clips are enough to eyeball, more only bloat the HTML
MAX_GRID_ROWS = 9  # and about as many rows as three clips of two arms: a leaderboard shows fewer clips, never none
MAX_STEPS = 8  # horizon columns per grid
TARGET_FRAME_PX = 64  # nearest-neighbour upscale small frames (16x16, 32x32) to about this size
GAP_PX = 2
VARIANT_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                  "tab:cyan", "tab:red", "tab:gray")  # a leaderboard draws every arm in one plot
VERDICT_COLORS = {"improved": "#1a7f37", "non-inferior": "#2da44e", "identical": "#57606a", "regressed": "#cf222e",
                  "inconclusive": "#9a6700"}  # the HTML report's badge colours
GIF_STEP_MS = 600  # how long each horizon step of the rollout animation shows
SVG_NUMBER = re.compile(rb"-?\d+\.\d{3,}")  # a coordinate finer than 0.01 pt, in an SVG attribute
FOREST_CLIP = 3.0  # the forest plot's x axis ends here, in margins; an interval beyond it gets an arrow


@dataclass
class Figure:
    filename: str  # the PNG, written next to report.md and referenced by it
    title: str
    caption: str
    draw: Callable[[], MplFigure]  # builds the figure on demand: plotting is the slow part
    vector: bool = True  # line art, which SVG may hold in fewer bytes; False for pixel grids

    def png(self) -> bytes:
        return _to_png(self.draw())

    def svg(self) -> bytes:
        return _to_svg(self.draw(), self.filename)


# --------------------------------------------------------------------------- helpers


def _safe_label(text: object, limit: int = 40) -> str:
    """Untrusted text in a plot: short, and `$` must not start matplotlib mathtext."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def _safe_filename(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)[:40] or "x"


def _new_figure(size: tuple[float, float] = FIGSIZE) -> MplFigure:
    figure = MplFigure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _to_png(figure: MplFigure) -> bytes:
    """The figure as a palette PNG: report figures have few colours, and 256 of them keep lines and pixels intact
    at a third of the size."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    figure.clear()  # drop the artists now; the figure object itself is never registered anywhere
    image = Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=0)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return out.getvalue()


def _to_svg(figure: MplFigure, name: str) -> bytes:
    """The figure as SVG for inline use: text kept as text (not glyph paths) in the page's font, no metadata, ids
    salted by the figure's name so that several SVGs in one page never share one, compacted (_compact_svg)."""
    buffer = io.BytesIO()
    # One font name per text element rather than matplotlib's list of ten fallbacks: the page names its own.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name, "font.sans-serif": ["DejaVu Sans"]}):
        figure.savefig(buffer, format="svg", dpi=DPI,
                       metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    figure.clear()
    text = buffer.getvalue()
    return _compact_svg(text[text.index(b"<svg"):], name)  # no XML prolog or doctype: the page embeds the element


def _compact_svg(svg: bytes, name: str) -> bytes:
    """matplotlib's SVG at about half its size, drawn the same. Only its tags change, never the text between
    them (a label may hold anything a variant's name holds): no indentation; of the ids, only those something
    refers to (matplotlib names every group alike in every figure, so a page of several would repeat them); no
    identity rotations; attribute values on one line with coordinates to 0.01 pt; no attribute-less groups; and
    each style used twice or more as one CSS class, named after the figure (a page's SVGs share one namespace)."""
    parts = re.split(rb"(<[^>]*>)", svg)  # tags at odd indices (matplotlib escapes < and > elsewhere), text between
    tags = parts[1::2]
    referenced = {ref for tag in tags for ref in re.findall(rb'(?:url\(#|href="#)([^)"]+)', tag)}

    def attribute(match: re.Match) -> bytes:  # one line, numbers rounded
        value = re.sub(rb"\s+", b" ", match.group(1)).strip()
        return b'="' + SVG_NUMBER.sub(lambda m: b"%g" % round(float(m.group(0)), 2), value) + b'"'

    def compact_tag(tag: bytes) -> bytes:
        tag = re.sub(rb' id="([^"]*)"', lambda m: m.group(0) if m.group(1) in referenced else b"", tag)
        tag = re.sub(rb' transform="rotate\(-?0 [^)]*\)"', b"", tag)
        return re.sub(rb'="([^"]*)"', attribute, tag)

    kept: list[tuple[bool, bytes]] = []  # (is a tag, its bytes)
    groups: list[bool] = []  # for each open <g>, whether it is kept (it has attributes)
    for index, part in enumerate(parts):
        if index % 2 == 0:  # text: whitespace between tags becomes one newline, a label stays as it is
            if part.strip() or b"\n" not in part:
                kept.append((False, part))
            elif not kept or kept[-1] != (False, b"\n"):
                kept.append((False, b"\n"))
            continue
        part = compact_tag(part)
        if part.startswith(b"<g>") or part.startswith(b"<g "):
            groups.append(part != b"<g>")
        if part == b"<g>" or part == b"</g>" and not groups.pop():
            continue
        kept.append((True, part))
    styles = collections.Counter(style for is_tag, part in kept if is_tag
                                 for style in re.findall(rb' style="([^"]*)"', part))
    prefix = b"svg-" + _safe_filename(name).encode() + b"-"
    classes = {style: prefix + b"%d" % i for i, (style, uses) in enumerate(styles.most_common())
               if uses > 1 and b"</style>" in svg}  # the rules go in matplotlib's own style element

    def as_class(match: re.Match) -> bytes:
        return b' class="%s"' % classes[match.group(1)] if match.group(1) in classes else match.group(0)

    rules = b"".join(b".%s{%s}" % (cls, style) for style, cls in classes.items())
    out = []
    for is_tag, part in kept:
        if is_tag:
            part = re.sub(rb' style="([^"]*)"', as_class, part)
            if part == b"</style>":
                part, rules = rules + part, b""
        out.append(part)
    return b"".join(out)


def _colors(report: ReportInput | Leaderboard, variants: list[str]) -> dict[str, str]:
    known = report.variants
    palette = {v: VARIANT_COLORS[i] for i, v in enumerate(known)}
    extra = [v for v in variants if v not in palette]
    for i, v in enumerate(extra):
        palette[v] = VARIANT_COLORS[(len(known) + i) % len(VARIANT_COLORS)]
    return palette


# --------------------------------------------------------------------------- training curves


def curve_bands(curves: pd.DataFrame, stage: str, metric: str = "loss") -> dict[str, pd.DataFrame]:
    """variant -> per-step mean, min and max over seeds (columns step, mean, low, high, seeds).

    Non-finite values (a diverged run's NaN/inf loss) are dropped rather than plotted.
    """
    if not has_columns(curves, ("variant", "seed", "stage", "step", "metric", "value")):
        return {}
    part = curves[(curves["stage"] == stage) & (curves["metric"] == metric)].copy()
    part["value"] = pd.to_numeric(part["value"], errors="coerce")
    part = part[np.isfinite(part["value"])]
    bands = {}
    for variant, rows in part.groupby("variant", sort=False):
        stats = rows.groupby("step")["value"].agg(["mean", "min", "max"]).sort_index()
        seeds = rows.groupby("step")["seed"].nunique().sort_index()
        bands[str(variant)] = pd.DataFrame(
            {"step": stats.index.to_numpy(), "mean": stats["mean"].to_numpy(), "low": stats["min"].to_numpy(),
             "high": stats["max"].to_numpy(), "seeds": seeds.to_numpy()}
        )
    return bands


def _curve_stages(report: ReportInput | Leaderboard, metric: str = "loss") -> list[str]:
    curves = report.curves
    if not has_columns(curves, ("stage", "metric", "value")):
        return []
    with_metric = curves[curves["metric"] == metric]
    values = pd.to_numeric(with_metric["value"], errors="coerce")
    stages = with_metric.loc[np.isfinite(values), "stage"].astype(str)
    return ordered(list(stages), STAGES)


def _draw_curves(report: ReportInput | Leaderboard, stage: str) -> MplFigure:
    bands = curve_bands(report.curves, stage)
    variants = ordered(list(bands), tuple(report.variants))
    colors = _colors(report, variants)
    figure = _new_figure()
    ax = figure.add_subplot()
    for variant in variants:
        band = bands[variant]
        label = f"{role_of(report, variant)}: {_safe_label(variant)} ({int(band['seeds'].max())} seeds)"
        ax.plot(band["step"], band["mean"], color=colors[variant], lw=1.5, label=label)
        ax.fill_between(band["step"], band["low"], band["high"], color=colors[variant], alpha=0.2, lw=0)
    if all((band["low"] > 0).all() for band in bands.values()):
        ax.set_yscale("log")
        # Plain numbers ("0.3") instead of matplotlib's default "3×10⁻¹" on log axes.
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        if high / low < 20:  # under ~a decade there are too few major ticks to read values off
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=7)
        else:
            ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{_safe_label(stage)}: training loss (line = mean, band = min–max over seeds)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------- rollout quality


def _draw_psnr(report: ReportInput | Leaderboard) -> MplFigure:
    rollouts = report.rollouts.copy()
    rollouts["psnr"] = pd.to_numeric(rollouts["psnr"], errors="coerce").replace([np.inf, -np.inf], np.nan)
    figure = _new_figure((FIGSIZE[0] + 1.8, FIGSIZE[1]))  # room for the legend on the right
    ax = figure.add_subplot()
    variants = ordered(list(rollouts["variant"].astype(str)), tuple(report.variants))
    colors = _colors(report, variants)
    model_styles = {"ar": "-", "tf": ":"}
    for variant in variants:
        mine = rollouts[rollouts["variant"].astype(str) == variant]
        for mode, style in model_styles.items():
            curve = mine[mine["mode"] == mode].groupby("horizon_step")["psnr"].mean().dropna()
            if len(curve):
                ax.plot(curve.index, curve.to_numpy(), style, marker="o", ms=3, color=colors[variant],
                        label=f"{_safe_label(variant, 28)} {mode.upper()}")
    # References do not depend on the model: one line each, averaged over everything.
    references = {"copy_last": ("--", "0.35"), "random": ("-.", "0.6")}
    for mode, (style, color) in references.items():
        curve = rollouts[rollouts["mode"] == mode].groupby("horizon_step")["psnr"].mean().dropna()
        if len(curve):
            ax.plot(curve.index, curve.to_numpy(), style, color=color, lw=1.2, label=MODE_LABELS[mode])
    ax.set_xlabel("horizon step")
    ax.set_ylabel("PSNR (dB)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Rollout PSNR per horizon step (mean over clips and seeds)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside: never hides a line
    figure.tight_layout()
    return figure


def _has_psnr(report: ReportInput | Leaderboard) -> bool:
    if not has_columns(report.rollouts, ("variant", "mode", "horizon_step", "psnr")):
        return False
    return bool(np.isfinite(pd.to_numeric(report.rollouts["psnr"], errors="coerce")).any())


# --------------------------------------------------------------------------- rollout pictures


def as_rgb_uint8(frames: np.ndarray) -> np.ndarray:
    """Any [..., H, W] / [..., H, W, 1|3|4] array of uint8 or [0, 1] floats -> uint8 RGB."""
    array = np.asarray(frames)
    if array.ndim >= 1 and array.shape[-1] not in (1, 3, 4):
        array = array[..., None]  # grayscale without a channel axis
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        array = np.nan_to_num(array)
        if array.max(initial=0.0) <= 1.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return array


def upscale(frame: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscale [H, W, 3] by an integer factor: pixels stay crisp squares."""
    return np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1)


def horizon_columns(horizon: int, max_steps: int = MAX_STEPS) -> list[int]:
    """0-based horizon indices to show: all of them, or evenly spaced ones including the last."""
    if horizon <= max_steps:
        return list(range(horizon))
    return sorted({int(round(x)) for x in np.linspace(0, horizon - 1, max_steps)})


def rollout_grid(rows: list[np.ndarray], factor: int, gap: int = GAP_PX) -> np.ndarray:
    """Stack rows of frames ([steps, H, W, 3] each) into one white-separated image."""
    steps, height, width = rows[0].shape[:3]
    cell_h, cell_w = height * factor, width * factor
    grid = np.full(
        (len(rows) * cell_h + (len(rows) - 1) * gap, steps * cell_w + (steps - 1) * gap, 3), 255, dtype=np.uint8
    )
    for r, row in enumerate(rows):
        for c in range(steps):
            top, left = r * (cell_h + gap), c * (cell_w + gap)
            grid[top : top + cell_h, left : left + cell_w] = upscale(row[c], factor)
    return grid


@dataclass
class _GridPlan:
    labels: list[str]  # row labels: ground truth, then one per variant
    clips: list[list[np.ndarray]]  # per clip: the rows, each [steps, H, W, 3]
    steps: list[int]  # 1-based horizon steps shown
    factor: int
    caption: str


def _prediction_row(variant: str, frames: dict) -> tuple[str, np.ndarray] | str:
    """A variant's rollout row for the grid, (what it shows, uint8 [clips, horizon, H, W, 3]), or why there is
    none."""
    predictions = frames.get("predictions") or {}
    mode = "ar" if "ar" in predictions else next(iter(predictions), None)
    if mode is None:
        return f"no predicted frames for {variant}"
    return mode.upper(), as_rgb_uint8(predictions[mode])


def _reconstruction_row(variant: str, frames: dict) -> tuple[str, np.ndarray] | str:
    """A variant's tokenizer reconstructions of the predicted frames (the context cut off), or why there are none."""
    if frames.get("reconstructions") is None:
        return f"no tokenizer reconstructions for {variant}"
    context = int(frames.get("context", 0))
    return "tokenizer", as_rgb_uint8(frames["reconstructions"])[:, context:]


_VariantRow = Callable[[str, dict], tuple[str, np.ndarray] | str]  # (variant, its frames) -> (kind, row) or a note


def _plan_grid(report: ReportInput | Leaderboard, variant_row: _VariantRow = _prediction_row,
               rows_are: str = "prediction after {context} context frames") -> _GridPlan | None:
    """Ground truth of the predicted frames above one row per variant from `variant_row`; variants whose rows are
    identical (a shared stage) share one."""
    frames = {v: f for v, f in (report.frames or {}).items() if isinstance(f, dict) and "ground_truth" in f}
    if not frames:
        return None
    reference_variant = report.baseline if report.baseline in frames else next(iter(frames))
    reference = frames[reference_variant]
    truth = as_rgb_uint8(reference["ground_truth"])
    context = int(reference.get("context", 0))
    if truth.ndim != 5 or truth.shape[1] <= context:
        return None
    notes: list[str] = []
    shared: list[tuple[list[str], str, np.ndarray]] = []  # the variants a row stands for, its kind, its frames
    for variant in ordered(list(report.frames), tuple(report.variants)):
        row = variant_row(variant, frames.get(variant) or {})
        if isinstance(row, str):
            notes.append(row)
            continue
        kind, shown_frames = row
        if shown_frames.ndim != 5 or shown_frames.shape[2:] != truth.shape[2:]:
            notes.append(f"{variant}: frames of shape {shown_frames.shape} do not match the ground truth")
            continue
        twin = next((each for each in shared if each[1] == kind and np.array_equal(each[2], shown_frames)), None)
        if twin is None:
            shared.append(([variant], kind, shown_frames))
        else:
            twin[0].append(variant)
    rows: list[tuple[str, np.ndarray]] = []  # label, [clips, horizon, H, W, 3]
    for variants, kind, shown_frames in shared:
        if len(variants) == 1:
            rows.append((f"{_safe_label(variants[0], 24)} ({kind})", shown_frames))
        else:
            rows.append((f"{_safe_label(variants[0], 18)} +{len(variants) - 1} ({kind})", shown_frames))
            notes.append(f"one row for {', '.join(variants)}: their frames are identical")
    for variant in report.variants:
        if variant not in frames:
            notes.append(f"no frames for {variant} (no successful run saved any)")
    horizon = min([truth.shape[1] - context] + [p.shape[1] for _, p in rows])
    clips = min([truth.shape[0], MAX_CLIPS, max(1, MAX_GRID_ROWS // (1 + len(rows)))] + [p.shape[0] for _, p in rows])
    if horizon <= 0 or clips <= 0:
        return None
    shown = horizon_columns(horizon)
    factor = max(1, math.ceil(TARGET_FRAME_PX / max(truth.shape[2], truth.shape[3])))
    per_clip = []
    for clip in range(clips):
        clip_rows = [truth[clip, context:][shown]] + [p[clip][shown] for _, p in rows]
        per_clip.append(clip_rows)
    seeds = sorted({str(f.get("seed", "?")) for f in frames.values()})
    caption = (
        f"Rows: ground truth, then each variant's {rows_are.format(context=context)}; columns: horizon steps. "
        f"Seed {', '.join(seeds)}, {'the first clip' if clips == 1 else f'the first {clips} clips'}, "
        f"{factor}x nearest-neighbour upscaled."
    )
    if notes:
        caption += " Note: " + "; ".join(notes) + "."
    return _GridPlan(["ground truth"] + [label for label, _ in rows], per_clip, [s + 1 for s in shown], factor, caption)


def _draw_grid(plan: _GridPlan) -> MplFigure:
    grids = [rollout_grid(rows, plan.factor) for rows in plan.clips]
    grid_h, grid_w = grids[0].shape[:2]
    left, right, title_px, ticks_px = 190, 10, 22, 22  # margins in pixels around each grid
    block_h = title_px + grid_h + ticks_px
    width_px, height_px = left + grid_w + right, block_h * len(grids)
    figure = _new_figure((width_px / DPI, height_px / DPI))
    cell_h = (grid_h + GAP_PX) / len(plan.labels)
    cell_w = (grid_w + GAP_PX) / len(plan.steps)
    for i, grid in enumerate(grids):
        bottom = height_px - (i + 1) * block_h + ticks_px
        ax = figure.add_axes((left / width_px, bottom / height_px, grid_w / width_px, grid_h / height_px))
        # One image pixel per screen pixel, so "nearest" is exact and the squares stay crisp.
        ax.imshow(grid, interpolation="nearest", aspect="auto")
        ax.set_yticks([(r + 0.5) * cell_h - GAP_PX / 2 for r in range(len(plan.labels))], plan.labels, fontsize=8)
        ax.set_xticks([(c + 0.5) * cell_w - GAP_PX / 2 for c in range(len(plan.steps))],
                      [f"t+{s}" for s in plan.steps], fontsize=7)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(f"clip {i}", fontsize=8, loc="left")
    return figure


# --------------------------------------------------------------------------- forest plot


def in_margins(kpi: KpiComparison, value: float) -> float:
    """A value on the estimate's scale (ratio c/b or difference c - b) as worsening in units of the KPI's margin,
    on the statistics' axis: 0 = no change, 1 = the margin, negative = better. Every KPI shares this axis."""
    rule = kpi.rule
    if rule.scale == "log":
        value = math.log(value) if value > 0 else (-math.inf if value == 0 else math.nan)
    badness = rule.badness_sign * value
    return badness / rule.analysis_margin if rule.analysis_margin > 0 else badness


def forest_rows(report: ReportInput | Leaderboard) -> list[tuple[str, KpiComparison]]:
    """The forest plot's rows, (label, KPI comparison): each blocking and guard KPI (those whose regression FAILs the
    merge); for a leaderboard each such KPI of each candidate, grouped by KPI so that the candidates' intervals
    stack, and the candidates for which a KPI is identical (a shared stage: no interval) in one row."""
    if isinstance(report, ReportInput):
        return [(kpi.name, kpi) for kpi in report.comparison.kpis if kpi.rule.can_fail]
    by_kpi: dict[str, list[tuple[str, KpiComparison]]] = {}  # KPI -> (candidate, its comparison)
    for each in report.reports:
        for kpi in each.comparison.kpis:
            if kpi.rule.can_fail:
                by_kpi.setdefault(kpi.name, []).append((each.candidate, kpi))
    rows = []
    for name, pairs in by_kpi.items():
        same = [kpi for _, kpi in pairs if kpi.verdict == KpiVerdict.IDENTICAL]
        if len(same) > 1:
            rows.append((f"{name} · {'every candidate' if len(same) == len(pairs) else f'{len(same)} candidates'}",
                         same[0]))
        rows += [(f"{name} · {candidate}", kpi) for candidate, kpi in pairs
                 if len(same) < 2 or kpi.verdict != KpiVerdict.IDENTICAL]
    return rows


def _draw_forest(rows: list[tuple[str, KpiComparison]], alpha: float) -> MplFigure:
    """Each row's interval (the one dual to the test) against its KPI's margin, on the shared axis of
    `in_margins`: an interval wholly left of the margin line is non-inferior, wholly right of it regressed."""
    # Inches: the row labels (about 0.067 in a character at 8 pt), the axes, and the change text on the right.
    labels_in = max(1.8, 0.067 * max((len(_safe_label(label, 60)) for label, _ in rows), default=0) + 0.2)
    axes_in, text_in = 3.15, 4.05
    width = labels_in + axes_in + text_in
    figure = _new_figure((width, 0.42 * len(rows) + 1.3))
    ax = figure.add_subplot()
    for row, (_, kpi) in enumerate(rows):
        y = len(rows) - 1 - row
        color = VERDICT_COLORS.get(kpi.verdict, "0.3")
        effect = kpi.effect
        low, high = sorted(in_margins(kpi, end) for end in (effect.ci_low, effect.ci_high))
        if math.isfinite(low) or math.isfinite(high):  # a clipped end shows as an arrow
            ends = np.clip(np.nan_to_num([low, high], nan=0.0), -FOREST_CLIP, FOREST_CLIP)
            ax.plot(ends, [y, y], color=color, lw=2.5, solid_capstyle="butt")
            for end, clipped, marker in ((ends[0], low < -FOREST_CLIP, "<"), (ends[1], high > FOREST_CLIP, ">")):
                if clipped:
                    ax.plot(end, y, marker, color=color, ms=6)
        estimate = in_margins(kpi, effect.estimate)
        if not math.isnan(estimate):
            ax.plot(np.clip(estimate, -FOREST_CLIP, FOREST_CLIP), y, "o", color=color, ms=5)
        ax.text(1.02, y, f"{fmt_estimate(kpi)} vs {fmt_margin(kpi)}: {kpi.verdict}", transform=ax.get_yaxis_transform(),
                va="center", fontsize=7, color=color)
    ax.axvline(0, color="0.4", lw=1)
    ax.axvline(1, color=VERDICT_COLORS["regressed"], lw=1, ls="--")
    ax.set_yticks(range(len(rows)), [_safe_label(label, 60) for label, _ in reversed(rows)], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    low, high = ax.get_xlim()
    ax.set_xlim(max(min(low, -1.2), -FOREST_CLIP - 0.2), min(max(high, 1.5), FOREST_CLIP + 0.2))
    ax.set_xlabel("change in units of the KPI's margin (0: none, 1: the margin; right is worse)", fontsize=8)
    ax.set_title(f"Blocking and guard KPIs: change with its {ci_label(alpha)} against the margin (dashed)", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    figure.subplots_adjust(left=labels_in / width, right=(labels_in + axes_in) / width,
                           top=1 - 0.45 / figure.get_figheight(), bottom=0.55 / figure.get_figheight())
    return figure


# --------------------------------------------------------------------------- rollout animation


def rollout_gif(report: ReportInput | Leaderboard) -> bytes | None:
    """An animated GIF of the rollout grid, one horizon step per frame: rows ground truth and each variant's
    prediction, columns the clips, labelled in the image. None when there are no frames."""
    plan = _plan_grid(report)
    if plan is None:
        return None
    label_px, title_px, gap = 6 * max(len(label) for label in plan.labels) + 8, 14, GAP_PX  # default font: 6 px
    frames = []
    for step_index, step in enumerate(plan.steps):
        # one grid per step: rows are the plan's rows, columns the clips
        rows = [np.stack([clip[row][step_index] for clip in plan.clips]) for row in range(len(plan.labels))]
        grid = rollout_grid(rows, plan.factor)
        image = Image.new("RGB", (label_px + grid.shape[1], title_px + grid.shape[0]), "white")
        image.paste(Image.fromarray(grid), (label_px, title_px))
        draw = ImageDraw.Draw(image)
        draw.text((label_px, 1), f"t+{step}  (clips 0-{len(plan.clips) - 1})", fill="black")
        cell = (grid.shape[0] + gap) / len(plan.labels)
        for row, label in enumerate(plan.labels):
            draw.text((2, title_px + row * cell + cell / 2 - 6), label, fill="black")
        frames.append(image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=0))
    buffer = io.BytesIO()
    frames[0].save(buffer, format="gif", save_all=True, append_images=frames[1:], duration=GIF_STEP_MS, loop=0,
                   optimize=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the plan


def plan_figures(report: ReportInput | Leaderboard) -> list[Figure]:
    """Which figures this report has (cheap: decided from the data, drawn only on demand). A leaderboard's show
    every arm: one forest row per candidate and blocking or guard KPI, each arm's curves and rollouts in one plot."""
    figures: list[Figure] = []
    rows = forest_rows(report)
    if rows:
        alpha = report.comparison.alpha if isinstance(report, ReportInput) else report.alpha
        whose = ("each candidate's blocking and guard KPI" if isinstance(report, Leaderboard)
                 else "each blocking and guard KPI")
        figures.append(Figure("forest.png", "Blocking and guard KPIs against their margins",
                              f"The change of {whose} with the interval dual to its test, in units of its margin: "
                              "left of the dashed line is within the margin (non-inferior when the whole interval "
                              "is), right of it worse. The text gives each change on its own scale.",
                              lambda: _draw_forest(rows, alpha)))
    used: set[str] = set()
    for stage in _curve_stages(report):
        name = f"curves_{_safe_filename(stage)}.png"
        while name in used:
            name = name.replace(".png", "_.png")
        used.add(name)
        figures.append(
            Figure(
                name,
                f"Training loss: {stage}",
                "Line: mean over seeds; shaded band: min–max over seeds; log y axis when all losses are positive.",
                lambda stage=stage: _draw_curves(report, stage),
            )
        )
    grid = _plan_grid(report)
    if grid is not None:
        figures.append(Figure("rollouts.png", "Rollouts: ground truth vs predictions", grid.caption,
                              lambda: _draw_grid(grid), vector=False))
    if any(isinstance(f, dict) and f.get("reconstructions") is not None for f in (report.frames or {}).values()):
        tokenizer_grid = _plan_grid(report, _reconstruction_row, "tokenizer reconstruction of the same frames")
        if tokenizer_grid is not None:
            caption = f"{tokenizer_grid.caption} What the tokenizer loses (small moving sprites) no model recovers."
            figures.append(Figure("reconstructions.png", "Tokenizer reconstructions vs ground truth", caption,
                                  lambda: _draw_grid(tokenizer_grid), vector=False))
    if _has_psnr(report):
        figures.append(
            Figure(
                "psnr_per_horizon.png",
                "Rollout PSNR per horizon step",
                "Solid: autoregressive (AR); dotted: teacher-forced (TF); dashed grey: copy-last-frame reference.",
                lambda: _draw_psnr(report),
            )
        )
    return figures
