"""Run the masking checks on a model: build the plan of attacks they declare, run it once, judge.

Each check declares the `AttackSpec`s it needs (`Check.needs`); the audit takes their union,
runs it cheap-to-expensive (each attack only on the points still standing after the runs it
follows, as AutoAttack does) and hands every check the same `AuditContext`, from which it reads
per-example outcomes by spec. The standard battery (`attacks.Battery`):

    clean -> PGD-CE and PGD-margin (own, 20 steps, loss recorded) -> FGSM
          -> APGD-CE on PGD-CE's survivors; untargeted APGD-DLR on PGD-margin's (same iterations)
          -> APGD-T (targeted DLR, 9 targets) on APGD-CE's survivors -> FAB-T (when Square runs)
          -> Square (pyautoattack, 5000 queries) on PGD-CE's survivors
          -> random noise (foolbox) on the white-box survivors

A model found randomised (AutoAttack's rule) is attacked with EOT (20 draws unless `--eot`
says otherwise) and every outcome is scored by majority over the draws. `run_audit` then
builds the `AuditResult` (robust accuracies per ARCHITECTURE.md, graded verdict, timings).
AMP is deliberately not used here: saturation checks need float32 logits and gradients.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import attacks
from .adaptive import validate_bpda
from .attacks import AttackEnv, AttackSpec, Battery
from .checkpoint import LoadedModel
from .checks import REGISTRY, make_check
from .config import (EOT_AUTO_DRAWS, AuditConfig, ThreatModel, generator_for, parse_name_list, provenance,
                     resolve_device, seed_everything)
from .data import Splits
from .errors import InputError
from .results import AuditResult, CheckResult, Verdict

DEFAULT_SQUARE_QUERIES = 5000  # AutoAttack standard (autoattack.py: SquareAttack n_queries=5000)
APGD_ITERS = 100  # AutoAttack standard, 1 restart for APGD-CE (autoattack.py _set_version)
GRADIENT_KINDS = ("pgd", "fgsm", "apgd", "apgd-t", "fab-t", "fmn")
OWN_KINDS = ("pgd", "fgsm", "fmn", "bpda")  # differentiate `attack_model` (EOT-wrapped); pyautoattack does its own EOT


@dataclass(frozen=True)
class Outcome:
    """Per-example result of one spec over all audited points (bool (n,), True = still correct,
    cumulative over the runs it followed) and, for recorded PGD, the loss per iteration over the
    points it attacked (columns in the order of `attacked`)."""

    correct: torch.Tensor
    attacked: torch.Tensor
    history: torch.Tensor | None = None

    @property
    def acc(self) -> float:
        return float(self.correct.float().mean())


class AuditContext:
    """The model, the audited points, the probes and every attack outcome, each computed once.

    Checks read it (`correct(spec)`, `outcome(spec)`, `clean_logits`, `randomness`, ...) and
    never change it. Tensors of outcomes live on the CPU over all `n` audited points.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, num_classes: int, config: AuditConfig,
                 progress: bool) -> None:
        self.model, self.x, self.y, self.config = model, x, y, config
        self.device = x.device
        self.num_classes, self.progress = num_classes, progress
        self.eps, self.norm, self.seed = config.threat.eps, config.threat.norm, config.seed
        self.square_queries, self.batch_size = config.square_queries, config.batch_size
        self.battery = Battery.standard(config.apgd_iters)
        self.n = len(y)
        self.timings: dict[str, float] = {}
        self.outcomes: dict[AttackSpec, Outcome] = {}

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

    def standing(self, correct: torch.Tensor) -> torch.Tensor:
        return correct.nonzero().flatten()

    # ------------------------------------------------------------------ probes
    @cached_property
    def randomness(self) -> dict[str, Any]:
        """AutoAttack's randomness rule (checks.check_randomized): 5 no-grad passes on the first 250
        points; random when the number correct changes or L2-normalised outputs differ by > 1e-4."""
        x, y = self.x[:250], self.y[:250]
        with torch.no_grad():
            outs = [self.model(x).float() for _ in range(5)]
        correct = [int((o.argmax(1) == y).sum()) for o in outs]
        normed = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outs]
        diff = max((float((a - b).norm(dim=1).max()) for i, a in enumerate(normed) for b in normed[i + 1:]), default=0.0)
        return {"correct_per_pass": correct, "max_normalized_output_diff": diff,
                "randomized": len(set(correct)) > 1 or diff > 1e-4, "first_output": outs[0]}

    @cached_property
    def predicts_one_class(self) -> bool:
        """True when the model predicts the same class for every audited point although the points
        hold several classes: a collapsed or dead network (the calibration suite's PGD-AT seeds on
        digits and MNIST). Its accuracy is that class's share, and an attack cannot lower it where
        the class wins on every input, so unbroken points and zero gradients are the function's own,
        not masking; there is no robustness claim to be illusory (ours)."""
        pred = self.clean_logits.argmax(1)
        return len(pred) > 1 and self.y.unique().numel() > 1 and pred.unique().numel() == 1

    @cached_property
    def eot(self) -> int:
        """Draws per gradient and per prediction: the configured number, else 20 on a randomised model."""
        if self.config.eot is not None:
            return self.config.eot
        return EOT_AUTO_DRAWS if self.randomness["randomized"] else 1

    @cached_property
    def attack_model(self) -> nn.Module:
        """The model own gradient attacks differentiate: EOT-averaged when eot > 1."""
        return attacks.EOT(self.model, self.eot).eval() if self.eot > 1 else self.model

    def score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Still correct at x: one forward, or the majority over `eot` draws (ties count as broken)."""
        with torch.no_grad():
            if self.eot == 1:
                return self.model(x).argmax(1) == y
            votes = sum((self.model(x).argmax(1) == y).int() for _ in range(self.eot))
            return 2 * votes > self.eot

    @cached_property
    def clean_logits(self) -> torch.Tensor:
        with self.timed("clean"):
            return attacks.predict(self.model, self.x, self.batch_size)

    @cached_property
    def clean_correct(self) -> torch.Tensor:
        if self.eot == 1:
            return self.clean_logits.argmax(1) == self.y.cpu()
        return torch.cat([self.score(self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]).cpu()
                          for i in range(0, self.n, self.batch_size)])

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

    # ------------------------------------------------------------------ attack outcomes
    @property
    def env(self) -> AttackEnv:
        return AttackEnv(self.eps, self.norm, self.num_classes, self.seed, self.eot, self.square_queries, self.device,
                         context=self)

    def prior(self, after: Sequence[AttackSpec]) -> torch.Tensor:
        """Points still correct after every run in `after` (clean-correct points when empty)."""
        c = self.clean_correct.clone()
        for spec in after:
            c &= self.correct(spec)
        return c

    def correct(self, spec: AttackSpec) -> torch.Tensor:
        return self.outcome(spec).correct

    def outcome(self, spec: AttackSpec, points: torch.Tensor | None = None) -> Outcome:
        """Run `spec` once (on the points standing after `spec.after`, or on `points`) and keep its outcome."""
        if points is None and spec in self.outcomes:
            return self.outcomes[spec]
        prior = self.prior(spec.after)
        idx = self.standing(prior) if points is None else points.cpu()
        if spec.max_points is not None:
            idx = idx[: spec.max_points]
        correct, histories = prior.clone(), []
        name = spec_name(spec, self.config.apgd_iters)
        if len(idx) and (self.grad_ok or spec.kind not in GRADIENT_KINDS):
            # a rescaled rerun draws from the same seed as the run it repeats
            gen, env = self.gen(spec_name(replace(spec, logit_scale=1.0))), self.env
            model = self.attack_model if spec.kind in OWN_KINDS else self.model
            with self.timed(name), self.bar(name, len(idx)) as bar:
                for i in range(0, len(idx), self.batch_size):
                    b = idx[i: i + self.batch_size]
                    xb, yb = self.x[b.to(self.device)], self.y[b.to(self.device)]
                    r = attacks.run_spec(spec, model, xb, yb, env, gen)
                    c = r.correct if self.eot == 1 or spec.kind == "noise" else self.score(r.x_adv, yb)
                    correct[b] = c.bool().cpu()
                    if r.loss_history is not None:
                        histories.append(r.loss_history.cpu())
                    bar.update(len(b))
        out = Outcome(correct, idx, torch.cat(histories, 1) if histories else None)
        if points is None:
            self.outcomes[spec] = out
        return out

    @property
    def white_box(self) -> torch.Tensor:
        """Per-example worst case over the battery's white-box attacks at the audit's eps."""
        return self.prior(self.battery.white_box)

    def run_plan(self, plan: Sequence[AttackSpec]) -> None:
        for spec in plan:
            self.outcome(spec)


def spec_name(spec: AttackSpec, apgd_iters: int = APGD_ITERS) -> str:
    """A readable, stable name: the robust_acc label when it has one; seeds derive from it."""
    if spec.label:
        return spec.label
    name = f"{spec.kind}-{spec.loss}" if spec.kind in ("pgd", "apgd") else spec.kind
    if spec.kind == "noise":
        name += f"-{spec.queries}"
    if spec.eps is not None:
        name += f"@{spec.eps:.6g}x{spec.steps}"
    elif spec.kind == "pgd" and spec.steps != attacks.PGD_STEPS:
        name += f"-x{spec.steps // attacks.PGD_STEPS}" if spec.steps % attacks.PGD_STEPS == 0 else f"-{spec.steps}"
    if spec.logit_scale != 1.0:
        name += f"*{spec.logit_scale:g}"
    return name


def build_plan(battery: Sequence[Any], cfg: AuditConfig, bat: Battery) -> list[AttackSpec]:
    """The union of what the checks need, with every prerequisite, ordered by depth then cost."""
    seen: dict[AttackSpec, None] = {}

    def add(spec: AttackSpec) -> None:
        for a in spec.after:
            add(a)
        seen.setdefault(spec, None)

    for check in battery:
        for spec in check.needs(cfg, bat):
            add(spec)
    if bat.square in seen and cfg.autoattack_standard:  # AutoAttack standard's battery is then one FAB-T away (robust_acc "autoattack-standard")
        add(bat.fab_t)
    return sorted(seen, key=lambda s: (s.depth, s.cost))


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
    """ARCHITECTURE.md keys over what ran: one per labelled attack, `white-box` (all white-box attacks),
    `worst-case` (every attack at the audit's eps), `autoattack-standard` (AutoAttack standard's four)."""
    ran = ctx.outcomes
    bat = ctx.battery
    at_eps = [s for s in ran if s.eps is None and s.logit_scale == 1.0]
    if not at_eps:
        return {}
    out: dict[str, float] = {}
    if all(s in ran for s in bat.white_box):
        out["white-box"] = float(ctx.white_box.float().mean())
    worst = ctx.prior(at_eps)
    out["worst-case"] = float(worst.float().mean())
    if all(s in ran for s in bat.autoattack_standard):
        out["autoattack-standard"] = float(ctx.prior(bat.autoattack_standard).float().mean())
    for s in at_eps:
        if s.label:
            out[s.label] = ran[s].acc
    order = ["pgd-ce", "white-box", "square", "worst-case"]
    return {**{k: out[k] for k in order if k in out}, **{k: v for k, v in out.items() if k not in order}}


def _points(splits_or_xy: Splits | tuple[torch.Tensor, torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(splits_or_xy, Splits):
        return splits_or_xy.heldout_tensors(n)
    x, y = splits_or_xy
    return x[:n], y[:n]


def audit_config(*, eps: float, norm: str = "linf", n: int = 1000, checks: str | Sequence[str] | None = None,
                 seed: int = 0, eot: int | None = None, square_queries: int = DEFAULT_SQUARE_QUERIES,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None, batch_size: int = 500,
                 apgd_iters: int = APGD_ITERS, autoattack_standard: bool = True, bpda: str | None = None) -> AuditConfig:
    """An AuditConfig from keywords (the names `run_audit` accepts), validated with one-line errors."""
    if norm not in ("linf", "l2"):
        raise InputError(f"--norm must be linf or l2; got {norm!r}.")
    names = None if checks is None else tuple(resolve_checks(checks))
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    unknown = [k for k in overrides if k not in REGISTRY]
    if unknown:
        raise InputError(f"overrides name unknown check(s) {', '.join(unknown)}; valid: {', '.join(REGISTRY)}.")
    return AuditConfig(ThreatModel(eps, norm), n=n, checks=names, seed=seed, eot=eot, square_queries=square_queries,
                       apgd_iters=apgd_iters, batch_size=batch_size, overrides=overrides,
                       autoattack_standard=autoattack_standard, bpda=bpda)


def run_audit(
    loaded_model: LoadedModel | nn.Module,
    splits_or_xy: Splits | tuple[torch.Tensor, torch.Tensor],
    config: AuditConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    num_classes: int | None = None,
    **settings: Any,
) -> AuditResult:
    """Audit a model for gradient masking on the first `config.n` held-out points.

    Pass an `AuditConfig`, or its settings as keywords (see `audit_config`: eps, norm, n, checks,
    seed, eot, square_queries, overrides, batch_size, apgd_iters), e.g.
    `run_audit(model, splits, eps=0.3, checks="logit-magnitude")`. `num_classes` is only needed
    for a bare `nn.Module` with (x, y) tensors. Raises `InputError` for bad input (one line, exit code 2).
    """
    if config is None:
        if "eps" not in settings:
            raise InputError("run_audit needs an AuditConfig or eps=...")
        config = audit_config(**settings)
    elif settings:
        raise InputError(f"pass either an AuditConfig or keyword settings, not both (got {', '.join(settings)}).")
    names = resolve_checks(config.checks)
    battery = [make_check(name, config.overrides.get(name)) for name in names]

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
    x, y = _points(splits_or_xy, config.n)
    model = model.to(dev).eval()
    x, y = x.to(dev).float(), y.to(dev).long()
    if dev.type == "cuda" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    _validate_inputs(model, x, y, k)
    validate_bpda(config.bpda, model)

    seed_everything(config.seed)
    t0 = time.perf_counter()
    ctx = AuditContext(model, x, y, num_classes=k, config=config, progress=progress)
    ctx.run = loaded_model.run if isinstance(loaded_model, LoadedModel) else None  # run.json, for training-phase-gap
    ctx.run_plan(build_plan(battery, config, ctx.battery))
    results = []
    for check in tqdm(battery, desc="checks", unit="check", disable=not progress, leave=False):
        c0 = time.perf_counter()
        res = check.run(ctx)
        results.append(CheckResult(**{**res.__dict__, "duration_s": round(time.perf_counter() - c0, 4)}))
    robust = _robust_acc(ctx)
    timings = {**{f"attack:{k}": round(v, 4) for k, v in ctx.timings.items()},
               **{f"check:{c.check}": c.duration_s for c in results}, "total": round(time.perf_counter() - t0, 4)}
    notes: tuple[str, ...] = ()
    if ctx.eot > 1:
        why = "the model is randomised" if ctx.randomness["randomized"] else "as asked"
        notes = (f"EOT over {ctx.eot} draws ({why}); correctness by majority over the draws",)
    if ctx.predicts_one_class:
        notes += (f"degenerate model: it predicts one class for all {ctx.n} points (a collapsed network); nothing to mask, "
                  "its accuracy is that class's share",)
    return AuditResult(
        model=meta, dataset=dataset, threat=config.threat.to_dict(), n=len(y),
        clean_acc=float(ctx.clean_correct.float().mean()), robust_acc=robust, checks=results,
        verdict=Verdict.from_checks(results, _headline(results), robust, notes), provenance=provenance(dev, config.seed),
        timings=timings, config=config.to_dict(),
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
