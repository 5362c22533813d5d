"""--data files are as untrusted as model files (issue 26): limits, decoders, no hang, bounded memory.

Every hostile file is built here at test time; each is refused with exit 2 (or a one-line
InputError) before it allocates what it declares. The memory test runs the loads in a child
process and compares its peak RSS with the same child loading nothing.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from maskcheck.data import get_info, load_points
from maskcheck.errors import EXIT_USAGE, InputError, LimitError
from test_untrusted import _main, _one_error

INFO = get_info("digits")  # (1, 8, 8) images, 10 classes


def _npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def npz_bomb(path: Path, gib: float) -> Path:
    """A small .npz whose x.npy deflates to `gib` GiB of zeros (written in chunks, never held in memory)."""
    n = int(gib * 1024**3) // (64 * 4)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((n, 1, 8, 8)))
            chunk = bytes(64 * 1024**2)
            left = n * 64 * 4
            while left > 0:
                f.write(chunk[:min(left, len(chunk))])
                left -= len(chunk)
        z.writestr("y.npy", _npy_header((1,), "<i8") + bytes(8))
    return path


def forged_npz(path: Path) -> Path:
    """An .npz whose x.npy header declares 10^9 images over 256 bytes of data."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", _npy_header((10**9, 1, 8, 8)) + bytes(256))
        z.writestr("y.npy", _npy_header((1,), "<i8") + bytes(8))
    return path


def zero_stride_pt(path: Path) -> Path:
    torch.save({"x": torch.zeros(1).expand(10**8, 1, 8, 8), "y": torch.zeros(1, dtype=torch.long).expand(10**8)}, path)
    return path


def png_bomb(folder: Path, side: int = 12000) -> Path:
    """An ImageFolder with one 1-bit PNG of side x side pixels (144 Mpixels: a few kB on disk)."""
    from PIL import Image

    (folder / "0").mkdir(parents=True)
    Image.new("1", (side, side)).save(folder / "0" / "big.png")
    return folder


def test_npz_deflate_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    path = npz_bomb(tmp_path / "bomb.npz", 0.3)
    assert path.stat().st_size < 2 * 1024**2
    with pytest.raises(LimitError, match="deflate bomb"):
        load_points(path, INFO)


def test_npz_bomb_under_a_given_cap_is_refused_naming_the_flag(tmp_path: Path) -> None:
    path = npz_bomb(tmp_path / "bomb.npz", 0.01)  # under the ratio floor: the unpacked cap stops it
    with pytest.raises(LimitError, match="--max-unpacked-gib"):
        load_points(path, INFO, max_unpacked_bytes=1024**2)


def test_forged_npy_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="forged header"):
        load_points(forged_npz(tmp_path / "forged.npz"), INFO)


@pytest.mark.parametrize("kind", ["zero-stride", "sparse", "meta"])
def test_odd_tensors_in_a_pt_are_one_line_exit_2(tmp_path: Path, kind: str, model_pt2: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"{kind}.pt"
    if kind == "zero-stride":
        zero_stride_pt(path)
    elif kind == "sparse":
        torch.save({"x": torch.zeros(4, 1, 8, 8).to_sparse(), "y": torch.zeros(4, dtype=torch.long)}, path)
    else:
        torch.save({"x": torch.zeros(4, 1, 8, 8, device="meta"), "y": torch.zeros(4, dtype=torch.long)}, path)
    code, err = _main(["audit", str(model_pt2), "--dataset", "digits", "--data", str(path), "--n", "4", "--quiet",
                       "--checks", "logit-magnitude", "--out", str(tmp_path / "a.json")], capsys)
    assert code == EXIT_USAGE, err
    assert len(err) == 1, err


@pytest.fixture()
def model_pt2(tmp_path: Path) -> Path:
    from maskcheck.checkpoint import export_model
    from maskcheck.models import build_model

    torch.manual_seed(0)
    return export_model(build_model("small-cnn", INFO).eval(), torch.rand(2, *INFO.input_shape), tmp_path / "m.pt2")


def test_png_decompression_bomb_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="pixels"):
        load_points(png_bomb(tmp_path / "imgs"), INFO)


