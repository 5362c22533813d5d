"""Untrusted inputs (issue 12): one test per probe class, each through the CLI where a user meets it.

Every payload is generated here, inside tmp_path, and only ever creates a marker file there.
Each refusal asserts the marker does NOT exist; a control (the explicit --trust-code, or torch
loading the file directly) shows the payload is live, so a refusal test cannot pass by accident.
Exit codes: 0 nothing flagged, 1 flagged, 2 bad input or refused file, 3 internal error.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Tuple

import pytest
import torch
import torch.nn as nn

from maskcheck import cli
from maskcheck.checkpoint import export_model, load_model, save_run, save_weights
from maskcheck.data import get_info
from maskcheck.errors import EXIT_INTERNAL, EXIT_USAGE, InputError
from maskcheck.models import build_model

INFO = get_info("digits")
AUDIT = ["--dataset", "digits", "--eps", "0.3", "--n", "20", "--checks", "gradient-health,logit-magnitude",
         "--square-queries", "100", "--quiet"]


class Payload:
    """Unpickling this calls open(path, "w"): it creates `path`, which proves the code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def _tsave(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Run the CLI; return its exit code and its stderr lines (warnings of libraries aside)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("maskcheck")]
    return info.value.code, err


def _one_error(err: list[str], *needles: str) -> None:
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]


@pytest.fixture()
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small-cnn", INFO).eval()


@pytest.fixture()
def pt2(tmp_path: Path, model: nn.Module) -> Path:
    return export_model(model, torch.rand(2, *INFO.input_shape), tmp_path / "model.pt2")


def _rewrite(src: Path, dst: Path, edit: Callable[[dict[str, bytes], str], None]) -> Path:
    """Copy the zip archive `src` to `dst`, after `edit(files, root)` changed its entries."""
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    root = next(iter(files)).split("/")[0] + "/"
    edit(files, root)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, blob in files.items():
            z.writestr(name, blob)
    return dst


def _use_pickle_weight(marker: Path) -> Callable[[dict[str, bytes], str], None]:
    def edit(files: dict[str, bytes], root: str) -> None:
        cfg_name = root + "data/weights/model_weights_config.json"
        cfg = json.loads(files[cfg_name])
        first = next(iter(cfg["config"].values()))
        first["use_pickle"] = True
        files[cfg_name] = json.dumps(cfg).encode()
        files[root + "data/weights/" + first["path_name"]] = _tsave(Payload(marker))
    return edit


def _legacy_weights(marker: Path) -> Callable[[dict[str, bytes], str], None]:
    def edit(files: dict[str, bytes], root: str) -> None:
        files[root + "data/weights/model.pt"] = _tsave({"w": Payload(marker)})
    return edit


def _sample_inputs(marker: Path) -> Callable[[dict[str, bytes], str], None]:
    def edit(files: dict[str, bytes], root: str) -> None:
        files[root + "data/sample_inputs/model.pt"] = _tsave(((Payload(marker),), {}))
    return edit


