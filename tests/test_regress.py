"""The regression diff: every flag change is reported, nothing else is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskcheck.errors import InputError
from maskcheck.regress import collect_audits, compare, format_diff, load_baseline, write_baseline
from maskcheck.results import AuditResult, CheckResult, Severity, Verdict


def _audit(name: str, flags: dict[str, bool]) -> AuditResult:
    checks = [
        CheckResult(check=c, flagged=f, severity=Severity.FAIL if f else Severity.OK, summary="s",
                    evidence={"gap": 0.25 if f else 0.0, "n": 100}, params={"seed": 0}, mechanism=c if f else None)
        for c, f in flags.items()
    ]
    return AuditResult(
        model={"name": name}, dataset="digits", threat={"eps": 0.3, "norm": "linf"}, n=100, clean_acc=0.9,
        robust_acc={"pgd-ce": 0.5}, checks=checks, verdict=Verdict.from_checks(checks),
        provenance={"seed": 0, "device": "cpu"},
    )


def _write(tmp: Path, audit: AuditResult) -> Path:
    path = tmp / "runs" / str(audit.model["name"]) / "audit.json"
    audit.save(path)
    return path


def test_same_flags_give_no_change(tmp_path: Path) -> None:
    audits = {"dd-T100": _audit("dd-T100", {"logit-magnitude": True, "gradient-health": True}),
              "trades": _audit("trades", {"logit-magnitude": False, "gradient-health": False})}
    base = tmp_path / "baseline.json"
    write_baseline(base, audits)
    assert compare(load_baseline(base), audits) == []
    assert format_diff([]) == "no change against the baseline"


@pytest.mark.parametrize("flip_to", [True, False])
def test_new_or_lost_flag_is_named(tmp_path: Path, flip_to: bool) -> None:
    before = {"m": _audit("m", {"logit-magnitude": not flip_to, "gradient-health": False})}
    write_baseline(tmp_path / "b.json", before)
    after = {"m": _audit("m", {"logit-magnitude": flip_to, "gradient-health": False})}
    changes = compare(load_baseline(tmp_path / "b.json"), after)
    assert [(c.model, c.check) for c in changes] == [("m", "logit-magnitude")]
    text = format_diff(changes)
    assert "logit-magnitude" in text and ("clean (ok) -> FLAGGED (fail)" if flip_to else "FLAGGED (fail) -> clean (ok)") in text


def test_missing_and_extra_models_and_checks(tmp_path: Path) -> None:
    write_baseline(tmp_path / "b.json", {"a": _audit("a", {"x": False}), "b": _audit("b", {"x": False})})
    after = {"a": _audit("a", {"x": False, "y": True}), "c": _audit("c", {"x": False})}
    got = {(c.model, c.check, c.before, c.after) for c in compare(load_baseline(tmp_path / "b.json"), after)}
    assert got == {("a", "y", "absent", "FLAGGED (fail)"), ("b", "*", "audited", "absent"), ("c", "*", "absent", "audited")}


def test_collect_from_sweep_folder_and_files(tmp_path: Path) -> None:
    p1 = _write(tmp_path, _audit("ltd-T5", {"x": False}))
    _write(tmp_path, _audit("dd-T20", {"x": True}))
    assert set(collect_audits([tmp_path])) == {"ltd-T5", "dd-T20"}
    assert set(collect_audits([p1])) == {"ltd-T5"}
    with pytest.raises(InputError, match="unique"):
        collect_audits([p1, p1])


def test_bad_baseline_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(InputError, match="not a maskcheck baseline"):
        load_baseline(bad)
    bad.write_text("{truncated")
    with pytest.raises(InputError, match="not valid JSON"):
        load_baseline(bad)


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from maskcheck.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_regress_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """0 when flags match, 1 with a diff naming the check when one flips, 2 on a bad baseline."""
    sweep = tmp_path / "sweep"
    _write(sweep, _audit("dd-T100", {"logit-magnitude": True}))
    _write(sweep, _audit("trades", {"logit-magnitude": False}))
    base = tmp_path / "expected.json"
    assert _cli(["regress", str(sweep), "--baseline", str(base), "--write-baseline"], capsys)[0] == 0
    assert _cli(["regress", str(sweep), "--baseline", str(base)], capsys)[0] == 0

    _write(sweep, _audit("trades", {"logit-magnitude": True}))
    code, out, _ = _cli(["regress", str(sweep), "--baseline", str(base)], capsys)
    assert code == 1
    assert "trades" in out and "logit-magnitude" in out and "clean (ok) -> FLAGGED (fail)" in out

    code, _, err = _cli(["regress", str(sweep), "--baseline", str(tmp_path / "missing.json")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_a_new_check_is_named_as_new_not_as_a_changed_flag(tmp_path: Path) -> None:
    """Issue 25: adding a check moves the baseline; the diff says so instead of reporting a flag that changed."""
    write_baseline(tmp_path / "b.json", {"a": _audit("a", {"x": False, "old": False})})
    changes = compare(load_baseline(tmp_path / "b.json"), {"a": _audit("a", {"x": False, "new": False})})
    by_check = {c.check: c for c in changes}
    assert set(by_check) == {"new", "old"}
    assert by_check["new"].before == "absent" and by_check["new"].evidence.startswith("new check, not in the baseline")
    assert by_check["old"].after == "absent" and by_check["old"].evidence == "check no longer run"
    assert "--write-baseline" in format_diff(changes)
