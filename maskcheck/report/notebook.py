"""The audit result a Python caller holds: the JSON record plus its HTML views.

`maskcheck.audit(...)` returns this `AuditResult`, and `maskcheck.AuditResult.load(path)` reads
one back. It is `results.AuditResult` (the record the CLI writes and the report reads) with two
conveniences that need the renderer, which is why they live here and not in `results.py`
(results depends on nothing above it):

    result.report("audit.html")   # the page `maskcheck report` renders, from memory
    result                        # in Jupyter: verdict, one row per check, the figures inline
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import jinja2

from .. import results
from ..fileio import atomic_write_text
from . import plots
from .loader import ModelEntry, ReportInputs, check_unique, matrix_table
from .render import render_html


@dataclass
class AuditResult(results.AuditResult):
    """`results.AuditResult` with `.report(path)` and `_repr_html_` (Jupyter's rich display)."""

    @classmethod
    def of(cls, record: results.AuditResult) -> "AuditResult":
        """The same audit, with the HTML conveniences (no copy of its contents)."""
        return record if isinstance(record, cls) else cls(**{f.name: getattr(record, f.name) for f in fields(record)})

    def report(self, path: str | Path) -> Path:
        """Write the HTML report of this audit (the page `maskcheck report` renders) to `path`."""
        return atomic_write_text(Path(path), report_html([self]))

    def _repr_html_(self) -> str:
        return notebook_html(self)


def report_html(audits: Sequence[results.AuditResult]) -> str:
    """The report page of `maskcheck report`, rendered from audits in memory (no files read)."""
    entries = []
    for a in audits:
        t = a.model.get("temperature")
        entries.append(ModelEntry(str(a.model.get("name") or "model"), str(a.model.get("method") or "unknown"),
                                  None if t is None else float(t), None, a, Path("<memory>")))
    check_unique(entries)
    return render_html(ReportInputs(entries, [], []), matrix_table(entries))


_NOTEBOOK_TEMPLATE = """\
<div class="maskcheck-audit">
<p><b>{{ verdict }}</b> &mdash; {{ name }}, {{ dataset }}, {{ norm }} eps={{ eps }}, n={{ n }}</p>
<table>
<tr><th>check</th><th>result</th><th>summary</th></tr>
{% for c in checks %}
<tr><td>{{ c.check }}</td><td style="color: {{ colours[c.severity.value] }}">{{ "flagged" if c.flagged else c.severity.value }}</td>
<td style="text-align: left">{{ c.summary }}</td></tr>
{% endfor %}
</table>
<p>{% for k, v in acc %}{{ k }} {{ v }}{% if not loop.last %} &middot; {% endif %}{% endfor %}</p>
{% for f in figures %}<img alt="{{ f.title }}" src="{{ f.uri }}" style="max-width: 32%">{% endfor %}
</div>
"""


def notebook_html(result: results.AuditResult) -> str:
    """Verdict, one row per check and every figure inline; strings escaped (they come from files)."""
    figures = [{"title": "accuracy per attack", "uri": plots.attack_bars(result.clean_acc, dict(result.robust_acc))}]
    for c in result.checks:
        for p in c.plots:
            try:
                uri = plots.draw_plot(p)
            except plots.PlotError:
                uri = None  # a damaged plot in a loaded file: the table still shows
            if uri:
                figures.append({"title": f"{c.check}: {p.title}", "uri": uri})
    acc = [("clean", result.clean_acc), *result.robust_acc.items()]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_NOTEBOOK_TEMPLATE).render(
        verdict=result.verdict.text, name=result.model.get("name"), dataset=result.dataset,
        norm=result.threat.get("norm"), eps=f"{result.threat.get('eps', math.nan):.4g}", n=result.n,
        checks=result.checks, colours={"ok": "#2ca02c", "warn": "#ff7f0e", "fail": "#d62728", "skipped": "#7f7f7f"},
        acc=[(k, f"{100 * float(v):.1f}%") for k, v in acc], figures=figures,
    )


__all__ = ["AuditResult", "notebook_html", "report_html"]
