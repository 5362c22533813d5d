"""Run the masking checks on a model, sharing attack runs between them.

Every attack runs at most once per audit and only on the points still standing, in batches
(no per-example Python loops):

    clean -> PGD-CE (own, 20 steps, loss recorded) and PGD-margin -> FGSM
          -> APGD-CE (pyautoattack, 100 it.) on PGD-CE's survivors
          -> APGD-T (targeted DLR, 9 targets) on APGD-CE's survivors (as AutoAttack does)
          -> Square (pyautoattack, 5000 queries) on PGD-CE's survivors (ARCHITECTURE.md)
          -> random noise (foolbox) on the white-box survivors

The checks in `maskcheck.checks` read these runs from the `AuditContext`; `run_audit` then
builds the `AuditResult` (robust accuracies per ARCHITECTURE.md, verdict, timings).
AMP is deliberately not used here: saturation checks need float32 logits and gradients.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import attacks
from .checkpoint import LoadedModel
from .checks import REGISTRY, make_check
from .config import check_eps, generator_for, parse_name_list, provenance, resolve_device, seed_everything, derived_seed
from .data import Splits
from .errors import InputError
from .results import AuditResult, CheckResult, Verdict

DEFAULT_SQUARE_QUERIES = 5000  # AutoAttack standard (autoattack.py: SquareAttack n_queries=5000)
APGD_ITERS = 100  # AutoAttack standard, 1 restart for APGD-CE (autoattack.py _set_version)
PGD_STEPS = 20
NOISE_TILE = 10  # noise draws per point per forward pass (fewer, larger batches for foolbox)

# pyautoattack logs its zero-gradient warning per batch; gradient-health reports it instead.
_AA_LOGGER = logging.getLogger("maskcheck.pyautoattack")
_AA_LOGGER.addHandler(logging.NullHandler())
_AA_LOGGER.propagate = False


class EOT(nn.Module):
    """Expectation over Transformation (Athalye et al. 2018): average the logits of K forward passes.

    Its gradient is the average over the K draws, as in foolbox's ExpectationOverTransformationWrapper.
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(x) for _ in range(self.k)]).mean(0)


