"""Issue 26's crash list and outputs: each bad input is exit 2 with one line, never exit 3.

Sweep folders are the real digits sweep of reports/digits/data cut to one job (see
test_untrusted_property), with one field made bad per case.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest
import torch

from maskcheck import cli
from maskcheck.errors import EXIT_USAGE, InputError
from maskcheck.fileio import atomic_write_text
from test_untrusted import _main, _one_error
from test_untrusted_property import TEMPLATES, _write_sweep

needs_templates = pytest.mark.skipif(TEMPLATES is None, reason="reports/digits/data not in this checkout")


def _with(which: str, edit: Callable[[Any], Any]) -> tuple[str, Any]:
    obj = copy.deepcopy(TEMPLATES[which])
    return which, edit(obj) or obj


def _set(path: list, value: Any) -> Callable[[Any], None]:
    def edit(obj: Any) -> None:
        node = obj
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


SWEEP_CASES = {
    "jobs-not-a-list": _set(["jobs"], {"a": 1}),
    "job-not-an-object": _set(["jobs", 0], "natural"),
    "job-name-a-number": _set(["jobs", 0, "name"], 7),
    "run-dir-null": _set(["jobs", 0, "run_dir"], None),
    "launcher-a-list": _set(["launcher"], [1]),
    "task-record-a-string": _set(["launcher"], {"tasks": {"train:x": "log"}}),
    "task-log-a-number": _set(["launcher"], {"tasks": {"train:x": {"job_id": "1", "log": 5}}}),
    "executor-a-number": _set(["launcher"], {"executor": 3, "tasks": {}}),
    "schema-a-string": _set(["schema_version"], "1"),
}


@needs_templates
@pytest.mark.parametrize("command", ["sweep-status", "audit"])
@pytest.mark.parametrize("case", list(SWEEP_CASES))
def test_malformed_sweep_json_is_exit_2(tmp_path: Path, command: str, case: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _write_sweep(tmp_path, *_with("sweep", SWEEP_CASES[case]))
    code, err = _main([command, str(sweep)] + (["--quiet"] if command == "audit" else []), capsys)
    assert code == EXIT_USAGE, err
    _one_error(err, "sweep.json")


REPORT_CASES = {
    "history-a-string": ("run", _set(["metrics", "history"], "abc")),
    "history-of-numbers": ("run", _set(["metrics", "history"], [1, 2])),
    "history-value-a-string": ("run", _set(["metrics", "history"], [{"train_robust_acc": "high"}])),
    "evidence-700-deep": ("audit", _set(["checks", 0, "evidence", "deep"], _nest(700))),
    "plot-labels-a-number": ("audit", lambda a: next(p for c in a["checks"] for p in c.get("plots", [])).update(labels=5)),
    "plot-value-huge": ("audit", lambda a: next(p for c in a["checks"] for p in c.get("plots", []))["series"].update(
        big=[1.7e308, -1.7e308])),
}


@needs_templates
@pytest.mark.parametrize("case", list(REPORT_CASES))
def test_bad_run_and_audit_values_are_exit_2_in_report(tmp_path: Path, case: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    which, edit = REPORT_CASES[case]
    sweep = _write_sweep(tmp_path, *_with(which, edit))
    code, err = _main(["report", str(sweep), "-o", str(tmp_path / "r.html")], capsys)
    assert code == EXIT_USAGE, err
    assert len(err) == 1, err


@needs_templates
def test_the_unmutated_sweep_reports_audits_and_regresses_with_exit_0(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The control of the two tests above: the same folder, unchanged, is accepted by every command."""
    plot_with_a_new_field = _with("audit", lambda a: next(p for c in a["checks"] for p in c.get("plots", [])).update(
        added_later=1))  # readers ignore fields they do not know (ARCHITECTURE.md, "Schema versions")
    sweep = _write_sweep(tmp_path, *plot_with_a_new_field)
    for args in (["report", str(sweep), "-o", str(tmp_path / "r.html")], ["sweep-status", str(sweep)],
                 ["audit", str(sweep), "--quiet"], ["regress", str(sweep), "--baseline", str(tmp_path / "baseline.json")]):
        code, err = _main(args, capsys)
        assert code == 0, (args, err)


