"""Untrusted inputs, second round (issue 26): one test per vector, every hostile file built here.

Each payload only creates a marker file in tmp_path; each refusal asserts exit 2, one line, and
no marker. Where it is safe to show, a control (`--trust-code`, or torch reading the file
itself) proves the payload is live, so a refusal cannot pass by accident.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn as nn

from maskcheck.checkpoint import export_model, load_model
from maskcheck.data import get_info
from maskcheck.errors import EXIT_USAGE, InputError
from maskcheck.guard import plain_sym_expr, read_zip
from maskcheck.models import build_model
from test_untrusted import AUDIT, Payload, _main, _one_error, _rewrite, _tsave

INFO = get_info("digits")


@pytest.fixture()
def pt2(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return export_model(build_model("small-cnn", INFO).eval(), torch.rand(2, *INFO.input_shape), tmp_path / "model.pt2")


def _sympy_payload(marker: Path) -> str:
    """An expr_str that sympify evaluates as Python: it opens `marker` for writing, then yields the symbol."""
    return f"Symbol('s31', positive=True, integer=True) + len(str(open({str(marker)!r}, 'w'))) * 0"


def _edit_model_json(edit: Callable[[dict], None]) -> Callable[[dict[str, bytes], str], None]:
    def apply(files: dict[str, bytes], root: str) -> None:
        name = root + "models/model.json"
        graph = json.loads(files[name])
        edit(graph)
        files[name] = json.dumps(graph).encode()
    return apply


def _all_expr(graph: dict, value: str) -> None:
    def walk(obj: object) -> None:
        if isinstance(obj, dict):
            for k in obj:
                if k == "expr_str":
                    obj[k] = value
                else:
                    walk(obj[k])
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
    walk(graph)


def test_pt2_sympy_expression_is_refused_and_the_payload_is_live(tmp_path: Path, pt2: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "sympify-ran"
    evil = _rewrite(pt2, tmp_path / "evil.pt2", _edit_model_json(lambda g: _all_expr(g, _sympy_payload(marker))))
    code, err = _main(["audit", str(evil), *AUDIT, "--out", str(tmp_path / "a.json")], capsys)
    assert code == EXIT_USAGE and not marker.exists()
    _one_error(err, "models/model.json", "sympify", "--trust-code")
    with warnings.catch_warnings():  # control: torch itself evaluates the string
        warnings.simplefilter("ignore")
        try:
            load_model(evil, dataset="digits", trust_code=True)
        except InputError:
            pass
    assert marker.exists()


def test_pt2_graph_calling_a_non_aten_function_is_refused(tmp_path: Path, pt2: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    def edit(graph: dict) -> None:
        graph["graph_module"]["graph"]["nodes"][0]["target"] = "torch.serialization.load"
    evil = _rewrite(pt2, tmp_path / "evil.pt2", _edit_model_json(edit))
    code, err = _main(["audit", str(evil), *AUDIT], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "torch.serialization.load", "not an ATen operator")


@pytest.mark.parametrize("text,ok", [
    ("Symbol('s31', positive=True, integer=True)", True), ("s0", True), ("2*s0 + 1", True),
    ("FloorDiv(s0, 2)", True), ("Eq(Mod(s0, 4), 0)", True), ("s0**2", True),
    ("__import__('os').system('x')", False), ("open('x', 'w')", False), ("s0.__class__", False),
    ("2**2**99", False), ("s0[0]", False), ("lambda: 0", False), ("Symbol('os.system')", False),
    ("10" * 20, False), (None, False),
])
def test_plain_sym_expr_grammar(text: object, ok: bool) -> None:
    assert plain_sym_expr(text) is ok


# -------------------------------------------------------------- two readers, one archive


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name we want
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for name, blob in entries:
                z.writestr(name, blob)
    return buf.getvalue()


def _pt2_entries(pt2: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(pt2) as z:
        return [(n, z.read(n)) for n in z.namelist()]


def test_duplicate_entry_names_are_refused(tmp_path: Path, pt2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """torch reads the first of two same-named entries, Python's zipfile the last: a pickled first copy."""
    marker = tmp_path / "payload-ran"
    entries = _pt2_entries(pt2)
    root = entries[0][0].split("/")[0] + "/"
    cfg_name = root + "data/weights/model_weights_config.json"
    cfg = json.loads(dict(entries)[cfg_name])
    first = next(iter(cfg["config"].values()))
    first["use_pickle"] = True
    evil_cfg = json.dumps(cfg).encode()
    path = tmp_path / "dup.pt2"
    path.write_bytes(_zip([(cfg_name, evil_cfg), (root + "data/weights/" + first["path_name"] + "x",
                                                   _tsave(Payload(marker)))] + entries))
    code, err = _main(["audit", str(path), *AUDIT], capsys)
    assert code == EXIT_USAGE and not marker.exists()
    _one_error(err, "two entries named")


