"""Run folders and model files: exact round trips, safe loading, clear one-line errors."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings

from fuzzing import damaged
from maskcheck import __version__
from maskcheck.checkpoint import (
    RUN_FILE, WEIGHTS_FILE, export_model, is_complete_run, load_model, load_run, save_run, save_weights,
)
from maskcheck.data import get_info
from maskcheck.errors import InputError, UnsafeModelFileError
from maskcheck.models import build_model

INFO = get_info("digits")


@pytest.fixture()
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("small-cnn", INFO, temperature=2.0).eval()


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _record() -> dict:
    return {"name": "ltd-T5", "method": "ltd", "temperature": 5.0, "model_temperature": 2.0, "arch": "small-cnn",
            "dataset": "digits", "threat": {"eps": 0.3, "norm": "linf"}, "seed": 7, "epochs": 1,
            "metrics": {"clean_acc": 0.5}}


def test_run_round_trip_gives_identical_logits(tmp_path: Path, model: torch.nn.Module, x: torch.Tensor) -> None:
    run = save_run(tmp_path / "run", model, _record())
    assert is_complete_run(run)
    loaded = load_run(run)
    assert loaded.format == "run" and loaded.name == "ltd-T5" and loaded.info.name == "digits"
    assert torch.equal(loaded.model(x), model(x))
    assert float(loaded.model.temperature) == 2.0
    record = json.loads((run / RUN_FILE).read_text())
    assert record["seed"] == 7 and record["maskcheck_version"] == __version__
    assert record["torch_version"] == torch.__version__ and record["device"] == "cpu" and record["schema_version"] == 1
    # the same folder through the generic entry point, and its weights file on its own
    assert torch.equal(load_model(run).model(x), model(x))
    assert torch.equal(load_model(run / WEIGHTS_FILE).model(x), model(x))
    assert list(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_run_without_weights_is_not_complete(tmp_path: Path, model: torch.nn.Module) -> None:
    run = save_run(tmp_path / "run", model, _record())
    (run / WEIGHTS_FILE).unlink()
    assert not is_complete_run(run)
    with pytest.raises(InputError, match="did not finish"):
        load_run(run)


def test_run_dataset_mismatch_is_refused(tmp_path: Path, model: torch.nn.Module) -> None:
    run = save_run(tmp_path / "run", model, _record())
    with pytest.raises(InputError, match="trained on digits"):
        load_model(run, dataset="mnist")


def test_safetensors_file_loads_with_dataset_and_model(tmp_path: Path, model: torch.nn.Module, x: torch.Tensor) -> None:
    path = save_weights(tmp_path / "w.safetensors", model)
    loaded = load_model(path, dataset="digits", arch="small-cnn")
    assert loaded.format == "safetensors" and torch.equal(loaded.model(x), model(x))
    with pytest.raises(InputError, match="--dataset"):
        load_model(path)
    with pytest.raises(InputError, match="--arch"):
        load_model(path, dataset="digits")


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module-prefix"])
def test_weights_only_state_dict_pt(tmp_path: Path, model: torch.nn.Module, x: torch.Tensor, wrap: str) -> None:
    state = model.state_dict()
    if wrap == "state_dict":
        obj = {"state_dict": state, "epoch": 3}
    elif wrap == "module-prefix":
        obj = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = state
    torch.save(obj, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", dataset="digits", arch="small-cnn")
    assert loaded.format == "state-dict" and torch.equal(loaded.model(x), model(x))


class _CreatesFile:
    """A pickle payload: unpickling it calls open(path, 'w'), which creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path, model: torch.nn.Module) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({**model.state_dict(), "payload": _CreatesFile(marker)}, path)
    with pytest.raises(UnsafeModelFileError) as err:
        load_model(path, dataset="digits", arch="small-cnn")
    assert not marker.exists()
    msg = str(err.value)
    assert "open" in msg  # names what the payload would call
    assert "\n" not in msg and "torch.export" in msg and "--trust-code" in msg
    # control: the payload is live; opting in runs it (and warns)
    with pytest.warns(UserWarning, match="--trust-code"):
        load_model(path, dataset="digits", arch="small-cnn", trust_code=True)
    assert marker.exists()


def test_full_pickled_module_needs_the_opt_in(tmp_path: Path, model: torch.nn.Module, x: torch.Tensor) -> None:
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(UnsafeModelFileError):
        load_model(path, dataset="digits")
    with pytest.warns(UserWarning, match="any code inside it runs"):
        loaded = load_model(path, dataset="digits", allow_pickle=True)
    assert loaded.format == "pickle" and torch.equal(loaded.model(x), model(x))


def test_torchscript_archive_is_refused_and_loads_with_trust_code(tmp_path: Path, model: torch.nn.Module,
                                                                   x: torch.Tensor) -> None:
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks TorchScript deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    with pytest.raises(UnsafeModelFileError, match="TorchScript.*--trust-code"):
        load_model(path, dataset="digits")
    with pytest.warns(UserWarning, match="--trust-code: any code inside it runs") as record:
        loaded = load_model(path, dataset="digits", trust_code=True)
    assert len(record) == 1  # one warning, no deprecation spam
    assert loaded.format == "torchscript"
    assert torch.allclose(loaded.model(x), model(x), atol=1e-6)
    assert loaded.model(x[:1]).shape == (1, 10)


