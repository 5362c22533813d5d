"""Checks of untrusted JSON inputs and of output paths; no torch, so `report` can use it.

* `validate_*`: audit JSON, regression baselines, run.json and sweep.json checked field by field,
  each failure one line naming the file and the field (docs/failure-modes.md);
* `csv_cell`: spreadsheet formulas in CSV cells neutralised;
* `check_out_path` / `check_out_folder`: an output that cannot be written is refused before any work.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import InputError

# The schema versions of run.json and sweep.json (audit.json's is results.SCHEMA_VERSION), here because this
# torch-free module reads them: checkpoint.py, sweep.py and the report import them from here.
RUN_SCHEMA_VERSION = 1
SWEEP_SCHEMA_VERSION = 1


# -------------------------------------------------------------------------- JSON validation


class _Fields:
    """Typed field access on one JSON object; each failure is one line naming file and field."""

    def __init__(self, obj: Any, source: str, where: str = "") -> None:
        self.source, self.where = source, where
        if not isinstance(obj, dict):
            raise InputError(f"{source}: {where or 'the file'} must be a JSON object; got {_kind(obj)}. "
                             "Regenerate it with maskcheck.")
        self.obj = obj

    def _fail(self, key: str, expected: str) -> InputError:
        value = self.obj.get(key)
        return InputError(f"{self.source}: field {self.where}{key} must be {expected}; got {_kind(value)}. "
                          "Regenerate the file with maskcheck (or fix that field).")

    def need(self, key: str, expected: str, ok: Any, optional: bool = False) -> Any:
        if key not in self.obj:
            if optional:
                return None
            raise InputError(f"{self.source}: field {self.where}{key} is missing (expected {expected}). "
                             "Regenerate the file with maskcheck.")
        value = self.obj[key]
        if not ok(value):
            raise self._fail(key, expected)
        return value

    def sub(self, key: str, optional: bool = False) -> "_Fields | None":
        value = self.need(key, "an object", lambda v: isinstance(v, dict), optional)
        return None if value is None else _Fields(value, self.source, f"{self.where}{key}.")


def _kind(v: Any) -> str:
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return repr(v)
    return type(v).__name__.replace("dict", "an object").replace("list", "a list")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _frac(v: Any) -> bool:
    return _num(v) and 0.0 <= v <= 1.0


def _opt(test: Any) -> Any:
    return lambda v: v is None or test(v)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


PLOT_MAX_ABS = 1e30  # ours: plots hold accuracies, losses and logit norms; 1.7e308 overflows matplotlib's ranges


def _plot_num(v: Any) -> bool:
    return v is None or (_num(v) and abs(v) <= PLOT_MAX_ABS)


def _all_finite(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, dict):
        return all(_all_finite(x) for x in v.values())
    if isinstance(v, list):
        return all(_all_finite(x) for x in v)
    return True


def _schema(f: _Fields, version: int) -> None:
    v = f.need("schema_version", f"the integer {version}", _int)
    if v != version:
        raise InputError(f"{f.source} has schema_version {v}; this maskcheck reads {version}. Regenerate it.")


SEVERITIES = ("ok", "warn", "fail", "skipped")


def validate_audit(obj: Any, source: str) -> None:
    """An audit JSON (results.AuditResult.to_dict) with the types, ranges and finite numbers it promises."""
    f = _Fields(obj, source)
    _schema(f, 1)
    f.sub("model")
    f.need("dataset", "a dataset name", _str)
    threat = f.sub("threat")
    threat.need("eps", "a finite number", _num)
    threat.need("norm", "linf or l2", _str)
    f.need("n", "a positive integer", lambda v: _int(v) and v > 0)
    f.need("clean_acc", "a fraction in [0, 1]", _frac)
    robust = f.sub("robust_acc")
    for k in robust.obj:
        robust.need(k, "a fraction in [0, 1]", _frac)
    verdict = f.sub("verdict")
    verdict.need("flagged", "true or false", _bool)
    verdict.need("mechanisms", "a list of strings", lambda v: isinstance(v, list) and all(map(_str, v)))
    verdict.need("text", "a string", _str)
    verdict.need("n_checks", "an integer", _int)
    verdict.need("n_flagged", "an integer", _int)
    checks = f.need("checks", "a list of check results", lambda v: isinstance(v, list))
    for i, c in enumerate(checks):
        cf = _Fields(c, source, f"checks[{i}].")
        cf.need("check", "a check name", _str)
        cf.need("flagged", "true or false", _bool)
        cf.need("severity", "one of " + "/".join(SEVERITIES), lambda v: v in SEVERITIES)
        cf.need("summary", "a string", _str)
        cf.need("evidence", "an object of finite values", lambda v: isinstance(v, dict) and _all_finite(v))
        cf.need("params", "an object of finite values", lambda v: isinstance(v, dict) and _all_finite(v))
        cf.need("mechanism", "a string or null", _opt(_str), optional=True)
        cf.need("remedy", "a string or null", _opt(_str), optional=True)
        cf.need("duration_s", "a finite number", _num, optional=True)
        for j, p in enumerate(cf.need("plots", "a list of plots", lambda v: isinstance(v, list), optional=True) or []):
            pf = _Fields(p, source, f"checks[{i}].plots[{j}].")
            pf.need("kind", "a plot kind", _str)
            pf.need("title", "a string", _str)
            series = pf.need("series", "an object of number lists", lambda v: isinstance(v, dict)
                             and all(isinstance(s, list) and all(map(_plot_num, s)) for s in v.values()))
            pf.need("x", "a list of numbers or null", _opt(lambda v: isinstance(v, list) and all(map(_plot_num, v))),
                    optional=True)
            pf.need("labels", "a list of strings or null", _opt(lambda v: isinstance(v, list) and all(map(_str, v))),
                    optional=True)
            for key in ("xlabel", "ylabel"):
                pf.need(key, "a string", _str, optional=True)
            for key in ("log_x", "log_y"):
                pf.need(key, "true or false", _bool, optional=True)
            del series
    timings = f.sub("timings", optional=True)
    for k in (timings.obj if timings else {}):
        timings.need(k, "a finite number of seconds", _num)


def validate_baseline(obj: Any, source: str, kind: str, version: int) -> None:
    """A regression baseline: every model's `checks.<name>.flagged` a real boolean (never the string "false")."""
    f = _Fields(obj, source)
    if obj.get("kind") != kind:
        raise InputError(f"{source} is not a maskcheck baseline (expected kind {kind!r}). "
                         "Write one with maskcheck regress ... --baseline FILE --write-baseline.")
    _schema(f, version)
    models = f.sub("models")
    for name in models.obj:
        m = models.sub(name)
        m.need("verdict_flagged", "true or false", _bool, optional=True)
        checks = m.sub("checks")
        for check in checks.obj:
            c = checks.sub(check)
            c.need("flagged", "true or false (a JSON boolean)", _bool)
            c.need("severity", "one of " + "/".join(SEVERITIES) + " or null", _opt(lambda v: v in SEVERITIES),
                   optional=True)


