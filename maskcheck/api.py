"""The Python API: audit a model that is already in memory (notebook, script, CI test).

    import maskcheck
    result = maskcheck.audit(model, x, y, eps=8 / 255)   # x in [0, 1], shape (N, C, H, W); y int (N,)
    result.flagged          # the checks that flagged masking ([] when none)
    result.report("audit.html")

This is a thin layer over the engine the CLI runs (`maskcheck.auditing.run_audit`); `_run_engine`
is the only place that calls it. The layer adds what a library owes its caller:

- arguments checked in Python terms: a bad value raises `ArgumentError` (a `ValueError`) whose
  `.param` names the parameter (`eps`, `n`, ...), never a CLI flag;
- the device is the model's own unless `device=` is given;
- the caller's world is left as found, even on error: the model's training mode, device,
  `requires_grad` flags and `.grad` tensors, and the global random generators (torch CPU and
  CUDA, numpy, `random`). The audit's randomness comes from its own `seed`.

The result is `maskcheck.AuditResult` (`report.notebook.AuditResult`): the JSON record of
`results.AuditResult` plus `.report(path)` and `_repr_html_` (a notebook shows the verdict table
and the figures inline).
"""

from __future__ import annotations

import random
import types
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from .config import DEFAULT_N, NORMS
from .errors import InputError

if TYPE_CHECKING:  # torch and the engine load only when an audit runs: `import maskcheck` stays cheap
    import torch
    import torch.nn as nn

    from .checkpoint import LoadedModel
    from .report.notebook import AuditResult


class ArgumentError(InputError, ValueError):
    """A bad argument to the Python API. `param` names it (None when the model itself is at fault).

    A `ValueError` for Python callers and an `InputError` for the CLI (one line, exit code 2).
    """

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(f"{param}: {message}" if param else message)
        self.param = param


# ---------------------------------------------------------------------------- audit


def audit(
    model: "nn.Module | LoadedModel",
    x: Any,
    y: Any,
    *,
    eps: float | str,
    norm: str = "linf",
    checks: str | Sequence[str] | None = None,
    n: int | None = None,
    device: "str | torch.device | None" = None,
    seed: int = 0,
    progress: bool = True,
    num_classes: int | None = None,
    name: str | None = None,
    eot: int | None = None,
    square_queries: int | None = None,
    apgd_iters: int | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    autoattack_standard: bool = False,
    bpda: str | None = None,
) -> "AuditResult":
    """Audit `model` for gradient masking on the points `x`, `y`; returns the typed `AuditResult`.

    model: a `torch.nn.Module` mapping x in [0, 1] to logits (batch, classes); normalisation
        belongs inside it (see `maskcheck.models.normalized`). A `LoadedModel` (from
        `maskcheck.checkpoint.load_model` or `load_robustbench`) keeps its provenance.
    x: float images in [0, 1], (N, C, H, W) (tensor or numpy array); y: int labels (N,).
    eps: budget in (0, 1] in the [0, 1] pixel scale, a float or text such as "8/255".
    norm: "linf" or "l2". checks: names (list or "a,b") of the checks to run; None = all.
    n: audit the first n points (None = all of them; more than len(x) audits all of them).
    device: where the audit runs; None = the model's device. The model goes back afterwards.
    seed: the audit's own seed; the same seed gives the same JSON (timestamps aside).
    num_classes: None = read from the model's output. name: the model's name in the report
        (default: its class name). eot: draws per gradient and prediction (None = automatic: 20 when
        the model is found randomised, else 1). square_queries, overrides: as `maskcheck audit`;
        apgd_iters (default 100, AutoAttack's) and square_queries (default 5000) trade
        strength for time: lower them only for quick tests, never for a number you report.
        autoattack_standard: True adds FAB-T for the AutoAttack-standard robust accuracy (off by default:
        no check uses it; it was about a third of a robust model's audit on CPU).
    bpda: 'surrogate' (the model's forward, a distilled surrogate's backward) or 'identity:<submodule
        path>' (that submodule's backward replaced by the identity), run as BPDA-PGD by the
        transfer-attack check; None = only the automatic BPDA when input gradients vanish.
    Raises `ArgumentError` (a `ValueError`) naming the bad parameter.
    """
    import torch

    module = _module_of(model)
    eps = _check_eps(eps)
    if norm not in NORMS:
        raise ArgumentError("norm", f"must be one of {', '.join(map(repr, NORMS))}; got {norm!r}.")
    x, y = _check_points(x, y)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ArgumentError("n", f"must be a positive number of points or None; got {n!r}.")
        x, y = x[:n], y[:n]
    names = _check_names(checks)
    _check_int("seed", seed, minimum=0)
    if eot is not None:
        _check_int("eot", eot, minimum=1)
    for param, value in (("square_queries", square_queries), ("apgd_iters", apgd_iters)):
        if value is not None:
            _check_int(param, value, minimum=1)
    for param, flag in (("progress", progress), ("autoattack_standard", autoattack_standard)):
        if not isinstance(flag, bool):
            raise ArgumentError(param, f"must be True or False; got {flag!r}.")
    if bpda is not None:
        from .config import parse_bpda

        try:
            parse_bpda(bpda)
        except InputError as exc:
            raise ArgumentError("bpda", str(exc)) from None
    dev = _resolve_device(device, module, x)
    with keep_caller_state(module, dev):
        k = _probe_classes(module, x, y, dev, num_classes)
        result = _run_engine(model, x, y, eps=eps, norm=norm, checks=names, seed=seed, device=dev, progress=progress,
                             num_classes=k, eot=eot, square_queries=square_queries, apgd_iters=apgd_iters,
                             overrides=overrides, autoattack_standard=autoattack_standard, bpda=bpda)
    if name is not None:
        result.model = {**result.model, "name": str(name)}
    return result


