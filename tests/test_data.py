"""Datasets: tensors in [0, 1], right shapes and labels, fixed splits, safe file readers."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings

from fuzzing import damaged
from maskcheck import data
from maskcheck.errors import InputError


def _check_tensors(x: torch.Tensor, y: torch.Tensor, shape: tuple[int, ...], num_classes: int) -> None:
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert tuple(x.shape[1:]) == shape and len(x) == len(y)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.min() >= 0 and y.max() < num_classes


def _all(ds: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.stack(ys)


# ------------------------------------------------------------------ embedded data


def test_digits_shape_range_labels_and_split() -> None:
    s = data.load_dataset("digits")
    xtr, ytr = s.train.tensors
    xho, yho = s.heldout.tensors
    _check_tensors(xtr, ytr, (1, 8, 8), 10)
    _check_tensors(xho, yho, (1, 8, 8), 10)
    assert len(ytr) + len(yho) == 1797 and len(yho) == round(0.2 * 1797)
    assert set(yho.tolist()) == set(range(10))  # every class is held out
    assert xtr.max() == 1.0 and xtr.min() == 0.0  # scaled by 16, not by 255


def test_split_is_fixed_whatever_the_global_seed() -> None:
    torch.manual_seed(1)
    np.random.seed(1)
    a = data.load_dataset("digits")
    torch.manual_seed(2)
    np.random.seed(2)
    b = data.load_dataset("digits")
    for ta, tb in zip(a.heldout.tensors + a.train.tensors, b.heldout.tensors + b.train.tensors):
        assert torch.equal(ta, tb)


def test_seeded_split_is_a_partition() -> None:
    tr, ho = data.seeded_split(101)
    assert len(set(tr) & set(ho)) == 0 and sorted(np.concatenate([tr, ho])) == list(range(101))
    assert len(ho) == 20
    tr2, ho2 = data.seeded_split(101)
    assert np.array_equal(ho, ho2) and np.array_equal(tr, tr2)


def test_synthetic_shapes_oracle_and_split() -> None:
    s = data.load_dataset("synthetic")
    xtr, ytr = s.train.tensors
    xho, yho = s.heldout.tensors
    _check_tensors(xtr, ytr, (1, 8, 8), 10)
    _check_tensors(xho, yho, (1, 8, 8), 10)
    assert s.train_oracle is not None and s.heldout_oracle is not None
    assert s.train_oracle.shape == (len(ytr), 10) and s.heldout_oracle.shape == (len(yho), 10)
    for oracle, y in ((s.train_oracle, ytr), (s.heldout_oracle, yho)):
        assert torch.allclose(oracle.sum(1), torch.ones(len(y)), atol=1e-5)
        assert torch.equal(oracle.argmax(1), y)  # labels are the oracle's argmax
    again = data.load_dataset("synthetic")
    assert torch.equal(again.heldout.tensors[0], xho) and torch.equal(again.heldout_oracle, s.heldout_oracle)


@pytest.mark.parametrize("fraction", [0.0, 0.03, 0.2])
def test_synthetic_ambiguous_fraction(fraction: float) -> None:
    n = 1000
    x, y, oracle = data.make_synthetic(n=n, ambiguous_fraction=fraction)
    top = oracle.max(1).values
    soft = top < 0.9
    assert int(soft.sum()) == round(fraction * n)
    # an ambiguous sample splits its mass between exactly two classes with weights in [0.3, 0.7]
    if soft.any():
        two = (oracle[soft] > 0.01).sum(1)
        assert torch.all(two == 2)
        assert top[soft].min() >= 0.5 - 1e-4 and top[soft].max() <= 0.7 + 1e-4
    assert torch.all(top[~soft] > 0.99)
    assert x.min() >= 0 and x.max() <= 1 and y.dtype == torch.long


def test_synthetic_seed_changes_data() -> None:
    a = data.make_synthetic(n=50, seed=0)[0]
    b = data.make_synthetic(n=50, seed=1)[0]
    assert not torch.equal(a, b)
    assert torch.equal(a, data.make_synthetic(n=50, seed=0)[0])


# ------------------------------------------------------------------ MNIST (IDX)


def test_mnist_from_the_official_test_split_only(shared_data_dir: Path) -> None:
    s = data.load_dataset("mnist", shared_data_dir)
    xtr, ytr = s.train.tensors
    xho, yho = s.heldout.tensors
    _check_tensors(xtr, ytr, (1, 28, 28), 10)
    _check_tensors(xho, yho, (1, 28, 28), 10)
    assert (len(ytr), len(yho)) == (8000, 2000)
    assert set(ytr.tolist()) == set(range(10)) and set(yho.tolist()) == set(range(10))
    assert "test split only" in s.source
    again = data.load_dataset("mnist", shared_data_dir)
    assert torch.equal(again.heldout.tensors[0], xho) and torch.equal(again.train.tensors[1], ytr)


def _write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _fake_mnist(root: Path, n_train: int = 30, n_test: int = 20, with_train: bool = True) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    splits = [("t10k", n_test)] + ([("train", n_train)] if with_train else [])
    for prefix, n in splits:
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz=prefix == "train")
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return raw


def test_mnist_uses_the_official_split_when_present(tmp_path: Path) -> None:
    _fake_mnist(tmp_path)
    s = data.load_dataset("mnist", tmp_path)
    assert len(s.train) == 30 and len(s.heldout) == 20
    _check_tensors(*s.heldout.tensors, (1, 28, 28), 10)
    assert s.train.tensors[0].max() <= 1.0 and s.train.tensors[0].max() > 0.9  # divided by 255


def test_truncated_idx_file_is_an_input_error(tmp_path: Path) -> None:
    raw = _fake_mnist(tmp_path, with_train=False)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        data.load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"),
                                          ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_offline_data_names_folder_and_files(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(InputError) as err:
        data.load_dataset(name, tmp_path)
    msg = str(err.value)
    assert str(tmp_path / folder) in msg and "\n" not in msg
    expected = {"mnist": "t10k-images-idx3-ubyte", "fashion-mnist": "t10k-labels-idx1-ubyte",
                "cifar10": "data_batch_5", "cifar100": "test"}[name]
    assert expected in msg and "--download" in msg


def test_default_data_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKCHECK_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    with pytest.raises(InputError, match=str(tmp_path)):
        data.load_dataset("cifar10")


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(InputError) as err:
        data.load_dataset("imagenet")
    for name in data.DATASETS:
        assert name in str(err.value)


# ------------------------------------------------------------------ CIFAR (pickles)


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 `str` opcodes, like the official CIFAR files (cPickle, protocol 2)."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _py2_pickle(obj: object) -> bytes:
    import io

    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # The official files were written with numpy 1.x, whose arrays name `numpy.core.multiarray`.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _cifar_batch(n: int, num_classes: int, label_key: bytes, rng: np.random.Generator) -> dict:
    return {
        b"batch_label": b"training batch 1 of 5",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def _fake_cifar(root: Path, name: str, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files, k, key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], 10, b"labels"
        meta = {b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": 10000, b"num_vis": 3072}
        meta_name = "batches.meta"
    else:
        folder = root / "cifar-100-python"
        files, k, key = ["train", "test"], 100, b"fine_labels"
        meta = {b"fine_label_names": [b"apple"] * 100, b"coarse_label_names": [b"fish"] * 20}
        meta_name = "meta"
    folder.mkdir(parents=True)
    for f in files:
        batch = _cifar_batch(n, k, key, rng)
        if name == "cifar100":
            batch[b"coarse_labels"] = [v // 5 for v in batch[key]]
        (folder / f).write_bytes(_py2_pickle(batch))
    (folder / meta_name).write_bytes(_py2_pickle(meta))
    return folder


def test_py2_pickle_helper_writes_the_real_format() -> None:
    """Guard for the helper: the bytes hold Python 2 strings and numpy 1.x names, no py3 `_codecs`."""
    blob = _py2_pickle({b"data": np.zeros((1, 3072), np.uint8)})
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob and b"_codecs" not in blob
    assert pickle.loads(blob, encoding="bytes")[b"data"].shape == (1, 3072)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 warns on `numpy.core`, as for real files
@pytest.mark.parametrize("name, num_classes, n_train", [("cifar10", 10, 20), ("cifar100", 100, 4)])
def test_cifar_loaders_read_the_official_pickles(tmp_path: Path, name: str, num_classes: int, n_train: int) -> None:
    folder = _fake_cifar(tmp_path, name)
    s = data.load_dataset(name, tmp_path)
    assert s.info.num_classes == num_classes and s.info.input_shape == (3, 32, 32)
    assert len(s.train) == n_train and len(s.heldout) == 4
    _check_tensors(*s.heldout.tensors, (3, 32, 32), num_classes)
    # pixel layout: the 3072 bytes are R plane, G plane, B plane, each row-major 32x32
    test_file = "test_batch" if name == "cifar10" else "test"
    raw = pickle.loads((folder / test_file).read_bytes(), encoding="bytes")
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    expected = torch.from_numpy(raw[b"data"].reshape(-1, 3, 32, 32)).float() / 255
    assert torch.equal(s.heldout.tensors[0], expected)
    assert s.heldout.tensors[1].tolist() == raw[label_key]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["os.system", "class"])
def test_cifar_pickle_with_a_payload_is_refused_without_running(tmp_path: Path, payload: str) -> None:
    folder = _fake_cifar(tmp_path, "cifar10")
    marker = tmp_path / "pwned"
    evil: object = _Evil(marker) if payload == "os.system" else {b"data": torch.nn.Linear, b"labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(InputError, match="refusing to load"):
        data.load_dataset("cifar10", tmp_path)
    assert not marker.exists()
    if payload == "os.system":  # control: the payload is live when unpickled normally
        pickle.loads((folder / "test_batch").read_bytes())
        assert marker.exists()


def test_corrupt_cifar_pickle_is_an_input_error(tmp_path: Path) -> None:
    folder = _fake_cifar(tmp_path, "cifar100")
    (folder / "train").write_bytes((folder / "train").read_bytes()[:500])
    with pytest.raises(InputError, match="not a valid CIFAR"):
        data.load_dataset("cifar100", tmp_path)


def test_cifar_augmentation_keeps_shape_and_range() -> None:
    torch.manual_seed(0)
    images = torch.randint(1, 256, (8, 3, 32, 32), dtype=torch.uint8)  # no zero pixels: padding shows
    labels = torch.arange(8)
    plain = data.ImageTensorDataset(images, labels, augment=False)
    aug = data.ImageTensorDataset(images, labels, augment=True)
    changed = 0
    for _ in range(5):
        x, y = _all(aug)
        x0, _ = _all(plain)
        assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1 and torch.equal(y, labels)
        changed += int((x != x0).flatten(1).any(1).sum())
    assert changed > 0  # augmentation does something
    assert torch.equal(_all(plain)[0], images.float() / 255)


def test_cifar_augmentation_is_a_padded_crop_or_flip() -> None:
    """Every augmented image equals some (shift in [-4, 4]^2, flip) of the original, zeros outside."""
    torch.manual_seed(3)
    img = torch.randint(1, 256, (1, 3, 32, 32), dtype=torch.uint8)
    aug = data.ImageTensorDataset(img, torch.zeros(1, dtype=torch.long), augment=True)
    padded = torch.nn.functional.pad(img[0].float() / 255, (4, 4, 4, 4))
    for _ in range(10):
        x, _ = aug[0]
        candidates = [padded[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        candidates += [c.flip(-1) for c in candidates]
        assert any(torch.equal(x, c) for c in candidates)


@pytest.mark.parametrize("n", [0, -5])
def test_nonpositive_n_is_refused(n: int) -> None:
    with pytest.raises(InputError, match="--n must be a positive"):
        data.load_dataset("synthetic").heldout_tensors(n)


def test_heldout_tensors_takes_the_first_n() -> None:
    s = data.load_dataset("synthetic")
    x, y = s.heldout_tensors(5)
    assert torch.equal(x, s.heldout.tensors[0][:5]) and torch.equal(y, s.heldout.tensors[1][:5])
    assert len(s.heldout_tensors(10**6)[1]) == len(s.heldout)


_GOOD_BATCH = _py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]})
_GOOD_IDX = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 28, 28) + bytes(2 * 784)


@settings(max_examples=150, deadline=None)
@given(blob=damaged(_GOOD_BATCH))
@example(blob=b"\x80\x04\x8d" + b"\xff" * 8)  # a string length past sys.maxsize: OverflowError
def test_damaged_cifar_pickle_is_only_ever_an_input_error(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "data_batch_1"
    path.write_bytes(blob)
    try:
        data._read_cifar_pickle(path)
    except InputError:
        pass


@settings(max_examples=150, deadline=None)
@given(blob=damaged(_GOOD_IDX))
@example(blob=_GOOD_IDX[:10])  # cut inside the header
def test_damaged_idx_is_only_ever_an_input_error(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "t10k-images-idx3-ubyte"
    path.write_bytes(blob)
    try:
        data.read_idx(path)
    except InputError:
        pass


@pytest.mark.parametrize("content", ["list", "no-labels", "bad-size", "label-count"])
def test_cifar_batch_with_wrong_fields_is_an_input_error(tmp_path: Path, content: str) -> None:
    folder = _fake_cifar(tmp_path, "cifar10")
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    if content == "list":
        batch = [1, 2, 3]  # type: ignore[assignment]
    elif content == "no-labels":
        del batch[b"labels"]
    elif content == "bad-size":
        batch[b"data"] = np.zeros((4, 1000), np.uint8)
    else:
        batch[b"labels"] = [0, 1, 2]
    (folder / "test_batch").write_bytes(_py2_pickle(batch))
    with pytest.raises(InputError, match="test_batch"):
        data.load_dataset("cifar10", tmp_path)
