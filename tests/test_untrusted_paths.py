"""Paths read from JSON files stay inside their folder (issue 26): one helper, every command.

A sweep folder is a file a stranger can hand over: its sweep.json names run folders and task
logs. `audit SWEEP`, `sweep-status` and `report` resolve each (symlinks included) and refuse,
exit 2, anything that leads outside the sweep; nothing is read or written out there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskcheck import cli
from maskcheck.errors import EXIT_USAGE, InputError
from maskcheck.fileio import inside
from test_untrusted import _main, _one_error


def _sweep(folder: Path, run_dir: str = "runs/natural", log: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"schema_version": 1, "kind": "sweep", "dataset": "digits",
                      "jobs": [{"name": "natural", "method": "natural", "temperature": None, "run_dir": run_dir}]}
    if log is not None:
        manifest["launcher"] = {"kind": "slurm", "executor": "slurm",
                                "tasks": {"train:natural": {"job_id": "1", "log": log, "result": "jobs/r.json"}}}
    (folder / "sweep.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("rel", ["../victim/run", "/etc", "runs/../../x", "", "a/\0b"])
def test_inside_refuses_paths_that_leave_the_folder(tmp_path: Path, rel: str) -> None:
    with pytest.raises(InputError):
        inside(tmp_path, rel, "run_dir")


def test_inside_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "sweep").mkdir()
    (tmp_path / "victim").mkdir()
    (tmp_path / "sweep" / "link").symlink_to(tmp_path / "victim")
    with pytest.raises(InputError, match="outside"):
        inside(tmp_path / "sweep", "link/run", "run_dir")
    assert inside(tmp_path / "sweep", "runs/a", "run_dir") == tmp_path / "sweep" / "runs/a"


@pytest.mark.parametrize("command", [["audit"], ["sweep-status"], ["report"]])
@pytest.mark.parametrize("run_dir", ["../victim/run", "link/run"])
def test_sweep_run_dir_outside_the_sweep_is_refused_by_every_command(tmp_path: Path, command: list[str], run_dir: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    victim = tmp_path / "victim" / "run"
    victim.mkdir(parents=True)
    sweep = _sweep(tmp_path / "sweep", run_dir)
    (sweep / "link").symlink_to(tmp_path / "victim")
    args = [*command, str(sweep)] + (["--quiet"] if command == ["audit"] else [])
    code, err = _main(args, capsys)
    assert code == EXIT_USAGE, err
    _one_error(err, "run_dir")
    assert not (victim / "audit.json").exists()


@pytest.mark.parametrize("log", ["../../../../etc/passwd", "/etc/passwd", "jobs/link"])
def test_sweep_status_never_prints_a_log_outside_the_sweep(tmp_path: Path, log: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-LINE\n")
    sweep = _sweep(tmp_path / "sweep", log=log)
    (sweep / "jobs").mkdir()
    (sweep / "jobs" / "link").symlink_to(secret)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep-status", str(sweep)])
    captured = capsys.readouterr()
    assert exit_info.value.code == EXIT_USAGE and "TOP-SECRET" not in captured.out + captured.err
    _one_error([x for x in captured.err.splitlines() if x.startswith("maskcheck")], "log")
