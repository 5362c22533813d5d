"""The committed sample reports: their write-up quotes the committed JSON, and the science holds.

reports/<name>/data/ holds the JSON a sweep experiment wrote (no weights); reports/README.md quotes
the matrix rendered from it (and, for a multi-seed sweep, the seed table). Regenerating both here
catches a write-up that drifted from data.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from maskcheck.report.loader import load_inputs, matrix_table
from maskcheck.report.render import markdown_table
from maskcheck.report.seeds import group_name, seed_summary, summary_markdown

REPORTS = Path(__file__).resolve().parents[1] / "reports"
SWEEPS = ["digits", "mnist"]
# an absolute path of a POSIX or Windows machine inside a committed JSON string or the HTML
ABSOLUTE = re.compile(r'"(/(?:work|home|tmp|Users|root|mnt)/[^"]*|[A-Za-z]:\\\\[^"]*)"|<code>/[^<]*</code>')


def _inputs(name: str):
    data = REPORTS / name / "data"
    if not (data / "sweep.json").is_file():
        pytest.fail(f"{data} is missing: run experiments/{name}-sweep/run.py and commit reports/{name}/")
    return load_inputs([data])


def _matrix(name: str):
    return matrix_table(_inputs(name).entries)


def _quoted_rows(markdown: str, write_up: str) -> list[str]:
    return [row for row in markdown.splitlines()[2:] if row not in write_up]  # skip the header and the rule


@pytest.mark.parametrize("name", SWEEPS)
def test_write_up_quotes_the_matrix_of_the_committed_json(name: str) -> None:
    write_up = (REPORTS / "README.md").read_text(encoding="utf-8")
    table = _matrix(name)
    missing = _quoted_rows(markdown_table(table), write_up)
    assert not missing, f"reports/README.md does not quote these rows of {name}'s data: {missing[:3]}"
    summary = seed_summary(table)
    if (summary["seeds"] > 1).any():  # multi-seed sweeps: the seed table (means, spread, real-difference rule) too
        missing = _quoted_rows(summary_markdown(summary), write_up)
        assert not missing, f"reports/README.md does not quote these seed-table rows of {name}: {missing[:3]}"
    assert (REPORTS / name / "index.html").is_file()


@pytest.mark.parametrize("name", SWEEPS)
def test_sample_sweeps_show_dd_masking_and_a_clean_trades(name: str) -> None:
    table = _matrix(name)
    groups = table.assign(group=[group_name(n, s) for n, s in zip(table["name"], table["seed"])]).groupby("group")["verdict"]
    verdicts = {g: set(v) for g, v in groups}
    assert "trades" in verdicts and "natural" in verdicts
    if verdicts.get("dd-T20", {"not trained"}) != {"not trained"}:  # the MNIST CPU sweep leaves dd out (its config.json)
        assert verdicts["dd-T20"] == {"masked"}
    assert "masked" not in verdicts["trades"] | verdicts["natural"]


@pytest.mark.parametrize("name", SWEEPS)
def test_committed_reports_hold_no_absolute_paths(name: str) -> None:
    files = [REPORTS / name / "index.html", *sorted((REPORTS / name / "data").rglob("*.json"))]
    hits = [(f.relative_to(REPORTS), m.group(0)[:80]) for f in files for m in [ABSOLUTE.search(f.read_text(encoding="utf-8"))] if m]
    assert not hits, f"committed files name a machine's folders (regenerate with the current maskcheck): {hits[:3]}"


# Issue 17: the committed samples come from converged teachers, and digits from three seeds.
@pytest.mark.parametrize("name", SWEEPS)
def test_committed_sweeps_use_converged_teachers(name: str) -> None:
    sweeps = _inputs(name).sweeps
    teachers = {k: v for s in sweeps for k, v in (s.get("teachers") or {}).items()}
    assert teachers, f"reports/{name}: sweep.json records no teacher (train-sweep --teacher-acc)"
    for teacher, facts in teachers.items():
        assert facts["converged"] and facts["train_acc"] >= facts["target"], f"{name}: {teacher} did not converge: {facts}"


def test_digits_sample_has_three_seeds() -> None:
    assert (seed_summary(_matrix("digits"))["seeds"] >= 3).all()
