"""Run folders and safe model loading.

A run folder holds `model.safetensors` (weights only: loading it cannot run code) and
`run.json` (method, temperatures, architecture, dataset, threat model, seed, epochs,
metrics, versions, device). Both are written atomically.

Foreign models (not trained by maskcheck) are accepted as:
* TorchScript archives (`torch.jit.save`) and `torch.export` archives (`torch.export.save`),
  the documented way to hand over a model: they load without unpickling Python objects;
* state dicts (`.pt`/`.pth` via `torch.load(weights_only=True)`, or `.safetensors`) together
  with `--model ARCH`;
* full pickled modules only with `allow_pickle=True` (CLI: `--unsafe-pickle`), which warns:
  unpickling a stranger's file runs whatever code it carries.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import provenance
from .data import DatasetInfo, get_info
from .errors import InputError, UnsafeModelFileError
from .fileio import atomic_write, atomic_write_json, read_json
from .models import Classifier, build_model, load_state_dict_compat

WEIGHTS_FILE = "model.safetensors"
RUN_FILE = "run.json"
RUN_SCHEMA_VERSION = 1


@dataclass
class LoadedModel:
    """A model ready to audit, with what we know about where it came from."""

    model: nn.Module
    info: DatasetInfo
    name: str
    format: str  # run | safetensors | state-dict | torchscript | torch-export | pickle
    run: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_weights(path: str | Path, model: nn.Module) -> Path:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state)
    return atomic_write(path, lambda f: f.write(blob))


def save_run(run_dir: str | Path, model: nn.Module, record: dict[str, Any]) -> Path:
    """Write weights then `run.json` (the JSON last: a run folder with run.json is complete)."""
    run_dir = Path(run_dir)
    save_weights(run_dir / WEIGHTS_FILE, model)
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else "cpu"
    full = {"schema_version": RUN_SCHEMA_VERSION, **provenance(device, record.get("seed")), **record}
    atomic_write_json(run_dir / RUN_FILE, full)
    return run_dir


def is_complete_run(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / RUN_FILE).is_file() and (run_dir / WEIGHTS_FILE).is_file()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path} is not a valid safetensors file ({_one_line(exc)}). Was it truncated? Save it again.") from None


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    run_dir = Path(run_dir)
    record = read_json(run_dir / RUN_FILE, "run config")
    try:
        info = get_info(record["dataset"])
        model = build_model(record["arch"], info, temperature=float(record.get("model_temperature", 1.0)))
    except KeyError as exc:
        raise InputError(f"{run_dir / RUN_FILE} lacks the field {exc}; it was not written by maskcheck train.") from None
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise InputError(f"{run_dir} has run.json but no {WEIGHTS_FILE}: the run did not finish. Rerun the training.")
    load_state_dict_compat(model, _read_safetensors(run_dir / WEIGHTS_FILE))
    model.to(device).eval()
    return LoadedModel(model, info, record.get("name", run_dir.name), "run", run=record)


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except Exception:  # noqa: BLE001 - a damaged zip raises BadZipFile, ValueError, NotImplementedError...;
        return None  # treat it as no archive: torch.load below then reports the file as unreadable


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """`Type: message` squeezed onto one line, for error messages that quote a library's error."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:limit]


def _unsafe_global(exc: pickle.UnpicklingError) -> str | None:
    """The global (`module.name`) torch's weights-only unpickler refused, if that was the reason."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    return match.group(1) if match else None


def _torch_load_weights_only(path: Path, allow_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            name = _unsafe_global(exc)
            if name is None:  # e.g. "Unsupported operand": a damaged file, or opcodes torch.save never writes
                raise InputError(f"{path} is not a plain-weights PyTorch file and cannot be read safely "
                                 f"({_one_line(exc)}). Was it truncated or corrupted? Save it again.") from None
            raise UnsafeModelFileError(
                f"{path} needs arbitrary code to load (it pickles {name}, not plain weights). "
                "Export it with torch.export.save or torch.jit.save, or save its state_dict and pass --model; "
                "--unsafe-pickle loads it anyway, running any code it carries."
            ) from None
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler runs no code; any failure means a bad file
        raise InputError(f"{path} is not a readable PyTorch file ({_one_line(exc, 120)}). "
                         "Was it truncated or corrupted? Save it again.") from None
    warnings.warn(f"loading {path} with full pickle (--unsafe-pickle): any code inside it runs now.", stacklevel=2)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # the file's own code may raise anything
        raise InputError(f"{path} could not be unpickled ({_one_line(exc, 120)}).") from None


def _state_dict_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise InputError(f"{path} holds no state dict of tensors (got {type(obj).__name__}). "
                     "Save model.state_dict(), a TorchScript or a torch.export archive.")


def load_model(
    path: str | Path,
    *,
    dataset: str | None = None,
    arch: str | None = None,
    device: torch.device | str = "cpu",
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load a run folder or a model file for auditing. Never unpickles unless `allow_pickle`.

    The model is then run once on a probe batch, so a foreign model that does not fit the
    dataset (input shape, number of classes) or yields NaN/Inf fails here in one line.
    """
    loaded = _load_model(Path(path), dataset, arch, device, allow_pickle)
    check_outputs(loaded.model, loaded.info, source=str(path))
    return loaded


