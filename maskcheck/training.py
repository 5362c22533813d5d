"""The single training loop every method goes through.

`train_run(cfg, run_dir)` trains one model into a run folder (ARCHITECTURE.md, "Run folder"):
optimizer + step schedule + weight decay, AMP (bf16, else fp16 + GradScaler) and channels_last on
CUDA by default (both can be forced on CPU, where torch supports them, so tests reach those code
paths; `TrainConfig.precision` fp32|bf16|fp16 fixes the autocast dtype on any device, issue 24), an
opt-in `torch.compile`, a tqdm bar with loss and accuracy, clean + PGD accuracy on the held-out split
after every epoch, a stderr warning when the inner attack stops working (`collapse_warning`), and
`RUN/last.ckpt` after every epoch so an interrupted run resumes where it stopped. The finished
run is written by `checkpoint.save_run` (weights, then run.json last).

Under `torchrun` (WORLD_SIZE > 1 in the environment) the same loop runs DistributedDataParallel
with a DistributedSampler; rank 0 evaluates and writes files. Per-rank batches are
`batch_size / world_size`, so one DDP step equals one single-process step on the whole batch.

In-memory data sets (every built-in one) are moved to the training device once and batched by
indexing, with CIFAR's crop + flip done on the whole batch on the device: no DataLoader, no
per-step host copies and no per-step host syncs (loss and accuracy are summed on the device and
read once per epoch), because a small model at batch 128 is bound by per-step overhead, not
arithmetic (issue 13). DDP runs keep the DataLoader + DistributedSampler.

Shuffling and attack noise are reseeded from (seed, epoch) at the start of every epoch, so a
resumed run sees the same data order as an uninterrupted one without storing RNG states.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset, TensorDataset

from . import checkpoint
from .attacks import accuracy, pgd
from .config import check_eps, derived_seed, format_temperature, resolve_device, seed_everything
from .data import ImageTensorDataset, get_info, load_dataset
from .errors import InputError
from .fileio import atomic_write
from .methods import AWP, AWP_DEFAULTS, METHODS, StepContext, awp_methods, build_method
from .methods.base import ADV_LOGITS, InnerStats, Method
from .models import build_model

LAST_CKPT = "last.ckpt"
INNER_LOSSES = ("ce", "kl")  # --inner: the loss of the inner maximisation (trades, ltd ablations)
INNER_METHODS = ("trades", "ltd")
INNER_STARTS = ("gaussian", "uniform", "none")  # issue 24 ablation of TRADES' 0.001 N(0, 1) start
# --precision: the autocast dtype of every forward (inner attack, teacher, loss); fp32 = no autocast.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# The live collapse warning (issue 24) and the training-phase-gap check (checks/training_phase.py) share
# this threshold (ours): the inner attack left at least 90% of an epoch's training points correct, i.e. it
# fools fewer than 10% of them: it has "stopped working".
MIN_TRAIN_ROBUST = 0.9
# The live warning's second sign: the inner attack moved no point on more than this share of its steps. An
# attack that stands still on over 10% of its steps has stopped working on as many points (ours).
MAX_ZERO_STEPS = 1.0 - MIN_TRAIN_ROBUST

# ------------------------------------------------------------------------ defaults
# One table of per-dataset defaults; every entry can be overridden (CLI flags, `overrides=`).
# digits: chosen so a full sweep (natural + 12 dd + trades + 6 ltd) takes minutes on 2 CPU cores
# while still showing dd's masking and TRADES/LTD's real robustness; its eps is data.py's.
# cifar10/100: the TRADES / AWP CIFAR recipe (methods.md sections 4-5): SGD 0.9, wd 5e-4, PGD-10
# with step 2/255 for training, eps 8/255, 100 epochs with /10 at 75 and 90.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(epochs=8, batch_size=64, optimizer="adam", lr=5e-3, momentum=0.9, nesterov=False, weight_decay=0.0,
                   milestones=(6,), attack_steps=5, attack_step_size=None, eval_steps=10, eval_n=100),
    "synthetic": dict(epochs=10, batch_size=64, optimizer="adam", lr=3e-3, momentum=0.9, nesterov=False, weight_decay=0.0,
                      milestones=(8,), attack_steps=5, attack_step_size=None, eval_steps=10, eval_n=100),
    # MNIST on 2 CPU cores: a sweep of 20 runs must fit in about 20 minutes, hence 5 epochs and PGD-7.
    "mnist": dict(epochs=5, batch_size=128, optimizer="adam", lr=1e-3, momentum=0.9, nesterov=False, weight_decay=0.0,
                  milestones=(4,), attack_steps=7, attack_step_size=None, eval_steps=10, eval_n=200),
    "fashion-mnist": dict(epochs=10, batch_size=128, optimizer="adam", lr=1e-3, momentum=0.9, nesterov=False, weight_decay=0.0,
                          milestones=(8,), attack_steps=10, attack_step_size=None, eval_steps=20, eval_n=1000),
    "cifar10": dict(epochs=100, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                    milestones=(75, 90), attack_steps=10, attack_step_size=2 / 255, eval_steps=20, eval_n=1000),
    "cifar100": dict(epochs=100, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                     milestones=(75, 90), attack_steps=10, attack_step_size=2 / 255, eval_steps=20, eval_n=1000),
}
# The LTD paper's CIFAR-10 recipe (App. A): WRN-34-10, 120 epochs, lr 0.1 /10 at 80 and 100, SGD
# momentum 0.9 Nesterov, wd 5e-4, PGD-8 on training, batch 128 (TRADES default), eps 8/255.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(arch="wrn-34-10", epochs=120, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                  weight_decay=5e-4, milestones=(80, 100), attack_steps=8, attack_step_size=2 / 255, eps=8 / 255),
}


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run; stored in run.json `config` and in last.ckpt."""

    method: str
    dataset: str = "digits"
    arch: str = "small-cnn"
    name: str = ""
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()  # epochs after which lr *= lr_decay
    lr_decay: float = 0.1
    eps: float = 0.3
    norm: str = "linf"
    attack_steps: int = 10
    attack_step_size: float | None = None  # None: 2.5 * eps / steps (Madry et al.)
    eval_steps: int = 20
    eval_step_size: float | None = None
    eval_n: int = 1000  # held-out points attacked after each epoch (progress only)
    final_eval_n: int = 2000  # held-out points attacked for the recorded metrics.pgd_acc
    beta: float = 6.0
    inner: str | None = None  # trades/ltd inner attack loss: "ce" | "kl"; None = the method's own (trades kl, ltd ce)
    inner_start: str | None = None  # trades/ltd inner attack start: gaussian (None: TRADES' x + 0.001 N(0, 1)) | uniform | none
    temperature: float | None = None  # distillation temperature T (dd, ltd)
    tau: float = 1.0  # ltd's fixed student temperature, inside forward at train and test
    awp: bool = False
    awp_gamma: float | None = None
    awp_warmup: int | None = None
    seed: int = 0
    max_train: int | None = None  # train on the first N training points only (quick runs, tests)
    # Stop early once the eval-mode accuracy on the training set reaches this (converged teachers,
    # issue 17); `epochs` is then the cap. None = always train `epochs` epochs.
    stop_train_acc: float | None = None
    preset: str | None = None
    # autocast dtype (issue 24): None = as before (AMP on CUDA: bf16, else fp16; fp32 on CPU unless forced)
    precision: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; valid: {', '.join(METHODS)}.")
        if METHODS[self.method].has_temperature and self.temperature is None:
            raise InputError(f"--method {self.method} needs --temperature T (a positive number, e.g. 5).")
        if self.temperature is not None and not METHODS[self.method].has_temperature:
            raise InputError(f"--temperature applies to dd and ltd, not {self.method}; drop it (ltd's student uses --tau).")
        check_eps(self.eps)
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InputError(f"--temperature must be a positive number; got {self.temperature}.")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise InputError(f"--tau must be a positive number; got {self.tau}.")
        if self.awp and self.method not in awp_methods():
            raise InputError(f"--awp works with {', '.join(awp_methods())}; not with {self.method}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(f"--epochs and --batch-size must be positive; got {self.epochs} and {self.batch_size}.")
        if self.inner is not None and (self.inner not in INNER_LOSSES or self.method not in INNER_METHODS):
            raise InputError(f"--inner takes {' or '.join(INNER_LOSSES)} for {', '.join(INNER_METHODS)}; "
                             f"got {self.inner!r} for {self.method}.")
        if self.inner_start is not None and (self.inner_start not in INNER_STARTS or self.method not in INNER_METHODS):
            raise InputError(f"the inner attack's start takes {', '.join(INNER_STARTS)} for {', '.join(INNER_METHODS)}; "
                             f"got {self.inner_start!r} for {self.method}.")
        if self.stop_train_acc is not None and not 0 < self.stop_train_acc <= 1:
            raise InputError(f"the teacher's target training accuracy must lie in (0, 1]; got {self.stop_train_acc}.")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"--optimizer must be adam or sgd; got {self.optimizer!r}.")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}.")

    @property
    def model_temperature(self) -> float:
        return self.tau if self.method == "ltd" else 1.0

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> "TrainConfig":
        """The config a run.json `config` (or a checkpoint's) holds, read back into this type; InputError if it cannot be.

        A stored config then answers "is this the same run?" by equality: JSON keeps a float exactly and
        the one tuple (`milestones`) is made a tuple again. run.json adds how the run executed (RUN_FACTS), not
        settings; those are left out."""
        try:
            values = {k: v for k, v in stored.items() if k not in RUN_FACTS}
            values["milestones"] = tuple(int(m) for m in values.get("milestones") or ())
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise InputError(f"the stored training settings are unreadable ({exc}).") from None


