"""Masking-flag regression: compare audits with a stored baseline of verdicts.

A baseline records, per model, whether each check flagged masking (and its severity). A
regression is any change: a new flag, a lost flag, a check that appeared or disappeared, or
a model missing on either side. Evidence numbers are printed with each change but are not
compared (they move with hardware and library versions; the verdicts must not).

Baseline JSON:
    {"schema_version": 1, "kind": "maskcheck-baseline", "models": {
        "<model name>": {"verdict_flagged": bool,
                         "checks": {"<check>": {"flagged": bool, "severity": "ok|warn|fail|skipped"}}}}}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .config import provenance
from .errors import InputError
from .fileio import atomic_write_json, read_json
from .results import AuditResult
from .validate import validate_audit, validate_baseline

BASELINE_SCHEMA_VERSION = 1
BASELINE_KIND = "maskcheck-baseline"


def collect_audits(inputs: Iterable[str | Path]) -> dict[str, AuditResult]:
    """Audits keyed by model name, from audit JSON files and sweep folders (runs/*/audit.json)."""
    audits: dict[str, AuditResult] = {}
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files = sorted(item.glob("runs/*/audit.json")) or sorted(item.glob("*/audit.json")) or sorted(item.glob("audit.json"))
            if not files:
                raise InputError(f"{item} holds no audit.json (looked in runs/*/, */ and itself). Run maskcheck audit first.")
        elif item.is_file():
            files = [item]
        else:
            raise InputError(f"not found: {item}. Pass audit JSON files or sweep folders.")
        for f in files:
            data = read_json(f, "audit JSON")
            validate_audit(data, str(f))
            audit = AuditResult.from_dict(data)
            name = str(audit.model.get("name") or f.parent.name)
            if name in audits:
                raise InputError(f"two audits name the model {name!r} ({f}); give each model a unique name.")
            audits[name] = audit
    return audits


def baseline_from_audits(audits: Mapping[str, AuditResult]) -> dict[str, Any]:
    models = {
        name: {
            "verdict_flagged": a.verdict.flagged,
            "checks": {c.check: {"flagged": c.flagged, "severity": c.severity.value} for c in a.checks},
        }
        for name, a in sorted(audits.items())
    }
    return {"schema_version": BASELINE_SCHEMA_VERSION, "kind": BASELINE_KIND, **provenance("n/a", None), "models": models}


def write_baseline(path: str | Path, audits: Mapping[str, AuditResult]) -> Path:
    if not audits:
        raise InputError("no audits to write a baseline from.")
    return atomic_write_json(path, baseline_from_audits(audits))


def load_baseline(path: str | Path) -> dict[str, Any]:
    data = read_json(path, "baseline")
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a maskcheck baseline (expected a JSON object). "
                         "Write one with maskcheck regress ... --baseline FILE --write-baseline.")
    validate_baseline(data, str(path), BASELINE_KIND, BASELINE_SCHEMA_VERSION)
    return data


@dataclass(frozen=True)
class Change:
    model: str
    check: str  # "*" for a model-level change
    before: str
    after: str
    evidence: str = ""

    def line(self) -> str:
        text = f"{self.model:<16} {self.check:<24} {self.before} -> {self.after}"
        return text + (f"   [{self.evidence}]" if self.evidence else "")


def _state(flagged: bool | None, severity: str | None) -> str:
    if flagged is None:
        return "absent"
    return ("FLAGGED" if flagged else "clean") + (f" ({severity})" if severity else "")


def _evidence_text(evidence: Mapping[str, Any], limit: int = 4) -> str:
    items = [(k, v) for k, v in evidence.items() if isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) < 40)]
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items[:limit]]
    return ", ".join(parts)


def compare(baseline: Mapping[str, Any], audits: Mapping[str, AuditResult]) -> list[Change]:
    """Every difference in flags between `baseline` and `audits`, in a stable order."""
    changes: list[Change] = []
    base_models: Mapping[str, Any] = baseline["models"]
    for model in sorted(set(base_models) | set(audits)):
        if model not in audits:
            changes.append(Change(model, "*", "audited", "absent", "no audit for this model"))
            continue
        if model not in base_models:
            changes.append(Change(model, "*", "absent", "audited", "model not in the baseline"))
            continue
        before_checks: Mapping[str, Any] = base_models[model].get("checks", {})
        after = {c.check: c for c in audits[model].checks}
        for check in sorted(set(before_checks) | set(after)):
            b = before_checks.get(check)
            a = after.get(check)
            b_flag = None if b is None else b["flagged"]  # a JSON boolean (validate_baseline)
            a_flag = None if a is None else a.flagged
            if b_flag != a_flag:
                note = ("check no longer run" if a is None else
                        "new check, not in the baseline (record it with --write-baseline); " if b is None else "")
                changes.append(Change(
                    model, check,
                    _state(b_flag, None if b is None else b.get("severity")),
                    _state(a_flag, None if a is None else a.severity.value),
                    note + ("" if a is None else _evidence_text(a.evidence)),
                ))
    return changes


def format_diff(changes: list[Change]) -> str:
    if not changes:
        return "no change against the baseline"
    header = f"{'model':<16} {'check':<24} before -> after   [evidence]"
    return "\n".join([f"{len(changes)} change(s) against the baseline:", header, *(c.line() for c in changes)])
