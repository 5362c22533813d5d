"""CUDA-only branches of device handling and training, reached on CPU (issue 13).

No GPU is needed: CUDA's presence is faked with monkeypatch where only the device *name* matters,
and AMP (bf16 autocast) and channels_last, which torch supports on CPU, are forced on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from maskcheck import checkpoint, training
from maskcheck.config import resolve_device
from maskcheck.data import load_dataset
from maskcheck.errors import InputError
from maskcheck.sweep import sweep_devices
from maskcheck.training import DeviceData, build_state, crop_flip, make_config, train_run, train_step

REPO = Path(__file__).resolve().parents[1]


def _fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int, current: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


@pytest.mark.parametrize("spec, expected", [("cuda", "cuda:0"), ("auto", "cuda:0"), ("CUDA", "cuda:0"), ("cuda:1", "cuda:1"),
                                            (torch.device("cuda"), "cuda:0"), ("cpu", "cpu")])
def test_every_cuda_device_is_resolved_with_an_index(monkeypatch: pytest.MonkeyPatch, spec: object, expected: str) -> None:
    _fake_gpus(monkeypatch, 2)
    dev = resolve_device(spec)  # type: ignore[arg-type]
    assert str(dev) == expected and (dev.type == "cpu" or dev.index is not None)


def test_index_less_cuda_follows_the_current_device(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, 2, current=1)
    assert resolve_device("cuda") == torch.device("cuda:1")


@pytest.mark.parametrize("spec, match", [("cuda:2", "only 2 GPU"), ("cuda:x", "auto, cpu or cuda"), ("tpu", "auto, cpu or cuda")])
def test_bad_cuda_specs_are_input_errors(monkeypatch: pytest.MonkeyPatch, spec: str, match: str) -> None:
    _fake_gpus(monkeypatch, 2)
    with pytest.raises(InputError, match=match):
        resolve_device(spec)


def test_no_gpu_visible_is_an_input_error_and_auto_means_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="no GPU is visible"):
        resolve_device("cuda")


def test_sweep_spreads_over_every_gpu_only_when_none_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, 3)
    assert sweep_devices("cuda") == sweep_devices("auto") == ["cuda:0", "cuda:1", "cuda:2"]
    assert sweep_devices("cuda:2") == ["cuda:2"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sweep_devices("auto") == ["cpu"]


class _ReachedCuda(Exception):
    pass


def test_train_with_device_cuda_sets_an_indexed_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Issue 13, item 1: `train --device cuda` called torch.cuda.set_device(torch.device('cuda')), which raises."""
    _fake_gpus(monkeypatch, 1)
    seen: list[torch.device] = []

    def set_device(dev: torch.device) -> None:
        seen.append(dev)
        if torch.device(dev).index is None:  # what torch does: "Expected a torch.device with a specified index"
            raise ValueError("Expected a torch.device with a specified index")
        raise _ReachedCuda  # stop before any real CUDA call

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    with pytest.raises(_ReachedCuda):
        train_run(make_config("natural", "digits", epochs=1), tmp_path / "r", device="cuda", progress=False)
    assert seen == [torch.device("cuda:0")]


def _batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits").heldout_tensors(n)
    return x, y


