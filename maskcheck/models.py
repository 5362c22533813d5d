"""Architectures, a registry, and the `Classifier` wrapper every maskcheck model is.

`Classifier` = normalisation layer -> network -> division by a fixed temperature.

* Normalisation lives inside the model (LTD App. A.1), so attacks work on raw [0, 1] pixels.
* `temperature` is LTD's fixed student temperature tau: it divides the logits in `forward` at
  train *and* test time. Defensive distillation instead divides only inside its training loss
  and deploys with temperature 1 -- which is exactly what makes it mask gradients.

The ResNets keep RobustBench's layer names (`conv1`, `block1.layer.0.bn1`, `fc`, ...), so a
public RobustBench / TRADES / LTD state dict loads with `load_state_dict_compat`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import DatasetInfo
from .errors import InputError


class SmallCNN(nn.Module):
    """A small CNN for 8x8 and 28x28 grey images; trains in seconds on 2 CPU cores.

    `pool_first` halves the resolution after the first convolution: on 28x28 inputs it makes
    the network about 4x cheaper (an MNIST sweep fits in minutes on 2 cores) at no cost in accuracy.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, pool_first: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            *([nn.MaxPool2d(2)] if pool_first else []),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * width, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ------------------------------------------------------------------ PreAct ResNet-18


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 as in the Rice et al. / AWP code (final BN + ReLU before `linear`)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, 2, 1)
        self.layer2 = self._make_layer(128, 2, 2)
        self.layer3 = self._make_layer(256, 2, 2)
        self.layer4 = self._make_layer(512, 2, 2)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


# ------------------------------------------------------------------------ WRN-34-10


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        shortcut = x if self.equal_in_out else self.convShortcut(o)
        out = self.conv2(self.relu2(self.bn2(self.conv1(o))))
        return out + shortcut


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen (default 34-10, the LTD and TRADES network); RobustBench layer names."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, depth: int = 34, widen_factor: int = 10) -> None:
        super().__init__()
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        for m in self.modules():  # initialisation of the reference implementation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(self.relu(self.bn1(out)), 1).flatten(1)
        return self.fc(out)


# ------------------------------------------------------------------------ registry

# Each factory takes the dataset's input shape (C, H, W) and number of classes.
ARCHITECTURES: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "small-cnn": lambda shape, k: SmallCNN(shape[0], k, pool_first=shape[-1] >= 16),
    "preact-resnet18": lambda shape, k: PreActResNet18(shape[0], k),
    "wrn-34-10": lambda shape, k: WideResNet(shape[0], k, depth=34, widen_factor=10),
    # A narrow WRN for smoke tests of the WRN code path on CPU.
    "wrn-16-1": lambda shape, k: WideResNet(shape[0], k, depth=16, widen_factor=1),
}


class Classifier(nn.Module):
    """normalise -> network -> logits / temperature. Takes inputs in [0, 1]."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], temperature: float = 1.0) -> None:
        super().__init__()
        self.net = net
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std) / self.temperature


def build_model(arch: str, info: DatasetInfo, temperature: float = 1.0) -> Classifier:
    """A fresh `Classifier` of architecture `arch` for dataset `info`."""
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise InputError(f"unknown model {arch!r}; valid: {', '.join(ARCHITECTURES)}.") from None
    if temperature <= 0:
        raise InputError(f"temperature must be positive; got {temperature}.")
    return Classifier(factory(info.input_shape, info.num_classes), info.mean, info.std, temperature)


def load_state_dict_compat(model: Classifier, state: dict[str, torch.Tensor]) -> None:
    """Load a maskcheck or public (RobustBench/TRADES/LTD-style) state dict into `model`.

    Strips DataParallel's `module.` prefix, drops the unused `sub_block1` of TRADES/RSLAD WRNs
    (methods.md section 8) and adds the `net.` prefix a bare network's keys lack. A mismatch
    is an `InputError` naming the missing and unexpected keys.
    """
    state = {k.removeprefix("module."): v for k, v in state.items() if not isinstance(v, dict)}
    state = {k: v for k, v in state.items() if not k.startswith("sub_block1.")}
    own = model.state_dict()
    if not any(k.startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}
        for k in ("mean", "std", "temperature"):  # a bare network carries no normalisation
            state.setdefault(k, own[k])
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "") if keys else "none"

        raise InputError(
            f"state dict does not fit the architecture: missing keys {show(missing)}; unexpected keys {show(unexpected)}. "
            "Pass the --model the weights were trained with."
        )
    bad_shape = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad_shape:
        k = bad_shape[0]
        raise InputError(
            f"state dict does not fit the architecture: {k} has shape {tuple(state[k].shape)}, model expects "
            f"{tuple(own[k].shape)} ({len(bad_shape)} such keys). Check --model and --dataset (number of classes)."
        )
    model.load_state_dict(state)


def normalized(model: torch.nn.Module, mean: tuple[float, ...] | float, std: tuple[float, ...] | float) -> torch.nn.Module:
    """`model` behind a normalisation layer, so it takes inputs in [0, 1]: `model((x - mean) / std)`.

    For models trained on normalised inputs; the layer is the one maskcheck's own models use
    (`models.Classifier`), so attacks, eps and the [0, 1] box refer to raw pixels.
    """
    mean_t = (float(mean),) if isinstance(mean, (int, float)) else tuple(float(m) for m in mean)
    std_t = (float(std),) if isinstance(std, (int, float)) else tuple(float(s) for s in std)
    if len(mean_t) != len(std_t):
        raise InputError(f"normalisation needs as many means as stds; got {len(mean_t)} and {len(std_t)}.")
    return Classifier(model, mean_t, std_t)
