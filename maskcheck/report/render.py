"""JSON in, one self-contained HTML file out (plus the matrix as CSV and Markdown beside it).

The HTML has no external CSS, JS, fonts or images: styles sit in one <style> block and
figures are inline PNG data URIs, so the file opens offline, by mail or as a CI artefact.
Jinja2 renders it with autoescape on: model names, summaries and evidence come from files
that anyone can write, and must never become markup.
"""

from __future__ import annotations

import math
import numbers
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import jinja2
import pandas as pd

from .. import __version__
from ..errors import InputError
from ..fileio import atomic_write_text
from ..results import CheckResult
from ..validate import csv_text, markdown_text
from . import plots, seeds
from .headline import headline
from .loader import ModelEntry, ReportInputs, load_inputs, matrix_table, sort_key

MAX_LIST = 12  # evidence lists longer than this are shortened in the HTML (the JSON keeps them all)


def render_report(inputs: list[Path], out: Path) -> Path:
    """Render sweep folders and/or audit.json files into `out` (HTML), with `out`.csv and `out`.md.

    Raises InputError for inputs that are missing, foreign or of another schema version.
    Returns the HTML path.
    """
    out = Path(out)
    data = load_inputs(inputs)
    table = matrix_table(data.entries)
    write_tables(table, out)
    summary = seeds.seed_summary(table)
    if (summary["seeds"] > 1).any():  # the seed table beside the matrix: OUT.seeds.csv / OUT.seeds.md
        atomic_write_text(out.with_suffix(".seeds.csv"), csv_text(summary))
        atomic_write_text(out.with_suffix(".seeds.md"), seeds.summary_markdown(summary) + "\n")
    atomic_write_text(out, render_html(data, table, out))
    return out


def write_tables(table: pd.DataFrame, out: Path) -> tuple[Path, Path]:
    """The matrix for papers and READMEs: CSV with fractions, Markdown with percentages.

    Model names come from files anyone can write: CSV cells that a spreadsheet would run as a
    formula get a leading quote, and the Markdown escapes HTML (Markdown renderers pass it through).
    """
    csv = atomic_write_text(out.with_suffix(".csv"), csv_text(table))
    md = atomic_write_text(out.with_suffix(".md"), markdown_table(table) + "\n")
    return csv, md


def markdown_table(table: pd.DataFrame) -> str:
    shown = table.copy()
    # issue-17 columns only where some model has them, so matrices of older sweeps read as before
    shown = shown.drop(columns=[c for c in ("seed", "train_phase_acc") if shown[c].isna().all()])
    for col in [c for c in ("clean_acc", "pgd-ce", "white-box", "square", "worst-case", "train_phase_acc") if c in shown]:
        shown[col] = shown[col].map(pct)
    if "seed" in shown:
        shown["seed"] = shown["seed"].map(lambda v: "-" if v is None or math.isnan(v) else f"{v:.0f}")
    shown["temperature"] = shown["temperature"].map(lambda t: "-" if t is None or math.isnan(t) else f"{t:g}")
    shown["audit_missing"] = shown["audit_missing"].map(lambda m: "yes" if m else "")
    for col in ("method", "name", "verdict", "flagged_checks"):
        shown[col] = shown[col].map(str)
    return markdown_text(shown)  # HTML escaped, no "|" splitting a cell (validate.md_cell)


