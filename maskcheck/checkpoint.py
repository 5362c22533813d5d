"""Run folders and safe model loading.

A run folder holds `model.safetensors` (weights only: loading it cannot run code) and
`run.json` (method, temperatures, architecture, dataset, threat model, seed, epochs,
metrics, versions, device). Both are written atomically.

Foreign models (not trained by maskcheck) follow the loading policy (docs/loading-policy.md):
* data-only formats load by default: `torch.export` archives (`torch.export.save`, the
  documented way to hand over a model) whose every entry is plain tensor data, checked entry by
  entry in `guard.inspect_pt2` before torch reads them; state dicts (`.pt`/`.pth` via
  `torch.load(weights_only=True)`, or `.safetensors`) together with `--arch ARCH`;
* formats that can carry code (TorchScript, full pickles, `.pt2` entries that are pickles or
  opaque objects) only with `trust_code=True` (CLI: `--trust-code`, aliases `--allow-pickle`,
  `--unsafe-pickle`), which warns: loading a stranger's code runs it.
Every file is read once into memory after the checks of `guard.read_model_bytes` (regular file,
size cap), so the bytes inspected are the bytes loaded.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import provenance
from .data import DATASETS, DatasetInfo, get_info
from .errors import InputError, MaskcheckError, UnsafeModelFileError
from .fileio import atomic_write, atomic_write_json, read_json
from .guard import (
    DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_UNPACKED_BYTES, TRUST_FLAG, GuardedModel, check_tensors, inspect_pt2,
    is_pt2, is_torchscript, is_zip, read_model_bytes, read_zip, rebuild_zip, unsafe_globals,
)
from .validate import RUN_SCHEMA_VERSION, validate_run
from .models import build_model, load_state_dict_compat

WEIGHTS_FILE = "model.safetensors"
RUN_FILE = "run.json"


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


def _read_safetensors(path: Path, data: bytes | None = None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(read_model_bytes(path) if data is None else data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path} is not a valid safetensors file ({_one_line(exc)}). Was it truncated? Save it again.") from None


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    run_dir = Path(run_dir)
    record = read_json(run_dir / RUN_FILE, "run config")
    validate_run(record, str(run_dir / RUN_FILE), RUN_SCHEMA_VERSION)
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


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """`Type: message` squeezed onto one line, for error messages that quote a library's error."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:limit]


def _warn_trusted(path: Path, what: str) -> None:
    warnings.warn(f"loading {path} ({what}) with {TRUST_FLAG}: any code inside it runs now.", stacklevel=3)


def _legacy_global(exc: BaseException) -> list[str]:
    """The global a legacy (non-zip) `.pt` pickles, from torch's refusal: both wordings torch has used."""
    if not isinstance(exc, pickle.UnpicklingError):
        return []
    match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
    return [match.group(1)] if match else []


def _torch_load_weights_only(data: bytes, path: Path, trust_code: bool) -> Any:
    """`torch.load(weights_only=True)`; a refusal names the globals the file would import."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler runs no code; any failure is a bad or unsafe file
        # torch.save's zip format: name the globals from a static scan, not from torch's error text
        # (whose wording changes between versions); the legacy non-zip format has no such scan.
        names = unsafe_globals(data) if is_zip(data) else _legacy_global(exc)
        if not trust_code:
            if names:
                raise UnsafeModelFileError(
                    f"{path} needs code to load (it pickles {', '.join(names[:3])}, not plain weights); refused. "
                    f"Save its state_dict and pass --arch, or export it with torch.export.save; {TRUST_FLAG} "
                    "(alias --allow-pickle) loads it anyway, running any code it carries."
                ) from None
            raise InputError(f"{path} is not a readable PyTorch file ({_one_line(exc, 120)}). "
                             "Was it truncated or corrupted? Save it again.") from None
    _warn_trusted(path, "a full pickle")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - the file's own code may raise anything
        raise InputError(f"{path} could not be unpickled ({_one_line(exc, 120)}).") from None


def _state_dict_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if any(not isinstance(k, str) for k in tensors):
            raise InputError(f"{path} is a state dict with non-string keys; save model.state_dict() (names to tensors).")
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
    trust_code: bool = False,
    allow_pickle: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    timeout_per_batch: float | None = None,
) -> LoadedModel:
    """Load a run folder or a model file for auditing, under the loading policy (docs/loading-policy.md).

    Data-only formats load by default: run folders, `.safetensors` and weights-only `.pt` state
    dicts with `arch`, and `torch.export` archives whose every entry is plain tensor data
    (inspected here before torch sees them). Formats that can carry code (TorchScript, full
    pickles, `.pt2` entries that are pickles or opaque objects) raise `UnsafeModelFileError`
    unless `trust_code` (`allow_pickle` is its old name), which loads them with a warning.
    Files must be regular and within `max_file_bytes`; archives within `max_unpacked_bytes`.

    The model comes back wrapped in `guard.GuardedModel` (eval/train safe on every format;
    each forward timed against `timeout_per_batch` seconds), and is run once on probe batches,
    so a foreign model that does not fit the dataset (input shape, number of classes, batch
    size, integer or NaN/Inf logits) fails here in one line.
    """
    loaded = _load_model(Path(path), dataset, arch, device, trust_code or allow_pickle, max_file_bytes, max_unpacked_bytes)
    loaded.model = GuardedModel(loaded.model, timeout_per_batch)
    check_outputs(loaded.model, loaded.info, source=str(path))
    return loaded


@torch.no_grad()
def check_outputs(model: nn.Module, info: DatasetInfo, x: torch.Tensor | None = None, source: str = "the model") -> torch.Tensor:
    """Logits of `model` on `x`, checked to be floating point, (B, k) and finite.

    The default probe is two batches, a black, a white and a grey image, then two grey ones, so
    a model that always returns one fixed batch size is caught too. Returns the first batch's logits.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if x is None:
        first = check_outputs(model, info, torch.stack([torch.full(info.input_shape, v) for v in (0.0, 1.0, 0.5)]), source)
        check_outputs(model, info, torch.full((2, *info.input_shape), 0.5), source)
        return first
    try:
        logits = model(x.to(device))
    except MaskcheckError:
        raise  # e.g. a forward over --timeout-per-batch: its own message
    except Exception as exc:  # noqa: BLE001 - a foreign model may raise anything on an input it was not built for
        raise InputError(f"{source} failed on {info.name} inputs of shape {tuple(x.shape)} ({_one_line(exc)}). "
                         "Check --dataset.") from None
    expected = (len(x), info.num_classes)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        what = "another batch size than its input" if isinstance(logits, torch.Tensor) and logits.ndim == 2 \
            and logits.shape[1] == info.num_classes else f"{info.num_classes} classes"
        raise InputError(f"{source} returns logits of shape {got} for a batch of {len(x)}; {info.name} needs {expected} "
                         f"({what}). Check --dataset and that the model keeps the batch dimension.")
    if not logits.is_floating_point():
        raise InputError(f"{source} returns {logits.dtype} logits; gradient attacks need floating-point logits. "
                         "Return the raw scores before argmax.")
    if not torch.isfinite(logits).all():
        raise InputError(f"{source} returns NaN or Inf logits on {info.name} inputs; a model with broken "
                         "weights cannot be audited.")
    return logits


