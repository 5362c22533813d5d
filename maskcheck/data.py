"""Datasets as tensors in [0, 1] with a fixed, seeded train / held-out split.

Normalisation is *not* applied here: it lives inside the model (LTD paper, App. A.1), so
attacks, eps and the [0, 1] box all refer to raw pixels.

| name          | source                                          | held-out split                     |
|---------------|-------------------------------------------------|------------------------------------|
| digits        | scikit-learn's 8x8 digits (embedded, offline)  | seeded 20% of the 1,797 images     |
| mnist         | IDX files under DATA_DIR/MNIST/raw              | official test split; if only the   |
| fashion-mnist | IDX files under DATA_DIR/FashionMNIST/raw       | test split is present, a seeded    |
|               |                                                 | 20% of it (the rest trains)        |
| cifar10       | DATA_DIR/cifar-10-batches-py (python pickles)   | official test split                |
| cifar100      | DATA_DIR/cifar-100-python (python pickles)      | official test split                |
| synthetic     | LTD App. B simulation, generated from the seed  | seeded 20%                         |

Files are read by maskcheck itself (IDX with numpy, CIFAR pickles with a restricted
unpickler that only rebuilds numpy arrays), so a tampered data file cannot run code.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .errors import InputError

SPLIT_SEED = 0  # the train / held-out split never depends on the training seed
HELDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and an attack need to know about a dataset."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, used by the model's normalisation layer
    std: tuple[float, ...]
    default_eps: float  # Linf, the field's usual budget for this dataset
    default_model: str
    augment: bool = False  # random crop (pad 4) + horizontal flip while training
    # load(info, data_dir, download) -> Splits: how `load_dataset` gets this dataset's train / held-out splits
    load: Callable[["DatasetInfo", Path, bool], "Splits"] | None = field(default=None, compare=False, repr=False)




def get_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise InputError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}.") from None


@dataclass
class Splits:
    """A dataset's train and held-out parts. `heldout` is always an in-memory TensorDataset."""

    info: DatasetInfo
    train: Dataset
    heldout: TensorDataset
    # Synthetic only: the oracle class distribution of every sample (LTD Definition 1).
    train_oracle: torch.Tensor | None = None
    heldout_oracle: torch.Tensor | None = None
    source: str = ""

    def heldout_tensors(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` held-out points as (x in [0, 1], y) tensors."""
        x, y = self.heldout.tensors
        if n is not None:
            if n <= 0:
                raise InputError(f"--n must be a positive number of points; got {n}.")
            x, y = x[:n], y[:n]
        return x, y


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) -> float in [0, 1], with optional CIFAR augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool = False) -> None:
        self.images = images
        self.labels = labels
        self.augment = augment
        self.transform: Callable | None = None  # built on first use: training on the device augments there, without torchvision

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.augment and self.transform is None:
            from torchvision.transforms import v2

            # Standard CIFAR recipe (TRADES, AWP, LTD App. A): pad-4 random crop + flip.
            self.transform = v2.Compose([v2.RandomCrop(self.images.shape[-1], padding=4), v2.RandomHorizontalFlip()])
        if self.transform is not None:
            x = self.transform(x)
        return x.float().div_(255.0), self.labels[i]


def default_data_dir() -> Path:
    env = os.environ.get("MASKCHECK_DATA_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "maskcheck" / "data"


def seeded_split(n: int, fraction: float = HELDOUT_FRACTION, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, heldout) of a fixed random split of n items."""
    perm = np.random.default_rng(seed).permutation(n)
    n_held = int(round(n * fraction))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


# ---------------------------------------------------------------------------- loaders


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16
    y = torch.tensor(bunch.target, dtype=torch.long)
    return x, y


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or .gz), the format of MNIST and Fashion-MNIST."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise InputError(f"{path} is not a valid gzip file ({exc}); delete it and download it again.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"{path} is not an unsigned-byte IDX file; expected the official MNIST format.")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise InputError(f"{path} is truncated inside its header. Download it again.")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    expected = int(np.prod(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != expected:
        raise InputError(f"{path} is truncated: header says {expected} values, file holds {data.size}. Download it again.")
    return data.reshape(tuple(dims))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx_dataset(name: str, data_dir: Path, subfolder: str, download: bool) -> Splits:
    info = DATASETS[name]
    raw = data_dir / subfolder / "raw"
    files = {
        split: (_find_idx(raw, f"{prefix}-images-idx3-ubyte"), _find_idx(raw, f"{prefix}-labels-idx1-ubyte"))
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }
    if None in files["test"] and download:
        _torchvision_download(name, data_dir)
        return _load_idx_dataset(name, data_dir, subfolder, download=False)
    if None in files["test"]:
        raise InputError(
            f"{name} not found offline: expected t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] "
            f"(optionally train-*) in {raw}. Copy them there, pass --data-dir, or add --download."
        )

    def read(pair: tuple[Path, Path]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = read_idx(pair[0]), read_idx(pair[1])
        if len(images) != len(labels):
            raise InputError(f"{pair[0]} has {len(images)} images but {pair[1]} has {len(labels)} labels.")
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    test_x, test_y = read(files["test"])  # type: ignore[arg-type]
    if None not in files["train"]:
        train_x, train_y = read(files["train"])  # type: ignore[arg-type]
        source = f"{raw} (official train / test)"
    else:
        tr, ho = seeded_split(len(test_y))
        train_x, train_y, test_x, test_y = test_x[tr], test_y[tr], test_x[ho], test_y[ho]
        source = f"{raw} (test split only: seeded {1 - HELDOUT_FRACTION:.0%} train / {HELDOUT_FRACTION:.0%} held-out)"
    return Splits(
        info=info,
        train=TensorDataset(train_x.float() / 255.0, train_y),
        heldout=TensorDataset(test_x.float() / 255.0, test_y),
        source=source,
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds the dicts, lists and numpy arrays of the CIFAR python files and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except pickle.UnpicklingError as exc:  # includes our refusal of any non-numpy global
        raise InputError(f"{path} is not a valid CIFAR python batch ({exc}). Download it again.") from None
    except Exception as exc:  # noqa: BLE001 - damaged bytes raise many types (EOF, Overflow, Key...); no foreign code ran
        raise InputError(f"{path} is not a valid CIFAR python batch ({type(exc).__name__}: {exc}). "
                         "Download it again.") from None


def _load_cifar(name: str, data_dir: Path, download: bool) -> Splits:
    info = DATASETS[name]
    if name == "cifar10":
        folder, train_files, test_files, label_key = data_dir / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"
    else:
        folder, train_files, test_files, label_key = data_dir / "cifar-100-python", ["train"], ["test"], b"fine_labels"
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing and download:
        _torchvision_download(name, data_dir)
        return _load_cifar(name, data_dir, download=False)
    if missing:
        raise InputError(
            f"{name} not found offline: expected {', '.join(train_files + test_files)} in {folder}. "
            "Copy the python version of the dataset there, pass --data-dir, or add --download."
        )

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            d = _read_cifar_pickle(folder / f)
            try:
                xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d[label_key], dtype=np.int64))
            except (KeyError, ValueError, TypeError) as exc:
                raise InputError(f"{folder / f} lacks the CIFAR fields data/{label_key.decode()} ({exc}).") from None
            if len(xs[-1]) != len(ys[-1]):
                raise InputError(f"{folder / f} has {len(xs[-1])} images but {len(ys[-1])} labels. Download it again.")
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    return Splits(
        info=info,
        train=ImageTensorDataset(train_x, train_y, augment=info.augment),
        heldout=TensorDataset(test_x.float() / 255.0, test_y),
        source=f"{folder} (official train / test)",
    )


def _torchvision_download(name: str, data_dir: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    try:
        for train in (True, False):
            cls(str(data_dir), train=train, download=True)
    except Exception as exc:  # network errors come in many types; all mean "could not download"
        raise InputError(f"could not download {name} into {data_dir} ({type(exc).__name__}: {exc}). "
                         "Copy the files there by hand or check the network.") from None


# --------------------------------------------------------------------------- synthetic


def make_synthetic(
    n: int = 3000,
    num_classes: int = 10,
    ambiguous_fraction: float = 0.03,
    side: int = 8,
    noise: float = 0.08,
    seed: int = SPLIT_SEED,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LTD App. B style data: most samples belong to one class, a few are genuinely ambiguous.

    Each class has a random prototype image in [0, 1]. A clear sample's oracle distribution is
    one-hot (up to a tiny 1e-4 floor, as in App. B, to keep KL finite); an ambiguous sample mixes
    two classes with weight w ~ U(0.3, 0.7) and its image is the same mix of the two prototypes.
    Labels are the oracle's argmax. Returns (x (n, 1, side, side), y (n,), oracle (n, k)).
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0.0, 1.0, size=(num_classes, side * side))
    y = rng.integers(0, num_classes, size=n)
    oracle = np.full((n, num_classes), 1e-4)
    oracle[np.arange(n), y] = 1.0
    n_amb = int(round(ambiguous_fraction * n))
    amb = rng.choice(n, size=n_amb, replace=False)
    other = (y[amb] + rng.integers(1, num_classes, size=n_amb)) % num_classes
    w = rng.uniform(0.3, 0.7, size=n_amb)
    oracle[amb] = 1e-4
    oracle[amb, y[amb]] = w
    oracle[amb, other] = 1.0 - w
    oracle /= oracle.sum(1, keepdims=True)
    y = oracle.argmax(1)
    x = oracle @ prototypes + rng.normal(0.0, noise, size=(n, side * side))
    x = np.clip(x, 0.0, 1.0).reshape(n, 1, side, side)
    return (
        torch.tensor(x, dtype=torch.float32),
        torch.tensor(y, dtype=torch.long),
        torch.tensor(oracle, dtype=torch.float32),
    )


# ------------------------------------------------------------------------------ entry


def _digits_splits(info: DatasetInfo, data_dir: Path, download: bool) -> Splits:
    x, y = _load_digits()
    tr, ho = seeded_split(len(y))
    return Splits(info, TensorDataset(x[tr], y[tr]), TensorDataset(x[ho], y[ho]), source="sklearn.datasets.load_digits")


def _synthetic_splits(info: DatasetInfo, data_dir: Path, download: bool) -> Splits:
    x, y, oracle = make_synthetic(num_classes=info.num_classes, side=info.input_shape[-1])
    tr, ho = seeded_split(len(y))
    return Splits(info, TensorDataset(x[tr], y[tr]), TensorDataset(x[ho], y[ho]),
                  train_oracle=oracle[tr], heldout_oracle=oracle[ho], source="LTD App. B simulation")


def _idx_splits(info: DatasetInfo, data_dir: Path, download: bool) -> Splits:
    return _load_idx_dataset(info.name, data_dir, {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[info.name], download)


def _cifar_splits(info: DatasetInfo, data_dir: Path, download: bool) -> Splits:
    return _load_cifar(info.name, data_dir, download)


# The registry: a dataset is its entry here (shape, normalisation, default eps and model, loader) plus its
# training recipe in training.DATASET_DEFAULTS; the CLI, the sweep and the audit read them from here.
DATASETS: dict[str, DatasetInfo] = {
    # eps 0.2, not MNIST's 0.3: on 8x8 digits with 17 grey levels 0.3 leaves TRADES ~13% robust.
    "digits": DatasetInfo("digits", 10, (1, 8, 8), (0.3,), (0.38,), 0.2, "small-cnn", load=_digits_splits),
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), 0.3, "small-cnn", load=_idx_splits),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), 0.1, "small-cnn",
                                 load=_idx_splits),
    "cifar10": DatasetInfo(
        "cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), 8 / 255,
        "preact-resnet18", augment=True, load=_cifar_splits,
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 8 / 255,
        "preact-resnet18", augment=True, load=_cifar_splits,
    ),
    "synthetic": DatasetInfo("synthetic", 10, (1, 8, 8), (0.5,), (0.25,), 0.1, "small-cnn", load=_synthetic_splits),
}


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False) -> Splits:
    """Load `name` as train / held-out splits of float tensors in [0, 1] (its registered loader)."""
    info = get_info(name)
    if info.load is None:
        raise InputError(f"dataset {name!r} has no loader; give its DatasetInfo a load= function in maskcheck/data.py.")
    return info.load(info, Path(data_dir) if data_dir else default_data_dir(), download)


# ------------------------------------------------------------------- your own audit data
# `maskcheck audit MODEL --data FILE`: audit on the user's points instead of a held-out split.
# Nothing here unpickles: .pt goes through torch.load(weights_only=True), .npz through
# numpy with allow_pickle=False, images through Pillow (via torchvision's ImageFolder).

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm")  # decoded by PNG/JPEG/BMP/PPM only
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "PPM")  # never EPS (Ghostscript), whatever a file's suffix says


def load_points(path: str | Path, info: DatasetInfo, n: int | None = None, *, max_file_bytes: int | None = None,
                max_unpacked_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Audit points from a file: `.pt` / `.npz` holding `x` and `y`, or an ImageFolder directory.

    x: float in [0, 1] (uint8 pixels are divided by 255), (N, C, H, W), (N, H, W) for one
    channel, or (N, H, W, C) channels-last; y: integer labels (N,). Shapes are checked
    against `info` (the dataset the model was trained on). `n` keeps the first n points of a
    tensor file and a fixed seeded sample of n images of a folder (a folder is sorted by
    class, so its first n would all be one class). Raises InputError in one line.

    A data file is as untrusted as a model file and shares its limits (docs/loading-policy.md):
    regular files only, at most `max_file_bytes` on disk, read by the strict zip
    reader with everything it unpacks or declares capped at `max_unpacked_bytes`; tensors
    dense, on the CPU, without zero strides; images decoded by PNG/JPEG/BMP/PPM only, each
    under `limits.MAX_IMAGE_PIXELS`.
    """
    from .limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_UNPACKED_BYTES

    max_file = DEFAULT_MAX_FILE_BYTES if max_file_bytes is None else max_file_bytes
    max_unpacked = DEFAULT_MAX_UNPACKED_BYTES if max_unpacked_bytes is None else max_unpacked_bytes
    p = Path(path)
    if p.is_dir():
        x, y = _load_image_folder(p, info, n)
    elif not p.exists():
        raise InputError(f"--data {p} not found. Pass a .pt or .npz file with x and y, or an ImageFolder directory.")
    elif p.suffix == ".npz":
        x, y = _load_npz(p, max_file, max_unpacked)
    elif p.suffix in (".pt", ".pth"):
        x, y = _load_pt(p, max_file, max_unpacked)
    else:
        raise InputError(f"--data {p}: unknown kind {p.suffix or '(no suffix)'!r}; expected a .pt or .npz file "
                         "with x and y, or an ImageFolder directory.")
    x, y = _checked_points(x, y, info, p)
    return (x[:n], y[:n]) if n is not None else (x, y)


def _data_entries(path: Path, max_file: int, max_unpacked: int, kind: str) -> dict[str, bytes]:
    """The entries of a --data zip file (.pt / .npz), through the model files' guards."""
    from .guard import read_model_bytes, read_zip

    from .errors import LimitError

    data = read_model_bytes(path, max_file, what="--data file")
    readable = "PyTorch" if kind == ".pt" else ".npz"
    try:
        entries = read_zip(data, f"--data {path}", max_unpacked)
    except LimitError:
        raise
    except InputError as exc:
        why = str(exc)
        why = why[why.find(" (") + 2:why.rfind(")")] if " (" in why else why
        raise InputError(f"--data {path} is not a readable {readable} file ({why}); save it again.") from None
    if entries is None:
        raise InputError(f"--data {path} is not a {kind} file (no zip archive: an old torch.save format or another "
                         "kind of file); save it again with " + ("np.savez." if kind == ".npz" else "torch.save."))
    return entries


def _npy(blob: bytes, path: Path, key: str) -> np.ndarray:
    """One array of an .npz, refused unless numeric and its declared shape fits the bytes it holds."""
    buf = io.BytesIO(blob)
    try:
        version = np.lib.format.read_magic(buf)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = header(buf, max_header_size=10_000)
    except (ValueError, TypeError, SyntaxError, OSError) as exc:
        raise InputError(f"--data {path}: {key} is not a .npy array ({' '.join(str(exc).split())[:100]}).") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InputError(f"--data {path}: {key} has dtype {dtype}, arrays that need pickle or are not numbers; "
                         "save plain numeric arrays.")
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if count * dtype.itemsize > len(blob) - buf.tell():
        raise InputError(f"--data {path}: {key} declares shape {shape} ({count} elements), more than its "
                         f"{len(blob) - buf.tell()} bytes hold; refused (a forged header).")
    try:
        return np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"--data {path}: {key} is not readable ({' '.join(str(exc).split())[:100]}).") from None


def _load_npz(path: Path, max_file: int, max_unpacked: int) -> tuple[object, object]:
    entries = _data_entries(path, max_file, max_unpacked, ".npz")
    missing = [k for k in ("x", "y") if f"{k}.npy" not in entries]
    if missing:
        held = ", ".join(n.removesuffix(".npy") for n in entries) or "nothing"
        raise InputError(f"--data {path} lacks the array(s) {', '.join(missing)}; it holds {held}. "
                         "Save it with np.savez(path, x=images, y=labels).")
    return _npy(entries["x.npy"], path, "x"), _npy(entries["y.npy"], path, "y")


def _load_pt(path: Path, max_file: int, max_unpacked: int) -> tuple[object, object]:
    from .guard import check_tensors, rebuild_zip

    entries = _data_entries(path, max_file, max_unpacked, ".pt")
    try:
        obj = torch.load(io.BytesIO(rebuild_zip(entries)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"--data {path} is not plain tensors (torch.load with weights_only=True refused it: "
                         f"{' '.join(str(exc).split())[:120]}). Save a dict {{'x': tensor, 'y': tensor}}.") from None
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler runs no code; any failure is a bad file
        raise InputError(f"--data {path} is not a readable PyTorch file ({type(exc).__name__}). Was it truncated? Save it again.") from None
    check_tensors(obj, f"--data {path}", max_unpacked)
    if isinstance(obj, dict) and "x" in obj and "y" in obj:
        return obj["x"], obj["y"]
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    raise InputError(f"--data {path} holds a {type(obj).__name__}; expected a dict with tensors 'x' and 'y' "
                     "(torch.save({'x': images, 'y': labels}, path)).")


def _checked_points(x: object, y: object, info: DatasetInfo, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        x_t, y_t = torch.as_tensor(x), torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"--data {path}: x and y must be numeric arrays ({exc}).") from None
    if x_t.dtype == torch.uint8:
        x_t = x_t.float() / 255.0
    if not x_t.is_floating_point():
        raise InputError(f"--data {path}: x must be float in [0, 1] or uint8 pixels; got {x_t.dtype}.")
    c, h, w = info.input_shape
    if x_t.ndim == 3 and c == 1:
        x_t = x_t.unsqueeze(1)
    elif x_t.ndim == 4 and tuple(x_t.shape[1:]) == (h, w, c) and tuple(x_t.shape[1:]) != (c, h, w):
        x_t = x_t.permute(0, 3, 1, 2)  # channels-last, as numpy and PIL store images
    if x_t.ndim != 4 or tuple(x_t.shape[1:]) != (c, h, w):
        raise InputError(f"--data {path}: x has shape {tuple(x_t.shape)}; {info.name} models take (N, {c}, {h}, {w}) "
                         f"(or (N, {h}, {w}, {c})).")
    if y_t.is_floating_point() or y_t.dtype == torch.bool or y_t.ndim != 1 or len(y_t) != len(x_t):
        raise InputError(f"--data {path}: y must be {len(x_t)} integer labels, shape ({len(x_t)},); "
                         f"got {y_t.dtype} of shape {tuple(y_t.shape)}.")
    if len(y_t) == 0:
        raise InputError(f"--data {path} holds no points.")
    if not torch.isfinite(x_t).all() or float(x_t.min()) < 0.0 or float(x_t.max()) > 1.0:
        raise InputError(f"--data {path}: x must be finite and lie in [0, 1]; got min={float(x_t.min()):.3g}, "
                         f"max={float(x_t.max()):.3g}. Store raw pixels; use --normalize for the model's normalisation.")
    if int(y_t.min()) < 0 or int(y_t.max()) >= info.num_classes:
        raise InputError(f"--data {path}: labels must lie in 0..{info.num_classes - 1} for {info.name}; "
                         f"got {int(y_t.min())}..{int(y_t.max())}.")
    return x_t.float().contiguous(), y_t.long()


def _load_image_folder(root: Path, info: DatasetInfo, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's ImageFolder (root/<class>/<image>), images converted to the dataset's channels and size.

    Class folders named by integers (0, 1, ..., 10, ...) take that number as the label; other
    names take their sorted position, as in ImageFolder.
    """
    from PIL import Image
    from torchvision import datasets
    from torchvision.transforms import v2

    c, h, w = info.input_shape

    class _Folder(datasets.ImageFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            classes, mapping = super().find_classes(directory)
            if all(name.isdigit() for name in classes):
                mapping = {name: int(name) for name in classes}
            return classes, mapping

    mode = "L" if c == 1 else "RGB"
    transform = v2.Compose([v2.Lambda(lambda im: im.convert(mode)), v2.PILToTensor(), v2.Resize((h, w), antialias=True),
                            v2.ToDtype(torch.float32, scale=True)])
    try:
        folder = _Folder(str(root), transform=transform, allow_empty=True, loader=_open_image,
                         is_valid_file=_is_image_file)
    except (FileNotFoundError, OSError) as exc:
        raise InputError(f"--data {root}: not an ImageFolder directory ({exc}). Expected {root}/<class>/<image>.png.") from None
    if len(folder) == 0:
        raise InputError(f"--data {root} holds no images; expected {root}/<class>/<image> with suffix "
                         f"{', '.join(IMAGE_SUFFIXES)}.")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(folder))
    if n is not None:
        order = order[:n]
    xs, ys = [], []
    for i in order:
        try:
            image, label = folder[int(i)]
        except InputError:
            raise
        except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning, ValueError, SyntaxError) as exc:
            raise InputError(f"--data {folder.samples[int(i)][0]} is not a readable PNG/JPEG/BMP/PPM image "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]}).") from None
        xs.append(image)
        ys.append(label)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def _is_image_file(path: str) -> bool:
    """An image suffix and a regular file (a FIFO, device or socket named x.png is skipped, never opened)."""
    import stat

    try:
        return path.lower().endswith(IMAGE_SUFFIXES) and stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _open_image(path: str) -> "object":
    """One --data image: a regular file under MAX_IMAGE_BYTES, decoded only by PNG/JPEG/BMP/PPM, pixels capped.

    Pillow picks a decoder by content, not by suffix (an EPS file named .png would start
    Ghostscript), so `formats=` names the four allowed; its decompression-bomb limit is set
    here explicitly and its warning (between the limit and twice it) made an error.
    """
    import warnings

    from PIL import Image

    from .guard import read_model_bytes
    from .limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

    data = read_model_bytes(Path(path), MAX_IMAGE_BYTES, what="--data image")
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS))
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"--data {path} has more pixels than the {MAX_IMAGE_PIXELS} allowed (a decompression "
                             f"bomb?): {' '.join(str(exc).split())[:100]}") from None
    return image


def parse_normalize(text: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`--normalize`: a dataset name (its mean and std), `MEAN,STD` (every channel) or C means then C stds."""
    if text.strip() in DATASETS:
        info = DATASETS[text.strip()]
        if len(info.mean) != channels:
            raise InputError(f"--normalize {text}: {text} has {len(info.mean)} channel(s), the model takes {channels}.")
        return info.mean, info.std
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 2:
        values = [values[0]] * channels + [values[1]] * channels
    if len(values) != 2 * channels or any(not np.isfinite(v) for v in values) or any(s <= 0 for s in values[channels:]):
        raise InputError(f"--normalize must be a dataset name ({', '.join(DATASETS)}), MEAN,STD or {channels} means then "
                         f"{channels} positive stds, comma-separated; got {text!r}.")
    return tuple(values[:channels]), tuple(values[channels:])
