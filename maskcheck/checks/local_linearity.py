"""Does the input gradient describe the model it is the gradient of? (discontinuous, k-WTA-like models)"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from .. import attacks
from ..results import CheckResult, PlotData, Severity
from .base import Check, excess, finite_list, pp, register


@contextmanager
def _full_float32() -> Iterator[None]:
    """No TF32 while the check measures: on a GPU, TF32 convolutions and matmuls round at about 1e-3, which
    would read as roughness at the check's small radii (ours)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tie_free_start(x: torch.Tensor, eps: float, norm: str, r: float, gen: torch.Generator) -> torch.Tensor:
    """A random point of the eps-ball with no pixel at exactly 0 or 1 and no two pixels equal but by chance.

    The random start clamps about half of a black background back to exactly 0, where equal patches tie in
    max pooling and a step's kink sits at the point itself; a jitter as large as a step's coordinates (s)
    breaks the ties and keeps a step inside [0, 1]: the point moves by at most 4 s per pixel."""
    x0 = attacks.random_start(x, eps, norm, gen)
    s = r if norm == "linf" else r / x[0].numel() ** 0.5
    jitter = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
    return 2 * s + (1 - 4 * s) * x0 + s * jitter


@register
@dataclass(frozen=True)
class LocalLinearity(Check):
    """Flags when the input gradient does not predict the model's own change over steps far inside the
    eps-ball, on a significant share of the points, and the gradient attacks overstate the audit's worst case.

    At a random point x0 of the eps-ball, jittered off the data's exact ties (MNIST's many pixels at
    exactly 0 put max-pooling kinks at the point itself, which alone made 5-14% of a sound model's points
    rough), the margin loss m is compared with its first-order prediction along `directions` random
    steps d of size r: error = mean|m(x0+d) - m(x0) - g.d| / (mean|m(x0+d) - m(x0)| + mean|g.d|), 0 for a
    locally linear model, near 1 when the change is unrelated to the gradient. A point is rough when the
    error exceeds `rough_error` at both radii (eps/100 and eps/20): the smaller keeps a smooth model's
    curvature out, the larger keeps the rounding noise of a low-precision forward out. Rough points alone
    are a WARN; with PGD-CE at least `fail_gap` above the audit's worst case (white-box battery and
    Square), a FAIL. Skipped on randomised models (the randomness checks grade them). Thresholds are ours,
    calibrated on the zoo (digits, seeds 0-1, 300 points): k-WTA 96-98% rough, TRADES, PGD-AT and a
    flat-softmax natural model 0% (MNIST TRADES and flat natural 0% too).
    Why: k-winners-take-all and other piecewise-continuous defenses have non-zero gradients of the current
    linear piece that say nothing about the function a step away, so PGD stalls while smoothed or
    transferred gradients break them.
    Reference: Xiao et al. 2020 (k-WTA); Tramer et al. 2020, "On Adaptive Attacks to Adversarial Example
    Defenses" (k-WTA broken by averaging gradients over small noise); Pintor et al. 2022 (IoAF "unstable
    predictions", the same instability measured through the loss).
    """

    radii: tuple[float, ...] = (0.01, 0.05)  # step sizes as fractions of eps (ours)
    directions: int = 8
    rough_error: float = 0.5  # ours: sound zoo models stay below 0.25 on 99% of points at eps/20
    null_rate: float = 0.01  # ours: a tolerated share of rough points on a sound model
    min_gap: float = 0.05
    fail_gap: float = 0.05  # ours: the zoo's masking effect size (zoo.MASKING_MIN_GAP)
    alpha: float = 0.01

    name = "local-linearity"
    order = 75
    mechanism = "discontinuous model (gradients do not predict local change)"
    remedy = "attack with gradients averaged over small noise (EOT-style smoothing) or by transfer; quote the worst case"
    needs_gradients = True
    skips_one_class_models = True

    def needs(self, cfg, bat):
        return (bat.pgd_ce, *bat.white_box, bat.square)

    def evaluate(self, ctx) -> CheckResult:
        if ctx.randomness["randomized"] or ctx.randomness["randomized_grad"]:
            return self.skipped(ctx, "the model is randomised: its change between two forwards is not a property of "
                                     "its gradient (see randomness and the EOT attacks)")
        gen = ctx.gen(self.name)
        with ctx.timed("local linearity"), _full_float32():
            errors = torch.stack([self._errors(ctx, r * ctx.eps, gen) for r in self.radii])  # (radii, n)
        rough = (errors > self.rough_error).all(0)
        test = excess(int(rough.sum()), ctx.n, self.null_rate, rough.nonzero().flatten().tolist()[:50])
        bat = ctx.battery
        gradient, worst = ctx.prior((bat.pgd_ce,)), ctx.white_box & ctx.correct(bat.square)
        attack_gap = float(gradient.float().mean() - worst.float().mean())
        ev = {"rough_fraction": test.gap, "p_value": test.p_value, "examples": test.examples, "attack_gap": attack_gap,
              **{f"median_error_r{r:g}eps": float(e.median()) for r, e in zip(self.radii, errors)}}
        plot = PlotData("histogram", "Linearization error of the margin at x0 + d (0 = the gradient predicts the change)",
                        {f"r = {r:g} eps": finite_list(e) for r, e in zip(self.radii, errors)},
                        xlabel="error", ylabel="points")
        if not test.significant(self.min_gap, self.alpha):
            return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=(
                f"the gradient predicts the model's local change: {pp(test.gap)} of points rough, within chance "
                f"(p={test.p_value:.2g})."))
        found = (f"on {pp(test.gap)} of points the gradient does not predict the model's change a step of eps/100 "
                 f"or eps/20 away (p={test.p_value:.2g})")
        if attack_gap >= self.fail_gap:
            ev["headline"] = f"gradients do not describe the model on {pp(test.gap)} of points; PGD-CE {pp(attack_gap)} above the worst case"
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], summary=(
                f"{found}, and PGD-CE overstates the worst case by {pp(attack_gap)}: a discontinuous model whose "
                f"gradients mislead; {self.remedy}."))
        return self.result(ctx, severity=Severity.WARN, evidence=ev, plots=[plot], mechanism=self.mechanism, summary=(
            f"{found}; the attacks agree here ({pp(attack_gap)} apart), but gradient attacks may miss points on such "
            "a model: quote the worst case."))

    def _errors(self, ctx, r: float, gen: torch.Generator) -> torch.Tensor:
        """Per point: the linearization error of the margin loss at a tie-free x0 over steps of size r."""
        out = []
        for i in range(0, ctx.n, ctx.batch_size):
            x, y = ctx.x[i : i + ctx.batch_size], ctx.y[i : i + ctx.batch_size]
            x0 = tie_free_start(x, ctx.eps, ctx.norm, r, gen)
            m0, g = attacks.input_grad(ctx.model, x0, y, attacks.margin_loss)
            change, predicted = [], []
            for _ in range(self.directions):
                # a random step of size r (attacks' own step of a Gaussian draw: random signs, or an L2 direction)
                step = attacks._step(torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype), r, ctx.norm)
                d = (x0 + step).clamp(0.0, 1.0) - x0  # the step taken, inside the box
                with torch.enable_grad():  # the forward the gradient is of (a model may switch on grad mode)
                    m = attacks.margin_loss(ctx.model(x0 + d), y).detach()
                change.append(m - m0)
                predicted.append((g * d).flatten(1).sum(1))
            a, p = torch.stack(change), torch.stack(predicted)
            scale = a.abs().mean(0) + p.abs().mean(0)  # 0 only where the margin neither moves nor is predicted to
            err = torch.where(scale > 0, (a - p).abs().mean(0) / scale.clamp_min(1e-30), torch.zeros_like(scale))
            out.append(err.float().cpu())
        return torch.cat(out)
