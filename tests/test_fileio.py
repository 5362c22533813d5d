"""Atomic writes: a reader sees the old file or the new one, never a half-written one or a temp file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from maskcheck.errors import InputError
from maskcheck.fileio import atomic_write, atomic_write_json, atomic_write_text, read_json

REPO = Path(__file__).resolve().parents[1]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_and_read_back(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "sub" / "a.json", {"x": [1, 2.5], "s": "é"})
    assert read_json(tmp_path / "sub" / "a.json") == {"x": [1, 2.5], "s": "é"}
    assert _names(tmp_path / "sub") == ["a.json"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, error: type[BaseException]) -> None:
    target = atomic_write_text(tmp_path / "report.html", "old")

    def write(f) -> None:  # noqa: ANN001
        f.write(b"half of the new cont")
        raise error("disk on fire")

    with pytest.raises(error):
        atomic_write(target, write)
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["report.html"]


def test_failed_first_write_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "new.bin", lambda f: (_ for _ in ()).throw(ValueError("boom")))
    assert _names(tmp_path) == []


def test_nan_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "a.json", {"acc": float("nan")})
    assert _names(tmp_path) == []


def test_output_path_that_is_a_folder_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "report.html").mkdir()
    with pytest.raises(InputError) as err:
        atomic_write_text(tmp_path / "report.html", "x")
    assert "report.html" in str(err.value) and "\n" not in str(err.value)
    assert _names(tmp_path) == ["report.html"] and _names(tmp_path / "report.html") == []


def test_output_folder_below_a_file_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file, not a folder")
    with pytest.raises(InputError, match="cannot create output folder"):
        atomic_write_json(tmp_path / "out" / "run" / "run.json", {})


_WRITE = """
import sys
from maskcheck.errors import InputError
from maskcheck.fileio import atomic_write_json
try:
    atomic_write_json(sys.argv[1], {"a": 1})
except InputError as exc:
    print("InputError:", exc)
    sys.exit(2)
print("written")
"""

# Mount a read-only tmpfs in a private mount namespace (nothing leaks out), then try to write in it.
_IN_READ_ONLY_MOUNT = 'mount -t tmpfs -o ro,size=64k tmpfs "$1" || exit 99; shift; exec "$@"'


def _write_in_read_only_folder_as_root(folder: Path) -> subprocess.CompletedProcess:
    """Root ignores mode bits, so make the folder really read-only: a read-only mount, else user nobody."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-c", _WRITE, str(folder / "audit.json")]
    if shutil.which("unshare"):
        proc = subprocess.run(["unshare", "--mount", "sh", "-c", _IN_READ_ONLY_MOUNT, "sh", str(folder), *cmd],
                              env=env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 99 and "unshare failed" not in proc.stderr:
            return proc
    os.chmod(folder, 0o555)
    try:
        proc = subprocess.run(cmd, user=65534, group=65534, env=env, capture_output=True, text=True, timeout=60, cwd="/")
    except PermissionError as exc:  # cannot switch user, or nobody cannot reach this interpreter
        pytest.skip(f"running as root with no way to make a folder read-only (no mount namespace; {exc})")
    if proc.returncode == 1 and ("No module named" in proc.stderr or "Permission denied" in proc.stderr):
        pytest.skip(f"user nobody cannot run maskcheck from {REPO}")
    return proc


def test_read_only_output_folder_is_an_input_error() -> None:
    base = Path(tempfile.mkdtemp(prefix="maskcheck-ro-"))
    ro = base / "ro"
    ro.mkdir()
    os.chmod(base, 0o755)
    try:
        if os.geteuid() != 0:
            os.chmod(ro, 0o555)
            with pytest.raises(InputError, match="not writable"):
                atomic_write_json(ro / "audit.json", {"a": 1})
        else:
            proc = _write_in_read_only_folder_as_root(ro)
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert "not writable" in proc.stdout and str(ro) in proc.stdout and "Traceback" not in proc.stderr
        assert os.listdir(ro) == []
    finally:
        os.chmod(ro, 0o755)
        shutil.rmtree(base)


def test_read_json_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_json(tmp_path / "missing.json", "audit JSON")
    path = atomic_write_json(tmp_path / "a.json", {"checks": [1, 2, 3]})
    path.write_text(path.read_text()[:9])
    with pytest.raises(InputError) as err:
        read_json(path, "audit JSON")
    assert "truncated" in str(err.value) and "\n" not in str(err.value)


_REWRITE_FOREVER = """
import sys
from maskcheck.fileio import atomic_write_text
path, i = sys.argv[1], 0
while True:
    atomic_write_text(path, ("AB"[i % 2]) * 2_000_000)
    i += 1
    if i == 2:
        print("started", flush=True)
"""


def test_sigkill_mid_write_leaves_a_whole_file(tmp_path: Path) -> None:
    """Kill a process that keeps rewriting a 2 MB file: the file is always one whole version."""
    target = tmp_path / "big.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for delay in (0.05, 0.2):
        proc = subprocess.Popen([sys.executable, "-c", _REWRITE_FOREVER, str(target)], env=env, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        text = target.read_text()
        assert len(text) == 2_000_000 and text in ("A" * 2_000_000, "B" * 2_000_000)
    # a killed writer may leave its hidden temp file; it never replaces or shadows the target
    assert all(n == "big.txt" or (n.startswith(".big.txt.") and n.endswith(".tmp")) for n in _names(tmp_path))


def test_json_is_indented_and_ends_with_newline(tmp_path: Path) -> None:
    text = atomic_write_json(tmp_path / "a.json", {"a": 1}).read_text()
    assert text.endswith("\n") and json.loads(text) == {"a": 1} and "\n  " in text
