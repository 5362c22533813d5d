"""The broken-defense zoo: small versions of defenses the literature broke, and their ground truth.

Issue 22. `controls.py` wraps a natural model in one *signature* of masking each (true robustness
about 0, one check defines it). The defenses that fooled the field were different: trained with
their transform, partial, looking robust, with gradients that are non-zero but useless. Each member
here is one such family, built and trained by the project's own code (`training.fit` with
`make_config`, `models`), and carries the adaptive attack that broke it (`truth_attack`), written
with knowledge of the defense. The ground truth of a member is the per-point worst case of that
adaptive attack and of a standard white-box battery (`ground_truth`); a member is kept as *masked*
only where PGD-CE overstates that truth by >= 5 pp (`MASKING_MIN_GAP`, ours): measured truth wins
over intention, and experiments/broken-defense-zoo reports it per seed.

| member | family | defense (paper) | broken by |
| --- | --- | --- | --- |
| thermometer | non-differentiable encoding | Buckman et al. 2018, adversarially trained | Athalye et al. 2018: BPDA (soft thermometer backward) |
| bit-depth | non-differentiable transform | Xu et al. 2018 (feature squeezing, 1 bit) / Guo et al. 2018 | Athalye et al. 2018: BPDA (identity backward) |
| soft-staircase | differentiable, useless gradients | x + a sin(2 pi k x) / (2 pi k) in front of the net (ours, after Athalye et al.'s "shattered gradients") | BPDA (identity backward) |
| k-wta | discontinuous activations | Xiao et al. 2020 (k-winners-take-all), adversarially trained | Tramer et al. 2020: gradients averaged over small noise (EOT-style smoothing) + transfer from the ReLU twin |
| sap | stochastic | Dhillon et al. 2018 (stochastic activation pruning) | Athalye et al. 2018: EOT |
| grad-noise-trades | stochastic only under autograd | TRADES + input noise when torch.is_grad_enabled() (issue 22) | attack the inference forward (noise off) |
| off-grid-logits | logit scaling away from the data | logits x 1e4 off the data's value grid (ours) | attack the unscaled logits (same argmax) |
| partial-rounding | masking on a fraction | hard rounding on the inputs of two gated classes (ours) | BPDA (identity backward) |
| below-eps | masking below the audit eps | logits x 1e4 within eps/2 of a held-out point (ours) | attack the unscaled logits (same argmax) |
| trades, pgd-at, trades-noise, natural-flat | sound | TRADES, PGD-AT, TRADES with sigma=0.05 input noise, natural logits x 0.01 | (the standard battery; EOT for trades-noise) |

Every member takes inputs in [0, 1] and returns logits (batch, classes); all but the stochastic
ones are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import attacks
from .attacks import AttackEnv, AttackSpec, Rescaled
from .config import derived_seed, seed_everything
from .data import Splits
from .models import Classifier, SmallCNN, build_model
from .training import fit, make_config

MASKING_MIN_GAP = 0.05  # PGD-CE must overstate the ground truth by this much for a member to count as masked (issue 22)
SCALE = 1e4  # a saturating logit factor (controls.ScaledLogits): float32 softmax is one-hot, CE gradients vanish
# MNIST rows: 2000 training points, 3 epochs of the MNIST recipe, as tests/test_calibration.py's (ours, for 2 CPU cores)
MNIST_TRAIN = dict(max_train=2000, epochs=3)
TRUTH_STEPS = 100  # PGD and APGD steps of the ground-truth attacks (5x the audit's PGD-20; ours)
TRUTH_DRAWS = 50  # draws per prediction when scoring a stochastic member (majority vote; ours, > the audit's 20)


# ---------------------------------------------------------------------- building blocks


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """BPDA (Athalye et al. 2018, sec. 4.1): the value of `hard`, the gradient of `soft`."""
    return soft + (hard - soft).detach()


class InputTransform(nn.Module):
    """transform(x) -> net. With `bpda` on, the backward pass is that of `soft(x)` (BPDA); the forward is unchanged.

    Subclasses define `hard` (what the defense computes) and `soft` (a differentiable approximation;
    the identity unless said otherwise)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.bpda = False

    def hard(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = straight_through(self.hard(x), self.soft(x)) if self.bpda else self.hard(x)
        return self.net(z)


class Thermometer(InputTransform):
    """Thermometer encoding (Buckman et al. 2018): each pixel -> `levels` channels, channel i = [x > (i + 1/2) / levels].

    The comparison has a zero gradient everywhere; BPDA's backward uses a soft thermometer, here
    sigmoid(2 levels (x - threshold)) (Athalye et al. 2018 sec. 5.1 use a clamped ramp; its kinks sit
    exactly on the digits grid, where it would give zero gradients too). Thresholds sit between grid
    values, so no clean pixel lies on one."""

    def __init__(self, net: nn.Module, levels: int = 16) -> None:
        super().__init__(net)
        self.levels = levels
        self.register_buffer("thresholds", (torch.arange(levels, dtype=torch.float32) + 0.5) / levels)

    def _expand(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C * levels, H, W)
        return x.unsqueeze(2) - self.thresholds.view(1, 1, -1, 1, 1)

    def hard(self, x: torch.Tensor) -> torch.Tensor:
        e = self._expand(x)  # `+ 0 * e` keeps the graph (a zero gradient, as torch.round's), so PGD-AT can train through it
        return ((e > 0).float() + 0.0 * e).flatten(1, 2)

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(2 * self.levels * self._expand(x)).flatten(1, 2)


class BitDepth(InputTransform):
    """Bit-depth reduction (Xu et al. 2018, feature squeezing; 1 bit on MNIST in the paper): round(x * (2^b - 1)) / (2^b - 1)."""

    def __init__(self, net: nn.Module, bits: int = 1) -> None:
        super().__init__(net)
        self.bits = bits

    def hard(self, x: torch.Tensor) -> torch.Tensor:
        m = 2 ** self.bits - 1
        return torch.round(x * m) / m


class SoftStaircase(InputTransform):
    """x + a sin(2 pi k x) / (2 pi k): within a/(2 pi k) of the identity (about 0.02 here), but its derivative
    1 + a cos(2 pi k x) swings between 1 - a and 1 + a, so for a > 1 the sign of the input gradient is
    noise ("shattered gradients", Athalye et al. 2018 sec. 4). Differentiable everywhere; BPDA: identity."""

    def __init__(self, net: nn.Module, a: float = 8.0, k: float = 64.0) -> None:
        super().__init__(net)
        self.a, self.k = a, k

    def hard(self, x: torch.Tensor) -> torch.Tensor:
        w = 2 * math.pi * self.k
        return x + self.a * torch.sin(w * x) / w


class KWTA(nn.Module):
    """k-winners-take-all (Xiao et al. 2020): keep the top `ratio` of each example's activations, zero the rest.

    The set of winners jumps with the input, so the network is piecewise-continuous with many small
    jumps; its gradients are those of the current linear piece (Tramer et al. 2020 sec. 5.x)."""

    def __init__(self, ratio: float = 0.1) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        k = max(1, int(self.ratio * flat.shape[1]))
        threshold = flat.topk(k, dim=1).values[:, -1:]
        return (flat * (flat >= threshold)).view_as(x)


class SAP(nn.Module):
    """Stochastic activation pruning (Dhillon et al. 2018): sample `frac` x n activations with replacement,
    with probability proportional to |a|; keep the sampled ones scaled by 1 / P(kept), zero the rest.
    Random on every forward pass (gradient or not)."""

    def __init__(self, frac: float = 1.0) -> None:
        super().__init__()
        self.frac = frac
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        flat = x.flatten(1)
        p = flat.abs() / flat.abs().sum(1, keepdim=True).clamp_min(1e-12)
        r = max(1, int(self.frac * flat.shape[1]))
        keep_prob = 1.0 - (1.0 - p) ** r
        idx = torch.multinomial(p.detach() + 1e-12, r, replacement=True)
        kept = torch.zeros_like(flat).scatter_(1, idx, 1.0)
        return (flat * kept / keep_prob.clamp_min(1e-12)).view_as(x)


def small_cnn(in_channels: int, num_classes: int, pool_first: bool, activation: Callable[[], nn.Module]) -> SmallCNN:
    """models.SmallCNN with every ReLU after it replaced by `activation()` (k-WTA, ReLU + SAP)."""
    net = SmallCNN(in_channels, num_classes, pool_first=pool_first)
    for seq in (net.features, net.classifier):
        for i, m in enumerate(seq):
            if isinstance(m, nn.ReLU):
                seq[i] = activation()
    return net


class GradModeNoise(nn.Module):
    """Gaussian input noise only while autograd records (torch.is_grad_enabled()): every gradient an attack
    takes is of a noisier model than the one that predicts (issue 22's TRADES case)."""

    def __init__(self, model: nn.Module, sigma: float = 0.5) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            x = (x + self.sigma * torch.randn_like(x)).clamp(0.0, 1.0)
        return self.model(x)


class AlwaysNoise(nn.Module):
    """Small Gaussian input noise on every forward pass: sound randomness (the audit attacks it with EOT)."""

    def __init__(self, model: nn.Module, sigma: float = 0.05) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0.0, 1.0))