def _patch_name(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) == 2  # local header and central directory
    return data.replace(old, new)


def test_nul_in_an_entry_name_is_refused(tmp_path: Path, pt2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Python's zipfile cuts a name at NUL: `.../model.pt\\0x` is read as the legacy pickled weights file."""
    marker = tmp_path / "payload-ran"
    entries = _pt2_entries(pt2)
    root = entries[0][0].split("/")[0] + "/"
    data = _zip(entries + [(root + "data/weights/model.ptQQ", _tsave({"w": Payload(marker)}))])
    path = tmp_path / "nul.pt2"
    path.write_bytes(_patch_name(data, b"model.ptQQ", b"model.pt\0Q"))
    code, err = _main(["audit", str(path), *AUDIT], capsys)
    assert code == EXIT_USAGE and not marker.exists()
    _one_error(err, "odd entry name")


def test_wrong_size_field_is_refused(tmp_path: Path, pt2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(pt2.read_bytes())
    cd = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, struct.unpack_from("<I", data, cd + 24)[0] + 7)  # uncompressed size
    path = tmp_path / "size.pt2"
    path.write_bytes(bytes(data))
    code, err = _main(["audit", str(path), *AUDIT], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "zip archive")


def test_local_header_that_contradicts_the_directory_is_refused(tmp_path: Path) -> None:
    data = bytearray(_zip([("a/b", b"x" * 10), ("a/c", b"y" * 10)]))
    struct.pack_into("<H", data, 8, 8)  # first local header says deflate, the directory says stored
    with pytest.raises(InputError, match="disagree"):
        read_zip(bytes(data), "t.pt", 1 << 30)


def test_deflate_bomb_pt_is_refused_before_inflating(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = build_model("small-cnn", INFO).state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src:
        entries = [(n, src.read(n)) for n in src.namelist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in entries:
            z.writestr(n, b)
        z.writestr(entries[0][0].split("/")[0] + "/bomb", b"\0" * (64 * 1024**2))
    path = tmp_path / "bomb.pt"
    path.write_bytes(out.getvalue())
    assert path.stat().st_size < 1024**2
    code, err = _main(["audit", str(path), *AUDIT, "--arch", "small-cnn", "--max-unpacked-gib", "0.03"], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "--max-unpacked-gib")


def test_a_sound_pt2_still_audits(tmp_path: Path, pt2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The control for all of the above: torch's own archive passes the strict reader and the graph check."""
    code, err = _main(["audit", str(pt2), *AUDIT, "--out", str(tmp_path / "a.json")], capsys)
    assert code in (0, 1), err


def test_proc_self_mem_as_a_model_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _main(["audit", "/proc/self/mem", *AUDIT], capsys)
    assert code == EXIT_USAGE
    assert len(err) == 1, err


def test_state_dict_with_non_string_keys_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.pt"
    torch.save({1: torch.zeros(3), "a": torch.zeros(2)}, path)
    code, err = _main(["audit", str(path), *AUDIT, "--arch", "small-cnn"], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "non-string keys")


def test_zero_stride_tensor_in_a_state_dict_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "stride.pt"
    torch.save({"w": torch.zeros(1).expand(1 << 30)}, path)  # tiny file, a billion-element view
    assert path.stat().st_size < 10_000
    code, err = _main(["audit", str(path), *AUDIT, "--arch", "small-cnn"], capsys)
    assert code == EXIT_USAGE
    _one_error(err, "strides")


def test_deflate_bomb_rb_checkpoint_is_refused_before_inflating(tmp_path: Path) -> None:
    from maskcheck.errors import LimitError
    from maskcheck.robustbench_models import _refuse_code

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ckpt/data.pkl", b"\x80\x02}q\x00.")  # an empty dict
        z.writestr("ckpt/data/0", bytes(128 * 1024**2))  # 128 MiB of zeros in ~130 kB
    path = tmp_path / "rb.pt"
    path.write_bytes(out.getvalue())
    assert path.stat().st_size < 1024**2
    with pytest.raises(LimitError, match="deflate bomb"):
        _refuse_code(path)