def test_png_between_the_limit_and_twice_it_is_refused_too(tmp_path: Path) -> None:
    """Pillow only warns there; the warning is made an error."""
    with pytest.raises(InputError, match="pixels"):
        load_points(png_bomb(tmp_path / "imgs", side=5000), INFO)  # 25 Mpixels: over 16.8, under 33.6


def test_eps_named_png_is_never_given_to_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    marker = tmp_path / "gs-ran"
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: marker.write_text("ran"))
    (tmp_path / "imgs" / "0").mkdir(parents=True)
    (tmp_path / "imgs" / "0" / "a.png").write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n")
    with pytest.raises(InputError, match="PNG/JPEG/BMP/PPM"):
        load_points(tmp_path / "imgs", INFO)
    assert not marker.exists()


def test_fifo_in_an_image_folder_does_not_hang(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "imgs" / "3").mkdir(parents=True)
    Image.new("L", (8, 8), 128).save(tmp_path / "imgs" / "3" / "ok.png")
    os.mkfifo(tmp_path / "imgs" / "3" / "fifo.png")
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("load_points hung on a FIFO")))
    signal.alarm(60)
    try:
        x, y = load_points(tmp_path / "imgs", INFO)
    finally:
        signal.alarm(0)
    assert x.shape == (1, 1, 8, 8) and y.tolist() == [3]


_CHILD = textwrap.dedent("""
    import json, resource, sys
    from maskcheck.data import get_info, load_points
    from maskcheck.checkpoint import load_model
    from maskcheck.errors import MaskcheckError
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused = []
    for kind, path in json.loads(sys.argv[1]):
        try:
            if kind == "data":
                load_points(path, get_info("digits"))
            else:
                load_model(path, dataset="digits", arch="small-cnn")
        except MaskcheckError:
            refused.append(path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"extra_kib": peak - base, "refused": refused}))
""")


def test_hostile_files_stay_under_1_gib_of_extra_memory(tmp_path: Path) -> None:
    """Each file declares or inflates to gigabytes; loading all of them costs the child process < 1 GiB more."""
    from test_untrusted_corpus import _sympy_payload  # noqa: F401 - same corpus

    def huge_empty_record(files: dict[str, bytes], root: str) -> None:
        cfg_name = root + "data/weights/model_weights_config.json"
        cfg = json.loads(files[cfg_name])
        first = next(iter(cfg["config"].values()))
        first["tensor_meta"]["sizes"] = [{"as_int": 1 << 16}, {"as_int": 1 << 16}]  # 16 GiB of float32
        first["tensor_meta"]["strides"] = [{"as_int": 1 << 16}, {"as_int": 1}]
        files[cfg_name] = json.dumps(cfg).encode()
        files[root + "data/weights/" + first["path_name"]] = b""

    from maskcheck.checkpoint import export_model
    from maskcheck.models import build_model
    from test_untrusted import _rewrite

    pt2 = export_model(build_model("small-cnn", INFO).eval(), torch.rand(2, *INFO.input_shape), tmp_path / "m.pt2")
    files = [("data", str(npz_bomb(tmp_path / "bomb.npz", 1.5))), ("data", str(forged_npz(tmp_path / "f.npz"))),
             ("data", str(zero_stride_pt(tmp_path / "z.pt"))), ("data", str(png_bomb(tmp_path / "imgs"))),
             ("model", str(_rewrite(pt2, tmp_path / "huge.pt2", huge_empty_record))),
             ("model", str(zero_stride_pt(tmp_path / "zm.pt")))]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(files)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["refused"]) == len(files), result
    assert result["extra_kib"] < 1024**2, result  # ru_maxrss is in KiB on Linux