class _ScaledWhere(nn.Module):
    """Logits x `scale` on the inputs `switched` picks (no gradient through the choice), plain logits elsewhere.
    Same argmax everywhere. `unscaled` is the ground truth's view: the same classifier without the switch."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale
        self.unscaled = False

    def switched(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.unscaled:
            return logits
        with torch.no_grad():
            on = self.switched(x)
        factor = torch.where(on, self.scale, 1.0).to(logits.dtype)
        return logits * factor[:, None]


class OffGridLogits(_ScaledWhere):
    """Logits x `scale` when any pixel is off the data's value grid (multiples of 1/`grid`): clean points look
    normal, every perturbed point saturates the softmax."""

    def __init__(self, model: nn.Module, grid: int, scale: float = SCALE) -> None:
        super().__init__(model, scale)
        self.grid = grid

    def switched(self, x: torch.Tensor) -> torch.Tensor:
        d = (x * self.grid - torch.round(x * self.grid)).abs().flatten(1).amax(1)
        return d > 1e-3


class PartialRounding(nn.Module):
    """Hard rounding (to `levels` + 1 grey levels) on the inputs the model places in `classes`, identity elsewhere.

    The gate is the class the model predicts on the rounded input (no gradient), so it stays shut for a
    gated point until an attack has already broken it: a fixed share of the points (those classes' share
    of the data) has zero input gradients, the rest is untouched. BPDA: identity through the rounding."""

    def __init__(self, model: nn.Module, classes: tuple[int, ...] = (0, 1), levels: int = 4) -> None:
        super().__init__()
        self.model, self.levels = model, levels
        self.register_buffer("classes", torch.tensor(classes, dtype=torch.long))
        self.bpda = False

    def gated(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            xr = torch.round(x * self.levels) / self.levels
            return torch.isin(self.model(xr).argmax(1), self.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xr = torch.round(x * self.levels) / self.levels
        if self.bpda:
            xr = straight_through(xr, x)
        gate = self.gated(x).view(-1, *([1] * (x.ndim - 1)))
        return self.model(torch.where(gate, xr, x))


class NearDataLogits(_ScaledWhere):
    """Logits x `scale` within L-inf distance `radius` of a stored held-out point, plain logits farther out.

    A defense tuned on the evaluation data: any attack that starts inside the radius (FGSM, PGD at
    eps <= radius) sees saturated CE gradients, while PGD at the audit's eps starts outside it (the
    uniform start lands at distance about eps) and works. Masking confined below the audit eps.
    The nearest stored point is found by L2 on the full image (one matmul), then its L-inf distance decides."""

    def __init__(self, model: nn.Module, reference: torch.Tensor, radius: float, scale: float = SCALE) -> None:
        super().__init__(model, scale)
        self.radius = radius
        self.register_buffer("reference", reference.flatten(1).float().clone())

    def switched(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).float()
        nearest = torch.cdist(flat, self.reference).argmin(1)
        return (flat - self.reference[nearest]).abs().amax(1) <= self.radius


# ---------------------------------------------------------------------- training


def train_tensors(splits: Splits, max_train: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = splits.train.tensors  # every built-in grey-image split is a TensorDataset of floats in [0, 1]
    return (x[:max_train], y[:max_train]) if max_train else (x, y)


def grid_of(dataset: str) -> int:
    """The data's value grid: digits pixels are multiples of 1/16, MNIST's of 1/255."""
    return 16 if dataset == "digits" else 255


def _fit(net: nn.Module, method: str, dataset: str, splits: Splits, seed: int) -> nn.Module:
    """Train `net` (a module on [0, 1] inputs) with the project's loop and the dataset's recipe.

    The net's parameters are re-initialised after seeding: built before this call, their first values depended
    on whatever the process had drawn before (which members ran first), so one member trained twice differed."""
    extra = MNIST_TRAIN if dataset == "mnist" else {}
    cfg = make_config(method, dataset, seed=seed, **extra)
    x, y = train_tensors(splits, cfg.max_train)
    seed_everything(cfg.seed)
    for m in net.modules():
        if m is not net and callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
    return fit(net, x, y, cfg)


def _classifier(splits: Splits, net: nn.Module) -> Classifier:
    info = splits.info
    return Classifier(net, info.mean, info.std)


_BASES: dict[tuple[str, str, int], nn.Module] = {}


def base_model(method: str, dataset: str, splits: Splits, seed: int) -> nn.Module:
    """A plain small-cnn trained with `method` (natural, trades, pgd-at), once per process: several members
    wrap the same one (the splits of a dataset are fixed, so (method, dataset, seed) names it)."""
    key = (method, dataset, seed)
    if key not in _BASES:
        _BASES[key] = _fit(build_model("small-cnn", splits.info), method, dataset, splits, seed).eval()
    return _BASES[key]


# ---------------------------------------------------------------------- members


@dataclass(frozen=True)
class Member:
    """One zoo member: how to build it, what it is, and the attack that broke its family.

    `truth` names the adaptive attack (`TRUTH_ATTACKS`); `expected` the audit mechanisms that
    would name its masking (any one of them suffices); `stochastic` members are scored by majority
    vote over draws."""

    name: str
    family: str
    kind: str  # "masked" | "sound"
    defense: str  # the paper (or the construction)
    broken_by: str
    build: Callable[[str, Splits, int, float], nn.Module]  # (dataset, splits, seed, eps) -> model in eval mode
    truth: str
    expected: tuple[str, ...] = ()
    stochastic: bool = False
    truth_eps_fraction: tuple[float, ...] = (1.0,)  # eps fractions where the ground truth is measured (below-eps: 1/4, 1/2 too)


def _thermometer(dataset: str, splits: Splits, seed: int, eps: float) -> nn.Module:
    info = splits.info
    levels = 16
    net = small_cnn(levels, info.num_classes, info.input_shape[-1] >= 16, nn.ReLU)
    # PGD-AT through the encoding: its zero gradient leaves the inner attack at its random start, so training
    # sees uniform noise in the eps-ball; it looks robust to gradient attacks (Buckman et al. trained with LS-PGA)
    return _fit(Thermometer(net, levels), "pgd-at", dataset, splits, seed).eval()


def _bit_depth(dataset: str, splits: Splits, seed: int, eps: float) -> nn.Module:
    return _fit(BitDepth(build_model("small-cnn", splits.info), bits=1), "natural", dataset, splits, seed).eval()


def _staircase(dataset: str, splits: Splits, seed: int, eps: float) -> nn.Module:
    return _fit(SoftStaircase(build_model("small-cnn", splits.info)), "natural", dataset, splits, seed).eval()


def _kwta(dataset: str, splits: Splits, seed: int, eps: float) -> nn.Module:
    info = splits.info
    net = small_cnn(info.input_shape[0], info.num_classes, info.input_shape[-1] >= 16, lambda: KWTA(0.1))
    return _fit(_classifier(splits, net), "pgd-at", dataset, splits, seed).eval()


def _sap(dataset: str, splits: Splits, seed: int, eps: float) -> nn.Module:
    info = splits.info
    net = small_cnn(info.input_shape[0], info.num_classes, info.input_shape[-1] >= 16, lambda: nn.Sequential(nn.ReLU(), SAP()))
    model = _classifier(splits, net)
    for m in model.modules():  # trained without pruning, pruned at test time (Dhillon et al. apply SAP post hoc)
        if isinstance(m, SAP):
            m.enabled = False
    model = _fit(model, "natural", dataset, splits, seed)
    for m in model.modules():
        if isinstance(m, SAP):
            m.enabled = True
    return model.eval()


def _grad_noise(dataset: str, splits: Splits, seed: int, eps: float) -> nn.Module:
    return GradModeNoise(base_model("trades", dataset, splits, seed)).eval()


def _off_grid(dataset: str, splits: Splits, seed: int, eps: float) -> nn.Module:
    return OffGridLogits(base_model("natural", dataset, splits, seed), grid_of(dataset)).eval()


def _partial(dataset: str, splits: Splits, seed: int, eps: float) -> nn.Module:
    return PartialRounding(base_model("natural", dataset, splits, seed)).eval()


def _below_eps(dataset: str, splits: Splits, seed: int, eps: float) -> nn.Module:
    x, _ = splits.heldout.tensors
    return NearDataLogits(base_model("trades", dataset, splits, seed), x, radius=eps / 2).eval()


MEMBERS: dict[str, Member] = {m.name: m for m in (
    Member("thermometer", "non-differentiable encoding", "masked", "Buckman et al. 2018 (thermometer encoding, PGD-AT)",
           "Athalye et al. 2018 (BPDA)", _thermometer, "bpda", ("vanishing gradients", "gradients unavailable")),
    Member("bit-depth", "non-differentiable transform", "masked", "Xu et al. 2018 (bit-depth 1) / Guo et al. 2018",
           "Athalye et al. 2018 (BPDA identity)", _bit_depth, "bpda", ("vanishing gradients",)),
    Member("soft-staircase", "useless gradients", "masked", "x + a sin(2 pi k x)/(2 pi k) input transform (ours)",
           "Athalye et al. 2018 (BPDA identity)", _staircase, "bpda", ("noisy gradients", "vanishing gradients", "black-box beats white-box",
                                                                    "discontinuous model (gradients do not predict local change)")),
    Member("k-wta", "discontinuous activations", "masked", "Xiao et al. 2020 (k-WTA, PGD-AT)",
           "Tramer et al. 2020 (smoothed gradients, transfer)", _kwta, "smooth",
           ("discontinuous model (gradients do not predict local change)", "noisy gradients", "black-box beats white-box")),
    Member("sap", "stochastic", "masked", "Dhillon et al. 2018 (stochastic activation pruning)",
           "Athalye et al. 2018 (EOT)", _sap, "eot", ("randomness",), stochastic=True),
    Member("grad-noise-trades", "stochastic under autograd", "masked", "TRADES + input noise when gradients are on (issue 22)",
           "attack the inference forward (noise off)", _grad_noise, "inference", ("randomness (gradient mode only)", "randomness")),
    Member("off-grid-logits", "logit scaling off the data", "masked", "logits x 1e4 off the data grid (ours)",
           "unscaled logits (same argmax)", _off_grid, "unscaled", ("saturated logits", "saturated softmax")),
    Member("partial-rounding", "masking on a fraction", "masked", "hard rounding on two gated classes (ours)",
           "BPDA identity", _partial, "bpda", ("vanishing gradients", "black-box beats white-box")),
    Member("below-eps", "masking below the audit eps", "masked", "logits x 1e4 within eps/2 of the data (ours)",
           "unscaled logits (same argmax)", _below_eps, "unscaled", ("saturated logits", "saturated softmax"),
           truth_eps_fraction=(1.0, 0.5, 0.25)),
    Member("trades", "sound", "sound", "Zhang et al. 2019 (TRADES)", "-",
           lambda d, s, seed, e: base_model("trades", d, s, seed), "battery"),
    Member("pgd-at", "sound", "sound", "Madry et al. 2018 (PGD-AT)", "-",
           lambda d, s, seed, e: base_model("pgd-at", d, s, seed), "battery"),
    Member("trades-noise", "sound", "sound", "TRADES + sigma=0.05 input noise (sound randomness)", "-",
           lambda d, s, seed, e: AlwaysNoise(base_model("trades", d, s, seed)).eval(), "eot", stochastic=True),
    Member("natural-flat", "sound", "sound", "natural, logits x 0.01 (flat softmax)", "-",
           lambda d, s, seed, e: Rescaled(base_model("natural", d, s, seed), 0.01).eval(), "battery"),
)}


def build_member(name: str, dataset: str, splits: Splits, seed: int, eps: float) -> nn.Module:
    """Train (or reuse) and return member `name` in eval mode."""
    try:
        member = MEMBERS[name]
    except KeyError:
        raise ValueError(f"unknown zoo member {name!r}; valid: {', '.join(MEMBERS)}") from None
    return member.build(dataset, splits, seed, eps).eval()


# ---------------------------------------------------------------------- ground truth


@torch.no_grad()
def inference_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1) -> torch.Tensor:
    """Correct under the inference forward (no autograd); majority over `draws` for a stochastic model (ties: broken)."""
    votes = sum((model(x).argmax(1) == y).int() for _ in range(draws))
    return 2 * votes > draws


class _Smoothed(nn.Module):
    """Logits averaged over `k` Gaussian perturbations of the input (sigma): the gradient Tramer et al. 2020
    follow on k-WTA (averaging over a neighbourhood smooths its jumps)."""

    def __init__(self, model: nn.Module, sigma: float, k: int) -> None:
        super().__init__()
        self.model, self.sigma, self.k = model, sigma, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1)) for _ in range(self.k)]).mean(0)


def _relu_twin(model: nn.Module) -> nn.Module:
    """The k-WTA network with every k-WTA replaced by ReLU (same weights): a surrogate for transfer."""
    import copy

    twin = copy.deepcopy(model)
    for mod in twin.modules():
        for name, child in mod.named_children():
            if isinstance(child, KWTA):
                setattr(mod, name, nn.ReLU())
    return twin.eval()


def _with_flag(model: nn.Module, flag: str, value: bool) -> nn.Module:
    import copy

    twin = copy.deepcopy(model)
    for m in twin.modules():
        if hasattr(m, flag):
            setattr(m, flag, value)
    return twin.eval()


def adaptive_models(member: Member, model: nn.Module) -> list[nn.Module]:
    """The models whose gradients the adaptive attack of `member`'s family follows (points scored on `model`)."""
    if member.truth == "bpda":
        return [_with_flag(model, "bpda", True)]
    if member.truth == "unscaled":
        return [_with_flag(model, "unscaled", True)]
    if member.truth == "inference":
        return [model.model]
    if member.truth == "eot":  # a stochastic member's own battery already runs on EOT(model, 20): nothing to add
        return []
    if member.truth == "smooth":
        return [_Smoothed(model, 0.05, 16).eval(), _relu_twin(model)]
    return []


