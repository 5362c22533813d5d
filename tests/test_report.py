"""The HTML report, rendered from fixture JSON built here with the results.py dataclasses.

The fixtures are tiny sweep folders (sweep.json, runs/<name>/run.json, runs/<name>/audit.json)
whose numbers follow the masking story: masked models keep a high PGD-CE accuracy while the
strongest white-box attack and Square break them.
"""

from __future__ import annotations

import base64
import fcntl
import html
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import markupsafe
import pandas as pd
import pytest

from maskcheck import cli
from maskcheck.errors import InputError
from maskcheck.report import headline, load_inputs, matrix_table, render_report
from maskcheck.checks import REGISTRY
from maskcheck.report.render import pct
from maskcheck.results import AuditResult, CheckResult, PlotData, Severity, Verdict

CHECKS = list(REGISTRY)
UNKNOWN_CHECK = "future-check"
# (name, method, temperature) of a small dd / ltd / trades sweep with its natural teacher.
SWEEP = [("natural", "natural", None), ("trades", "trades", None)] + [
    (f"{m}-T{t}", m, t) for m in ("dd", "ltd") for t in (1, 5, 10, 15, 20)]
# Which models the fixture audit flags: dd from T = 10, ltd from T = 15 (the headline example).
FLAGGED = {"dd-T10", "dd-T15", "dd-T20", "ltd-T15", "ltd-T20"}


def _plots(check: str, flagged: bool) -> tuple[PlotData, ...]:
    """One PlotData of each kind the audit emits, on the checks that draw them."""
    if check == "gradient-health":  # exact zeros on a log axis: the masked signature
        norms = [0.0] * 30 + [10 ** (-k / 5) for k in range(40)] if flagged else [10 ** (-k / 10) for k in range(70)]
        return (PlotData("histogram", "input-gradient L1 norm", {"cross-entropy": norms}, xlabel="|g|_1", log_x=True),)
    if check == "logit-magnitude":
        margins = [200.0 + i for i in range(50)] if flagged else [5.0 + i / 10 for i in range(50)]
        return (PlotData("histogram", "top-1 logit margin", {"margin": margins}, xlabel="margin"),)
    if check == "attack-convergence":
        steps = list(range(10))
        return (PlotData("curve", "attack loss per step", {"APGD-CE": [0.1 * s for s in steps], "PGD-CE": [0.05 * s for s in steps]},
                         x=steps, xlabel="step", ylabel="loss"),)
    if check == "distortion-sweep":
        return (PlotData("curve", "accuracy vs eps", {"PGD-CE": [0.9, 0.8, 0.6, 0.5, 0.5]}, x=[0.05, 0.1, 0.2, 0.3, 0.5],
                         xlabel="eps", ylabel="accuracy"),)
    if check == "black-box-gap":
        return (PlotData("bars", "white-box vs Square", {"white-box": [0.4], "square": [0.1 if flagged else 0.4]}, labels=["accuracy"]),)
    return ()


def make_audit(name: str, method: str, temperature: float | None, flagged: bool, *, extra_check: bool = True) -> AuditResult:
    checks = [
        CheckResult(check=c, flagged=flagged and c in ("logit-magnitude", "loss-disagreement"),
                    severity=Severity.FAIL if flagged and c in ("logit-magnitude", "loss-disagreement") else Severity.OK,
                    summary=f"{c} on {name}", evidence={"gap": 0.4 if flagged else 0.0, "examples": list(range(30)), "n": 200},
                    params={"seed": 0, "threshold": 0.002}, plots=_plots(c, flagged),
                    mechanism="saturated logits" if flagged and c == "logit-magnitude" else None,
                    remedy="attack the logit margin" if flagged else None, duration_s=1.5, doc=REGISTRY[c].doc())
        for c in CHECKS
    ]
    if extra_check:  # a check this report version has never heard of, with a figure kind it cannot draw
        checks.append(CheckResult(UNKNOWN_CHECK, False, Severity.SKIPPED, "not run here", {}, {},
                                  plots=(PlotData("heatmap", "per-class map", {"a": [1.0]}),)))
    robust = {"pgd-ce": 0.8 if flagged else 0.45, "white-box": 0.02 if flagged else 0.42,
              "square": 0.05 if flagged else 0.44, "worst-case": 0.02 if flagged else 0.41}
    return AuditResult(
        model={"name": name, "path": f"runs/{name}", "format": "run", "method": method, "temperature": temperature,
               "model_temperature": 1.0, "arch": "small-cnn"},
        dataset="digits", threat={"eps": 0.3, "norm": "linf"}, n=200, clean_acc=0.97, robust_acc=robust,
        checks=checks, verdict=Verdict.from_checks(checks),
        provenance={"maskcheck_version": "0.1.0", "torch_version": "2.x", "python_version": "3.11", "device": "cpu",
                    "seed": 0, "created": "2026-01-01T00:00:00+00:00"},
        timings={"total": 12.0},
    )