@pytest.mark.parametrize("flags,needle", [
    (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"), (["--beta", "nan"], "--beta"),
    (["--weight-decay", "nan"], "--weight-decay"), (["--seed", str(2**70)], "--seed"),
])
def test_bad_numeric_training_flags_are_exit_2_before_training(tmp_path: Path, flags: list[str], needle: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _main(["train", "--method", "trades", "--out", str(tmp_path / "run"), *flags], capsys)
    assert code == EXIT_USAGE
    _one_error(err, needle)
    assert not (tmp_path / "run").exists()


def test_huge_max_unpacked_gib_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _main(["audit", str(tmp_path / "m.pt"), "--max-unpacked-gib", "1e300"], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "--max-unpacked-gib")


def test_last_ckpt_holding_a_list_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    torch.save([1, 2, 3], run / "last.ckpt")
    code, err = _main(["train", "--method", "natural", "--dataset", "digits", "--epochs", "1", "--out", str(run),
                       "--no-progress", "--device", "cpu"], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "last.ckpt", "not a maskcheck training checkpoint")


# ----------------------------------------------------------------------------------- outputs


def test_train_out_an_existing_file_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    code, err = _main(["train", "--method", "natural", "--dataset", "digits", "--out", str(target)], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "--out", "is a file")
    assert target.read_text() == "keep me"


@needs_templates
@pytest.mark.parametrize("command", ["audit", "report", "regress"])
def test_a_character_device_is_never_replaced(tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    device = Path("/dev/null")
    sweep = _write_sweep(tmp_path, "none", None)
    args = {"audit": ["audit", str(tmp_path / "m.pt2"), "--dataset", "digits", "--out", str(device)],
            "report": ["report", str(sweep), "-o", str(device)],
            "regress": ["regress", str(sweep), "--baseline", str(device), "--write-baseline"]}[command]
    code, err = _main(args, capsys)
    assert code == EXIT_USAGE
    _one_error(err, "not a regular file")
    assert device.is_char_device()


def test_atomic_write_refuses_a_fifo_target(tmp_path: Path) -> None:
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        atomic_write_text(fifo, "{}")
    assert fifo.is_fifo()


def test_a_result_whose_folder_vanished_is_kept_in_a_named_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The output folder is replaced by a file mid-run: the write fails, the finished result is kept and named."""
    monkeypatch.setenv("MASKCHECK_UNSAVED_DIR", str(tmp_path / "unsaved"))
    (tmp_path / "unsaved").mkdir()
    (tmp_path / "out").write_text("not a folder any more")
    with pytest.raises(InputError) as info:
        atomic_write_text(tmp_path / "out" / "audit.json", '{"finished": true}')
    kept = list((tmp_path / "unsaved").iterdir())
    assert len(kept) == 1 and kept[0].read_text() == '{"finished": true}'
    assert str(kept[0]) in str(info.value)


def test_a_failed_final_move_keeps_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKCHECK_UNSAVED_DIR", str(tmp_path / "unsaved"))
    (tmp_path / "unsaved").mkdir()

    def full(*_: Any) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(InputError, match="kept in"):
        atomic_write_text(tmp_path / "a.json", "result")
    assert [p.read_text() for p in (tmp_path / "unsaved").iterdir()] == ["result"]
    assert not list(tmp_path.glob(".a.json.*.tmp"))  # no temp file left beside the target


def test_every_csv_and_markdown_table_is_neutralised() -> None:
    from maskcheck.report import seeds
    from maskcheck.validate import csv_text, markdown_text

    frame = pd.DataFrame({"name": ["=cmd|' /C calc'!A0", "<script>alert(1)</script>", "ok"], "v": [0.5, -0.25, 1.0],
                          "d": ["-", "-1.5", "@SUM(A1)"]})
    csv = csv_text(frame)
    assert "\n=cmd" not in csv and "'=cmd" in csv and "'@SUM" in csv and ",-1.5" in csv and ",-\n" in csv.replace("\r", "")
    md = markdown_text(frame)
    assert "<script>" not in md and "&lt;script&gt;" in md and "\\|" in md
    summary = pd.DataFrame([{c: "x" for c in seeds.SUMMARY_COLUMNS}]).assign(
        method="<script>x</script>", group="=HYPERLINK(1)", temperature=float("nan"),
        **{c: float("nan") for c in ("clean_acc", "pgd-ce", "worst-case", "worst-case min", "worst-case max",
                                     "worst-case std", "train_phase_acc", "train_phase min", "train_phase max",
                                     "vs reference")})
    assert "<script>" not in seeds.summary_markdown(summary)
    assert "\n=HYPERLINK" not in csv_text(summary)
