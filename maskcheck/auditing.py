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

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import attacks
from .adaptive import validate_bpda
from .attacks import AttackEnv, AttackSpec, Battery
from .checkpoint import LoadedModel
from .checks import REGISTRY, make_check
from .config import (DEFAULT_APGD_ITERS, DEFAULT_N, DEFAULT_SQUARE_QUERIES, EOT_AUTO_DRAWS, AuditConfig, ThreatModel,
                     derived_seed, generator_for, parse_name_list, provenance, resolve_device, seed_everything)
from .data import Splits
from .errors import InputError
from .results import AuditResult, CheckResult, Verdict

RANDOMNESS_PROBE_POINTS, RANDOMNESS_PROBE_PASSES, RANDOMNESS_TOL = 250, 5, 1e-4  # AutoAttack checks.check_randomized
MAX_PLAN_PHASES = 3  # needs, then follow-ups of what ran, then follow-ups of those (ours)


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


def _normalized_diff(outs: Sequence[torch.Tensor]) -> float:
    """AutoAttack's randomness measure: the largest L2 distance between L2-normalised outputs of two passes."""
    normed = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outs]
    return max((float((a - b).norm(dim=1).max()) for i, a in enumerate(normed) for b in normed[i + 1:]), default=0.0)


def degenerate_reason(pred: torch.Tensor, y: torch.Tensor) -> str | None:
    """Why a model's predictions over the audited points make an audit inconclusive (None: they do not).

    One predicted class over points of several classes, or two over points of five or more
    (ours): a collapsed or nearly collapsed network. Its accuracy is those classes' share and
    an attack cannot lower it where they win everywhere, so unbroken points and zero gradients
    are the function's own, not masking, and there is no robustness claim to be illusory.
    """
    k_pred, k_true = int(pred.unique().numel()), int(y.unique().numel())
    if len(pred) > 1 and (k_pred == 1 < k_true or k_pred == 2 and k_true >= 5):
        return (f"degenerate model: it predicts {k_pred} class{'es' if k_pred > 1 else ''} for all {len(pred)} points "
                f"of {k_true} classes (a collapsed network); nothing to mask, its accuracy is those classes' share")
    return None