def make_run(name: str, method: str, temperature: float | None) -> dict:
    return {"schema_version": 1, "maskcheck_version": "0.1.0", "name": name, "method": method, "awp": False,
            "temperature": temperature, "model_temperature": 1.0, "arch": "small-cnn", "dataset": "digits",
            "threat": {"eps": 0.3, "norm": "linf"}, "epochs": 3, "teacher": "natural" if method in ("dd", "ltd") else None,
            "config": {}, "metrics": {"clean_acc": 0.96, "pgd_acc": 0.5, "pgd": {"steps": 10, "step_size": 0.03},
                                      "train_seconds": 3.0, "history": []}}


def _teacher(name: str, method: str, t: float | None, models) -> str | None:
    """As train-sweep plans them: dd-T{T} learns from dd-teacher-T{T} when the sweep has one, ltd from natural."""
    if name.startswith("dd-teacher") or method not in ("dd", "ltd"):
        return None
    own = f"dd-teacher-T{t:g}"
    return own if method == "dd" and any(m[0] == own for m in models) else "natural"


def make_sweep(root: Path, models=SWEEP, flagged=FLAGGED, unaudited=(), untrained=()) -> Path:
    """A sweep folder as train-sweep + audit leave it; `unaudited` runs lack audit.json, `untrained` lack run.json too."""
    jobs = []
    for name, method, t in models:
        run_dir = root / "runs" / name
        run_dir.mkdir(parents=True)
        if name not in untrained:
            (run_dir / "run.json").write_text(json.dumps(make_run(name, method, t)))
            if name not in unaudited:
                make_audit(name, method, t, name in flagged).save(run_dir / "audit.json")
        jobs.append({"name": name, "method": method, "temperature": t, "teacher": _teacher(name, method, t, models),
                     "run_dir": f"runs/{name}"})
    sweep = {"schema_version": 1, "kind": "sweep", "dataset": "digits", "arch": "small-cnn", "temps": [1, 5, 10, 15, 20],
             "methods": ["dd", "trades", "ltd"], "seed": 0, "eps": 0.3, "norm": "linf", "jobs": jobs}
    (root / "sweep.json").write_text(json.dumps(sweep))
    return root


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    sweep = make_sweep(tmp_path_factory.mktemp("sweep"))
    out = render_report([sweep], sweep / "report" / "index.html")
    return out, out.read_text(encoding="utf-8")


def test_every_check_its_documentation_and_unknown_checks_render(rendered: tuple[Path, str]) -> None:
    _, page = rendered
    for check in CHECKS:
        assert check in page
        first_line = REGISTRY[check].doc().splitlines()[0]
        assert str(markupsafe.escape(first_line)) in page or html.escape(first_line, quote=False) in page, check
    assert UNKNOWN_CHECK in page and "carries no documentation for the check" in page
    assert 'kind "heatmap"' in page  # the figure it cannot draw is named, not dropped
    for name, _, _ in SWEEP:
        assert f">{name}</a>" in page


def test_page_is_self_contained(rendered: tuple[Path, str]) -> None:
    _, page = rendered
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:image/png;base64,|#)""", page)
    n_images = page.count('<img src="data:image/png;base64,')
    # overview + per audited model: attack bars + gradient, logit, convergence, eps-curve, bars figures
    assert n_images == 2 + len(SWEEP) * 6  # + the temperature curves with the paper's series (issue 17)


def test_script_in_model_name_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    audit_file = tmp_path / "audit.json"
    make_audit(evil, "dd", 10.0, True).save(audit_file)
    page = render_report([audit_file], tmp_path / "r.html").read_text(encoding="utf-8")
    assert evil not in page and "<script" not in page.lower()
    assert html.escape(evil) in page


