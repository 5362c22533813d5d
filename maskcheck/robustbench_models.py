"""RobustBench models by name: `maskcheck audit rb:<name> --dataset cifar10 --threat Linf`.

Uses the `robustbench` package (`pip install "maskcheck[robustbench]"`): its model zoo builds
the architecture and `robustbench.utils.load_model` reads the checkpoint from RobustBench's usual
folder, MODEL_DIR/<dataset>/<threat>/<name>.pt (RobustBench's default MODEL_DIR is ./models).
Before that, maskcheck opens the file itself with `torch.load(weights_only=True)`, so a
checkpoint that carries code is refused without running it. Nothing is downloaded unless
`download=True` (`--download`); offline, a missing file is a one-line error saying where to put it.
"""

from __future__ import annotations

import difflib
import pickle
from pathlib import Path
from typing import Any

import torch

from .checkpoint import LoadedModel, check_outputs
from .data import get_info
from .errors import InputError

PREFIX = "rb:"
DEFAULT_MODEL_DIR = Path("models")  # robustbench.utils.load_model(model_dir="./models")
THREATS = {"linf": "Linf", "l2": "L2"}  # RobustBench spelling; its corruption benchmarks have no eps-ball
DATASETS = ("cifar10", "cifar100")  # RobustBench datasets that maskcheck also knows (shape, classes)
# The leaderboards' budgets (Croce et al., RobustBench, NeurIPS 2021 Datasets and Benchmarks, Sec. 3).
STANDARD_EPS = {"Linf": 8 / 255, "L2": 0.5}


def is_robustbench(spec: str | Path) -> bool:
    return str(spec).startswith(PREFIX)


def standard_threat(threat: str) -> tuple[float, str]:
    """The leaderboard's (eps, norm) for a RobustBench threat model name (Linf, L2; any case)."""
    rb = _threat(threat)
    return STANDARD_EPS[rb], rb.lower()


def _threat(threat: str) -> str:
    try:
        return THREATS[str(threat).lower()]
    except KeyError:
        raise InputError(f"--threat must be Linf or L2 for a RobustBench model; got {threat!r} "
                         "(the corruption benchmarks have no eps-ball to audit).") from None


def checkpoint_path(name: str, dataset: str = "cifar10", threat: str = "Linf", model_dir: str | Path | None = None) -> Path:
    """Where RobustBench keeps the checkpoint of `name`: MODEL_DIR/<dataset>/<threat>/<name>.pt."""
    return Path(model_dir or DEFAULT_MODEL_DIR) / dataset / _threat(threat) / f"{name}.pt"


def load_robustbench(
    name: str,
    dataset: str = "cifar10",
    threat: str = "Linf",
    *,
    model_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    download: bool = False,
) -> LoadedModel:
    """A RobustBench zoo model (`name` as on the leaderboard, `rb:` prefix optional) ready to audit.

    Raises InputError in one line for an unknown name, a missing package or file, or a
    checkpoint that is not plain weights.
    """
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if dataset not in DATASETS:
        raise InputError(f"--dataset for a RobustBench model must be one of {', '.join(DATASETS)}; got {dataset!r}.")
    rb_threat = _threat(threat)
    utils, zoo = _robustbench(dataset, rb_threat)
    if name not in zoo:
        close = difflib.get_close_matches(name, list(zoo), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise InputError(f"{name!r} is not a RobustBench {dataset} {rb_threat} model ({len(zoo)} are).{hint} "
                         "Names are those of robustbench.model_zoo and the leaderboard.")
    entry = zoo[name]
    path = checkpoint_path(name, dataset, rb_threat, model_dir)
    files = [path] if not isinstance(entry.get("gdrive_id"), list) else \
        [Path(f"{path}_m{i}.pt") for i in range(len(entry["gdrive_id"]))]  # an ensemble: one file per member
    missing = [f for f in files if not f.is_file()]
    if missing and not download:
        raise InputError(f"RobustBench model {name} is not in {path.parent} (offline): put {', '.join(f.name for f in missing)} "
                         f"there (robustbench.utils.load_model({name!r}, model_dir=..., dataset={dataset!r}, "
                         f"threat_model={rb_threat!r}) downloads it where the network allows), pass --rb-model-dir, "
                         "or add --download.")
    for f in files:
        if f.is_file():
            _refuse_code(f)
    try:
        model = utils.load_model(name, model_dir=str(Path(model_dir or DEFAULT_MODEL_DIR)), dataset=dataset,
                                 threat_model=rb_threat)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - downloads and state-dict mismatches raise many types
        raise InputError(f"RobustBench could not load {name} from {path.parent} ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]}). Check the file or download it again.") from None
    info = get_info(dataset)
    model = model.to(device).eval()
    check_outputs(model, info, source=f"{PREFIX}{name}")
    eps, norm = standard_threat(rb_threat)
    return LoadedModel(model, info, f"{PREFIX}{name}", "robustbench",
                       extra={"path": str(path), "threat": {"eps": eps, "norm": norm}})


def _robustbench(dataset: str, threat: str) -> tuple[Any, dict[str, Any]]:
    _alias_autoattack()
    try:
        from robustbench import utils
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as exc:
        raise InputError(f"rb: models need the robustbench package ({exc}). "
                         "Install it with: pip install 'maskcheck[robustbench]'.") from None
    return utils, model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]


def _alias_autoattack() -> None:
    """`import robustbench` runs `from autoattack import AutoAttack`: fra31's package, installed from
    GitHub and not on PyPI. pyautoattack is the PyPI release of that code (maskcheck already
    depends on it), so when `autoattack` is missing its name is pointed there; submodules such as
    `autoattack.state` resolve through the same folder."""
    import importlib.util
    import sys

    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return
    import pyautoattack

    sys.modules["autoattack"] = pyautoattack


def _refuse_code(path: Path) -> None:
    """Open the checkpoint with the weights-only unpickler first: a file carrying code never runs.

    Through the model files' guards first (regular file, size cap, the strict zip reader with
    the unpacked cap checked before inflating, so a deflate bomb costs nothing; tensors checked):
    RobustBench then reads the same file, which the strict reader found unambiguous.
    """
    import io

    from .guard import check_tensors, read_model_bytes, read_zip, rebuild_zip
    from .limits import DEFAULT_MAX_UNPACKED_BYTES

    data = read_model_bytes(path)
    entries = read_zip(data, str(path), DEFAULT_MAX_UNPACKED_BYTES)
    try:
        obj = torch.load(io.BytesIO(rebuild_zip(entries) if entries is not None else data), map_location="cpu",
                         weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path} is not plain weights (torch.load with weights_only=True refused it: "
                         f"{' '.join(str(exc).split())[:120]}); maskcheck does not unpickle RobustBench files.") from None
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler runs no code; any failure is a bad file
        raise InputError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}). "
                         "Was the download cut short? Delete it and fetch it again.") from None
    check_tensors(obj, str(path), DEFAULT_MAX_UNPACKED_BYTES)
    del obj


__all__ = ["checkpoint_path", "is_robustbench", "load_robustbench", "standard_threat"]