class AuditRunner:
    """Runs the plan: batching, timing, progress, EOT, and the one inference forward that scores everything.

    It owns the outcomes; checks never see it (they get an `AuditContext`). Every accuracy of an
    audit, clean and robust, is scored by `score`: the model in eval mode under `torch.no_grad`,
    majority over `eot` draws on a randomised model. An attack's own verdict (PGD's, taken from a
    forward with gradients enabled) is never used, so a model that behaves differently when
    differentiated is judged by what it predicts (issue 22: TRADES with noise only under grad).
    Tensors of outcomes live on the CPU over all `n` audited points.
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
        self.context: Any = None  # the checks' read-only view (AuditContext), set when it is made

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

    # ------------------------------------------------------------------ probes
    @cached_property
    def randomness(self) -> dict[str, Any]:
        """AutoAttack's randomness rule (checks.check_randomized): 5 no-grad passes on the first 250
        points; random when the number correct changes or L2-normalised outputs differ by > 1e-4.

        The same 5 passes again with gradients enabled (the forward every gradient attack sees): a
        model random only there (`randomized_grad`) gets EOT too, and a gradient-mode forward that
        differs from the inference one beyond the same tolerance (`grad_mismatch`) is reported.
        """
        x, y = self.x[:RANDOMNESS_PROBE_POINTS], self.y[:RANDOMNESS_PROBE_POINTS]
        with torch.no_grad():
            outs = [self.model(x).float() for _ in range(RANDOMNESS_PROBE_PASSES)]
        try:
            with torch.enable_grad():
                xg = x.detach().clone().requires_grad_(True)
                grad_outs = [self.model(xg).float().detach() for _ in range(RANDOMNESS_PROBE_PASSES)]
        except RuntimeError:  # a forward that cannot run on a tensor requiring grad: gradient-health reports it
            grad_outs = outs[:1]
        correct = [int((o.argmax(1) == y).sum()) for o in outs]
        correct_grad = [int((o.argmax(1) == y).sum()) for o in grad_outs]
        diff, diff_grad = _normalized_diff(outs), _normalized_diff(grad_outs)
        randomized = len(set(correct)) > 1 or diff > RANDOMNESS_TOL
        randomized_grad = len(set(correct_grad)) > 1 or diff_grad > RANDOMNESS_TOL
        mismatch = _normalized_diff([outs[0], grad_outs[0]])
        return {"correct_per_pass": correct, "max_normalized_output_diff": diff, "randomized": randomized,
                "correct_per_grad_pass": correct_grad, "max_normalized_output_diff_grad": diff_grad,
                "randomized_grad": randomized_grad, "inference_grad_output_diff": mismatch,
                "grad_mismatch": not randomized and not randomized_grad and mismatch > RANDOMNESS_TOL,
                "first_output": outs[0]}

    @cached_property
    def eot(self) -> int:
        """Draws per gradient and per prediction: the configured number, else 20 on a model random in
        either forward (inference or gradient mode)."""
        if self.config.eot is not None:
            return self.config.eot
        probe = self.randomness
        return EOT_AUTO_DRAWS if probe["randomized"] or probe["randomized_grad"] else 1

    def attack_model(self, draws: int | None = None) -> nn.Module:
        """The model own gradient attacks differentiate: EOT-averaged over `draws` (default `eot`) when > 1."""
        k = self.eot if draws is None else draws
        return attacks.EOT(self.model, k).eval() if k > 1 else self.model

    def score(self, x: torch.Tensor, y: torch.Tensor, draws: int | None = None) -> torch.Tensor:
        """Still correct at x by the inference forward (eval mode, no gradients): one forward, or the
        majority over `draws` (default `eot`) draws (ties count as broken)."""
        k = self.eot if draws is None else draws
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                if k == 1:
                    return self.model(x).argmax(1) == y
                votes = sum((self.model(x).argmax(1) == y).int() for _ in range(k))
                return 2 * votes > k
        finally:
            self.model.train(was_training)

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
    def degenerate(self) -> str | None:
        """`degenerate_reason` over the clean predictions (None for a model with a real spread of classes)."""
        return degenerate_reason(self.clean_logits.argmax(1), self.y.cpu())

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
    def env(self, draws: int) -> AttackEnv:
        """The attack's environment: `draws` per gradient; its result is scored by max(draws, the audit's EOT) draws."""
        return AttackEnv(self.eps, self.norm, self.num_classes, self.seed, draws, self.square_queries, self.device,
                         context=self.context, scored_draws=max(draws, self.eot))

    def prior(self, after: Sequence[AttackSpec]) -> torch.Tensor:
        """Points still correct after every run in `after` (clean-correct points when empty)."""
        c = self.clean_correct.clone()
        for spec in after:
            c &= self.outcomes[spec].correct
        return c

    def run(self, spec: AttackSpec) -> Outcome:
        """Run `spec` once (on the points standing after `spec.after`, or on `spec.points`) and keep its outcome."""
        if spec in self.outcomes:
            return self.outcomes[spec]
        for a in spec.after:
            self.run(a)
        prior = self.prior(spec.after)
        idx = self.standing(prior) if spec.points is None else torch.tensor(spec.points, dtype=torch.long)
        if spec.max_points is not None:
            idx = idx[: spec.max_points]
        correct, histories = prior.clone(), []
        name = spec_name(spec, self.config.apgd_iters)
        adapter = attacks.ADAPTERS[spec.kind]
        if len(idx) and (self.grad_ok or not adapter.uses_gradients):
            draws = spec.eot or self.eot
            # a rescaled or restricted rerun draws from the same seed as the run it repeats
            # (and an EOT rerun with more draws from the same seed: a paired comparison)
            gen = self.gen(spec_name(replace(spec, logit_scale=1.0, points=None, eot=None)))
            env = self.env(draws)
            model = self.model if adapter.own_eot else self.attack_model(draws)
            bs = max(1, self.batch_size * self.eot // draws)  # more draws, smaller batches: the same memory
            with self.timed(name), self.bar(name, len(idx)) as bar:
                for i in range(0, len(idx), bs):
                    b = idx[i: i + bs]
                    xb, yb = self.x[b.to(self.device)], self.y[b.to(self.device)]
                    r = attacks.run_spec(spec, model, xb, yb, env, gen)
                    # scored by at least the audit's draws: a single-draw attack on a randomised model is
                    # still judged by the majority vote every other attack is judged by
                    c = self.score(r.x_adv, yb, env.scored_draws) if adapter.rescored else r.correct
                    correct[b] = c.bool().cpu()
                    if r.loss_history is not None:
                        histories.append(r.loss_history.cpu())
                    bar.update(len(b))
        out = Outcome(correct, idx, torch.cat(histories, 1) if histories else None)
        self.outcomes[spec] = out
        return out

    @staticmethod
    def standing(correct: torch.Tensor) -> torch.Tensor:
        return correct.nonzero().flatten()

    def run_plan(self, plan: Sequence[AttackSpec]) -> None:
        for spec in plan:
            self.run(spec)


class AuditContext:
    """What a check sees: the model, the audited points, the probes and the outcomes of the attacks
    it declared (`Check.needs`, `Check.follow_up`), read-only.

    Reading an outcome the check did not declare is an error: every attack an audit runs is in
    its plan. `run` is the model's run.json (training-phase-gap reads its history), or None.
    """

    def __init__(self, runner: AuditRunner, run: Mapping[str, Any] | None = None) -> None:
        self._runner = runner
        self.run = run
        runner.context = self  # adaptive attacks read the view through AttackEnv.context (their surrogate is cached on it)

    # the audit's settings and points
    model = property(lambda self: self._runner.model)
    x = property(lambda self: self._runner.x)
    y = property(lambda self: self._runner.y)
    n = property(lambda self: self._runner.n)
    config = property(lambda self: self._runner.config)
    eps = property(lambda self: self._runner.eps)
    norm = property(lambda self: self._runner.norm)
    seed = property(lambda self: self._runner.seed)
    num_classes = property(lambda self: self._runner.num_classes)
    batch_size = property(lambda self: self._runner.batch_size)
    device = property(lambda self: self._runner.device)
    battery = property(lambda self: self._runner.battery)
    square_queries = property(lambda self: self._runner.square_queries)
    # the probes
    randomness = property(lambda self: self._runner.randomness)
    eot = property(lambda self: self._runner.eot)
    clean_logits = property(lambda self: self._runner.clean_logits)
    clean_correct = property(lambda self: self._runner.clean_correct)
    gradient_error = property(lambda self: self._runner.gradient_error)
    grad_ok = property(lambda self: self._runner.grad_ok)
    degenerate = property(lambda self: self._runner.degenerate)

    @property
    def predicts_one_class(self) -> bool:
        """Kept for checks written before `degenerate`: True when the model is degenerate (one or two classes)."""
        return self.degenerate is not None

    @property
    def attack_model(self) -> nn.Module:
        """The model gradient probes differentiate: EOT-averaged over the audit's draws when > 1."""
        return self._runner.attack_model()

    def timed(self, name: str) -> Any:
        """Time a check's own computation (e.g. gradient-health's gradients) under `name` in the timings."""
        return self._runner.timed(name)

    def gen(self, name: str) -> torch.Generator:
        return self._runner.gen(name)

    def has(self, spec: AttackSpec) -> bool:
        return spec in self._runner.outcomes

    def outcome(self, spec: AttackSpec) -> Outcome:
        try:
            return self._runner.outcomes[spec]
        except KeyError:
            raise RuntimeError(f"attack {spec_name(spec)} did not run: declare it in the check's needs() or "
                               "follow_up()") from None

    def correct(self, spec: AttackSpec) -> torch.Tensor:
        return self.outcome(spec).correct

    def prior(self, after: Sequence[AttackSpec]) -> torch.Tensor:
        """Points still correct after every run in `after` (clean-correct points when empty)."""
        c = self.clean_correct.clone()
        for spec in after:
            c &= self.correct(spec)
        return c

    @property
    def white_box(self) -> torch.Tensor:
        """Per-example worst case over the battery's white-box attacks at the audit's eps."""
        return self.prior(self.battery.white_box)


