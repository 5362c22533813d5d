"""What every training method shares: the per-step context, the method contract, KL helpers.

A method is its loss. It is split in two so that one loop (and AWP) can drive all of them:

* `prepare(model, x, y, ctx) -> Batch`: everything computed *before* the weight update that
  needs no parameter gradient: the inner maximisation (adversarial examples) and teacher soft
  labels. It may switch the model to eval mode (TRADES / RSLAD reference code does) and must
  leave it in train mode.
* `objective(model, batch, ctx) -> (loss, logits)`: the differentiable training loss, a scalar,
  plus the logits used for the progress bar's training accuracy. AWP evaluates the same
  objective at perturbed weights, which is why the two halves are separate.

`model` in `objective` may be a DistributedDataParallel wrapper; `prepare` always gets the bare
module (attacks need no gradient synchronisation, and DDP expects one backward per forward).
Views of the same batch (x and x') go through the model in *one* concatenated forward: one DDP
forward per step, and faster. Reference TRADES code uses separate forwards, which differs only for
networks with BatchNorm (batch statistics over x and x' together instead of separately).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import format_temperature


# Batch.extra key where an adversarial method's `objective` leaves its (detached) logits on x'. The
# training loop reads it for the paper's "robust accuracy in the training phase" (LTD Sec. 5.2):
# the share of training points the inner attack did not flip, at no extra forward pass.
ADV_LOGITS = "adv_logits"


@dataclass
class StepContext:
    """Per-run settings a loss needs at call time (hyperparameters live on the method)."""

    eps: float
    norm: str = "linf"
    attack_steps: int = 10
    attack_step_size: float | None = None
    teacher: nn.Module | None = None
    generator: torch.Generator | None = None
    autocast: Any = None  # a context-manager factory (AMP on CUDA, --precision bf16|fp16); None -> no autocast
    inner_start: str = "gaussian"  # trades/ltd/rslad inner attack start (TRADES: x + 0.001 N(0, 1)); issue 24 ablation
    inner_stats: "InnerStats | None" = None  # counts the inner attack's zero gradients when set (training loop)


@dataclass
class InnerStats:
    """The inner attack's exactly-zero input gradients, summed on the device (read once per epoch).

    A sign step of an all-zero gradient does not move the point (sign(0) = 0): the inner attack's
    "zero step", the issue-24 hypothesis for the LTD paper's high-T collapse (Sec. 5.2: training-phase
    robust accuracy "almost 100%"). `zero_points / points`: share of (point, step) pairs whose input
    gradient is 0 on every coordinate; `zero_coords / coords`: share of zero gradient coordinates.
    """

    zero_points: Any = 0
    points: int = 0
    zero_coords: Any = 0
    coords: int = 0

    def add(self, grad: torch.Tensor) -> None:
        zero = grad.detach().reshape(len(grad), -1) == 0
        self.zero_points = self.zero_points + zero.all(1).sum()
        self.zero_coords = self.zero_coords + zero.sum()
        self.points += zero.shape[0]
        self.coords += zero.numel()

    def shares(self) -> dict[str, float]:
        """{inner_zero_steps, inner_zero_coords} for run.json's history; {} when nothing was counted."""
        if not self.points:
            return {}
        return {"inner_zero_steps": int(self.zero_points) / self.points, "inner_zero_coords": int(self.zero_coords) / self.coords}


class GradientProbe(nn.Module):
    """`model` seen by an attack: every input that needs a gradient gets a hook counting its zeros.

    The attack's own `torch.autograd.grad(loss, x')` fires the hook with exactly the gradient
    whose sign it steps along, so the count costs no extra pass (the last forward of a PGD run
    has no backward, and its hook never fires). Train/eval mode passes through to `model`.
    """

    def __init__(self, model: nn.Module, stats: InnerStats) -> None:
        super().__init__()
        self.model = model
        self.stats = stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            x.register_hook(lambda g: self.stats.add(g))
        return self.model(x)


def probed(model: nn.Module, ctx: "StepContext") -> nn.Module:
    """`model` wrapped in a `GradientProbe` when the training loop asked for zero-step counts."""
    return GradientProbe(model, ctx.inner_stats) if ctx.inner_stats is not None else model


@dataclass
class Batch:
    """A training batch plus what `prepare` computed for it."""

    x: torch.Tensor
    y: torch.Tensor
    x_adv: torch.Tensor | None = None
    soft: torch.Tensor | None = None  # teacher probabilities, (B, C)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. ADV_LOGITS, read by the training loop


@dataclass
class Method:
    """Base class: hyperparameters in the constructor, model and data at call time."""

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False
    has_temperature: ClassVar[bool] = False  # takes a distillation temperature T
    adversarial: ClassVar[bool] = False
    # the objective trains on `Batch.soft` in place of the one-hot labels when it is set (training.fit's
    # soft-label targets); methods that compute `soft` from a teacher or ignore it leave this False
    takes_soft_labels: ClassVar[bool] = False
    supports_awp: ClassVar[bool] = False  # `--awp` may wrap its adversarial objective (methods/awp.py)
    # the sweep job that teaches it ("natural", "trades"); the sweep plans that job too when it is asked for this one
    sweep_teacher: ClassVar[str | None] = None

    @classmethod
    def sweep_jobs(cls, temps: Sequence[float]) -> list[tuple[str, float | None, str | None]]:
        """The jobs `train-sweep` plans for this method, as (name, temperature, teacher job): one per T when it
        has a temperature (`ltd-T5`), else one (`trades`)."""
        if cls.has_temperature:
            return [(f"{cls.name}-T{format_temperature(t)}", t, cls.sweep_teacher) for t in temps]
        return [(cls.name, None, cls.sweep_teacher)]

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> Batch:
        return Batch(x, y)

    def objective(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def passes(self, ctx: StepContext) -> float:
        """Forward+backward passes over a batch that one step needs.

        Cost units: a forward is 1/3 of a training forward+backward, a backward to the input only
        (attacks need no weight gradients) another 1/3. The throughput benchmark's bound on
        images/s is the raw forward+backward rate divided by this number.
        """
        return 1.0


def attack_passes(steps: int) -> float:
    """maskcheck.attacks.pgd: `steps` forward + input-backward pairs and one last forward."""
    return steps * 2 / 3 + 1 / 3


def kl_per_example(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) per example, shape (B,). Gradients flow through both sides."""
    p_log = F.log_softmax(p_logits.float(), dim=1)
    q_log = F.log_softmax(q_logits.float(), dim=1)
    return (p_log.exp() * (p_log - q_log)).sum(1)


def kl_from_probs(p: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || softmax(q)) per example for fixed target probabilities p (0 log 0 = 0)."""
    q_log = F.log_softmax(q_logits.float(), dim=1)
    p = p.float()
    return (torch.xlogy(p, p) - p * q_log).sum(1)


def soft_cross_entropy(p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """-sum_c p_c log softmax(logits)_c per example (Keras' softmax_cross_entropy_with_logits)."""
    return -(p.float() * F.log_softmax(logits.float(), dim=1)).sum(1)


def split_views(logits: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Undo the concatenated forward: logits of n equal-size views."""
    return list(logits.chunk(n, dim=0))


class eval_mode:
    """Put a module in eval mode for a block and restore its previous mode after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def autocast_ctx(ctx: StepContext):  # noqa: ANN201 - returns a context manager
    import contextlib

    return ctx.autocast() if ctx.autocast is not None else contextlib.nullcontext()