def audit_loader(model: "nn.Module | LoadedModel", loader: Iterable[Any], *, n: int | None = DEFAULT_N,
                 **kwargs: Any) -> "AuditResult":
    """`audit` on the first `n` points a loader yields (batches of (x, y, ...); None = all of them).

    The loader is iterated as usual, outside the audit's RNG guard: a shuffling loader draws
    from torch's global generator as it always does. Stops reading once `n` points are in.
    """
    import torch

    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise ArgumentError("n", f"must be a positive number of points or None; got {n!r}.")
    xs, ys, have = [], [], 0
    try:
        batches = iter(loader)
    except TypeError:
        raise ArgumentError("loader", f"must be iterable (a DataLoader or a list of (x, y) batches); got {type(loader).__name__}.") from None
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ArgumentError("loader", f"must yield (x, y) batches; got a {type(batch).__name__}.")
        xs.append(torch.as_tensor(batch[0]).detach().cpu())
        ys.append(torch.as_tensor(batch[1]).detach().cpu())
        have += len(ys[-1])
        if n is not None and have >= n:
            break
    if not xs:
        raise ArgumentError("loader", "yielded no batches.")
    return audit(model, torch.cat(xs), torch.cat(ys), n=n, **kwargs)


def _run_engine(model: "nn.Module | LoadedModel", x: "torch.Tensor", y: "torch.Tensor", *, eps: float, norm: str,
                checks: list[str] | None, seed: int, device: "torch.device", progress: bool, num_classes: int,
                eot: int | None, square_queries: int | None, apgd_iters: int | None,
                overrides: Mapping[str, Mapping[str, Any]] | None, autoattack_standard: bool,
                bpda: str | None = None) -> "AuditResult":
    """The integration point with the audit engine: the only call into `auditing.run_audit`."""
    from .auditing import run_audit
    from .report.notebook import AuditResult

    options = {k: v for k, v in (("square_queries", square_queries), ("apgd_iters", apgd_iters)) if v is not None}
    try:
        record = run_audit(model, (x, y), eps=eps, norm=norm, n=len(y), checks=checks, seed=seed, eot=eot, device=device,
                           progress=progress, overrides=overrides, num_classes=num_classes,
                           autoattack_standard=autoattack_standard, bpda=bpda, **options)
    except InputError as exc:
        if isinstance(exc, ValueError):
            raise
        raise ArgumentError(None, str(exc)) from None
    return AuditResult.of(record)