def test_torch_export_archive_loads_and_predicts(tmp_path: Path, model: torch.nn.Module, x: torch.Tensor) -> None:
    path = export_model(model, x[:1], tmp_path / "model.pt2")
    loaded = load_model(path, dataset="digits")
    assert loaded.format == "torch-export"
    for batch in (x, x[:1], x[:3]):  # any batch size, not only the example's
        assert torch.allclose(loaded.model(batch), model(batch), atol=1e-6)


def _truncate(path: Path, keep: float) -> Path:
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])
    return path


@pytest.mark.parametrize("kind", ["truncated-safetensors", "truncated-pt", "garbage-pt", "text-pt", "cut-pickle-pt",
                                  "empty", "truncated-run"])
def test_broken_files_are_one_line_input_errors(tmp_path: Path, model: torch.nn.Module, kind: str) -> None:
    if kind == "truncated-safetensors":
        path = _truncate(save_weights(tmp_path / "w.safetensors", model), 0.5)
    elif kind == "truncated-pt":
        torch.save(model.state_dict(), tmp_path / "w.pt")
        path = _truncate(tmp_path / "w.pt", 0.6)
    elif kind == "garbage-pt":
        path = tmp_path / "w.pt"
        path.write_bytes(b"\x80\x02not a pickle at all" * 10)
    elif kind == "text-pt":  # the legacy loader reads a magic number and fails with KeyError
        path = tmp_path / "w.pt"
        path.write_bytes(b"hello, this is not a model")
    elif kind == "cut-pickle-pt":  # ... or with struct.error
        path = tmp_path / "w.pt"
        path.write_bytes(b"\x80\x02}q\x00(X")
    elif kind == "empty":
        path = tmp_path / "w.pt"
        path.write_bytes(b"")
    else:
        path = save_run(tmp_path / "run", model, _record())
        _truncate(path / RUN_FILE, 0.5)
    with pytest.raises(InputError) as err:
        load_model(path, dataset=None if kind == "truncated-run" else "digits", arch="small-cnn")
    assert "\n" not in str(err.value) and str(path.name) in str(err.value)
    assert not isinstance(err.value, UnsafeModelFileError)


def test_state_dict_for_another_architecture_names_keys(tmp_path: Path) -> None:
    other = build_model("preact-resnet18", INFO)
    torch.save(other.state_dict(), tmp_path / "w.pt")
    with pytest.raises(InputError) as err:
        load_model(tmp_path / "w.pt", dataset="digits", arch="small-cnn")
    msg = str(err.value)
    assert "missing keys net.classifier" in msg and "unexpected keys net.bn" in msg and "\n" not in msg


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model not found"):
        load_model(tmp_path / "nope.pt", dataset="digits")


def _good_pt() -> bytes:
    buf = io.BytesIO()
    torch.save({"net.w": torch.zeros(3)}, buf)
    return buf.getvalue()


def _bad_zip_name(blob: bytes) -> bytes:
    """The archive with its first file name made invalid UTF-8 (zipfile raises UnicodeDecodeError)."""
    b = bytearray(blob)
    b[b.find(b"PK\x01\x02") + 46] = 0xF1
    return bytes(b)


@settings(max_examples=150, deadline=None)
@given(blob=damaged(_good_pt()))
@example(blob=_bad_zip_name(_good_pt()))
def test_damaged_pt_is_only_ever_an_input_error(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    """Whatever the damage, loading says so in one line: never another exception, never a traceback."""
    path = tmp_path_factory.mktemp("fuzz") / "model.pt"
    path.write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns about odd pickle protocols
        with pytest.raises(InputError) as err:  # the keys never fit small-cnn, so even a valid load is refused
            load_model(path, dataset="digits", arch="small-cnn")
    assert "\n" not in str(err.value)


def _scripted(model: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return path


@pytest.mark.parametrize("case", ["classes", "input-shape", "nan"])
def test_foreign_model_that_does_not_fit_the_dataset(tmp_path: Path, model: torch.nn.Module, case: str) -> None:
    if case == "classes":  # a CIFAR-100-style head audited as digits
        path = _scripted(build_model("small-cnn", get_info("cifar100")).eval(), tmp_path / "m.pt")
        dataset, expected = "cifar10", r"shape \(3, 100\) for a batch of 3; cifar10 needs \(3, 10\)"
    elif case == "input-shape":  # a 1-channel model audited on 3-channel CIFAR
        path = _scripted(model, tmp_path / "m.pt")
        dataset, expected = "cifar10", r"failed on cifar10 inputs of shape \(3, 3, 32, 32\)"
    else:
        broken = build_model("small-cnn", INFO)
        broken.net.classifier[3].bias.data[0] = float("nan")
        path = save_weights(tmp_path / "m.safetensors", broken)
        dataset, expected = "digits", "NaN or Inf"
    with pytest.raises(InputError, match=expected) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the --trust-code warning of the TorchScript cases
        load_model(path, dataset=dataset, arch="small-cnn", trust_code=True)
    assert "\n" not in str(err.value)


def test_check_outputs_on_given_inputs(model: torch.nn.Module, x: torch.Tensor) -> None:
    from maskcheck.checkpoint import check_outputs

    assert torch.equal(check_outputs(model, INFO, x), model(x))