def spec_name(spec: AttackSpec, apgd_iters: int = DEFAULT_APGD_ITERS) -> str:
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
    if spec.eot is not None:
        name += f"-eot{spec.eot}"
    return name


def build_plan(battery: Sequence[Any], cfg: AuditConfig, bat: Battery) -> list[AttackSpec]:
    """The union of what the checks need, with every prerequisite, ordered by depth then cost."""
    plan = order_plan(spec for check in battery for spec in check.needs(cfg, bat))
    if bat.square in plan and cfg.autoattack_standard:  # AutoAttack standard's battery is then one FAB-T away (robust_acc "autoattack-standard")
        plan = order_plan([*plan, bat.fab_t])
    return plan


def order_plan(specs: Iterable[AttackSpec]) -> list[AttackSpec]:
    """Specs with every prerequisite, each once, ordered by depth then cost (cheap first, as AutoAttack)."""
    seen: dict[AttackSpec, None] = {}

    def add(spec: AttackSpec) -> None:
        for a in spec.after:
            add(a)
        seen.setdefault(spec, None)

    for spec in specs:
        add(spec)
    return sorted(seen, key=lambda s: (s.depth, s.cost))


def run_follow_ups(checks: Sequence[Any], runner: AuditRunner, ctx: "AuditContext") -> None:
    """The later planning phases: attacks the checks declare from what already ran (`Check.follow_ups`),
    run until no check asks for anything new (at most `MAX_PLAN_PHASES` - 1 rounds)."""
    for _ in range(MAX_PLAN_PHASES - 1):
        new = [s for c in checks for s in c.follow_ups(ctx) if s not in runner.outcomes]
        if not new:
            return
        runner.run_plan(order_plan(new))


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


