"""Turn report inputs (sweep folders, audit JSON files) into model entries and one pandas table.

The report reads JSON only: `sweep.json` lists the planned jobs, each run folder's `run.json`
says how the model was trained, and `audit.json` (optional) holds the audit. A job whose
audit (or training) is missing stays in the table, marked, so a half-finished sweep still
renders. Contracts: ARCHITECTURE.md ("Run folder", "Sweep folder", "Audit JSON").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from ..errors import InputError
from ..fileio import read_json
from ..results import ATTACK_SENSITIVE, INCONCLUSIVE, MASKED, NO_MASKING, AuditResult
from ..validate import RUN_SCHEMA_VERSION, SWEEP_SCHEMA_VERSION, validate_audit, validate_run, validate_sweep

# Columns of the matrix table, in order; the CSV and Markdown files use the same ones.
ACC_COLUMNS = ("clean_acc", "pgd-ce", "white-box", "square", "worst-case")
COLUMNS = ("method", "temperature", "name", *ACC_COLUMNS, "verdict", "flagged_checks", "audit_missing", "seed", "train_phase_acc")

# Cell status shown in the matrix: the audit's grade (results.Verdict) or why there is none; the CSS
# colours them (templates/report.html.j2).
SENSITIVE = ATTACK_SENSITIVE
INCONCLUSIVE_STATUS = INCONCLUSIVE  # a degenerate (collapsed) model: the audit makes no claim
NOT_AUDITED, NOT_TRAINED = "not audited", "not trained"


@dataclass
class ModelEntry:
    """One model of the report: what trained it (run.json) and what the audit found (audit.json)."""

    name: str
    method: str  # "dd", "trades", ...; "+awp" appended when trained with AWP, " teacher" for dd's teachers
    temperature: float | None  # the method's distillation temperature; None for methods without one
    run: Mapping[str, Any] | None  # run.json, None when the job has not finished training
    audit: AuditResult | None  # None when the model has not been audited
    source: Path  # the run folder or the audit file it came from
    seed: int | None = None  # the training seed of a multi-seed sweep (`--seeds`), else None
    group: str | None = None  # the name shared over seeds (`ltd-T5` for `ltd-T5-s1`); None = the name

    @property
    def train_phase_acc(self) -> float:
        """The last epoch's training-phase robust accuracy (inner attack on training batches); NaN if none."""
        history = ((self.run or {}).get("metrics") or {}).get("history") or []
        for h in reversed(history):
            if isinstance(h, Mapping) and h.get("train_robust_acc") is not None:
                return float(h["train_robust_acc"])
        return math.nan

    @property
    def status(self) -> str:
        if self.audit is None:
            return NOT_AUDITED if self.run is not None else NOT_TRAINED
        if self.audit.verdict.flagged:
            return MASKED
        if self.audit.verdict.grade == ATTACK_SENSITIVE:  # graded verdict (results.Verdict)
            return SENSITIVE
        if self.audit.verdict.grade == INCONCLUSIVE:
            return INCONCLUSIVE_STATUS
        return NO_MASKING

    @property
    def flagged_checks(self) -> list[str]:
        return [c.check for c in self.audit.checks if c.flagged] if self.audit else []

    def robust(self, attack: str) -> float:
        """Accuracy under `attack` (a robust_acc key, or clean_acc); NaN when unknown."""
        if self.audit is None:
            return math.nan
        value = self.audit.clean_acc if attack == "clean_acc" else self.audit.robust_acc.get(attack)
        return math.nan if value is None else float(value)


@dataclass
class ReportInputs:
    entries: list[ModelEntry]
    sweeps: list[Mapping[str, Any]]  # the sweep.json manifests read, for the report header
    sweep_dirs: list[Path]


def load_inputs(inputs: Iterable[str | Path]) -> ReportInputs:
    """Read every input; raises InputError (one line) for a missing path or a foreign JSON file."""
    entries: list[ModelEntry] = []
    sweeps: list[Mapping[str, Any]] = []
    sweep_dirs: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            sweep_file = path / "sweep.json"
            if not sweep_file.is_file():
                raise InputError(f"{path} has no sweep.json. Pass a folder made by maskcheck train-sweep, or audit.json files.")
            path = sweep_file
        elif not path.is_file():
            raise InputError(f"not found: {path}. Pass sweep folders or audit.json files.")
        data = read_json(path, "report input")
        if isinstance(data, dict) and data.get("kind") == "sweep":
            sweeps.append(_check_sweep(data, path))
            sweep_dirs.append(path.parent)
            entries += _sweep_entries(data, path.parent)
        elif isinstance(data, dict) and "checks" in data and "verdict" in data:
            entries.append(_audit_entry(_load_audit(path, data), path))
        else:
            raise InputError(f"{path} is neither a maskcheck sweep.json nor an audit JSON. Pass sweep folders or audit.json files.")
    if not entries:
        raise InputError("the inputs hold no models (empty sweep?). Run maskcheck train-sweep and maskcheck audit first.")
    check_unique(entries)
    return ReportInputs(entries, sweeps, sweep_dirs)