def validate_run(obj: Any, source: str, version: int) -> None:
    """A run.json: the fields maskcheck reads back, with their JSON types (numbers are numbers)."""
    f = _Fields(obj, source)
    _schema(f, version)
    f.need("method", "a method name", _str)
    for key in ("name", "arch", "dataset", "teacher"):
        f.need(key, "a string", _opt(_str), optional=True)
    f.need("temperature", "a positive number or null", _opt(lambda v: _num(v) and v > 0), optional=True)
    f.need("model_temperature", "a positive number or null", _opt(lambda v: _num(v) and v > 0), optional=True)
    f.need("seed", "an integer", _opt(_int), optional=True)
    f.need("epochs", "an integer", _opt(_int), optional=True)
    f.need("awp", "true or false", _opt(_bool), optional=True)
    threat = f.sub("threat", optional=True)
    if threat:
        threat.need("eps", "a finite number", _num, optional=True)
        threat.need("norm", "linf or l2", _str, optional=True)
    metrics = f.sub("metrics", optional=True)
    if metrics:  # the numbers the report shows; history and attack settings are not read back
        metrics.need("clean_acc", "a fraction in [0, 1] or null", _opt(_frac), optional=True)
        metrics.need("pgd_acc", "a fraction in [0, 1] or null", _opt(_frac), optional=True)
        metrics.need("train_seconds", "a finite number or null", _opt(_num), optional=True)
        metrics.need("train_acc_eval", "a fraction in [0, 1] or null", _opt(_frac), optional=True)
        history = metrics.need("history", "a list of epoch records", lambda v: isinstance(v, list), optional=True)
        for i, h in enumerate(history or []):  # the report and the sweep read the last epochs' accuracies
            hf = _Fields(h, source, f"metrics.history[{i}].")
            for key in ("train_acc", "train_robust_acc", "clean_acc", "pgd_acc", "loss", "seconds"):
                hf.need(key, "a finite number or null", _opt(_num), optional=True)