def _robust_acc(runner: AuditRunner) -> dict[str, float]:
    """ARCHITECTURE.md keys over what ran: one per labelled attack, `white-box` (all white-box attacks),
    `worst-case` (every attack at the audit's eps, whichever check or phase declared it: the number
    to quote), `autoattack-standard` (AutoAttack standard's four)."""
    ran = runner.outcomes
    bat = runner.battery
    at_eps = [s for s in ran if s.eps is None and s.logit_scale == 1.0]
    if not at_eps:
        return {}
    out: dict[str, float] = {}
    if all(s in ran for s in bat.white_box):
        out["white-box"] = float(runner.prior(bat.white_box).float().mean())
    worst = runner.prior(at_eps)
    out["worst-case"] = float(worst.float().mean())
    if all(s in ran for s in bat.autoattack_standard):
        out["autoattack-standard"] = float(runner.prior(bat.autoattack_standard).float().mean())
    for s in at_eps:
        if s.label:
            out[s.label] = ran[s].acc
    order = ["pgd-ce", "white-box", "square", "worst-case"]
    return {**{k: out[k] for k in order if k in out}, **{k: v for k, v in out.items() if k not in order}}


POINTS_SAMPLE = "seeded random sample"


def audit_points(splits_or_xy: Splits | tuple[torch.Tensor, torch.Tensor], n: int,
            seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The audited points and how they were chosen (audit.json `points`).

    From a held-out split: a random sample of `n` points drawn with the audit's seed (sorted
    indices), so a model cannot behave specially on a fixed first n (issue 22); the whole split
    when n covers it. Points the caller passes are theirs: the first n, as given.
    """
    if isinstance(splits_or_xy, Splits):
        x, y = splits_or_xy.heldout_tensors()
        total = len(y)
        if n < total:
            g = torch.Generator().manual_seed(derived_seed(seed, "audit-points"))
            idx = torch.randperm(total, generator=g)[:n].sort().values
            x, y = x[idx], y[idx]
        else:
            idx = torch.arange(total)
        how = {"source": "heldout", "selection": POINTS_SAMPLE if n < total else "all", "seed": seed, "of": total}
    else:
        x, y = splits_or_xy
        total = len(y)
        idx = torch.arange(min(n, total))
        x, y = x[:n], y[:n]
        how = {"source": "given", "selection": "first n", "seed": None, "of": total}
    digest = hashlib.sha256(idx.numpy().astype("<i8").tobytes()).hexdigest()[:16]
    return x, y, {**how, "indices_sha256": digest, "indices": idx.tolist()}


def audit_config(*, eps: float, norm: str = "linf", n: int = DEFAULT_N, checks: str | Sequence[str] | None = None,
                 seed: int = 0, eot: int | None = None, square_queries: int = DEFAULT_SQUARE_QUERIES,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None, batch_size: int = 500,
                 apgd_iters: int = DEFAULT_APGD_ITERS, autoattack_standard: bool = False, bpda: str | None = None) -> AuditConfig:
    """An AuditConfig from keywords (the names `run_audit` accepts), validated with one-line errors."""
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
    """Audit a model for gradient masking on `config.n` held-out points (a sample seeded by `config.seed`).

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
    x, y, points = audit_points(splits_or_xy, config.n, config.seed)
    model = model.to(dev).eval()
    x, y = x.to(dev).float(), y.to(dev).long()
    if dev.type == "cuda" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    _validate_inputs(model, x, y, k)
    validate_bpda(config.bpda, model)

    seed_everything(config.seed)
    t0 = time.perf_counter()
    runner = AuditRunner(model, x, y, num_classes=k, config=config, progress=progress)
    ctx = AuditContext(runner, loaded_model.run if isinstance(loaded_model, LoadedModel) else None)
    runner.run_plan(build_plan(battery, config, runner.battery))
    run_follow_ups(battery, runner, ctx)
    results = []
    for check in tqdm(battery, desc="checks", unit="check", disable=not progress, leave=False):
        c0 = time.perf_counter()
        res = check.run(ctx)
        results.append(CheckResult(**{**res.__dict__, "duration_s": round(time.perf_counter() - c0, 4)}))
    robust = _robust_acc(runner)
    timings = {**{f"attack:{k}": round(v, 4) for k, v in runner.timings.items()},
               **{f"check:{c.check}": c.duration_s for c in results}, "total": round(time.perf_counter() - t0, 4)}
    notes: tuple[str, ...] = ()
    if runner.eot > 1:
        probe = runner.randomness
        why = ("the model is randomised" if probe["randomized"] else
               "the model is randomised when gradients are enabled" if probe["randomized_grad"] else "as asked")
        notes = (f"EOT over {runner.eot} draws ({why}); correctness by majority over the draws",)
    if runner.degenerate:
        notes += (runner.degenerate,)
    return AuditResult(
        model=meta, dataset=dataset, threat=config.threat.to_dict(), n=len(y),
        clean_acc=float(runner.clean_correct.float().mean()), robust_acc=robust, checks=results,
        verdict=Verdict.from_checks(results, _headline(results), robust, notes, inconclusive=runner.degenerate),
        provenance=provenance(dev, config.seed), timings=timings, config=config.to_dict(), points=points,
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