def _pgd_correct(grad_model: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str,
                 steps: int, seed: int, draws: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(derived_seed(seed, f"zoo-truth-{loss}-{steps}"))
    x_adv = attacks.pgd(grad_model, x, y, eps=eps, steps=steps, loss=loss, generator=gen).x_adv
    return inference_correct(model, x_adv, y, draws)


def _apgd_correct(grad_model: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str,
                  seed: int, draws: int, num_classes: int) -> torch.Tensor:
    env = AttackEnv(eps, "linf", num_classes, seed, 1, 0, x.device)
    x_adv = attacks.run_spec(AttackSpec("apgd", loss, TRUTH_STEPS), grad_model, x, y, env, torch.Generator()).x_adv
    return inference_correct(model, x_adv, y, draws)


def ground_truth(member: Member, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int,
                 num_classes: int = 10, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """Per-point correctness (bool, True = still correct) under each ground-truth attack, and `truth`, their worst case.

    Standard battery on the member itself (PGD-CE, PGD-margin, APGD-CE, APGD-DLR at `TRUTH_STEPS`),
    then the same four through each of `adaptive_models` (the family's adaptive attack). Every point is scored by the member's inference forward (majority over
    `TRUTH_DRAWS` for a stochastic member). Also `pgd-ce`: PGD-CE-20 as a user runs it."""
    draws = TRUTH_DRAWS if member.stochastic else 1
    seed_everything(seed)
    grad_models = {"": attacks.EOT(model, 20).eval() if member.stochastic else model}
    for i, m in enumerate(adaptive_models(member, model)):
        grad_models[f"adaptive{i}:"] = m
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        parts = {"clean": inference_correct(model, xb, yb, draws),
                 "pgd-ce": _pgd_correct(model, model, xb, yb, eps, "ce", attacks.PGD_STEPS, seed, draws)}
        for tag, gm in grad_models.items():
            for loss in ("ce", "margin"):
                parts[f"{tag}pgd-{loss}"] = _pgd_correct(gm, model, xb, yb, eps, loss, TRUTH_STEPS, seed, draws)
            for loss in ("ce", "dlr"):
                parts[f"{tag}apgd-{loss}"] = _apgd_correct(gm, model, xb, yb, eps, loss, seed, draws, num_classes)
        for k, v in parts.items():
            out.setdefault(k, []).append(v.cpu())
    res = {k: torch.cat(v) for k, v in out.items()}
    truth = res["clean"].clone()
    for k, v in res.items():
        if k != "pgd-ce":  # the user's PGD-CE-20 is the number under test, not part of the truth (it is weaker anyway)
            truth &= v
    res["truth"] = truth
    return res