# ------------------------------------------------------------------- argument checks


def _module_of(model: Any) -> "nn.Module":
    import torch.nn as nn

    from .checkpoint import LoadedModel

    module = model.model if isinstance(model, LoadedModel) else model
    if not isinstance(module, nn.Module):
        raise ArgumentError("model", f"must be a torch.nn.Module (or a LoadedModel); got {type(model).__name__}. "
                                     "Wrap a function in an nn.Module.")
    return module


def _check_eps(eps: Any) -> float:
    from .config import parse_eps

    if isinstance(eps, bool) or not isinstance(eps, (int, float, str)):
        raise ArgumentError("eps", f"must be a number in (0, 1] such as 0.3 or 8/255; got {eps!r}.")
    try:
        return parse_eps(eps)
    except InputError:
        raise ArgumentError("eps", f"must lie in (0, 1] (pixel scale [0, 1]; e.g. 0.3 or 8/255); got {eps!r}.") from None


def _check_int(param: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArgumentError(param, f"must be an integer >= {minimum}; got {value!r}.")


def _check_names(checks: str | Sequence[str] | None) -> list[str] | None:
    from .checks import REGISTRY

    if checks is None:
        return None
    items = [c.strip() for c in checks.split(",")] if isinstance(checks, str) else list(checks)
    if not items or not all(isinstance(c, str) and c for c in items):
        raise ArgumentError("checks", f"must name at least one check; valid: {', '.join(REGISTRY)}.")
    unknown = [c for c in items if c not in REGISTRY]
    if unknown:
        raise ArgumentError("checks", f"unknown check(s) {', '.join(map(repr, unknown))}; valid: {', '.join(REGISTRY)}.")
    return items


def _check_points(x: Any, y: Any) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    try:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ArgumentError("x", f"x and y must be tensors or arrays ({exc}).") from None
    if not x.is_floating_point():
        raise ArgumentError("x", f"must be float images in [0, 1]; got dtype {x.dtype}. Divide uint8 pixels by 255.")
    if x.ndim < 2 or len(x) == 0:
        raise ArgumentError("x", f"must be a batch (N, C, H, W) of at least one image; got shape {tuple(x.shape)}.")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim != 1:
        raise ArgumentError("y", f"must be integer class labels of shape (N,); got dtype {y.dtype}, shape {tuple(y.shape)}.")
    if len(y) != len(x):
        raise ArgumentError("y", f"has {len(y)} labels for {len(x)} images in x.")
    if not torch.isfinite(x).all():
        raise ArgumentError("x", "contains NaN or Inf values; pass finite images in [0, 1].")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ArgumentError("x", f"must lie in [0, 1]; got min={lo:.3g}, max={hi:.3g}. Put normalisation inside the "
                                 "model (maskcheck.models.normalized(model, mean, std)).")
    return x, y.long()


def _resolve_device(device: Any, module: "nn.Module", x: "torch.Tensor") -> "torch.device":
    import torch

    if device is None:
        first = next(module.parameters(), None)
        if first is None:
            first = next(module.buffers(), None)
        return first.device if first is not None else x.device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ArgumentError("device", f"must be 'cpu', 'cuda', 'cuda:N' or a torch.device; got {device!r}.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError("device", f"{device!r} asks for CUDA but no GPU is visible; use 'cpu' or device=None.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ArgumentError("device", f"{device!r}: only {torch.cuda.device_count()} GPU(s) visible.")
    return dev


def _probe_classes(module: "nn.Module", x: "torch.Tensor", y: "torch.Tensor", dev: "torch.device",
                   num_classes: int | None) -> int:
    """Run the model once on a few points: its output must be finite logits (batch, classes)."""
    import torch

    module.to(dev).eval()  # inside keep_caller_state: mode and device go back afterwards
    try:
        with torch.no_grad():
            out = module(x[:8].to(dev).float())
    except Exception as exc:  # a foreign model may raise anything on inputs it was not built for
        raise ArgumentError("x", f"the model failed on x[:8] of shape {tuple(x[:8].shape)} "
                                 f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}).") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ArgumentError("model", f"must return logits of shape (batch, classes); got {getattr(out, 'shape', type(out).__name__)}.")
    k = out.shape[1]
    if num_classes is not None:
        _check_int("num_classes", num_classes, minimum=2)
        if num_classes != k:
            raise ArgumentError("num_classes", f"is {num_classes} but the model outputs {k} classes.")
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ArgumentError("y", f"labels must lie in 0..{k - 1} (the model has {k} classes); got {int(y.min())}..{int(y.max())}.")
    return k


# ------------------------------------------------------------------- caller's state


@contextmanager
def keep_caller_state(module: "nn.Module", device: "torch.device | None" = None) -> Iterator[None]:
    """Run a block and put back the model's mode, devices, requires_grad and .grad, and the global RNGs.

    The engine moves the model, switches it to eval, and seeds torch / numpy / random globally;
    attacks that call `backward()` (pyautoattack's FAB) would add to the caller's `.grad`. Each
    `.grad` is set aside (not copied) and put back, so nothing is accumulated into it.
    """
    import numpy as np
    import torch

    modes = [(m, m.training) for m in module.modules()]
    # torch.export's module() replaces train()/eval() with methods that raise; the engine calls
    # eval(), which recurses into every child. Until the block ends such a module just sets its
    # flags (its graph was captured in eval mode anyway).
    locked = [(m, m.__dict__["train"], m.__dict__.get("eval")) for m in module.modules() if "train" in m.__dict__]
    for m, _, _ in locked:
        m.train = types.MethodType(_set_training, m)
        m.eval = types.MethodType(lambda self: self.train(False), m)
    params = [(p, p.device, p.requires_grad, p.grad) for p in module.parameters()]
    buffers = [(m, name, b.device) for m in module.modules() for name, b in m._buffers.items() if b is not None]
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda_devices, lazy_seeds = _cuda_rng_devices(module, device)
    for p, *_ in params:
        p.grad = None
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        if lazy_seeds is not None:  # CUDA untouched: drop the seed the engine queued for its first use
            vars(torch.cuda._lazy_seed_tracker).update(lazy_seeds)
        for p, dev, requires_grad, grad in params:
            if p.device != dev:
                p.data = p.data.to(dev)
            p.requires_grad_(requires_grad)
            p.grad = grad
        for m, name, dev in buffers:
            b = dict(m._buffers.items()).get(name)  # a TorchScript module's _buffers has no .get
            if b is not None and b.device != dev:
                m._buffers[name] = b.to(dev)
        for m, train, eval_ in locked:
            m.train = train
            if eval_ is None:
                del m.eval
            else:
                m.eval = eval_
        for m, training in modes:
            m.training = training


def _set_training(self: "nn.Module", mode: bool = True) -> "nn.Module":
    for m in self.modules():
        m.training = mode
    return self


def _cuda_rng_devices(module: "nn.Module", device: "torch.device | None") -> tuple[list[int], dict | None]:
    """CUDA generators to fork; when CUDA is not initialised and the audit stays off it, instead the
    lazily queued seeds (torch defers `manual_seed` on CUDA until first use) to restore."""
    import torch

    if not torch.cuda.is_available():
        return [], None
    uses_cuda = (device is not None and device.type == "cuda") or any(p.is_cuda for p in module.parameters())
    if torch.cuda.is_initialized() or uses_cuda:
        return list(range(torch.cuda.device_count())), None
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    return [], (dict(vars(tracker)) if tracker is not None else None)


__all__ = ["ArgumentError", "audit", "audit_loader", "keep_caller_state"]