def _load_model(path: Path, dataset: str | None, arch: str | None, device: torch.device | str,
                trust_code: bool, max_file: int, max_unpacked: int) -> LoadedModel:
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
    data = read_model_bytes(path, max_file)  # regular files only, size-capped, read once: what we inspect is what loads
    if not data:
        raise InputError(f"{path} is empty. Was it truncated? Save it again.")
    sibling_run = path.parent / RUN_FILE
    if dataset is None and sibling_run.is_file() and path.name == WEIGHTS_FILE:
        return load_run(path.parent, device)
    if dataset is None:
        raise InputError(f"--dataset is required for {path.name} (valid: {', '.join(DATASETS)}).")
    info = get_info(dataset)

    def from_state(state: dict[str, torch.Tensor], fmt: str) -> LoadedModel:
        if arch is None:
            raise InputError(f"{path.name} holds bare weights: pass --arch ARCH (e.g. small-cnn, preact-resnet18, wrn-34-10).")
        model = build_model(arch, info)
        load_state_dict_compat(model, state)
        return LoadedModel(model.to(device).eval(), info, path.stem, fmt)

    if path.suffix == ".safetensors":
        return from_state(_read_safetensors(path, data), "safetensors")
    entries = read_zip(data, str(path), max_unpacked)  # one strict reader; torch gets exactly these entries
    if entries is not None:
        data = rebuild_zip(entries)
    if entries is not None and is_pt2(entries):
        if trust_code:
            _warn_trusted(path, "a torch.export archive, not inspected")
        else:
            inspect_pt2(entries, str(path), max_unpacked)
        try:
            module = torch.export.load(io.BytesIO(data)).module()
        except Exception as exc:  # noqa: BLE001 - torch.export raises many types for a bad archive
            raise InputError(f"{path} is a torch.export archive that failed to load ({_one_line(exc)}).") from None
        return LoadedModel(module.to(device), info, path.stem, "torch-export")
    if entries is not None and is_torchscript(entries):
        if not trust_code:
            raise UnsafeModelFileError(
                f"{path} is a TorchScript archive: its code (code/*.py, including __setstate__) runs when it loads and "
                f"on every forward; refused. Export the model with torch.export.save, or pass {TRUST_FLAG} if you "
                "trust whoever made this file.")
        _warn_trusted(path, "TorchScript")
        try:
            with warnings.catch_warnings():
                # TorchScript still loads; torch marks it deprecated (DeprecationWarning or FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - the TorchScript loader raises RuntimeError and friends
            raise InputError(f"{path} is a TorchScript archive that failed to load ({_one_line(exc)}).") from None
        return LoadedModel(module.to(device).eval(), info, path.stem, "torchscript")
    obj = _torch_load_weights_only(data, path, trust_code)
    if not trust_code:
        check_tensors(obj, str(path), max_unpacked)
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


