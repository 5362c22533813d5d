"""The committed sample reports: their write-up quotes the committed JSON, and the science holds.

reports/<name>/data/ holds the JSON a sweep experiment wrote (no weights); reports/README.md quotes
the matrix rendered from it. Regenerating the matrix here catches a write-up that drifted from data.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from maskcheck.report.loader import load_inputs, matrix_table
from maskcheck.report.render import markdown_table

REPORTS = Path(__file__).resolve().parents[1] / "reports"
SWEEPS = ["digits", "mnist"]


def _matrix(name: str):
    data = REPORTS / name / "data"
    if not (data / "sweep.json").is_file():
        pytest.fail(f"{data} is missing: run experiments/{name}-sweep/run.py and commit reports/{name}/")
    return matrix_table(load_inputs([data]).entries)


@pytest.mark.parametrize("name", SWEEPS)
def test_write_up_quotes_the_matrix_of_the_committed_json(name: str) -> None:
    write_up = (REPORTS / "README.md").read_text(encoding="utf-8")
    rows = markdown_table(_matrix(name)).splitlines()[2:]  # skip the header and the rule
    missing = [row for row in rows if row not in write_up]
    assert not missing, f"reports/README.md does not quote these rows of {name}'s data: {missing[:3]}"
    assert (REPORTS / name / "index.html").is_file()


@pytest.mark.parametrize("name", SWEEPS)
def test_sample_sweeps_show_dd_masking_and_a_clean_trades(name: str) -> None:
    table = _matrix(name).set_index("name")
    assert table.loc["dd-T20", "verdict"] == "flagged"
    assert table.loc["trades", "verdict"] != "flagged"
    assert table.loc["natural", "verdict"] != "flagged"