class AuditContext:
    """The model, the audited points and every attack run, computed once on first use.

    `*_correct` tensors are bool (n,) on the CPU over all audited points: True = still
    classified correctly after that attack (points it did not need to attack keep their
    previous status).
    """

    def __init__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, num_classes: int, eps: float, norm: str,
        seed: int, eot: int, square_queries: int, progress: bool, batch_size: int = 500, apgd_iters: int = APGD_ITERS,
    ) -> None:
        self.model, self.x, self.y = model, x, y
        self.device = x.device
        self.num_classes, self.eps, self.norm, self.seed = num_classes, eps, norm, seed
        self.eot, self.square_queries, self.progress, self.batch_size = eot, square_queries, progress, batch_size
        self.n = len(y)
        self.apgd_iters = apgd_iters
        self.timings: dict[str, float] = {}
        self.ran: dict[str, torch.Tensor] = {}  # attack name -> correct (n,), for robust_acc

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def bar(self, desc: str, total: int) -> tqdm:
        return tqdm(total=total, desc=desc, unit="pt", leave=False, disable=not self.progress, dynamic_ncols=True)

    def gen(self, name: str) -> torch.Generator:
        return generator_for(self.seed, name, self.device)

    def on_points(
        self, name: str, idx: torch.Tensor, attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        prior: torch.Tensor,
    ) -> torch.Tensor:
        """Run `attack(x_batch, y_batch) -> correct_batch` on points `idx` in batches; others keep `prior`."""
        correct = prior.clone()
        idx = idx.cpu()
        if len(idx) == 0:  # nothing left standing: no attack, no progress bar
            return correct
        with self.timed(name), self.bar(name, len(idx)) as bar:
            for i in range(0, len(idx), self.batch_size):
                b = idx[i : i + self.batch_size]
                correct[b] = attack(self.x[b.to(self.device)], self.y[b.to(self.device)]).bool().cpu()
                bar.update(len(b))
        return correct

    def predict_correct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x).argmax(1) == y

    @cached_property
    def attack_model(self) -> nn.Module:
        """The model gradient attacks differentiate: EOT-averaged when --eot K > 1."""
        return EOT(self.model, self.eot) if self.eot > 1 else self.model

    # ------------------------------------------------------------------ clean
    @cached_property
    def clean_logits(self) -> torch.Tensor:
        with self.timed("clean"):
            return attacks.predict(self.model, self.x, self.batch_size)

    @cached_property
    def clean_correct(self) -> torch.Tensor:
        return self.clean_logits.argmax(1) == self.y.cpu()

    @cached_property
    def gradient_error(self) -> str | None:
        """None when the input has a gradient path; else the autograd error (a finding, not a crash)."""
        k = min(8, self.n)
        try:
            _, g = attacks.input_grad(self.model, self.x[:k], self.y[:k], attacks.ce_loss)
        except RuntimeError as exc:
            return str(exc).strip().splitlines()[0][:200]
        return None if g is not None else "no gradient returned"

    @property
    def grad_ok(self) -> bool:
        return self.gradient_error is None

    def standing(self, correct: torch.Tensor) -> torch.Tensor:
        return correct.nonzero().flatten()

    # ------------------------------------------------------------------ own PGD / FGSM
    def _pgd(self, name: str, loss: str, steps: int, prior: torch.Tensor, record: bool = True) -> dict[str, Any]:
        """Own PGD on the points standing in `prior`; keeps the loss history for the convergence check."""
        histories: list[torch.Tensor] = []
        gen = self.gen(name)

        def attack(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            r = attacks.pgd(self.attack_model, xb, yb, eps=self.eps, norm=self.norm, steps=steps, loss=loss,
                            generator=gen, record=record, stop_when_broken=True)
            if r.loss_history is not None:
                histories.append(r.loss_history.cpu())
            return r.correct

        if not self.grad_ok:
            return {"correct": prior.clone(), "history": None}
        correct = self.on_points(name, self.standing(prior), attack, prior)
        return {"correct": correct, "history": torch.cat(histories, 1) if histories else None}

    @cached_property
    def pgd_ce(self) -> dict[str, Any]:
        out = self._pgd("pgd-ce", "ce", PGD_STEPS, self.clean_correct)
        self.ran["pgd-ce"] = out["correct"]
        return out

    @cached_property
    def pgd_margin(self) -> dict[str, Any]:
        out = self._pgd("pgd-margin", "margin", PGD_STEPS, self.clean_correct)
        self.ran["pgd-margin"] = out["correct"]
        return out

    def pgd_doubled(self, loss: str) -> torch.Tensor:
        """PGD with twice the steps (C19 doubling test) on the white-box survivors: only a point no
        white-box attack broke can move the reported number."""
        name = f"pgd-{loss}-x2"
        if name not in self.ran:
            self.ran[name] = self._pgd(name, loss, 2 * PGD_STEPS, self.white_box, record=False)["correct"]
        return self.ran[name]

    @cached_property
    def fgsm(self) -> torch.Tensor:
        def attack(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return attacks.fgsm(self.attack_model, xb, yb, eps=self.eps, norm=self.norm).correct

        c = self.clean_correct.clone() if not self.grad_ok else self.on_points("fgsm", self.standing(self.clean_correct), attack, self.clean_correct)
        self.ran["fgsm"] = c
        return c

    def pgd_at(self, eps: float, loss: str = "margin", steps: int = PGD_STEPS) -> torch.Tensor:
        """PGD at another eps on all clean-correct points (distortion sweep, unbounded attack)."""
        key = f"pgd-{loss}@{eps:.6g}x{steps}"
        if key not in self.ran:
            if not self.grad_ok:
                self.ran[key] = self.clean_correct.clone()
            else:
                gen = self.gen(key)

                def attack(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
                    return attacks.pgd(self.attack_model, xb, yb, eps=eps, norm=self.norm, steps=steps, loss=loss, generator=gen,
                                       stop_when_broken=True).correct

                self.ran[key] = self.on_points(key, self.standing(self.clean_correct), attack, self.clean_correct)
        return self.ran[key]

    # ------------------------------------------------------------------ pyautoattack
    @property
    def aa_norm(self) -> str:
        return {"linf": "Linf", "l2": "L2"}[self.norm]

    @cached_property
    def apgd_ce(self) -> torch.Tensor:
        """APGD-CE on PGD-CE's survivors: the cumulative result of the two cross-entropy attacks."""
        from pyautoattack.autopgd_base import APGDAttack

        prior = self.pgd_ce["correct"]
        if not self.grad_ok:
            return prior.clone()
        apgd = APGDAttack(self.model, n_iter=self.apgd_iters, norm=self.aa_norm, n_restarts=1, eps=self.eps, loss="ce",
                          seed=derived_seed(self.seed, "apgd-ce"), eot_iter=self.eot, device=self.device,
                          logger=_AA_LOGGER)
        c = self.on_points("apgd-ce", self.standing(prior),
                           lambda xb, yb: self.predict_correct(apgd.perturb(xb, yb), yb), prior)
        self.ran["apgd-ce"] = c
        return c

    @cached_property
    def apgd_t(self) -> torch.Tensor:
        """Targeted APGD-DLR on APGD-CE's survivors, 9 target classes as in AutoAttack standard."""
        from pyautoattack.autopgd_base import APGDAttack_targeted

        prior = self.apgd_ce
        if not self.grad_ok or self.num_classes < 4:  # targeted DLR needs > 3 classes (checks.check_n_classes)
            return prior.clone()
        apgd = APGDAttack_targeted(self.model, n_iter=self.apgd_iters, norm=self.aa_norm, n_restarts=1, eps=self.eps,
                                   seed=derived_seed(self.seed, "apgd-t"), eot_iter=self.eot, device=self.device,
                                   n_target_classes=min(9, self.num_classes - 1), logger=_AA_LOGGER)
        c = self.on_points("apgd-t", self.standing(prior), lambda xb, yb: self.predict_correct(apgd.perturb(xb, yb), yb), prior)
        self.ran["apgd-t"] = c
        return c

    @cached_property
    def white_box(self) -> torch.Tensor:
        """Per-example worst case over every white-box attack at the audit's eps."""
        c = self.pgd_ce["correct"] & self.pgd_margin["correct"] & self.fgsm & self.apgd_ce & self.apgd_t
        return c

    @cached_property
    def ce_white_box(self) -> torch.Tensor:
        """The cross-entropy attacks most evaluations report: PGD-CE and APGD-CE."""
        return self.apgd_ce

    @cached_property
    def square(self) -> torch.Tensor:
        """Square (black-box) on the points PGD-CE did not break; per-example worst of the two."""
        from pyautoattack.square import SquareAttack

        prior = self.pgd_ce["correct"]
        sq = SquareAttack(self.model, norm=self.aa_norm, n_queries=self.square_queries, eps=self.eps, p_init=0.8,
                          n_restarts=1, seed=derived_seed(self.seed, "square"), device=self.device, resc_schedule=False)
        with torch.no_grad():
            c = self.on_points("square", self.standing(prior), lambda xb, yb: self.predict_correct(sq.perturb(xb, yb), yb), prior)
        self.ran["square"] = c
        return c

    def noise(self, repeats: int, max_points: int) -> torch.Tensor:
        """foolbox's repeated additive uniform noise on (at most `max_points` of) the white-box survivors."""
        import foolbox as fb

        key = f"noise-{repeats}"
        if key not in self.ran:
            prior = self.white_box
            idx = self.standing(prior)[:max_points]
            fmodel = fb.PyTorchModel(self.model, bounds=(0.0, 1.0), device=self.device)
            cls = fb.attacks.LinfRepeatedAdditiveUniformNoiseAttack if self.norm == "linf" else fb.attacks.L2RepeatedAdditiveUniformNoiseAttack
            tile = min(NOISE_TILE, repeats)
            attack = cls(repeats=math.ceil(repeats / tile), check_trivial=True)

            def run(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
                # each point is tiled `tile` times, so repeats/tile calls draw `repeats` samples per point
                seed_everything(derived_seed(self.seed, key))  # foolbox draws from torch's global RNG
                _, _, success = attack(fmodel, xb.repeat(tile, *[1] * (xb.ndim - 1)), yb.repeat(tile), epsilons=self.eps)
                return ~success.view(tile, -1).any(0)

            self.ran[key] = self.on_points("random-noise", idx, run, prior)
        return self.ran[key]


# ---------------------------------------------------------------------- validation


def _validate_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
    """Bad inputs are user errors with a one-line message, checked before any attack runs."""
    if not torch.isfinite(x).all():
        raise InputError("inputs contain NaN or Inf values. Pass finite images scaled to [0, 1].")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"inputs must lie in [0, 1]; got min={lo:.3g}, max={hi:.3g}. Put normalisation inside the model.")
    with torch.no_grad():
        out = model(x[: min(len(x), 64)])
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise InputError(f"the model must return logits of shape (batch, classes); got {getattr(out, 'shape', type(out).__name__)}.")
    if out.shape[1] != num_classes:
        raise InputError(f"the model outputs {out.shape[1]} classes but the dataset has {num_classes}. "
                         "Pass the --dataset the model was trained on.")
    if not torch.isfinite(out).all():
        raise InputError("the model returns NaN or Inf logits on clean inputs. Fix or re-export the model before auditing.")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(f"labels must lie in 0..{num_classes - 1}; got {int(y.min())}..{int(y.max())}.")


def resolve_checks(checks: str | Sequence[str] | None) -> list[str]:
    """All registered checks by default; else the named ones in battery order (unknown names are user errors)."""
    valid = list(REGISTRY)
    if checks is None:
        return valid
    text = checks if isinstance(checks, str) else ",".join(checks)
    chosen = set(parse_name_list(text, valid, "check"))
    return [name for name in valid if name in chosen]


# ---------------------------------------------------------------------- verdict


def _headline(results: list[CheckResult]) -> str:
    """The biggest attack gap any check measured, e.g. 'Square beats APGD-CE by 31 pp'."""
    gaps = [(c.evidence.get("gap", 0.0), c.evidence.get("headline")) for c in results if c.flagged and c.evidence.get("headline")]
    gaps = [g for g in gaps if g[0] and g[0] > 0]
    return max(gaps, key=lambda g: g[0])[1] if gaps else ""


def _robust_acc(ctx: AuditContext) -> dict[str, float]:
    """ARCHITECTURE.md keys (pgd-ce, white-box, square, worst-case) plus one per attack run."""
    def acc(c: torch.Tensor) -> float:
        return float(c.float().mean())

    per_attack = {k: acc(v) for k, v in ctx.ran.items() if "@" not in k and not k.endswith("-x2")}
    worst = ctx.white_box & ctx.square
    for k, v in ctx.ran.items():
        if k.startswith("noise") or k.endswith("-x2"):
            worst = worst & v
    return {
        "pgd-ce": acc(ctx.pgd_ce["correct"]), "white-box": acc(ctx.white_box), "square": acc(ctx.square),
        "worst-case": acc(worst), **{k: v for k, v in per_attack.items() if k not in ("pgd-ce", "square")},
    }


def _points(splits_or_xy: Splits | tuple[torch.Tensor, torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise InputError(f"--n must be a positive number of points; got {n!r}.")
    if isinstance(splits_or_xy, Splits):
        return splits_or_xy.heldout_tensors(n)
    x, y = splits_or_xy
    return x[:n], y[:n]


def run_audit(
    loaded_model: LoadedModel | nn.Module,
    splits_or_xy: Splits | tuple[torch.Tensor, torch.Tensor],
    *,
    eps: float,
    norm: str = "linf",
    n: int = 1000,
    checks: str | Sequence[str] | None = None,
    seed: int = 0,
    eot: int = 1,
    square_queries: int = DEFAULT_SQUARE_QUERIES,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    num_classes: int | None = None,
    batch_size: int = 500,
    apgd_iters: int = APGD_ITERS,
) -> AuditResult:
    """Audit a model for gradient masking on the first `n` held-out points.

    `apgd_iters` (AutoAttack standard: 100) may be lowered for quick tests.
    `overrides` maps a check name to threshold overrides, e.g.
    `{"logit-magnitude": {"saturation_margin": 1e9}}`. `num_classes` is only needed for a bare
    `nn.Module` with (x, y) tensors. Raises `InputError` for bad input (one line, exit code 2).
    """
    eps = check_eps(eps)
    if norm not in ("linf", "l2"):
        raise InputError(f"--norm must be linf or l2; got {norm!r}.")
    if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
        raise InputError(f"--eot must be a positive number of draws; got {eot!r}.")
    if not isinstance(square_queries, int) or square_queries < 1:
        raise InputError(f"--square-queries must be a positive integer; got {square_queries!r}.")
    names = resolve_checks(checks)
    overrides = dict(overrides or {})
    unknown = [k for k in overrides if k not in REGISTRY]
    if unknown:
        raise InputError(f"overrides name unknown check(s) {', '.join(unknown)}; valid: {', '.join(REGISTRY)}.")
    battery = [make_check(name, overrides.get(name)) for name in names]

    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    if isinstance(loaded_model, LoadedModel):
        model, k = loaded_model.model, loaded_model.info.num_classes
        meta = _model_meta(loaded_model)
        dataset = loaded_model.info.name
    else:
        model, k, meta, dataset = loaded_model, num_classes, {"name": type(loaded_model).__name__}, "custom"
    if isinstance(splits_or_xy, Splits):
        k = k or splits_or_xy.info.num_classes
        dataset = splits_or_xy.info.name
    if k is None:
        raise InputError("num_classes is required when auditing a bare module on (x, y) tensors.")
    x, y = _points(splits_or_xy, n)
    model = model.to(dev).eval()
    x, y = x.to(dev).float(), y.to(dev).long()
    if dev.type == "cuda" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    _validate_inputs(model, x, y, k)

    seed_everything(seed)
    t0 = time.perf_counter()
    ctx = AuditContext(model, x, y, num_classes=k, eps=eps, norm=norm, seed=seed, eot=eot,
                       square_queries=square_queries, progress=progress, batch_size=batch_size,
                       apgd_iters=apgd_iters)
    ctx.run = loaded_model.run if isinstance(loaded_model, LoadedModel) else None  # run.json, for training-phase-gap
    results = []
    for check in tqdm(battery, desc="checks", unit="check", disable=not progress, leave=False):
        c0 = time.perf_counter()
        res = check.evaluate(ctx)
        results.append(CheckResult(**{**res.__dict__, "duration_s": round(time.perf_counter() - c0, 4)}))
    robust = _robust_acc(ctx)
    timings = {**{f"attack:{k}": round(v, 4) for k, v in ctx.timings.items()},
               **{f"check:{c.check}": c.duration_s for c in results}, "total": round(time.perf_counter() - t0, 4)}
    return AuditResult(
        model=meta, dataset=dataset, threat={"eps": eps, "norm": norm}, n=len(y),
        clean_acc=float(ctx.clean_correct.float().mean()), robust_acc=robust, checks=results,
        verdict=Verdict.from_checks(results, _headline(results)), provenance=provenance(dev, seed), timings=timings,
    )


def _model_meta(loaded: LoadedModel) -> dict[str, Any]:
    run = loaded.run or {}
    temp = getattr(loaded.model, "temperature", None)
    return {
        "name": loaded.name, "path": loaded.extra.get("path"), "format": loaded.format, "method": run.get("method"),
        "temperature": run.get("temperature"),
        "model_temperature": run.get("model_temperature", float(temp) if isinstance(temp, torch.Tensor) else None),
        "arch": run.get("arch"),
    }


def default_out(model_path: str | Path) -> Path:
    """MODEL/audit.json for a run folder, else ./audit.json."""
    p = Path(model_path)
    return p / "audit.json" if p.is_dir() else Path("audit.json")



def run_threat(loaded: LoadedModel, eps: float | None = None, norm: str | None = None) -> tuple[float, str]:
    """The budget to audit with: given values first, then the run's own threat model, then the dataset's."""
    threat = (loaded.run or {}).get("threat") or {}
    return (float(threat.get("eps", loaded.info.default_eps)) if eps is None else eps,
            norm or threat.get("norm", "linf"))
