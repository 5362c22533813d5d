"""Models: output shapes over the registry, normalisation and temperature inside forward, key names."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from maskcheck.data import DATASETS, get_info
from maskcheck.errors import InputError
from maskcheck.models import ARCHITECTURES, Classifier, build_model, load_state_dict_compat

# wrn-34-10 (46M parameters) is too heavy for 2 CPU cores; wrn-16-1 runs the same code path.
LIGHT = [a for a in ARCHITECTURES if a != "wrn-34-10"]


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("arch", LIGHT)
def test_output_shape_on_every_dataset(arch: str, dataset: str) -> None:
    info = get_info(dataset)
    model = build_model(arch, info).eval()
    x = torch.rand(3, *info.input_shape)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, info.num_classes) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_registry_holds_the_issue_architectures() -> None:
    assert {"small-cnn", "preact-resnet18", "wrn-34-10"} <= set(ARCHITECTURES)


def _robustbench_wrn_keys(depth: int, widen: int, num_classes: int) -> set[str]:
    """The state-dict keys of RobustBench's `WideResNet(depth, widen_factor)` (sub_block1=False)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    n = (depth - 4) // 6
    channels = [16, 16 * widen, 32 * widen, 64 * widen]
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{p}" for p in bn}
    for b in range(3):
        for i in range(n):
            pre = f"block{b + 1}.layer.{i}."
            keys |= {pre + "conv1.weight", pre + "conv2.weight"}
            keys |= {pre + f"bn1.{p}" for p in bn} | {pre + f"bn2.{p}" for p in bn}
            in_planes = channels[b] if i == 0 else channels[b + 1]
            if in_planes != channels[b + 1]:
                keys.add(pre + "convShortcut.weight")
    return keys


@pytest.mark.parametrize("arch, depth, widen", [("wrn-34-10", 34, 10), ("wrn-16-1", 16, 1)])
def test_wrn_keys_are_robustbench_names(arch: str, depth: int, widen: int) -> None:
    with torch.device("meta"):  # names and shapes only: no 46M-parameter allocation
        model = build_model(arch, get_info("cifar10"))
    keys = {k.removeprefix("net.") for k in model.state_dict() if k.startswith("net.")}
    assert keys == _robustbench_wrn_keys(depth, widen, 10)
    assert "block1.layer.0.bn1.weight" in keys and ("block3.layer.4.conv2.weight" in keys) == (depth == 34)
    sd = model.state_dict()
    assert tuple(sd["net.fc.weight"].shape) == (10, 64 * widen)
    assert tuple(sd["net.block1.layer.0.conv1.weight"].shape) == (16 * widen, 16, 3, 3)


def test_robustbench_style_state_dict_loads() -> None:
    """A DataParallel TRADES-style WRN checkpoint (module. prefix, sub_block1) loads into wrn-16-1."""
    info = get_info("cifar10")
    source = build_model("wrn-16-1", info)
    bare = {f"module.{k.removeprefix('net.')}": v.clone() for k, v in source.state_dict().items() if k.startswith("net.")}
    bare["module.sub_block1.layer.0.conv1.weight"] = torch.zeros(16, 16, 3, 3)
    target = build_model("wrn-16-1", info)
    load_state_dict_compat(target, bare)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(source.eval()(x), target.eval()(x))


def test_normalisation_is_inside_the_model() -> None:
    mean, std = (0.25, 0.5, 0.75), (0.5, 0.25, 0.125)
    model = Classifier(nn.Identity(), mean, std)
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(model(x), expected)
    built = build_model("small-cnn", get_info("mnist"))
    assert torch.allclose(built.mean.flatten(), torch.tensor([0.1307])) and torch.allclose(built.std.flatten(), torch.tensor([0.3081]))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_temperature_divides_logits_in_forward(mode: str) -> None:
    info = get_info("digits")
    torch.manual_seed(0)
    plain = build_model("small-cnn", info, temperature=1.0)
    hot = build_model("small-cnn", info, temperature=5.0)
    hot.load_state_dict({**plain.state_dict(), "temperature": torch.tensor(5.0)})
    getattr(plain, mode)()
    getattr(hot, mode)()
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(hot(x), plain(x) / 5.0, atol=1e-6)
    assert float(hot.temperature) == 5.0 and "temperature" in hot.state_dict()  # saved with the weights


@pytest.mark.parametrize("t", [0.0, -1.0])
def test_nonpositive_temperature_is_refused(t: float) -> None:
    with pytest.raises(InputError, match="positive"):
        build_model("small-cnn", get_info("digits"), temperature=t)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(InputError) as err:
        build_model("resnet-50", get_info("digits"))
    for name in ARCHITECTURES:
        assert name in str(err.value)


def test_compat_strips_module_prefix_and_takes_bare_networks() -> None:
    info = get_info("digits")
    source = build_model("small-cnn", info, temperature=3.0)
    x = torch.rand(2, 1, 8, 8)
    for state in (
        {f"module.{k}": v for k, v in source.state_dict().items()},  # DataParallel-saved Classifier
        {k: v for k, v in source.net.state_dict().items()},  # bare network: keeps target's normalisation
    ):
        target = build_model("small-cnn", info, temperature=3.0)
        load_state_dict_compat(target, state)
        assert torch.equal(target(x), source(x))


def test_compat_names_missing_and_unexpected_keys() -> None:
    info = get_info("digits")
    state = dict(build_model("small-cnn", info).state_dict())
    state.pop("net.classifier.3.bias")
    state["net.extra.weight"] = torch.zeros(1)
    with pytest.raises(InputError) as err:
        load_state_dict_compat(build_model("small-cnn", info), state)
    msg = str(err.value)
    assert "net.classifier.3.bias" in msg and "net.extra.weight" in msg and "--model" in msg and "\n" not in msg


def test_compat_names_a_shape_mismatch() -> None:
    state = build_model("small-cnn", get_info("cifar100")).state_dict()  # 100 classes, 3 channels
    with pytest.raises(InputError, match="shape"):
        load_state_dict_compat(build_model("small-cnn", get_info("cifar10")), state)


def test_compat_refuses_a_wrong_architecture() -> None:
    info = get_info("cifar10")
    state = build_model("wrn-16-1", info).state_dict()
    with pytest.raises(InputError, match="missing keys .*unexpected keys .*more"):
        load_state_dict_compat(build_model("preact-resnet18", info), state)
