"""Write a generated CIFAR-10-shaped data set in the official python-pickle layout.

    PYTHONPATH=. python benchmarks/make_fake_cifar10.py OUT_DIR [--n-train 50000] [--n-test 10000] [--seed 0]

There is no CIFAR-10 offline here, and timing the GPU path (WRN-34-10 throughput, the
cifar10-paper smoke run) needs images of the right shape, not the real photographs. This writes
`OUT_DIR/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}` exactly as the official
archive lays them out (pickled dicts with `data`: N x 3072 uint8 rows, channel-major, and
`labels`), so `maskcheck ... --dataset cifar10 --data-dir OUT_DIR` reads it like the real one.

Each class is a smooth random colour pattern (an 8x8 prototype per channel, upsampled to 32x32);
an image is its class pattern shifted by up to 4 pixels, with a random contrast, plus Gaussian
noise. The classes are learnable but not trivially so. Accuracy figures on it mean nothing about
CIFAR-10; only the timings do.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(labels: np.ndarray, prototypes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(labels)
    base = prototypes[labels]  # (n, 3, 32, 32) in [0, 1]
    shifts = rng.integers(-4, 5, size=(n, 2))
    out = np.empty_like(base)
    for i in range(n):  # np.roll per image: a few seconds for 60,000 images
        out[i] = np.roll(base[i], tuple(shifts[i]), axis=(1, 2))
    contrast = rng.uniform(0.6, 1.0, size=(n, 1, 1, 1))
    out = 0.5 + (out - 0.5) * contrast + rng.normal(0.0, 0.12, size=out.shape)
    return (np.clip(out, 0.0, 1.0) * 255).round().astype(np.uint8).reshape(n, 3 * 32 * 32)


def write_fake_cifar10(out_dir: str | Path, n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> Path:
    """Write the data set under out_dir/cifar-10-batches-py; returns that folder."""
    if n_train < 5 or n_test < 1:
        raise ValueError(f"need at least 5 training images (one per batch file) and 1 test image; got {n_train}, {n_test}")
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.0, 1.0, size=(10, 3, 8, 8))
    prototypes = coarse.repeat(4, axis=2).repeat(4, axis=3)  # blocky 32x32 class patterns
    folder = Path(out_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, labels: np.ndarray, batch_label: str) -> None:
        record = {b"batch_label": batch_label.encode(), b"labels": [int(v) for v in labels],
                  b"data": _images(labels, prototypes, rng),
                  b"filenames": [f"fake_{name}_{i}.png".encode() for i in range(len(labels))]}
        with open(folder / name, "wb") as f:
            pickle.dump(record, f, protocol=4)  # 2 would route bytes through _codecs, which the safe loader refuses

    for b, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        dump(f"data_batch_{b}", rng.integers(0, 10, size=len(part)), f"training batch {b} of 5")
    dump("test_batch", rng.integers(0, 10, size=n_test), "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": n_train // 5,
                     b"num_vis": 3072}, f, protocol=4)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(write_fake_cifar10(args.out_dir, args.n_train, args.n_test, args.seed))


if __name__ == "__main__":
    main()