# run.json `config` records these beside the TrainConfig: how the run executed, not what was asked (run_record)
RUN_FACTS = ("world_size", "amp", "autocast_dtype", "channels_last", "compile")


def default_run_name(method: str, temperature: float | None, awp: bool = False) -> str:
    """`natural`, `dd-T20`, `trades`, `ltd-T5`, `trades-awp`, ..."""
    name = method + ("-awp" if awp else "")
    return f"{name}-T{format_temperature(temperature)}" if temperature is not None else name


def make_config(method: str, dataset: str = "digits", *, preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A TrainConfig from the dataset's defaults, then the preset, then explicit overrides (None = keep)."""
    info = get_info(dataset)
    if dataset not in DATASET_DEFAULTS:  # a dataset added to data.DATASETS needs its own recipe, not CIFAR's
        raise InputError(f"no training defaults for dataset {dataset!r}: add its row to training.DATASET_DEFAULTS.")
    values: dict[str, Any] = dict(DATASET_DEFAULTS[dataset])
    values.update(arch=info.default_model, eps=info.default_eps)
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"unknown --preset {preset!r}; valid: {', '.join(PRESETS)}.")
        values.update(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("awp"):
        # Reference gamma and warm-up; the 10 warm-up epochs of a 200-epoch CIFAR run are capped at a
        # quarter of shorter runs, so AWP is active on small datasets too.
        gamma, warmup = AWP_DEFAULTS.get(method, (0.005, 0))
        values["awp_gamma"] = gamma if values.get("awp_gamma") is None else values["awp_gamma"]
        if values.get("awp_warmup") is None:
            values["awp_warmup"] = min(warmup, int(values.get("epochs", 1)) // 4)
    if "milestones" in values:
        values["milestones"] = tuple(int(m) for m in values["milestones"])
    if not values.get("name"):
        values["name"] = default_run_name(method, values.get("temperature"), bool(values.get("awp")))
    fields = TrainConfig.__dataclass_fields__
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"unknown training setting(s) {', '.join(unknown)}; valid: {', '.join(fields)}.")
    return TrainConfig(method=method, dataset=dataset, preset=preset, **values)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Step schedule: lr * lr_decay ** (number of milestones already passed); epoch is 0-based."""
    return cfg.lr * cfg.lr_decay ** sum(epoch >= m for m in cfg.milestones)


# --------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str = "auto") -> Dist:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...); no-op otherwise.

    NCCL on CUDA, gloo on CPU. Already-initialised groups (tests that spawn processes) are reused.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return Dist()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_spec != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


# ---------------------------------------------------------------------------- state


@dataclass
class TrainState:
    """What one training step needs. `model` is the bare Classifier; `wrapped` may be its DDP."""

    cfg: TrainConfig
    model: nn.Module
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    method: Method
    ctx: StepContext
    awp: AWP | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False
    compiled: bool = False
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # the inner attack on this epoch's training batches: points it left correctly classified / attacked
    # (read from the objective's forward on x', so it costs nothing; see methods.base.ADV_LOGITS)
    inner_correct: int = 0
    inner_seen: int = 0
    precision: str = "fp32"  # the autocast dtype in use (cfg.precision, or what AMP chose)


def resolve_precision(precision: str | None, device: torch.device, amp: bool | None) -> str:
    """The autocast dtype name: cfg.precision when set, else AMP's choice (bf16 where supported, else fp16).

    `amp` (None = on CUDA) is the speed switch of `build_state`; an explicit `precision` is part of
    the experiment and wins over it. On CPU, AMP means bf16 (tests force it to reach the AMP path).
    """
    if precision is not None:
        return precision
    if not (device.type == "cuda" if amp is None else amp):
        return "fp32"
    if device.type != "cuda":
        return "bf16"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _autocast_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch autocasts a matmul on `device` to `dtype` (older CPU builds warn and stay fp32)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast(device.type, dtype=dtype):
                a = torch.ones(2, 2, device=device)
                return (a @ a).dtype == dtype
    except (RuntimeError, ValueError):
        return False


def _amp_factory(device: torch.device, precision: str) -> tuple[Callable[[], Any] | None, torch.amp.GradScaler | None]:
    """Autocast at `precision`: bf16 needs no scaler; fp16 gets a GradScaler (its range is ~6e-8..65504).

    The scaler scales the training loss only: the inner attack's input gradients are unscaled, as
    in the reference AMP recipes, so they can underflow in fp16 (the issue-24 hypothesis).
    """
    dtype = PRECISIONS[precision]
    if dtype is None:
        return None, None
    if not _autocast_works(device, dtype):
        raise InputError(f"--precision {precision}: this torch {torch.__version__} has no {precision} autocast on {device.type}; "
                         f"use --precision fp32 or bf16.")
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Weight decay on all parameters, as the PyTorch reference repos do (methods.md pitfall 12).
    # Fused kernels on CUDA: one launch per step instead of several per parameter, and Adam's step
    # counter stays on the GPU (the default reads it back to the host every step).
    fused = True if next(model.parameters()).device.type == "cuda" else None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def build_state(cfg: TrainConfig, device: torch.device, teacher: nn.Module | None = None, ddp: Dist = Dist(), *,
                amp: bool | None = None, channels_last: bool | None = None, compile: bool = False,
                model: nn.Module | None = None) -> TrainState:
    """Model, optimizer, method and step context for `cfg` (model initialised from cfg.seed).

    `model`: train this module (already on `device`) instead of building `cfg.arch` (see `fit`).

    `amp` and `channels_last` default to "on CUDA"; `compile` wraps the model in `torch.compile`
    (the weights stay on `state.model`, which is what checkpoints save). None of the three is a
    training setting: they change speed and rounding, not the experiment, so they are recorded in
    run.json but not in `cfg`.
    """
    seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick its fastest kernels once
    if model is None:
        model = build_model(cfg.arch, get_info(cfg.dataset), temperature=cfg.model_temperature).to(device)
    amp = device.type == "cuda" if amp is None else amp
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapped: nn.Module = model
    if ddp.enabled:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    elif compile:
        wrapped = torch.compile(model)
    method = build_method(cfg.method, temperature=cfg.temperature, beta=cfg.beta, inner=cfg.inner)
    if method.needs_teacher and teacher is None:
        raise InputError(f"--method {cfg.method} needs --teacher RUN_DIR (a finished run folder).")
    precision = resolve_precision(cfg.precision, device, amp)
    autocast, scaler = _amp_factory(device, precision)
    ctx = StepContext(eps=cfg.eps, norm=cfg.norm, attack_steps=cfg.attack_steps, attack_step_size=cfg.attack_step_size,
                      teacher=teacher, generator=torch.Generator(device=device), autocast=autocast,
                      inner_start=cfg.inner_start or "gaussian",
                      inner_stats=InnerStats() if method.adversarial else None)
    awp = AWP(gamma=cfg.awp_gamma or 0.0, warmup=cfg.awp_warmup or 0) if cfg.awp else None
    return TrainState(cfg, model, wrapped, make_optimizer(cfg, model), method, ctx, awp, scaler, channels_last,
                      compiled=compile and not ddp.enabled, precision=precision)


def train_step(state: TrainState, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """One optimizer step on (x, y); returns (loss, number of correct training predictions).

    Gradients stay in `.grad` after the step (they are cleared at the start of the next one).
    This form reads both numbers back to the host (a sync); the loop uses `train_step_on_device`.
    """
    loss, correct = train_step_on_device(state, x, y)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"{state.cfg.name}: training loss became {value} at epoch {state.epoch + 1}; lower --lr.")
    return value, int(correct)


def train_step_on_device(state: TrainState, x: torch.Tensor, y: torch.Tensor,
                         soft: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on (x, y); returns (detached loss, correct count) as device tensors, no host sync.

    `soft`: target probabilities (B, C) that replace the one-hot labels in the loss (methods with
    `takes_soft_labels`; `y` is then their argmax, for the accuracy count).
    """
    if state.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    state.optimizer.zero_grad(set_to_none=True)
    state.model.train()
    # the attack inside `prepare` uses the compiled module too (DDP's wrapper is for the loss only)
    batch = state.method.prepare(state.wrapped if state.compiled else state.model, x, y, state.ctx)
    if soft is not None:
        batch.soft = soft
    diff = None
    if state.awp is not None and state.awp.active(state.epoch):
        diff = state.awp.perturbation(state.model, state.method, batch, state.ctx)
        state.awp.apply(state.model, diff, +1.0)
    autocast = state.ctx.autocast() if state.ctx.autocast is not None else contextlib.nullcontext()
    with autocast:
        loss, logits = state.method.objective(state.wrapped, batch, state.ctx)
    if state.scaler is not None:
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        loss.backward()
        state.optimizer.step()
    if diff is not None:
        state.awp.apply(state.model, diff, -1.0)
    adv_logits = batch.extra.get(ADV_LOGITS)
    if adv_logits is not None:  # the training phase's robust accuracy (issue 17), summed on the device
        state.inner_correct = state.inner_correct + (adv_logits.detach().argmax(1) == y).sum()
        state.inner_seen += len(y)
    return loss.detach().float(), (logits.detach().argmax(1) == y).sum()


def start_epoch(state: TrainState, rank: int = 0) -> None:
    """Set epoch `state.epoch`'s learning rate and reseed the attack noise from (seed, epoch, rank).

    Reseeding per epoch is what lets a resumed run repeat an uninterrupted one exactly.
    """
    for group in state.optimizer.param_groups:
        group["lr"] = lr_at(state.cfg, state.epoch)
    if state.ctx.inner_stats is not None:
        state.ctx.inner_stats = InnerStats()
    state.ctx.generator.manual_seed(derived_seed(state.cfg.seed, f"attack-{state.epoch}-{rank}"))


def fit(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig) -> nn.Module:
    """Train `model` in place on in-memory tensors for `cfg.epochs` epochs; returns it in eval mode.

    The same method, optimizer, lr schedule, shuffling (`DeviceData`) and step (`train_step_on_device`)
    as `train_run`, without its files, held-out evaluation, progress bar, AMP (unless cfg.precision asks) or resume: for models a
    test or an experiment trains in-process (tests/controls.py, experiments/synthetic-ambiguity).
    `cfg.arch` and `cfg.dataset` are not used; the model and data are given.

    x: (N, C, H, W) in [0, 1] on the model's device. targets: labels (N,) (int), or target
    probabilities (N, num_classes) (float; soft labels, for methods with `takes_soft_labels`).
    """
    device = next(model.parameters()).device
    soft = targets.is_floating_point()
    if len(targets) != len(x) or targets.ndim != (2 if soft else 1):
        raise InputError(f"fit needs labels (N,) or probabilities (N, classes) for x of {len(x)} points; "
                         f"got targets of shape {tuple(targets.shape)}.")
    state = build_state(cfg, device, model=model, amp=False, channels_last=False)
    if soft and not state.method.takes_soft_labels:
        soft_ok = ", ".join(name for name, cls in METHODS.items() if cls.takes_soft_labels)
        raise InputError(f"--method {cfg.method} does not train on soft labels; use one of {soft_ok}, or give integer labels.")
    data = DeviceData(x, targets, augment=False, device=device)
    while state.epoch < cfg.epochs:
        start_epoch(state)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        for xb, tb in data.batches(cfg, state.epoch):
            loss, _ = train_step_on_device(state, xb, tb.argmax(1), soft=tb) if soft else train_step_on_device(state, xb, tb)
            loss_sum += loss.double()
        if not math.isfinite(loss_sum.item()):  # one host read per epoch, as in train_run
            raise FloatingPointError(f"{cfg.name}: training loss became {loss_sum.item()} in epoch {state.epoch + 1}; lower lr.")
        state.epoch += 1
    return model.eval()


# ------------------------------------------------------------------------ evaluate


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, n: int, tag: str = "final") -> tuple[float, float]:
    """(clean accuracy on all of x, PGD-CE accuracy on the first n points), model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    clean = accuracy(model, x, y)
    n = min(n, len(y))
    gen = torch.Generator(device=device)
    gen.manual_seed(derived_seed(cfg.seed, f"eval-{tag}"))
    correct = 0
    for i in range(0, n, 500):
        xb, yb = x[i : min(i + 500, n)].to(device), y[i : min(i + 500, n)].to(device)
        res = pgd(model, xb, yb, eps=cfg.eps, norm=cfg.norm, steps=cfg.eval_steps, step_size=cfg.eval_step_size,
                  loss="ce", start="uniform", generator=gen)
        correct += int(res.correct.sum())
    return clean, correct / n if n else float("nan")


# ---------------------------------------------------------------------- checkpoints


def save_last(run_dir: Path, state: TrainState) -> None:
    """RUN/last.ckpt: plain state dicts and numbers, loadable with torch.load(weights_only=True)."""
    obj = {
        "config": state.cfg.to_dict(),
        "epoch": state.epoch,  # completed epochs
        "model": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "history": state.history,
    }
    atomic_write(run_dir / LAST_CKPT, lambda f: torch.save(obj, f))


def load_last(run_dir: Path, state: TrainState) -> bool:
    """Resume `state` from RUN/last.ckpt if present; refuse one written with other settings."""
    path = run_dir / LAST_CKPT
    if not path.is_file():
        return False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt checkpoint: torch raises several types
        raise InputError(f"{path} is not a readable checkpoint ({type(exc).__name__}); delete it to restart the run.") from None
    if not isinstance(obj, dict) or not {"model", "optimizer", "epoch", "history"} <= obj.keys():
        raise InputError(f"{path} is not a maskcheck training checkpoint (got {type(obj).__name__}); delete it to "
                         "restart the run.")
    try:
        same = isinstance(obj.get("config"), Mapping) and TrainConfig.from_dict(obj["config"]) == state.cfg
    except InputError:  # settings of another version of maskcheck: not this run's
        same = False
    if not same:
        raise InputError(f"{path} belongs to a run with other settings; delete {run_dir} or choose another --out.")
    state.model.load_state_dict(obj["model"])
    state.optimizer.load_state_dict(obj["optimizer"])
    if state.scaler is not None and obj.get("scaler"):
        state.scaler.load_state_dict(obj["scaler"])
    state.epoch = int(obj["epoch"])
    state.history = list(obj["history"])
    return True


def collapse_warning(name: str, h: dict[str, Any], epochs: int) -> str | None:
    """The live form of the training-phase-gap check (issue 24): one line when the inner attack stopped working.

    Fires when the inner attack left at least MIN_TRAIN_ROBUST of this epoch's training points
    correct (the LTD paper's "robust accuracy in the training phase is almost 100%", Sec. 5.2) or
    stood still (an all-zero input gradient) on more than MAX_ZERO_STEPS of its steps. Thresholds
    are the check's (checks/training_phase.py); the audit decides, this only says "stop and look".
    """
    robust, zero = h.get("train_robust_acc"), h.get("inner_zero_steps")
    why = []
    if robust is not None and robust >= MIN_TRAIN_ROBUST:
        why.append(f"the inner attack left {100 * robust:.1f}% of training points correct (>= {100 * MIN_TRAIN_ROBUST:.0f}%)")
    if zero is not None and zero > MAX_ZERO_STEPS:
        why.append(f"{100 * zero:.1f}% of its steps had an all-zero input gradient (> {100 * MAX_ZERO_STEPS:.0f}%)")
    if not why:
        return None
    return (f"maskcheck: warning: {name} epoch {h['epoch']}/{epochs}: {' and '.join(why)}, while clean training accuracy is "
            f"{100 * h.get('train_acc', float('nan')):.1f}%: the inner attack may have stopped working (training-phase-gap); "
            f"audit this run before training longer.")


# ---------------------------------------------------------------------------- loop


def _loader(train: Any, cfg: TrainConfig, epoch: int, ddp: Dist, device: torch.device) -> DataLoader:
    """DDP only: a DataLoader over this rank's shard (in-memory single-process runs use `DeviceData`)."""
    per_rank = max(1, cfg.batch_size // ddp.world_size)
    if ddp.enabled:
        sampler: Any = DistributedSampler(train, num_replicas=ddp.world_size, rank=ddp.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
    else:
        gen = torch.Generator()
        gen.manual_seed(derived_seed(cfg.seed, f"shuffle-{epoch}"))
        sampler = RandomSampler(train, generator=gen)
    workers = min(4, max(0, (os.cpu_count() or 1) // max(ddp.world_size, 1) - 1)) if device.type == "cuda" else 0
    return DataLoader(train, batch_size=per_rank, sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                      drop_last=False, persistent_workers=False)


class DeviceData:
    """A whole in-memory training set on the training device, batched by indexing.

    Same batches as `DataLoader(RandomSampler(generator=shuffle-{epoch}))` over the data set (the
    permutation is drawn the same way), so moving data to the device changes no result. uint8
    CIFAR images stay uint8 on the device (a quarter of the memory) and get the standard
    pad-4 random crop + horizontal flip batch-wise (TRADES / AWP / LTD App. A), seeded per epoch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool, device: torch.device) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.augment = augment
        self.device = device

    @staticmethod
    def from_dataset(train: Dataset, device: torch.device) -> "DeviceData | None":
        """The data set's tensors (through one level of Subset), or None for a data set we cannot index."""
        indices = None
        if isinstance(train, Subset):
            indices, train = torch.as_tensor(list(train.indices), dtype=torch.long), train.dataset
        if isinstance(train, ImageTensorDataset):
            images, labels, augment = train.images, train.labels, train.augment
        elif isinstance(train, TensorDataset) and len(train.tensors) == 2:
            (images, labels), augment = train.tensors, False
        else:
            return None
        if indices is not None:
            images, labels = images[indices], labels[indices]
        return DeviceData(images, labels, augment, device)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, cfg: TrainConfig, epoch: int) -> Any:
        gen = torch.Generator()
        gen.manual_seed(derived_seed(cfg.seed, f"shuffle-{epoch}"))
        order = torch.randperm(len(self), generator=gen).to(self.device)
        aug = torch.Generator(device=self.device)
        aug.manual_seed(derived_seed(cfg.seed, f"augment-{epoch}"))
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x, y = self.images[idx], self.labels[idx]
            if x.dtype == torch.uint8:
                if self.augment:
                    x = crop_flip(x, aug)
                x = x.float().div_(255.0)
            yield x, y


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch (N, C, H, W), then a random horizontal flip."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), device=x.device, generator=generator)
    flip = torch.rand((n, 1, 1, 1), device=x.device, generator=generator) < 0.5
    rows = (torch.arange(h, device=x.device).view(1, 1, h, 1) + dy).expand(n, c, h, w + 2 * pad)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    cols = (torch.where(flip, (w - 1) - cols, cols) + dx).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def _load_teacher(teacher_dir: str | Path | None, device: torch.device) -> tuple[nn.Module | None, str | None]:
    if teacher_dir is None:
        return None, None
    loaded = checkpoint.load_run(teacher_dir, device)
    teacher = loaded.model.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, loaded.name


def teacher_info(teacher_dir: str | Path | None) -> dict[str, Any] | None:
    """What a student's run.json records about its teacher: epochs, training and held-out accuracy."""
    if teacher_dir is None or not (Path(teacher_dir) / "run.json").is_file():
        return None
    run = json.loads((Path(teacher_dir) / "run.json").read_text(encoding="utf-8"))
    m = run.get("metrics", {})
    last = (m.get("history") or [{}])[-1]
    return {"name": run.get("name"), "epochs": run.get("epochs"), "clean_acc": m.get("clean_acc"),
            "train_acc": m.get("train_acc_eval", last.get("train_acc")),
            "train_acc_measure": "eval" if "train_acc_eval" in m else "running",
            "converged": m.get("converged"), "target_train_acc": run.get("config", {}).get("stop_train_acc")}


def train_run(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    device: str | torch.device = "auto",
    teacher_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    compile: bool = False,
    amp: bool | None = None,
    channels_last: bool | None = None,
) -> dict[str, Any]:
    """Train `cfg` into `run_dir`, resuming from RUN/last.ckpt; returns the run.json record.

    A finished run folder (run.json + weights) is an error here; the sweep skips those instead.
    `compile`, `amp`, `channels_last`: see `build_state` (speed settings, recorded in run.json).
    """
    run_dir = Path(run_dir)
    if checkpoint.is_complete_run(run_dir):
        raise InputError(f"{run_dir} already holds a finished run; choose another --out or delete it.")
    ddp = init_distributed(str(device))
    dev = torch.device(f"cuda:{ddp.local_rank}") if ddp.enabled and torch.cuda.is_available() and str(device) != "cpu" \
        else resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    splits = load_dataset(cfg.dataset, data_dir)
    train = splits.train if cfg.max_train is None else Subset(splits.train, range(min(cfg.max_train, len(splits.train))))
    x_held, y_held = splits.heldout_tensors()
    x_held, y_held = x_held.to(dev), y_held.to(dev)  # evaluated after every epoch: copy once
    on_device = None if ddp.enabled else DeviceData.from_dataset(train, dev)
    teacher, teacher_name = _load_teacher(teacher_dir, dev)
    state = build_state(cfg, dev, teacher, ddp, amp=amp, channels_last=channels_last, compile=compile)
    if load_last(run_dir, state) and log and ddp.is_main:
        log(f"{cfg.name}: resuming after epoch {state.epoch}/{cfg.epochs}")
    started = time.perf_counter() - sum(h["seconds"] for h in state.history)
    if ddp.enabled and cfg.stop_train_acc:
        raise InputError("stopping at a training accuracy is not supported under torchrun; give the teacher a fixed --epochs.")
    while state.epoch < cfg.epochs and not _converged(cfg, state.history):
        t0 = time.perf_counter()
        start_epoch(state, ddp.rank)
        if on_device is not None:
            batches: Any = on_device.batches(cfg, state.epoch)
            steps = math.ceil(len(on_device) / cfg.batch_size)
        else:
            batches = _loader(train, cfg, state.epoch, ddp, dev)
            steps = len(batches)
        bar = _progress(batches, steps, f"{cfg.name} {state.epoch + 1}/{cfg.epochs}", progress and ddp.is_main)
        # summed on the device and read once per epoch: a .item() per step stalls the GPU queue
        # float64, as the host sum of Python floats was: the recorded history keeps its values to the last digit
        loss_sum, correct_t, seen = torch.zeros((), device=dev, dtype=torch.float64), torch.zeros((), device=dev, dtype=torch.long), 0
        state.inner_correct, state.inner_seen = 0, 0
        for step, (x, y) in enumerate(bar):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss, n_correct = train_step_on_device(state, x, y)
            loss_sum += loss.double() * len(y)
            correct_t += n_correct
            seen += len(y)
            if hasattr(bar, "set_postfix") and step % 25 == 0:  # a host sync, so only now and then
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct_t.item() / seen:.3f}")
        total_loss, correct = loss_sum.item(), int(correct_t.item())
        if not math.isfinite(total_loss):
            raise FloatingPointError(f"{cfg.name}: training loss became {total_loss} in epoch {state.epoch + 1}; lower --lr.")
        if ddp.is_main:
            clean, robust = evaluate(state.model, x_held, y_held, cfg, cfg.eval_n, f"epoch-{state.epoch}")
            state.history.append({"epoch": state.epoch + 1, "loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1),
                                  "clean_acc": clean, "pgd_acc": robust, **_training_phase(state),
                                  **({"train_acc_eval": train_accuracy(state.model, train, dev)} if cfg.stop_train_acc else {}),
                                  "seconds": time.perf_counter() - t0})
            state.epoch += 1
            save_last(run_dir, state)
            warning = collapse_warning(cfg.name, state.history[-1], cfg.epochs)
            if warning:  # stderr even without `log`: sweep workers run with log=None
                print(warning, file=sys.stderr, flush=True)
            if log:
                h = state.history[-1]
                log(f"{cfg.name} epoch {h['epoch']}/{cfg.epochs}: loss {h['loss']:.3f} train {h['train_acc']:.3f} "
                    f"held-out clean {clean:.3f} pgd {robust:.3f}")
        else:
            state.epoch += 1
        if ddp.enabled:
            dist.barrier()
    final = evaluate(state.model, x_held, y_held, cfg, cfg.final_eval_n) if ddp.is_main else (float("nan"), float("nan"))
    seconds = time.perf_counter() - started
    record = run_record(cfg, state, teacher_name, ddp, seconds, final, min(cfg.final_eval_n, len(y_held)))
    if teacher_dir is not None:
        record["teacher_info"] = teacher_info(teacher_dir)
    if ddp.is_main:
        checkpoint.save_run(run_dir, state.model, record)
        (run_dir / LAST_CKPT).unlink(missing_ok=True)
    if ddp.enabled:
        dist.barrier()
    return record


def run_record(cfg: TrainConfig, state: TrainState, teacher_name: str | None, ddp: Dist, seconds: float,
               final: tuple[float, float], n_eval: int) -> dict[str, Any]:
    """The run.json fields of ARCHITECTURE.md ("Run folder"); metrics from the final held-out evaluation."""
    step = cfg.eval_step_size if cfg.eval_step_size is not None else 2.5 * cfg.eps / max(cfg.eval_steps, 1)
    return {
        "seed": cfg.seed,
        "name": cfg.name,
        "method": cfg.method,
        "awp": cfg.awp,
        "temperature": cfg.temperature if METHODS[cfg.method].has_temperature else None,
        "model_temperature": cfg.model_temperature,
        "arch": cfg.arch,
        "dataset": cfg.dataset,
        "threat": {"eps": cfg.eps, "norm": cfg.norm},
        "epochs": state.epoch,  # trained; cfg.epochs unless stopped at stop_train_acc
        "teacher": teacher_name,
        "config": {**cfg.to_dict(), "world_size": ddp.world_size, "amp": state.ctx.autocast is not None,
                   "autocast_dtype": state.precision,
                   "channels_last": state.channels_last, "compile": state.compiled},
        "metrics": {
            "clean_acc": final[0],
            "pgd_acc": final[1],
            "pgd": {"steps": cfg.eval_steps, "step_size": step, "n": n_eval, "loss": "ce", "start": "uniform"},
            "train_seconds": seconds,
            "history": state.history,
            **({"train_acc_eval": state.history[-1].get("train_acc_eval"), "converged": _converged(cfg, state.history)}
               if cfg.stop_train_acc and state.history else {}),
        },
    }


def _training_phase(state: TrainState) -> dict[str, Any]:
    """The paper's "robust accuracy in the training phase" (LTD Sec. 5.2) for this epoch's history.

    `train_robust_acc`: share of training points still classified correctly on the inner attack's
    x' (train mode, weights before each step); `inner_success` = 1 - that. Absent for methods
    without an inner attack (natural, dd). `inner_zero_steps` / `inner_zero_coords`: the inner
    attack's all-zero input gradients per (point, step) and its zero coordinates (issue 24).
    """
    if not state.inner_seen:
        return {}
    acc = int(state.inner_correct) / state.inner_seen  # one host read per epoch
    zeros = state.ctx.inner_stats.shares() if state.ctx.inner_stats is not None else {}
    return {"train_robust_acc": acc, "inner_success": 1.0 - acc, **zeros}


def train_accuracy(model: nn.Module, train: Any, device: torch.device, batch_size: int = 500) -> float:
    """Eval-mode accuracy on the whole training set (what "converged" means for a teacher)."""
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in DataLoader(train, batch_size=batch_size, shuffle=False):
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
            seen += len(y)
    return correct / max(seen, 1)


def _converged(cfg: TrainConfig, history: list[dict[str, Any]]) -> bool:
    """True once the last epoch's eval-mode training accuracy reached cfg.stop_train_acc."""
    return bool(cfg.stop_train_acc and history and history[-1].get("train_acc_eval", 0.0) >= cfg.stop_train_acc)


def _progress(batches: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, total=total, desc=desc, leave=False, dynamic_ncols=True)


__all__ = ["DATASET_DEFAULTS", "PRECISIONS", "PRESETS", "collapse_warning", "resolve_precision", "DeviceData", "TrainConfig", "build_state", "crop_flip", "evaluate", "fit", "lr_at",
           "make_config", "start_epoch", "train_run", "train_step", "train_step_on_device"]