def validate_sweep(obj: Any, source: str, version: int, folder: Path | None = None) -> None:
    """A sweep.json: `jobs` a list of objects whose run_dir stays inside the sweep folder; launcher records typed.

    With `folder`, every path it names (jobs' run_dir, the launcher's log and result files) is
    resolved and refused unless it stays inside that folder (`fileio.inside`, symlinks included).
    """
    from .fileio import inside

    f = _Fields(obj, source)
    _schema(f, version)
    jobs = f.need("jobs", "a list of jobs", lambda v: isinstance(v, list))
    names = set()
    for i, job in enumerate(jobs):
        jf = _Fields(job, source, f"jobs[{i}].")
        names.add(jf.need("name", "a string", _str))
        jf.need("method", "a string", _str, optional=True)  # the report needs it (one line when missing there)
        jf.need("temperature", "a positive number or null", _opt(lambda v: _num(v) and v > 0), optional=True)
        jf.need("teacher", "a string or null", _opt(_str), optional=True)
        run_dir = jf.need("run_dir", "a relative path inside the sweep folder",
                          lambda v: _str(v) and v and not Path(v).is_absolute() and ".." not in Path(v).parts)
        if folder is not None:
            inside(folder, run_dir, f"{source}: jobs[{i}].run_dir")
    f.need("select_temperature", "true or false", _opt(_bool), optional=True)
    launcher = f.sub("launcher", optional=True)
    if launcher:
        launcher.need("executor", "a string", _str, optional=True)
    tasks = launcher.sub("tasks", optional=True) if launcher else None
    for key in (tasks.obj if tasks else {}):
        t = tasks.sub(key)
        t.need("job_id", "a job id", lambda v: _str(v) or _int(v), optional=True)
        for field in ("log", "result"):
            rel = t.need(field, "a relative path inside the sweep folder", _str, optional=True)
            if rel is not None and folder is not None:
                inside(folder, rel, f"{source}: launcher.tasks.{key}.{field}")


def read_sweep(sweep_dir: Path, version: int = 1) -> dict[str, Any]:
    """sweep.json of `sweep_dir`, validated (`validate_sweep` with the folder): what every command reads."""
    from .fileio import read_json

    path = Path(sweep_dir) / "sweep.json"
    data = read_json(path, "sweep manifest")
    validate_sweep(data, str(path), version, folder=Path(sweep_dir))
    return data


# ------------------------------------------------------------------------------ output side


def csv_cell(value: Any) -> Any:
    """A string cell that a spreadsheet would run as a formula (= + - @, tab, CR) gets a leading quote.

    A lone "-" (unknown) and plain numbers ("-1.5") run nothing and stay as they are.
    """
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") and value != "-":
        try:
            float(value)
            return value
        except ValueError:
            return "'" + value
    return value


def md_cell(value: Any) -> Any:
    """A Markdown table cell: HTML escaped (renderers pass raw HTML through), no cell-splitting `|`, no
    line breaks, no link brackets; non-strings unchanged."""
    if not isinstance(value, str):
        return value
    text = html.escape(" ".join(value.split()))
    for ch in "\\|[]`":
        text = text.replace(ch, "\\" + ch)
    return text


def csv_text(frame: Any) -> str:
    """Every CSV the report writes: a pandas frame with each string cell (and header) neutralised."""
    out = frame.map(csv_cell)
    out.columns = [csv_cell(str(c)) for c in out.columns]
    return out.to_csv(index=False)


def markdown_text(frame: Any) -> str:
    """Every Markdown table the report writes: each string cell (and header) escaped by `md_cell`."""
    out = frame.map(md_cell)
    out.columns = [md_cell(str(c)) for c in out.columns]
    return out.to_markdown(index=False)


def check_out_path(path: Path, option: str) -> None:
    """Refuse an output path that cannot be written, before any work is done (creates nothing).

    `option` is the flag that set it (e.g. `--out`), named in the message.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file path.")
    if path.exists() and not path.is_file():  # a device, FIFO or socket (or a link to one) is never replaced
        raise InputError(f"{option} {path} exists and is not a regular file (a device, FIFO or socket?); "
                         f"choose another {option}.")
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{option} {path} lies under {parent}, which is a file, not a folder; choose another {option}.")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{option} {path} is not writable (no write permission in {parent}); choose another {option}.")


def check_out_folder(folder: Path, option: str) -> None:
    """Like `check_out_path`, for an output folder (it may exist, then it must be a writable folder)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} is a file, not a folder; choose another {option}.")
    if folder.is_dir():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"{option} {folder} is not writable; choose another {option}.")
        return
    check_out_path(folder / "x", option)
