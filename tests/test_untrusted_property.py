"""Random JSON never crashes a command (issue 26): report, regress, audit SWEEP and sweep-status exit 0, 1 or 2.

Hypothesis mutates a real sweep folder (sweep.json, run.json, audit.json, a regression baseline;
one field replaced by a random JSON value or removed) or replaces a file by random JSON, then
runs each command in-process. Exit 3 (an internal error) is the failure this test looks for.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskcheck import cli

DATA = Path(__file__).resolve().parents[1] / "reports" / "digits" / "data"
JOB = "dd-T2"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    | st.sampled_from(["../x", "/etc/passwd", "=cmd|' /C calc'!A0", "<script>", "", "runs", "linf", "ok", "fail"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _templates() -> dict[str, Any]:
    sweep = json.loads((DATA / "sweep.json").read_text())
    job = next(j for j in sweep["jobs"] if j["run_dir"].endswith(JOB))
    sweep["jobs"] = [job]
    sweep.pop("teachers", None)
    audit = json.loads((DATA / job["run_dir"] / "audit.json").read_text())
    for c in audit["checks"]:
        c["plots"] = c.get("plots", [])[:1]
        for p in c["plots"]:
            p["series"] = {k: v[:20] for k, v in list(p["series"].items())[:2]}
            if p.get("x"):
                p["x"] = p["x"][:20]
    run = json.loads((DATA / job["run_dir"] / "run.json").read_text())
    job["run_dir"] = f"runs/{JOB}"  # where regress looks (runs/*/audit.json)
    baseline = {"kind": "maskcheck-baseline", "schema_version": 1,
                "models": {job["name"]: {"verdict_flagged": audit["verdict"]["flagged"],
                                         "checks": {c["check"]: {"flagged": c["flagged"], "severity": c["severity"]}
                                                    for c in audit["checks"]}}}}
    return {"sweep": sweep, "run": run, "audit": audit, "baseline": baseline, "run_dir": job["run_dir"]}


TEMPLATES = _templates() if (DATA / "sweep.json").is_file() else None


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, Any]:
    """(which file, its new content): a template with one field replaced or removed, or random JSON."""
    which = draw(st.sampled_from(["sweep", "run", "audit", "baseline"]))
    obj = copy.deepcopy(TEMPLATES[which])
    if draw(st.integers(0, 9)) == 0:
        return which, draw(json_values)
    node: Any = obj
    for _ in range(draw(st.integers(0, 5))):  # walk down to a random container
        keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not keys:
            break
        child = node[draw(st.sampled_from(keys))]
        if not isinstance(child, (dict, list)) or not child:
            break
        node = child
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if keys:
        key = draw(st.sampled_from(keys))
        if isinstance(node, dict) and draw(st.booleans()) and draw(st.booleans()):
            del node[key]
        else:
            node[key] = draw(json_values)
    return which, obj


def _write_sweep(root: Path, which: str, content: Any) -> Path:
    sweep = root / "sweep"
    files = {"sweep": sweep / "sweep.json", "run": sweep / TEMPLATES["run_dir"] / "run.json",
             "audit": sweep / TEMPLATES["run_dir"] / "audit.json", "baseline": root / "baseline.json"}
    for name, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content if name == which else TEMPLATES[name]))
    return sweep


def _exit_code(args: list[str]) -> int:
    try:
        cli.main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


COMMANDS = {
    "report": lambda root, sweep: ["report", str(sweep), "-o", str(root / "out" / "r.html")],
    "regress": lambda root, sweep: ["regress", str(sweep), "--baseline", str(root / "baseline.json")],
    "audit": lambda root, sweep: ["audit", str(sweep), "--quiet"],
    "sweep-status": lambda root, sweep: ["sweep-status", str(sweep)],
}


@pytest.mark.skipif(TEMPLATES is None, reason="reports/digits/data not in this checkout")
@pytest.mark.parametrize("command", list(COMMANDS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(case=mutated())
def test_random_json_never_crashes(command: str, case: tuple[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="mc-prop-"))
    try:
        sweep = _write_sweep(root, *case)
        code = _exit_code(COMMANDS[command](root, sweep))
        err = capsys.readouterr().err
        assert code in (0, 1, 2), f"{command} exited {code} on {case[0]}: {err[-600:]}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