def test_audits_without_temperature_render_without_the_curve(tmp_path: Path) -> None:
    make_audit("trades", "trades", None, False, extra_check=False).save(tmp_path / "a" / "audit.json")
    make_audit("natural", "natural", None, False, extra_check=False).save(tmp_path / "b" / "audit.json")
    page = render_report([tmp_path / "a" / "audit.json", tmp_path / "b" / "audit.json"], tmp_path / "r.html").read_text()
    assert "No audited model has a temperature" in page and "natural: no masking detected; trades: no masking detected" in page


def test_missing_audits_and_runs_are_marked_not_a_crash(tmp_path: Path) -> None:
    small = [m for m in SWEEP if m[0] in ("trades", "dd-T5", "dd-T10", "ltd-T15", "ltd-T20")]
    sweep = make_sweep(tmp_path, models=small, unaudited={"dd-T5", "ltd-T20"}, untrained={"ltd-T15"})
    out = render_report([sweep], tmp_path / "r.html")
    page = out.read_text(encoding="utf-8")
    table = matrix_table(load_inputs([sweep]).entries).set_index("name")
    assert set(table.index[table["audit_missing"]]) == {"dd-T5", "ltd-T20", "ltd-T15"}
    assert math.isnan(table.loc["dd-T5", "white-box"])
    assert table.loc["ltd-T15", "verdict"] == "not trained" and table.loc["dd-T5", "verdict"] == "not audited"
    for name, status in (("dd-T5", "not-audited"), ("ltd-T20", "not-audited"), ("ltd-T15", "not-trained")):
        assert re.search(rf'<span class="cell {status}">\s*<a href="#model-\d+">{name}</a>', page)
    assert "3 of 5 models not audited" in page


def test_dd_teachers_get_their_own_row(tmp_path: Path) -> None:
    """train-sweep trains dd-teacher-T{T} (method dd, same T) for each dd-T{T}: not the same model."""
    models = [("natural", "natural", None), ("dd-teacher-T10", "dd", 10.0), ("dd-T10", "dd", 10.0), ("dd-T1", "dd", 1.0)]
    sweep = make_sweep(tmp_path, models=models, flagged={"dd-T10", "dd-teacher-T10"})
    table = matrix_table(load_inputs([sweep]).entries).set_index("name")
    assert table.loc["dd-teacher-T10", "method"] == "dd teacher" and table.loc["dd-T10", "method"] == "dd"
    assert headline(table.reset_index()) == "dd masked at T >= 10; dd teacher masked at every T; natural: no masking detected"


def test_unaudited_dd_teachers_are_left_out(tmp_path: Path) -> None:
    """train-sweep audits the dd students, not their teachers: no 'not audited' row for those."""
    models = [("natural", "natural", None), ("dd-teacher-T10", "dd", 10.0), ("dd-T10", "dd", 10.0)]
    sweep = make_sweep(tmp_path, models=models, flagged={"dd-T10"}, unaudited={"dd-teacher-T10"})
    table = matrix_table(load_inputs([sweep]).entries)
    assert list(table["name"]) == ["dd-T10", "natural"]
    assert headline(table) == "dd masked at every T; natural: no masking detected"


def test_csv_and_markdown_match_the_matrix(rendered: tuple[Path, str]) -> None:
    out, _ = rendered
    expected = matrix_table(load_inputs([out.parent.parent]).entries)
    got = pd.read_csv(out.with_suffix(".csv"))
    got["flagged_checks"] = got["flagged_checks"].fillna("")
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    md = out.with_suffix(".md").read_text(encoding="utf-8").splitlines()
    assert len(md) == 2 + len(expected)  # header, rule, one line per model
    for line, (_, row) in zip(md[2:], expected.iterrows()):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == row["name"] and cells[8] == row["verdict"]
        assert cells[3:8] == [pct(row[c]) for c in ("clean_acc", "pgd-ce", "white-box", "square", "worst-case")]


def test_headline_is_computed_from_the_data(tmp_path: Path, rendered: tuple[Path, str]) -> None:
    _, page = rendered
    first = "dd masked at T &gt;= 10; ltd masked at T &gt;= 15; natural: no masking detected; trades: no masking detected"
    assert first in page
    changed = make_sweep(tmp_path / "b", flagged={"dd-T1", "dd-T20", "trades"} | {f"ltd-T{t}" for t in (1, 5, 10, 15, 20)})
    text = headline(matrix_table(load_inputs([changed]).entries))
    assert text == "dd masked at T = 1, 20; ltd masked at every T; natural: no masking detected; trades masked"


