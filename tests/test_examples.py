"""The examples users copy: docs/api.md's pytest file and examples/notebook_audit.py, run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- example: test_my_model.py"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}


def readme_test_file() -> str:
    text = (REPO / "docs" / "api.md").read_text()
    after = text[text.index(MARKER):]
    match = re.search(r"```python\n(.*?)```", after, re.S)
    assert match, "no python block after the test-file marker in docs/api.md"
    return match.group(1)


def test_the_api_docs_pytest_example_runs_as_written(tmp_path) -> None:
    (tmp_path / "test_my_model.py").write_text(readme_test_file())
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_model.py"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout


def test_notebook_example_audits_asserts_and_writes_the_report(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "notebook_audit.py"), str(tmp_path), "--quick"],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "assert_no_masking: no check flagged" in proc.stdout
    html = (tmp_path / "audit.html").read_text()
    verdict = next(line for line in proc.stdout.splitlines() if line.startswith("digits-cnn: ")).split(": ", 1)[1].split(";")[0]
    assert verdict in html and "digits-cnn" in html
