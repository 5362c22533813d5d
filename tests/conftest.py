"""Shared test fixtures: real data locations and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout holds the real MNIST test split (see its README).
SHARED_DATA = Path(os.environ.get("MASKCHECK_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST test split not found under {SHARED_DATA} (set MASKCHECK_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Nothing may download at test time: point the default data dir at an empty folder."""
    monkeypatch.setenv("MASKCHECK_DATA_DIR", str(tmp_path_factory.mktemp("no-data")))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # results that could not be written go to this folder, not into the checkout (fileio.fallback_path)
    monkeypatch.setenv("MASKCHECK_UNSAVED_DIR", str(tmp_path_factory.mktemp("unsaved")))