@pytest.mark.parametrize("method, temperature", [("natural", None), ("trades", None)])
def test_amp_and_channels_last_steps_run_on_cpu(method: str, temperature: float | None) -> None:
    """The CUDA defaults (bf16 autocast + channels_last) forced on CPU: a step runs and learns."""
    cfg = make_config(method, "digits", temperature=temperature, attack_steps=2)
    state = build_state(cfg, torch.device("cpu"), amp=True, channels_last=True)
    assert state.ctx.autocast is not None and state.channels_last and state.scaler is None
    conv = next(m for m in state.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x, y = _batch()
    first = train_step(state, x, y)[0]
    for _ in range(15):
        last = train_step(state, x, y)[0]
    assert torch.isfinite(torch.tensor(last)) and last < first


def test_cuda_defaults_are_off_on_cpu() -> None:
    state = build_state(make_config("natural", "digits"), torch.device("cpu"))
    assert state.ctx.autocast is None and not state.channels_last and not state.compiled


def test_device_batches_equal_the_dataloader_batches() -> None:
    """Moving the data to the device changes no result: same permutation, same batches."""
    cfg = make_config("natural", "digits")
    train = load_dataset("digits").train
    ours = list(DeviceData.from_dataset(train, torch.device("cpu")).batches(cfg, epoch=3))
    loader = list(training._loader(train, cfg, 3, training.Dist(), torch.device("cpu")))
    assert len(ours) == len(loader) > 1
    for (xa, ya), (xb, yb) in zip(ours, loader):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        assert torch.equal(ya, yb)


def test_crop_flip_returns_a_shifted_window_of_each_padded_image() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(1, 255, (16, 3, 8, 8), dtype=torch.uint8)
    out = crop_flip(x, gen, pad=2)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [w for dy in range(5) for dx in range(5) for w in (padded[i, :, dy:dy + 8, dx:dx + 8],)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows), i
    assert not torch.equal(out, x)  # something moved


def _count_host_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls that read a tensor back to the host (each a GPU sync on CUDA)."""
    count = [0]
    for name in ("item", "tolist", "__int__", "__float__"):
        real = getattr(torch.Tensor, name)

        def wrapped(self: torch.Tensor, *a: object, _real=real, **k: object) -> object:
            count[0] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return count


def test_training_loop_reads_back_per_epoch_not_per_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # SGD: CPU Adam reads its step counter with .item(), a host tensor (no GPU sync; fused Adam on CUDA has none)
    syncs = []
    for max_train in (64, 640):  # 2 and 20 steps of 32
        cfg = make_config("natural", "digits", epochs=1, batch_size=32, max_train=max_train, eval_n=10, final_eval_n=10,
                          optimizer="sgd")
        with monkeypatch.context() as m:
            count = _count_host_syncs(m)
            train_run(cfg, tmp_path / str(max_train), device="cpu", progress=False)
        syncs.append(count[0])
    assert syncs[0] == syncs[1], syncs


def _fake_cifar(tmp_path: Path, n_train: int = 200, n_test: int = 50) -> Path:
    spec = importlib.util.spec_from_file_location("make_fake_cifar10", REPO / "benchmarks" / "make_fake_cifar10.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    mod.write_fake_cifar10(tmp_path, n_train, n_test, seed=1)
    return tmp_path


def test_fake_cifar10_reads_like_the_official_layout(tmp_path: Path) -> None:
    splits = load_dataset("cifar10", _fake_cifar(tmp_path))
    assert len(splits.train) == 200 and len(splits.heldout) == 50
    x, y = splits.heldout_tensors()
    assert x.shape == (50, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1 and set(y.tolist()) <= set(range(10))
    # class-dependent: images of one class are closer to their class mean than to other classes' means
    means = torch.stack([x[y == c].mean(0) for c in y.unique()])
    nearest = torch.cdist(x.flatten(1), means.flatten(1)).argmin(1)
    assert (y.unique()[nearest] == y).float().mean() > 0.8


def test_three_channel_run_with_amp_channels_last_and_augmentation_on_cpu(tmp_path: Path) -> None:
    """CIFAR-shaped uint8 data through DeviceData (crop + flip) and a channels_last bf16 step, end to end."""
    data = _fake_cifar(tmp_path / "data")
    cfg = make_config("trades", "cifar10", arch="small-cnn", epochs=1, batch_size=50, max_train=100, attack_steps=1,
                      eval_n=10, final_eval_n=10)
    record = train_run(cfg, tmp_path / "run", device="cpu", data_dir=data, progress=False, amp=True, channels_last=True)
    assert record["config"]["amp"] and record["config"]["channels_last"] and not record["config"]["compile"]
    assert checkpoint.is_complete_run(tmp_path / "run")
    assert torch.isfinite(torch.tensor(record["metrics"]["history"][0]["loss"]))