def pct(x: Any) -> str:
    """A fraction as a percentage; a dash when unknown, "n/a" when not a finite number (never "inf%")."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
        return "n/a"
    return f"{100 * float(x):.1f}%"


def fmt_value(v: Any) -> str:
    """Evidence and parameter values, short: 4 significant digits, long lists cut."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        items = [fmt_value(x) for x in v[:MAX_LIST]]
        more = f", ... ({len(v)} values)" if len(v) > MAX_LIST else ""
        return "[" + ", ".join(items) + more + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {fmt_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("maskcheck.report", "templates"),
        autoescape=True,  # every input string is untrusted
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = pct
    env.filters["fmt"] = fmt_value
    return env


def render_html(data: ReportInputs, table: pd.DataFrame, out: Path | None = None) -> str:
    """The HTML page. Paths shown in it are relative to `out`'s folder (or as given when `out` is None)."""
    entries = sorted(data.entries, key=sort_key)
    anchors = {e.name: f"model-{i}" for i, e in enumerate(entries)}
    summary = seeds.seed_summary(table)
    selected = _selected_temperature(data)
    context = {
        "paper": _paper_view(data, summary, selected),
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "headline": headline(table),
        "setting": _setting(data),
        "matrix": _matrix(entries, anchors),
        "overview_plot": plots.robust_vs_temperature(table),
        "rows": [dict(r, anchor=anchors[r["name"]]) for r in table.to_dict("records")],
        "models": [_model_view(e, anchors[e.name], out) for e in entries],
    }
    return _environment().get_template("report.html.j2").render(context)


def _setting(data: ReportInputs) -> list[tuple[str, str]]:
    """Dataset, architecture and threat model, from the sweeps (or the audits when given alone)."""
    facts: dict[str, set[str]] = {"dataset": set(), "arch": set(), "threat": set(), "n (audit points)": set()}
    for s in data.sweeps:
        facts["dataset"].add(str(s.get("dataset")))
        facts["arch"].add(str(s.get("arch")))
        facts["threat"].add(f"{s.get('norm')} eps={fmt_value(s.get('eps'))}")
    for e in data.entries:
        if e.audit is not None:
            facts["dataset"].add(str(e.audit.dataset))
            facts["threat"].add(f"{e.audit.threat.get('norm')} eps={fmt_value(e.audit.threat.get('eps'))}")
            facts["n (audit points)"].add(str(e.audit.n))
    return [(k, ", ".join(sorted(v))) for k, v in facts.items() if v]


def _matrix(entries: list[ModelEntry], anchors: Mapping[str, str]) -> dict[str, Any]:
    """Rows are methods, columns temperatures (models without one in the first column)."""
    temps = sorted({e.temperature for e in entries if e.temperature is not None})
    columns: list[float | None] = ([None] if any(e.temperature is None for e in entries) else []) + temps
    methods = list(dict.fromkeys(e.method for e in entries))
    cells = {(m, t): [] for m in methods for t in columns}
    for e in entries:
        cells[(e.method, e.temperature)].append(_cell(e, anchors[e.name]))
    notes = {(m, t): _seed_note([e for e in entries if e.method == m and e.temperature == t]) for m in methods for t in columns}
    return {
        "columns": ["no T" if t is None else f"T = {t:g}" for t in columns],
        "rows": [(m, [cells[(m, t)] for t in columns]) for m in methods],
        "notes": [[notes[(m, t)] for t in columns] for m in methods],
    }


def _seed_note(entries: list[ModelEntry]) -> str:
    """'worst case 45.1% (43.0-47.2%) over 3 seeds' for a matrix cell holding one job's seeds; '' otherwise."""
    worst = [e.robust("worst-case") for e in entries if e.seed is not None and e.audit is not None]
    if len(worst) < 2 or len({e.group for e in entries}) != 1:
        return ""
    return f"worst case {pct(sum(worst) / len(worst))} ({pct(min(worst))}-{pct(max(worst))}) over {len(worst)} seeds"


def _cell(e: ModelEntry, anchor: str) -> dict[str, Any]:
    train_clean = (e.run or {}).get("metrics", {}).get("clean_acc") if e.audit is None else None
    return {
        "name": e.name, "anchor": anchor, "status": e.status,
        "clean": e.robust("clean_acc"), "white_box": e.robust("white-box"), "square": e.robust("square"),
        "train_clean": train_clean, "flagged": e.flagged_checks,
    }


def relative_source(path: Path, out: Path | None) -> str:
    """`path` relative to the report's folder (POSIX), so a committed report names no machine's folders."""
    if out is None:
        return Path(path).as_posix()
    return Path(os.path.relpath(Path(path).resolve(), Path(out).resolve().parent)).as_posix()


def _selected_temperature(data: ReportInputs) -> float | None:
    for s in data.sweeps:
        sel = s.get("selected_temperature")
        if isinstance(sel, Mapping) and isinstance(sel.get("temperature"), (int, float)):
            return float(sel["temperature"])
    return None


def _paper_view(data: ReportInputs, summary: pd.DataFrame, selected: float | None) -> dict[str, Any]:
    """The issue-17 sections: T-curves with the paper's series, seed table, teachers, searched T."""
    teachers = []
    for s in data.sweeps:
        for name, facts in (s.get("teachers") or {}).items():
            if isinstance(facts, Mapping):
                teachers.append({"name": str(name), **{k: facts.get(k) for k in ("epochs", "train_acc", "train_acc_measure",
                                                                                   "converged", "clean_acc", "target")}})
    multi = bool((summary["seeds"] > 1).any())
    rows = []
    for r in summary.to_dict("records"):
        rows.append({**r, "temperature": None if r["temperature"] != r["temperature"] else r["temperature"]})
    return {
        "curves": plots.temperature_curves(summary, selected),
        "label": plots.PAPER_LABEL,
        "table_iv": [(t, nat, aa) for t, (nat, aa) in sorted(plots.PAPER_TABLE_IV.items())],
        "paper_trades": plots.PAPER_TRADES,
        "selected": selected,
        "teachers": teachers,
        "multi_seed": multi,
        "summary": rows,
        "reference": seeds.REFERENCE,
    }


def _model_view(e: ModelEntry, anchor: str, out: Path | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": e.name, "anchor": anchor, "method": e.method, "temperature": e.temperature,
        "status": e.status, "source": relative_source(e.source, out), "run": _run_facts(e.run), "audit": None,
    }
    if e.audit is not None:
        a = e.audit
        view["audit"] = {
            "verdict": a.verdict.text, "grade": a.verdict.grade, "n": a.n, "dataset": a.dataset, "threat": dict(a.threat),
            "clean_acc": a.clean_acc, "robust_acc": dict(a.robust_acc),
            "bars": plots.attack_bars(a.clean_acc, dict(a.robust_acc)),
            "checks": [_check_view(c, e.name) for c in a.checks],
            "provenance": {k: v for k, v in a.provenance.items() if v is not None},
            "timings": dict(a.timings),
        }
    return view


def _run_facts(run: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    if run is None:
        return []
    metrics = run.get("metrics") or {}
    facts = [("arch", run.get("arch")), ("dataset", run.get("dataset")), ("epochs", run.get("epochs")),
             ("teacher", run.get("teacher")), ("model temperature", run.get("model_temperature")),
             ("training-time clean acc", pct(metrics.get("clean_acc"))), ("training-time PGD acc", pct(metrics.get("pgd_acc"))),
             ("training-phase robust acc (inner attack, last epoch)", pct(next((h.get("train_robust_acc") for h in reversed(metrics.get("history") or []) if isinstance(h, Mapping) and h.get("train_robust_acc") is not None), None))),
             ("teacher facts", _teacher_fact(run.get("teacher_info"))),
             ("train seconds", metrics.get("train_seconds"))]
    return [(k, v) for k, v in facts if v is not None and v != "-"]


def _teacher_fact(info: Any) -> str | None:
    if not isinstance(info, Mapping):
        return None
    return (f"{info.get('name')}: {info.get('epochs')} epochs, training accuracy {pct(info.get('train_acc'))}, "
            f"held-out {pct(info.get('clean_acc'))}")


def _check_view(c: CheckResult, model: str) -> dict[str, Any]:
    figures = []
    for p in c.plots:
        try:
            uri = plots.draw_plot(p)
        except (plots.PlotError, ValueError, TypeError, OverflowError) as exc:  # numbers from a file: one line
            raise InputError(f"model {model!r}, check {c.check!r}, plot {p.title!r}: {exc}. Rerun the audit.") from None
        figures.append({"title": p.title, "uri": uri, "kind": p.kind})
    return {
        "name": c.check, "flagged": c.flagged, "severity": c.severity.value, "summary": c.summary,
        "mechanism": c.mechanism, "remedy": c.remedy, "duration_s": c.duration_s,
        "evidence": dict(c.evidence), "params": dict(c.params), "doc": c.doc, "figures": figures,
    }