def _check_sweep(data: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    validate_sweep(data, str(path), SWEEP_SCHEMA_VERSION, folder=path.parent)  # run_dirs inside the sweep
    return data


def _sweep_entries(sweep: Mapping[str, Any], root: Path) -> list[ModelEntry]:
    try:
        jobs = [(j["name"], j["method"], j.get("temperature"), j.get("teacher"), root / j["run_dir"]) for j in sweep["jobs"]]
        extra = {j["name"]: (j.get("seed") if j.get("group") else None, j.get("group"), j.get("variant")) for j in sweep["jobs"]}
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{root / 'sweep.json'} has a job without {exc}. Rerun train-sweep.") from None
    # dd trains a teacher per T (dd-teacher-T10) with the same method and T as its student
    # (dd-T10); they get their own matrix row so the two never share a cell or a headline.
    # train-sweep does not audit these intermediates, so an unaudited teacher is left out rather
    # than reported as missing.
    methods = {name: method for name, method, *_ in jobs}
    teachers = {teacher for _, method, _, teacher, _ in jobs if teacher and methods.get(teacher) == method}
    entries = []
    for name, method, temperature, _, run_dir in jobs:
        run = _read_run(run_dir / "run.json")
        audit_file = run_dir / "audit.json"
        audit = _load_audit(audit_file, read_json(audit_file, "audit JSON")) if audit_file.is_file() else None
        if name in teachers and audit is None:
            continue
        seed, group, variant = extra[name]
        label = _method_label(method, bool(run and run.get("awp"))) + _variant_label(variant) + (" teacher" if name in teachers else "")
        entries.append(ModelEntry(str(name), label, _temperature(temperature), run, audit, run_dir,
                                  _seed(seed), str(group) if group is not None else None))
    return entries


def _load_audit(path: Path, data: Any) -> AuditResult:
    """AuditResult.from_dict, with the file named in its error (a sweep holds many audit.json)."""
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a maskcheck audit JSON (expected an object). Produce it with maskcheck audit.")
    validate_audit(data, str(path))
    try:
        return AuditResult.from_dict(data)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def _audit_entry(audit: AuditResult, path: Path) -> ModelEntry:
    """An audit given alone; a run.json beside it (the usual run folder) adds the training facts."""
    run = _read_run(path.parent / "run.json")
    model = audit.model
    name = model.get("name") or (run or {}).get("name") or path.parent.name
    method = model.get("method") or (run or {}).get("method") or "unknown"
    temperature = run["temperature"] if run and "temperature" in run else model.get("temperature")
    awp = bool((run or {}).get("awp") or model.get("awp"))
    return ModelEntry(str(name), _method_label(method, awp), _temperature(temperature), run, audit, path)


def _read_run(path: Path) -> Mapping[str, Any] | None:
    if not path.is_file():
        return None
    run = read_json(path, "run.json")
    validate_run(run, str(path), RUN_SCHEMA_VERSION)
    return run


def _method_label(method: Any, awp: bool) -> str:
    return f"{method}+awp" if awp else str(method)


def _variant_label(variant: Any) -> str:
    """A sweep arm's variant as a method-label suffix: `beta1` -> ` (beta=1)`, `innerkl` -> ` (inner=kl)`."""
    if not variant:
        return ""
    v = str(variant)
    for key in ("beta", "inner"):
        if v.startswith(key):
            return f" ({key}={v[len(key):]})"
    return f" ({v})"


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"a sweep job's seed must be an integer or null; got {value!r}. Rerun train-sweep.")
    return value


def _temperature(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"temperature must be a number or null; got {value!r}. Fix the run or audit JSON.") from None


def check_unique(entries: list[ModelEntry]) -> None:
    seen: dict[str, Path] = {}
    for e in entries:
        if e.name in seen:
            raise InputError(f"two inputs name the model {e.name!r} ({seen[e.name]} and {e.source}); pass each model once.")
        seen[e.name] = e.source


def sort_key(entry: ModelEntry) -> tuple[str, float]:
    """Method, then temperature (models without one first)."""
    return entry.method, -math.inf if entry.temperature is None else entry.temperature


def matrix_table(entries: Iterable[ModelEntry]) -> pd.DataFrame:
    """One row per model: the numbers of the overview matrix, accuracies as fractions (NaN if not audited)."""
    rows = [
        {
            "method": e.method,
            "temperature": e.temperature,
            "name": e.name,
            **{col: e.robust(col) for col in ACC_COLUMNS},
            "verdict": e.status,
            "flagged_checks": ", ".join(e.flagged_checks),
            "audit_missing": e.audit is None,
            "seed": math.nan if e.seed is None else float(e.seed),
            "train_phase_acc": e.train_phase_acc,
        }
        for e in sorted(entries, key=sort_key)
    ]
    # float even when no model has a temperature, so "no temperature" is always NaN, never None
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype({"temperature": float, "seed": float, "train_phase_acc": float})
