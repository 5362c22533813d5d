"""The CLI shell, run as a user runs it: a subprocess, its exit code, stdout and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from maskcheck import __version__

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"}


def _run(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "maskcheck", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_help_lists_the_commands() -> None:
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "train-sweep", "audit", "report"):
        assert f" {command} " in proc.stdout
    assert "--version" in proc.stdout


def test_version() -> None:
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"maskcheck {__version__}"


def test_unknown_command_is_a_usage_error() -> None:
    proc = _run("trian")
    assert proc.returncode == 2 and "No such command" in proc.stderr and "Traceback" not in proc.stderr


# A throwaway command on the real app, so main()'s error handling is tested without depending on
# what the train / audit / report commands do today. In the subprocess it imports no torch (fast).
_WITH_TEST_COMMAND = """
import sys
from maskcheck import cli
from maskcheck.errors import InputError

@cli.app.command("probe")
def probe(interrupt: bool = False) -> None:
    if interrupt:
        raise KeyboardInterrupt
    raise InputError("eps must lie in (0, 1]; got 2.0.")

cli.main(sys.argv[1:])
"""


def test_main_turns_a_user_error_into_one_line_and_exit_2() -> None:
    proc = _run("probe", script=_WITH_TEST_COMMAND)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "maskcheck: error: eps must lie in (0, 1]; got 2.0.\n"


def test_ctrl_c_exits_130_with_a_message_and_no_traceback() -> None:
    proc = _run("probe", "--interrupt", script=_WITH_TEST_COMMAND)
    assert proc.returncode == 130 and "interrupted" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture()
def probe_app() -> Iterator[None]:
    """Register a `probe` command that parses --device, --eps and --temps like the real commands."""
    import typer

    from maskcheck import cli
    from maskcheck.config import parse_eps, parse_temps, resolve_device

    def probe(device: str = typer.Option("auto", "--device"), eps: str = "0.3", temps: str = "1,2") -> None:
        print(resolve_device(device), parse_eps(eps), parse_temps(temps))

    cli.app.command("probe")(probe)
    yield
    cli.app.registered_commands.pop()


def _main(*args: str) -> int:
    from maskcheck.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return int(exit_.value.code or 0)


def test_probe_command_runs(probe_app: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main("probe", "--device", "cpu", "--eps", "8/255") == 0
    assert capsys.readouterr().out.strip() == f"cpu {8 / 255} [1.0, 2.0]"


@pytest.mark.parametrize("args, expected", [
    (("--device", "tpu"), "--device must be auto, cpu or cuda[:n]"),
    (("--device", "cuda:x"), "--device"),
    (("--eps", "2"), "eps must lie in (0, 1]"),
    (("--eps", "0"), "eps must lie in (0, 1]"),
    (("--temps", "a,b"), "--temps must be comma-separated positive numbers"),
    (("--temps", "-1"), "temperatures must be positive"),
    (("--temps", ""), "--temps must be comma-separated positive numbers"),
])
def test_parse_errors_are_one_line_exit_2(probe_app: None, capsys: pytest.CaptureFixture[str],
                                          args: tuple[str, ...], expected: str) -> None:
    assert _main("probe", *args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maskcheck: error: ") and expected in lines[0]
    assert out == ""