def test_report_needs_no_torch() -> None:
    """JSON in, HTML out: rendering must work where torch is not installed (e.g. a docs or CI box)."""
    code = "import sys, maskcheck.report; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1],
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def test_log_histogram_counts_exact_zeros(tmp_path: Path) -> None:
    """Exact-zero gradients are the finding; they must be drawn, not silently lost on a log axis."""
    from maskcheck.report import plots

    ok = plots.draw_plot(PlotData("histogram", "g", {"ce": [0.0, 0.0, 1e-3, 1e-2, float("nan")]}, log_x=True))
    assert ok is not None and ok.startswith("data:image/png;base64,")
    with pytest.raises(plots.PlotError, match="3 values for 2 x values"):
        plots.draw_plot(PlotData("curve", "c", {"s": [1.0, 2.0, 3.0]}, x=[0.0, 1.0]))


def test_bad_plot_data_is_a_one_line_input_error(tmp_path: Path) -> None:
    audit = make_audit("m", "dd", 1.0, False)
    audit.checks[0] = CheckResult("attack-convergence", False, Severity.OK, "s", {}, {},
                                  plots=(PlotData("curve", "loss", {"s": [1.0]}, x=[0.0, 1.0]),))
    audit.save(tmp_path / "audit.json")
    with pytest.raises(InputError, match="model 'm', check 'attack-convergence'"):
        render_report([tmp_path / "audit.json"], tmp_path / "r.html")


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_cli_writes_report_and_prints_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_sweep(tmp_path / "sweep", models=SWEEP[:4], unaudited={"dd-T1"})
    code, out, _ = _main(["report", str(sweep)], capsys)
    assert code == 0 and out.strip() == str(sweep / "report.html")
    assert {p.name for p in sweep.iterdir()} >= {"report.html", "report.csv", "report.md"}
    audit = sweep / "runs" / "dd-T5" / "audit.json"
    code, out, _ = _main(["report", str(audit), "-o", str(tmp_path / "reports" / "index.html")], capsys)
    assert code == 0 and Path(out.strip()).is_file()
    assert not list((tmp_path / "reports").glob(".*.tmp"))  # atomic writes leave no temp files


def test_broken_audit_inside_a_sweep_names_its_file(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, models=SWEEP[:3])
    broken = sweep / "runs" / "trades" / "audit.json"
    broken.write_text(json.dumps({**json.loads(broken.read_text()), "verdict": {"flagged": True}}))
    with pytest.raises(InputError, match=re.escape(str(broken))):
        render_report([sweep], tmp_path / "r.html")


@pytest.mark.parametrize("case", ["missing", "foreign", "schema", "truncated", "dir-without-sweep"])
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    bad = tmp_path / "in.json"
    if case == "foreign":
        bad.write_text(json.dumps({"hello": "world"}))
    elif case == "schema":
        audit = make_audit("m", "dd", 1.0, False).to_dict()
        bad.write_text(json.dumps({**audit, "schema_version": 99}))
    elif case == "truncated":
        bad.write_text('{"schema_version": 1, "chec')
    elif case == "dir-without-sweep":
        bad = tmp_path / "empty"
        bad.mkdir()
    code, out, err = _main(["report", str(bad), "-o", str(tmp_path / "r.html")], capsys)
    assert code == 2 and out == "" and str(bad) in err  # the message names the bad file
    assert len(err.strip().splitlines()) == 1 and err.startswith("maskcheck: error:") and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------------------------- Chromium
