"""Matplotlib figures for the report, returned as inline `data:image/png;base64,...` URIs.

Checks never import matplotlib: they hand over `PlotData` (numbers plus a kind), and this
module draws any of them generically, so a new check's figures appear without report
changes. Figures use the object API (`Figure` + Agg canvas), not pyplot, so no global state
and no display are involved.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..results import PlotData

FIGSIZE = (5.6, 3.2)  # inches; at DPI below, about 500 px wide: readable in a report column
DPI = 90
# One colour per attack everywhere in the report, so lines and bars read the same.
ATTACK_STYLE = {
    "pgd-ce": ("PGD-CE", "#1f77b4"),
    "white-box": ("strongest white-box", "#d62728"),
    "square": ("Square (black-box)", "#2ca02c"),
}


class PlotError(ValueError):
    """A PlotData whose numbers do not fit its kind (e.g. a curve longer than its x axis)."""


def _text(s: object) -> str:
    """Matplotlib treats text between `$` as math and fails on unbalanced ones; show `$` literally."""
    return str(s).replace("$", r"\$")


def to_data_uri(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # no bbox_inches="tight": it draws the figure twice
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _new_axes(title: str = "", xlabel: str = "", ylabel: str = "", size: tuple[float, float] = FIGSIZE):
    fig = Figure(figsize=size)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.17, top=0.9)  # fixed margins: one draw, no layout engine
    ax = fig.add_subplot()
    ax.set_title(_text(title), fontsize=10)
    ax.set_xlabel(_text(xlabel))
    ax.set_ylabel(_text(ylabel))
    ax.grid(alpha=0.3)
    return fig, ax


def _numbers(values: Iterable[object], where: str) -> np.ndarray:
    try:
        return np.asarray([math.nan if v is None else float(v) for v in values], dtype=float)
    except (TypeError, ValueError):
        raise PlotError(f"{where} holds non-numbers") from None


def draw_plot(plot: PlotData) -> str | None:
    """Draw one PlotData; None for a kind this version cannot draw (the report says so instead)."""
    drawer = {"histogram": _histogram, "curve": _curve, "bars": _bars}.get(plot.kind)
    if drawer is None:
        return None
    fig, ax = _new_axes(plot.title, plot.xlabel, plot.ylabel)
    drawer(ax, plot)
    if plot.log_y:
        ax.set_yscale("log")
    if len(plot.series) > 1:
        ax.legend(fontsize=8)
    return to_data_uri(fig)


def _histogram(ax, plot: PlotData) -> None:
    """Histogram of each series. Zeros cannot sit on a log axis, yet exact zeros (dead gradients)
    are the finding, so on a log x axis they are drawn in the leftmost bin and counted in the legend."""
    arrays = {name: _numbers(v, f"histogram series {name!r}") for name, v in plot.series.items()}
    finite = {name: a[np.isfinite(a)] for name, a in arrays.items()}
    pooled = np.concatenate([a for a in finite.values()]) if finite else np.array([])
    if plot.log_x:
        positive = pooled[pooled > 0]
        lo = positive.min() if positive.size else 1e-12
        hi = max(positive.max() if positive.size else 1.0, lo * 10)
        floor = lo / 10
        bins = np.logspace(math.log10(floor), math.log10(hi), 31)
        ax.set_xscale("log")
    else:
        bins = 30
    any_notes = False
    for name, a in finite.items():
        label, notes = _text(name), []
        if plot.log_x:
            n_low = int((a <= 0).sum())
            a = np.where(a > 0, a, floor)
            if n_low:
                notes.append(f"{n_low} <= 0 at left edge")
        n_bad = int(arrays[name].size - finite[name].size)
        if n_bad:
            notes.append(f"{n_bad} NaN/Inf not drawn")
        if notes:
            label += " (" + "; ".join(notes) + ")"
            any_notes = True
        ax.hist(a, bins=bins, alpha=0.6, label=label)
    if any_notes:
        ax.legend(fontsize=8)  # the zero / NaN counts must be visible even for a single series


def _curve(ax, plot: PlotData) -> None:
    if plot.x is None:
        raise PlotError("a curve needs x values")
    x = _numbers(plot.x, "curve x")
    for name, values in plot.series.items():
        y = _numbers(values, f"curve series {name!r}")
        if y.size != x.size:
            raise PlotError(f"curve series {name!r} has {y.size} values for {x.size} x values")
        ax.plot(x, y, marker="o" if x.size <= 20 else None, markersize=3, label=_text(name))
    if plot.log_x:
        ax.set_xscale("log")


def _bars(ax, plot: PlotData) -> None:
    if plot.labels is None:
        raise PlotError("bars need labels")
    labels = [_text(label) for label in plot.labels]
    _grouped_bars(ax, labels, {name: _numbers(v, f"bars series {name!r}") for name, v in plot.series.items()})


def _grouped_bars(ax, labels: Sequence[str], series: dict[str, np.ndarray]) -> None:
    width = 0.8 / max(1, len(series))
    pos = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        if values.size != len(labels):
            raise PlotError(f"bars series {name!r} has {values.size} values for {len(labels)} labels")
        colour = ATTACK_STYLE.get(name, (None, None))[1]
        ax.bar(pos + (i - (len(series) - 1) / 2) * width, values, width, label=_text(name), color=colour)
    ax.set_xticks(pos, labels, rotation=20 if len(labels) > 4 else 0, fontsize=8)
    ax.set_xlim(-0.75, len(labels) - 0.25)  # a single group should not stretch over the whole axis


def attack_bars(clean_acc: float, robust_acc: dict[str, float]) -> str:
    """Accuracy under each attack of one audit (white-box vs Square side by side), from robust_acc."""
    names = ["clean", *robust_acc]
    values = np.asarray([clean_acc, *robust_acc.values()], dtype=float)
    fig, ax = _new_axes("accuracy per attack", "", "accuracy")
    colours = ["#7f7f7f"] + [ATTACK_STYLE.get(k, (None, "#9467bd"))[1] for k in robust_acc]
    ax.bar(range(len(names)), values, color=colours)
    ax.set_xticks(range(len(names)), [_text(n) for n in names], rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    for i, v in enumerate(values):
        ax.annotate(f"{v:.1%}", (i, v), ha="center", va="bottom", fontsize=7)
    return to_data_uri(fig)


def robust_vs_temperature(table: pd.DataFrame, reference: str = "trades") -> str | None:
    """One panel per method that has a temperature: PGD-CE, strongest white-box and Square accuracy
    against T, so their divergence at high T (masking) shows at a glance. Methods without a
    temperature (TRADES first) are drawn as horizontal reference lines of their white-box accuracy.
    None when no method has an audited temperature sweep."""
    audited = table[~table["audit_missing"]]
    swept = audited[audited["temperature"].notna()]
    methods = list(dict.fromkeys(swept["method"]))
    if not methods:
        return None
    refs = audited[audited["temperature"].isna() & (audited["method"] != "natural")]
    refs = pd.concat([refs[refs["method"] == reference], refs[refs["method"] != reference]])
    fig = Figure(figsize=(4.2 * len(methods), 3.4))
    axes = fig.subplots(1, len(methods), squeeze=False, sharey=True)[0]
    for ax, method in zip(axes, methods):
        rows = swept[swept["method"] == method].sort_values("temperature")
        for key, (label, colour) in ATTACK_STYLE.items():
            ax.plot(rows["temperature"], rows[key], marker="o", color=colour, label=label)
        for style, (_, ref) in zip(("--", ":", "-."), refs.iterrows()):
            ax.axhline(ref["white-box"], color="#555555", linestyle=style, linewidth=1,
                       label=_text(f"{ref['name']} (white-box)"))
        temps = rows["temperature"].to_numpy(dtype=float)
        if temps.min() > 0 and temps.max() / temps.min() >= 20:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(temps, [f"{t:g}" for t in temps])  # label the temperatures trained, not powers of ten
        _style_temperature_axis(ax, method)
    return _finish_panels(fig, axes, "robust accuracy", legend_size=7)


# The LTD paper's Table IV: TRADES+LTD, WRN-34-10, CIFAR-10, teacher temperature T -> (natural
# accuracy, AutoAttack accuracy) in %. Chen & Lee, "Low Temperature Distillation for Robust
# Adversarial Training", arXiv 2111.02331, Sec. 5.2, Table IV (../shared/papers/ltd-low-temperature-
# distillation.txt); T = 50 (86.63% natural, no AA) left out as the paper did. TRADES row: 84.92 / 53.08.
PAPER_TABLE_IV: dict[float, tuple[float, float]] = {
    1.0: (84.51, 54.38), 2.0: (84.96, 54.90), 3.0: (85.48, 55.03), 5.0: (86.20, 55.09), 8.0: (85.23, 54.63),
    10.0: (84.72, 53.56), 12.0: (77.45, 43.85), 15.0: (94.72, 0.00), 20.0: (94.39, 0.00),
}
PAPER_TRADES = (84.92, 53.08)
PAPER_LABEL = "LTD paper Table IV (CIFAR-10, WRN-34-10, AutoAttack)"


def temperature_curves(summary: pd.DataFrame, selected: float | None = None, paper: bool = True) -> str | None:
    """One panel per method with a temperature (seed means over T, min-max band over seeds):
    the audit's worst case, PGD-CE, the training-phase robust accuracy (inner attack on training
    batches) and clean accuracy; the paper's Table IV dashed on LTD panels; the searched T dotted.

    `summary` is `seeds.seed_summary(...)`; None when no method has an audited temperature."""
    swept = summary[summary["temperature"].notna()]
    methods = list(dict.fromkeys(swept["method"]))
    if not methods:
        return None
    fig = Figure(figsize=(4.4 * len(methods), 3.6))
    axes = fig.subplots(1, len(methods), squeeze=False, sharey=True)[0]
    for ax, method in zip(axes, methods):
        rows = swept[swept["method"] == method].sort_values("temperature")
        t = rows["temperature"].to_numpy(dtype=float)
        ax.plot(t, rows["worst-case"], marker="o", color="#d62728", label="worst case (audit)")
        if (rows["seeds"] > 1).any():
            ax.fill_between(t, rows["worst-case min"], rows["worst-case max"], color="#d62728", alpha=0.18,
                            label="worst case, seed min-max")
        ax.plot(t, rows["pgd-ce"], marker="o", markersize=3, color="#1f77b4", label="PGD-CE (audit)")
        phase = rows["train_phase_acc"].to_numpy(dtype=float)
        if np.isfinite(phase).any():
            ax.plot(t, phase, marker="s", color="#9467bd", label="training phase (inner attack)")
            if (rows["seeds"] > 1).any():
                ax.fill_between(t, rows["train_phase min"], rows["train_phase max"], color="#9467bd", alpha=0.15)
        ax.plot(t, rows["clean_acc"], color="#7f7f7f", linewidth=1, label="clean (audit)")
        if paper and str(method).startswith("ltd"):
            pt = np.asarray(sorted(PAPER_TABLE_IV), dtype=float)
            ax.plot(pt, [PAPER_TABLE_IV[x][1] / 100 for x in pt], linestyle="--", color="#000000", marker="x",
                    label=_text(PAPER_LABEL))
            ax.plot(pt, [PAPER_TABLE_IV[x][0] / 100 for x in pt], linestyle="--", color="#aaaaaa", linewidth=1,
                    label="paper Table IV, natural accuracy")
        if selected is not None and str(method) == "ltd":
            ax.axvline(selected, color="#2ca02c", linestyle=":", label=f"searched T = {selected:g} (Sec. 4.2)")
        all_t = np.unique(np.concatenate([t, np.asarray(sorted(PAPER_TABLE_IV)) if paper and str(method).startswith("ltd") else t]))
        ax.set_xticks(all_t, [f"{x:g}" for x in all_t], fontsize=7)
        _style_temperature_axis(ax, method)
    return _finish_panels(fig, axes, "accuracy", legend_size=6)


def _style_temperature_axis(ax: Any, method: Any) -> None:
    """One method's panel of an accuracy-vs-T figure: title, T axis, [0, 1] accuracy, grid."""
    ax.set_title(_text(method), fontsize=10)
    ax.set_xlabel("temperature T")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)


def _finish_panels(fig: Any, axes: Any, ylabel: str, legend_size: int) -> str:
    """Label and legend on the first panel, then the figure as a data URI."""
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=legend_size, loc="best")
    fig.tight_layout()
    return to_data_uri(fig)