def _opaque_constant(marker: Path) -> Callable[[dict[str, bytes], str], None]:
    def edit(files: dict[str, bytes], root: str) -> None:
        cfg_name = root + "data/constants/model_constants_config.json"
        cfg = json.loads(files[cfg_name])
        cfg["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        files[cfg_name] = json.dumps(cfg).encode()
        files[root + "data/constants/opaque_obj_0"] = pickle.dumps(Payload(marker))
    return edit


PT2_PAYLOADS = {
    "use-pickle-weight": (_use_pickle_weight, "data/weights/weight_0"),
    "legacy-weights-file": (_legacy_weights, "data/weights/model.pt"),
    "sample-inputs": (_sample_inputs, "data/sample_inputs/model.pt"),
    "opaque-constant": (_opaque_constant, "data/constants/opaque_obj_0"),
}


# ------------------------------------------------------------------------ code in .pt2 files


@pytest.mark.parametrize("vector", list(PT2_PAYLOADS))
def test_pt2_payload_is_refused_naming_the_entry_and_never_runs(tmp_path: Path, pt2: Path, vector: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    make, entry = PT2_PAYLOADS[vector]
    marker = tmp_path / "payload-ran"
    evil = _rewrite(pt2, tmp_path / "evil.pt2", make(marker))
    code, err = _main(["audit", str(evil), *AUDIT, "--out", str(tmp_path / "a.json")], capsys)
    assert code == EXIT_USAGE and not marker.exists()
    _one_error(err, entry, "--trust-code")
    assert not (tmp_path / "a.json").exists()
    # control: the payload is live -- the explicit opt-in loads the archive with torch, which runs it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load_model(evil, dataset="digits", trust_code=True)
        except InputError:
            pass  # the doctored archive may then fail to build a model; the payload has run by then
    assert marker.exists()


def test_pt2_with_unknown_entries_is_refused(tmp_path: Path, pt2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """AOTInductor packages carry shared libraries that torch loads: anything off the allowlist is refused."""
    def add_so(files: dict[str, bytes], root: str) -> None:
        files[root + "data/aotinductor/model/model.so"] = b"\x7fELF not really"
    evil = _rewrite(pt2, tmp_path / "aoti.pt2", add_so)
    code, err = _main(["audit", str(evil), *AUDIT], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "data/aotinductor/model/model.so", "--trust-code")


# ------------------------------------------------------------------------------ TorchScript


class _ScriptedPayload(nn.Module):
    """A TorchScript module whose compiled __setstate__ writes a file when the archive is loaded."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        torch.save(torch.zeros(1), self.path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * 2.0


def _jit_save(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_torchscript_is_code_refused_without_trust_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "setstate-ran"
    path = _jit_save(_ScriptedPayload(str(marker)), tmp_path / "evil.pt")
    assert not marker.exists()
    code, err = _main(["audit", str(path), *AUDIT, "--out", str(tmp_path / "a.json")], capsys)
    assert code == EXIT_USAGE and not marker.exists()
    _one_error(err, "TorchScript", "--trust-code")
    # control: with the opt-in it loads, warns, and the scripted __setstate__ runs
    with pytest.warns(UserWarning, match="--trust-code"):
        load_model(path, dataset="digits", trust_code=True)
    assert marker.exists()


# ------------------------------------------------------------------------------ pickles (.pt)


def test_pt_payload_names_the_global_from_a_static_scan(tmp_path: Path, model: nn.Module,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({**model.state_dict(), "extra": Payload(marker)}, path)
    code, err = _main(["audit", str(path), *AUDIT, "--arch", "small-cnn"], capsys)
    assert code == EXIT_USAGE and not marker.exists()
    _one_error(err, "io.open", "--trust-code")
    assert "truncated" not in err[0] and "corrupted" not in err[0]  # issue 12 item 8


# ------------------------------------------------------------------------ resource exhaustion


def test_fifo_is_refused_without_blocking(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "f.pt"
    os.mkfifo(fifo)
    code, err = _main(["audit", str(fifo), *AUDIT], capsys)  # would hang forever if it opened for a blocking read
    assert code == EXIT_USAGE
    _one_error(err, "not a regular file")


def test_symlink_to_a_device_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "z.safetensors"
    link.symlink_to("/dev/zero")
    code, err = _main(["audit", str(link), *AUDIT, "--arch", "small-cnn"], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "not a regular file")


def test_file_over_the_size_cap_is_refused_naming_the_flag(tmp_path: Path, model: nn.Module,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = save_weights(tmp_path / "w.safetensors", model)
    limit = path.stat().st_size / 2 / 1024**3
    code, err = _main(["audit", str(path), *AUDIT, "--arch", "small-cnn", "--max-file-gib", str(limit)], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "--max-file-gib")


def test_zip_bomb_is_refused_before_unpacking(tmp_path: Path, pt2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two kinds: entries that inflate past the cap, and tensors declared huge over empty records."""
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(pt2) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for name in src.namelist():
            z.writestr(name, src.read(name))
        z.writestr(src.namelist()[0].split("/")[0] + "/extra/padding", b"\0" * (8 * 1024**2))
    assert bomb.stat().st_size < 1024**2  # a small file ...
    code, err = _main(["audit", str(bomb), *AUDIT, "--max-unpacked-gib", "0.004"], capsys)  # ... that unpacks past 4 MiB
    assert code == EXIT_USAGE
    _one_error(err, "--max-unpacked-gib")

    def huge(files: dict[str, bytes], root: str) -> None:
        cfg_name = root + "data/weights/model_weights_config.json"
        cfg = json.loads(files[cfg_name])
        first = next(iter(cfg["config"].values()))
        first["tensor_meta"]["sizes"] = [{"as_int": 1 << 20}, {"as_int": 1 << 20}]  # 4 TiB of float32
        first["tensor_meta"]["strides"] = [{"as_int": 1 << 20}, {"as_int": 1}]
        files[cfg_name] = json.dumps(cfg).encode()
        files[root + "data/weights/" + first["path_name"]] = b""  # torch allocates zeros of the declared size
    code, err = _main(["audit", str(_rewrite(pt2, tmp_path / "huge.pt2", huge)), *AUDIT], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "over a record of 0 bytes", "forged size")


class _Slow(nn.Module):
    """Sleeps in forward (so it can only travel as a full pickle, loaded with --trust-code)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.3)
        return self.lin(x.flatten(1))


def test_slow_forward_hits_timeout_per_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "slow.pt"
    torch.save(_Slow(), path)
    out = tmp_path / "a.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code, err = _main(["audit", str(path), *AUDIT, "--trust-code", "--timeout-per-batch", "0.1", "--out", str(out)],
                          capsys)
    assert code == EXIT_USAGE and not out.exists()
    _one_error(err, "--timeout-per-batch", "0.1 s")


# -------------------------------------------------------------------- models that misbehave


class _FixedBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:1, :10].expand(3, 10)  # always 3 rows, whatever the batch


class _IntLogits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1)[:, :10] * 10).long()


@pytest.mark.parametrize("bad,needle", [(_FixedBatch, "for a batch of 2"), (_IntLogits, "torch.int64 logits")])
def test_model_with_wrong_batch_size_or_integer_logits_is_one_line(tmp_path: Path, bad: type, needle: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = _jit_save(bad(), tmp_path / "bad.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code, err = _main(["audit", str(path), *AUDIT, "--trust-code"], capsys)
    assert code == EXIT_USAGE
    _one_error(err, needle)


# ---------------------------------------------------------- every format audits end to end


def _run_folder(tmp_path: Path, model: nn.Module) -> Path:
    record = {"name": "natural", "method": "natural", "arch": "small-cnn", "dataset": "digits", "seed": 0,
              "temperature": None, "model_temperature": 1.0, "threat": {"eps": 0.3, "norm": "linf"}}
    return save_run(tmp_path / "run", model, record)


@pytest.mark.parametrize("fmt", ["run", "safetensors", "state-dict", "torch-export", "torchscript"])
def test_every_format_audits_end_to_end(tmp_path: Path, model: nn.Module, fmt: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    extra: list[str] = []
    if fmt == "run":
        path = _run_folder(tmp_path, model)
    elif fmt == "safetensors":
        path, extra = save_weights(tmp_path / "w.safetensors", model), ["--arch", "small-cnn"]
    elif fmt == "state-dict":
        path, extra = tmp_path / "w.pt", ["--arch", "small-cnn"]
        torch.save(model.state_dict(), path)
    elif fmt == "torch-export":
        path = export_model(model, torch.rand(2, *INFO.input_shape), tmp_path / "m.pt2")
    else:
        path, extra = _jit_save(model, tmp_path / "m.ts"), ["--trust-code"]
    out = tmp_path / "audit.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the --trust-code warning
        code, err = _main(["audit", str(path), *AUDIT, *extra, "--out", str(out)], capsys)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["model"]["format"] == fmt and data["n"] == 20
    assert [c["check"] for c in data["checks"]] == ["gradient-health", "logit-magnitude"]


# ------------------------------------------------------------------------- exit-code contract


def test_internal_error_is_exit_3_with_a_log_file(tmp_path: Path, model: nn.Module, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import maskcheck.auditing

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("an injected bug")

    monkeypatch.setattr(maskcheck.auditing, "run_audit", broken)
    monkeypatch.setenv("MASKCHECK_LOG_DIR", str(tmp_path / "logs"))
    code, err = _main(["audit", str(_run_folder(tmp_path, model)), *AUDIT], capsys)
    assert code == EXIT_INTERNAL
    _one_error(err, "internal error", "a bug", "ZeroDivisionError")
    logs = list((tmp_path / "logs").iterdir())
    assert len(logs) == 1 and str(logs[0]) in err[0]
    assert "Traceback" in logs[0].read_text() and "an injected bug" in logs[0].read_text()


def test_bad_out_is_refused_before_any_work(tmp_path: Path, model: nn.Module, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import maskcheck.checkpoint

    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(maskcheck.checkpoint, "load_model", must_not_load)
    (tmp_path / "file").write_text("x")
    code, err = _main(["audit", str(tmp_path), *AUDIT, "--out", str(tmp_path / "file" / "audit.json")], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "--out", "is a file")
    code, err = _main(["report", str(tmp_path), "--out", str(tmp_path / "file" / "r.html")], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "--out")
    code, err = _main(["regress", str(tmp_path), "--baseline", str(tmp_path / "file" / "b.json"), "--write-baseline"],
                      capsys)
    assert code == EXIT_USAGE
    _one_error(err, "--baseline")


# ------------------------------------------------------------------------------- sweep lock


_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_second_train_sweep_on_the_same_folder_exits_2_and_a_stale_lock_is_taken_over(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from maskcheck.sweep import LOCK_FILE, hold_sweep_lock, release_sweep_lock

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(sweep / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = _main(["train-sweep", "--out", str(sweep), "--temps", "2", "--epochs", "1", "--no-audit",
                           "--no-report", "--device", "cpu"], capsys)
        assert code == EXIT_USAGE
        _one_error(err, "in use by another maskcheck train-sweep", f"pid {holder.pid}")
        assert not (sweep / "sweep.json").exists()  # refused before any work
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its pid stays in the file, but the lock is free and is taken over
    assert (sweep / LOCK_FILE).read_text() == str(holder.pid)
    hold_sweep_lock(sweep)
    try:
        assert (sweep / LOCK_FILE).read_text() == str(os.getpid())
    finally:
        release_sweep_lock(sweep)


# ------------------------------------------------------------------------ JSON inputs


@pytest.fixture(scope="module")
def audit_json(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real audit JSON (of an untrained small CNN), shared by the JSON tests: audits are the slow part."""
    from maskcheck.auditing import run_audit
    from maskcheck.data import load_dataset

    torch.manual_seed(0)
    loaded = load_model(_run_folder(tmp_path_factory.mktemp("audit"), build_model("small-cnn", INFO).eval()))
    result = run_audit(loaded, load_dataset("digits"), eps=0.3, norm="linf", n=20,
                       checks=["gradient-health", "logit-magnitude"], seed=0, square_queries=100, progress=False)
    return result.to_dict()


def _audit_json(tmp_path: Path, audit_json: dict) -> dict:
    (tmp_path / "audit.json").write_text(json.dumps(audit_json))
    return audit_json


def test_bad_json_inputs_are_one_line_naming_the_field(tmp_path: Path, audit_json: dict,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    good = _audit_json(tmp_path, audit_json)
    cases = {  # audit JSON given to report and regress
        "clean_acc": ({**good, "clean_acc": "0.9"}, "clean_acc"),
        "huge": ({**good, "robust_acc": {**good["robust_acc"], "pgd-ce": 1e308}}, "robust_acc.pgd-ce"),
        "n": ({**good, "n": [20]}, "field n"),
        "flagged": ({**good, "checks": [{**good["checks"][0], "flagged": "false"}]}, "checks[0].flagged"),
        "schema": ({**good, "schema_version": "1"}, "the string '1'"),
    }
    for name, (data, needle) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        for cmd in (["report", str(path), "--out", str(tmp_path / "r.html")],
                    ["regress", str(path), "--baseline", str(tmp_path / "b.json"), "--write-baseline"]):
            code, err = _main(cmd, capsys)
            assert code == EXIT_USAGE, (name, cmd[0], err)
            _one_error(err, needle)
    inf = tmp_path / "inf.json"  # JSON has no Infinity, Python's json reads it anyway
    inf.write_text(json.dumps(good).replace('"clean_acc": ', '"clean_acc": Infinity, "x": ', 1))
    code, err = _main(["report", str(inf), "--out", str(tmp_path / "r.html")], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "non-finite")


@pytest.mark.parametrize("entry,needle", [
    ({"checks": {"gradient-health": {"severity": "ok"}}}, "flagged is missing"),
    ({"checks": {"gradient-health": {"flagged": "false", "severity": "ok"}}}, "the string 'false'"),
])
def test_baseline_flag_must_be_a_json_boolean(tmp_path: Path, audit_json: dict, entry: dict, needle: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _audit_json(tmp_path, audit_json)
    baseline = tmp_path / "b.json"
    code, _ = _main(["regress", str(tmp_path / "audit.json"), "--baseline", str(baseline), "--write-baseline"], capsys)
    assert code == 0
    data = json.loads(baseline.read_text())
    data["models"]["natural"] = entry
    baseline.write_text(json.dumps(data))
    code, err = _main(["regress", str(tmp_path / "audit.json"), "--baseline", str(baseline)], capsys)
    assert code == EXIT_USAGE  # never read as True (a false regression, exit 1)
    _one_error(err, "checks.gradient-health.flagged", needle)


def test_run_and_sweep_json_with_wrong_types(tmp_path: Path, model: nn.Module,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_folder(tmp_path, model)
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "model_temperature": "1.0"}))
    code, err = _main(["audit", str(run), *AUDIT], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "model_temperature", "the string '1.0'")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for manifest, needle in (({"kind": "sweep", "schema_version": 1, "jobs": "natural"}, "field jobs"),
                             ({"kind": "sweep", "schema_version": "1", "jobs": []}, "schema_version must be the integer 1"),
                             ({"kind": "sweep", "schema_version": 1, "jobs": [
                                 {"name": "x", "method": "natural", "run_dir": "../../etc"}]}, "jobs[0].run_dir")):
        (sweep / "sweep.json").write_text(json.dumps(manifest))
        code, err = _main(["report", str(sweep), "--out", str(tmp_path / "r.html")], capsys)
        assert code == EXIT_USAGE
        _one_error(err, needle)


# ------------------------------------------------------------------------------ side files


def test_csv_formulas_and_markdown_html_are_neutralised(tmp_path: Path, audit_json: dict,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from maskcheck.report.render import pct

    good = audit_json
    evil = {**good, "model": {**good["model"], "name": '=HYPERLINK("http://x","y")<script>alert(1)</script>'}}
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(evil))
    code, _ = _main(["report", str(path), "--out", str(tmp_path / "index.html")], capsys)
    assert code == 0
    csv = (tmp_path / "index.csv").read_text()
    assert "'=HYPERLINK" in csv and ',=HYPERLINK' not in csv and '"=HYPERLINK' not in csv
    md = (tmp_path / "index.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert pct(float("inf")) == "n/a" and pct(0.5) == "50.0%"