@torch.no_grad()
def check_outputs(model: nn.Module, info: DatasetInfo, x: torch.Tensor | None = None, source: str = "the model") -> torch.Tensor:
    """Logits of `model` on `x` (default: a black, a white and a grey image), checked to be (B, k) and finite."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if x is None:
        x = torch.stack([torch.full(info.input_shape, v) for v in (0.0, 1.0, 0.5)])
    try:
        logits = model(x.to(device))
    except Exception as exc:  # a foreign model may raise anything on an input it was not built for
        raise InputError(f"{source} failed on {info.name} inputs of shape {tuple(x.shape)} ({_one_line(exc)}). "
                         "Check --dataset.") from None
    expected = (len(x), info.num_classes)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(f"{source} returns logits of shape {got}; {info.name} needs {expected} "
                         f"({info.num_classes} classes). Check --dataset.")
    if not torch.isfinite(logits).all():
        raise InputError(f"{source} returns NaN or Inf logits on {info.name} inputs; a model with broken "
                         "weights cannot be audited.")
    return logits


def _load_model(path: Path, dataset: str | None, arch: str | None, device: torch.device | str,
                allow_pickle: bool) -> LoadedModel:
    if not path.exists():
        raise InputError(f"model not found: {path}. Pass a run folder, a .safetensors/.pt file, "
                         "a TorchScript or a torch.export archive.")
    if path.is_dir():
        if not (path / RUN_FILE).is_file():
            raise InputError(f"{path} is a folder without {RUN_FILE}; expected a maskcheck run folder.")
        loaded = load_run(path, device)
        if dataset and dataset != loaded.info.name:
            raise InputError(f"{path} was trained on {loaded.info.name}, not --dataset {dataset}. Drop --dataset.")
        return loaded
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path} is empty. Was it truncated? Save it again.")
    sibling_run = path.parent / RUN_FILE
    if dataset is None and sibling_run.is_file() and path.name == WEIGHTS_FILE:
        return load_run(path.parent, device)
    if dataset is None:
        raise InputError(f"--dataset is required for {path.name} (valid: digits, mnist, fashion-mnist, cifar10, cifar100, synthetic).")
    info = get_info(dataset)

    def from_state(state: dict[str, torch.Tensor], fmt: str) -> LoadedModel:
        if arch is None:
            raise InputError(f"{path.name} holds bare weights: pass --model ARCH (e.g. small-cnn, preact-resnet18, wrn-34-10).")
        model = build_model(arch, info)
        load_state_dict_compat(model, state)
        return LoadedModel(model.to(device).eval(), info, path.stem, fmt)

    if path.suffix == ".safetensors":
        return from_state(_read_safetensors(path), "safetensors")
    names = _zip_names(path)
    if names is not None and any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        try:
            module = torch.export.load(str(path)).module()
        except Exception as exc:  # torch.export raises many types for a bad archive
            raise InputError(f"{path} is a torch.export archive that failed to load ({_one_line(exc)}).") from None
        return LoadedModel(module.to(device), info, path.stem, "torch-export")
    if names is not None and any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        try:
            with warnings.catch_warnings():
                # TorchScript still loads; torch marks it deprecated (DeprecationWarning or FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # the TorchScript loader raises RuntimeError and friends
            raise InputError(f"{path} is a TorchScript archive that failed to load ({_one_line(exc)}).") from None
        return LoadedModel(module.to(device).eval(), info, path.stem, "torchscript")
    obj = _torch_load_weights_only(path, allow_pickle)
    if isinstance(obj, nn.Module):
        return LoadedModel(obj.to(device).eval(), info, path.stem, "pickle")
    return from_state(_state_dict_from(obj, path), "state-dict")


def export_model(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Save `model` as a torch.export archive: the safe way to hand a model to someone else.

    The batch dimension is exported as dynamic, so the loaded program accepts any batch size
    (a plain `torch.export.export` would fix it to `example`'s and fail on every other one).
    """
    model = model.eval().cpu()
    example = example.cpu()
    if example.shape[0] < 2:  # torch.export specialises a dimension of size 1 to a constant
        example = example[:1].expand(2, *example.shape[1:]).clone()
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    data = buf.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def describe(loaded: LoadedModel) -> str:
    t = float(loaded.model.temperature) if isinstance(loaded.model, Classifier) else None
    return f"{loaded.name} ({loaded.format}, {loaded.info.name}" + (f", temperature {t:g}" if t and t != 1 else "") + ")"