# The page is opened in real headless Chromium, driven over the DevTools protocol on a pipe
# (--remote-debugging-pipe: commands on fd 3, replies and events on fd 4, NUL-separated JSON).
# That needs no extra library and no port, and unlike scraping --enable-logging output it sees
# every console error, uncaught exception, failed or external request, and can ask the page
# itself whether each <img> decoded (complete and naturalWidth > 0) -- the page has no script
# of its own, DevTools evaluates the check from outside.

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevToolsPipe:
    """A headless Chromium and a minimal blocking DevTools client over its pipe."""

    def __init__(self, profile: Path, timeout: float = 60.0) -> None:
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        # Park the child's ends above fd 10 so the dup2 onto 3 and 4 cannot clobber each other.
        child_in, child_out = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, res_w))
        for fd in (cmd_r, res_w):
            os.close(fd)
        self.log = profile / "chromium.log"
        profile.mkdir(parents=True, exist_ok=True)
        args = [CHROMIUM, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--window-size=1280,900",
                f"--user-data-dir={profile / 'profile'}", "about:blank"]
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, str(self.log), os.O_WRONLY | os.O_CREAT, 0o644),
                   (os.POSIX_SPAWN_DUP2, 1, 2), (os.POSIX_SPAWN_DUP2, child_in, 3), (os.POSIX_SPAWN_DUP2, child_out, 4)]
        self.pid = os.posix_spawn(CHROMIUM, args, os.environ, file_actions=actions)
        os.close(child_in)
        os.close(child_out)
        self.send_fd, self.recv_fd, self.timeout = cmd_w, res_r, timeout
        self.buffer, self.events, self.next_id = b"", [], 0

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.recv_fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.recv_fd, 1 << 20) if ready else b""
            if not chunk:
                raise TimeoutError(f"Chromium did not answer (log: {self.log.read_text(errors='replace')[-2000:]})")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self.send_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read_message(deadline))
        return next(e for e in self.events if e.get("method") == method)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            os.kill(self.pid, signal.SIGKILL)
        finally:
            os.waitpid(self.pid, 0)
            os.close(self.send_fd)
            os.close(self.recv_fd)


def open_in_chromium(page: Path, screenshot: Path) -> list[str]:
    """Load `page`, save a screenshot, and return every problem seen: console errors, exceptions,
    failed or non-local requests, and images that did not decode."""
    browser = DevToolsPipe(screenshot.parent / "chromium")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired")
        images = browser.call("Runtime.evaluate", {"returnByValue": True, "expression":
                              "Array.from(document.images, i => [i.alt, i.complete && i.naturalWidth > 0])"},
                              session=session)["result"]["value"]
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        screenshot.write_bytes(base64.b64decode(shot))
    finally:
        browser.close()
    problems = [f"image did not load: {alt}" for alt, ok in images if not ok]
    for e in browser.events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            problems.append(f"console.{p['type']}: {p['args']}")
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            problems.append(f"log error: {p['entry']['text']}")
        elif method == "Network.loadingFailed":
            problems.append(f"request failed: {p.get('errorText')}")
        elif method == "Network.requestWillBeSent" and not p["request"]["url"].startswith(("file:", "data:")):
            problems.append(f"external request: {p['request']['url']}")
    return problems + ([] if images else ["page has no images"])


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install chromium)")


@needs_chromium
def test_chromium_check_catches_broken_pages(tmp_path: Path) -> None:
    """Control: the browser check must fail on a broken image, a console error and an external font."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><head><link rel="stylesheet" href="https://example.invalid/x.css"></head><body>'
                   '<img alt="broken" src="data:image/png;base64,AAAA"><script>console.error("boom")</script></body></html>')
    problems = open_in_chromium(bad, tmp_path / "bad.png")
    assert any("image did not load: broken" in p for p in problems)
    assert any(p.startswith("console.error") for p in problems)
    assert any("example.invalid" in p for p in problems)


@needs_chromium
def test_report_opens_in_chromium_without_errors(rendered: tuple[Path, str], tmp_path: Path) -> None:
    out, page = rendered
    screenshot = tmp_path / "report.png"
    assert open_in_chromium(out, screenshot) == []
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000


def test_an_inconclusive_audit_shows_its_grade(tmp_path: Path) -> None:
    """Issue 22: a degenerate model's grade, inconclusive, is shown (badge, matrix status, headline), not
    folded into 'no masking detected'."""
    from dataclasses import replace

    audit = make_audit("dead", "pgd-at", None, False, extra_check=False)
    audit = replace(audit, verdict=Verdict.from_checks(audit.checks, inconclusive="degenerate model: it predicts 1 class"))
    audit.save(tmp_path / "a" / "audit.json")
    page = render_report([tmp_path / "a" / "audit.json"], tmp_path / "r.html").read_text()
    assert 'class="badge inconclusive"' in page and "inconclusive: degenerate model" in page
    assert "pgd-at inconclusive" in page
