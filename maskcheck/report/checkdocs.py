"""What each audit check means, shown beside its result in the report.

Written in AutoAttack's "Raised if / Explanation" style (flags_doc.md): when the check flags,
why that suggests gradient masking rather than real robustness, and where the idea comes from.
Sources and their exact wording: ../shared/reference/diagnostics.md. The exact thresholds a
check ran with are in its `params`, which the report prints next to this text, so none are
repeated here as facts about the run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckDoc:
    title: str
    flags_when: str
    why: str  # why a flag suggests masking rather than robustness
    reference: str


ATHALYE = "Athalye, Carlini & Wagner, Obfuscated Gradients Give a False Sense of Security, ICML 2018, Sec. 3.1"
CARLINI19 = "Carlini et al., On Evaluating Adversarial Robustness, arXiv 1902.06705 (2019)"
AUTOATTACK = "Croce & Hein, Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks, ICML 2020 (autoattack/checks.py, flags_doc.md)"
IOAF = "Pintor et al., Indicators of Attack Failure: Debugging and Improving Optimization of Adversarial Examples, NeurIPS 2022"

CHECK_DOCS: dict[str, CheckDoc] = {
    "one-step-vs-iterative": CheckDoc(
        "One-step vs iterative attack",
        "A single-step attack (FGSM) breaks examples that the iterative attack (PGD) with the same budget does not.",
        "An iterative attack takes many steps along the gradient and keeps the best point, so it should never do worse "
        "than one step. When it does, the local gradient does not point towards the adversarial region: gradients are "
        "shattered, saturated or noisy.",
        f"{ATHALYE} (behaviour 1); {CARLINI19} (iterative attacks must beat single-step ones).",
    ),
    "black-box-gap": CheckDoc(
        "Black-box vs white-box gap",
        "The black-box Square attack breaks examples that every white-box attack left standing, compared per example.",
        "A white-box attack sees the gradient and should be at least as strong as a query-only attack. If Square does "
        "better, the gradient is misleading the white-box attacks, not the model resisting them.",
        f"{ATHALYE} (behaviour 2); {CARLINI19} (compare per example); {AUTOATTACK} (check_square_sr).",
    ),
    "loss-disagreement": CheckDoc(
        "Cross-entropy vs margin/DLR loss disagreement",
        "Attacks on a scale-invariant loss (logit margin, DLR, targeted APGD-DLR) break examples that cross-entropy PGD does not.",
        "Cross-entropy goes through the softmax; with very large logits the softmax saturates and its gradient vanishes "
        "in float32, while margin losses act on the logits directly. The gap is the signature of saturated logits, as in "
        "defensive distillation.",
        "Carlini & Wagner, Defensive Distillation is Not Robust to Adversarial Examples, arXiv 1607.04311 (2016); "
        f"{AUTOATTACK} (DLR loss).",
    ),
    "unbounded-attack": CheckDoc(
        "Unbounded attack",
        "An attack with no perturbation budget (or the whole [0, 1] box) fails to break every correctly classified example.",
        "With unlimited distortion any input can be turned into any other, so success must reach 100%. Anything less "
        "means the attack is failing to optimise, not that the model resists.",
        f"{ATHALYE} (behaviour 3); {CARLINI19}; {IOAF} (unconstrained attack failure).",
    ),
    "random-sampling": CheckDoc(
        "Random sampling",
        "Random points drawn inside the eps-ball break examples that the white-box attacks did not.",
        "Random search uses no gradient. If it finds adversarial examples the gradient-based attacks missed, those "
        "attacks are being led astray by the gradient.",
        f"{ATHALYE} (behaviour 4); {CARLINI19} (brute-force random search, 10,000+ draws per example).",
    ),
    "distortion-sweep": CheckDoc(
        "Distortion sweep (accuracy vs eps)",
        "Accuracy does not fall as the budget eps grows, or stays well above chance at a budget large enough to erase the image.",
        "A larger budget contains every smaller one, so attack success can only grow with eps and must reach "
        "(near) 100% at large eps. A flat or rising curve means the attack, not the model, is the limit.",
        f"{ATHALYE} (behaviour 5); {CARLINI19} (accuracy-vs-eps must reach 100% success).",
    ),
    "gradient-health": CheckDoc(
        "Gradient health",
        "Input gradients of the loss are exactly zero, NaN or Inf for some examples (at the clean point or a random start).",
        "A zero or non-finite gradient gives a gradient attack no direction to move in, so it stops where it started. "
        "Typical causes: saturated softmax, non-differentiable preprocessing, detached graphs.",
        f"{AUTOATTACK} (check_zero_gradients); {IOAF} (unavailable gradients); ART loss_gradient_check (PR #376).",
    ),
    "logit-magnitude": CheckDoc(
        "Logit magnitude",
        "The top-1 logit margins are so large that float32 softmax rounds to exactly 1 (margin >= ~17) and the "
        "cross-entropy gradient underflows to 0 (margin >= ~88, ~104 with denormals).",
        "Huge logits do not make a model robust; they make the softmax flat in float32, so cross-entropy attacks "
        "get no gradient. Divide the logits by a temperature or attack the margin instead.",
        "Papernot et al., Distillation as a Defense, IEEE S&P 2016; Carlini & Wagner, arXiv 1607.04311 (2016); "
        "float32 limits computed in diagnostics.md (A5); advertorch issue #63.",
    ),
    "attack-convergence": CheckDoc(
        "Attack convergence",
        "The attack loss is still improving in its last steps, or doubling the number of steps changes the success rate.",
        "An attack that has not converged understates what a stronger run would find; the reported accuracy is then an "
        "artefact of the step budget.",
        f"{IOAF} (incomplete optimization: last 10 steps); {CARLINI19} (doubling the iterations must not change success).",
    ),
    "autoattack-flags": CheckDoc(
        "AutoAttack flags",
        "pyautoattack's own pre-checks fire: randomized outputs, probabilities instead of logits, zero gradients, "
        "Square beating the white-box attacks, or gradient computations inside the forward pass.",
        "Each of these makes the standard AutoAttack evaluation unreliable: it needs EOT, logits, an adaptive attack "
        "or a longer Square run.",
        f"{AUTOATTACK}; pyautoattack 0.2.0.",
    ),
    "training-phase-gap": CheckDoc(
        "Training-phase gap",
        "The training loop's own attack left >= 90% of training points correct in the last epoch, held-out PGD agreed, "
        "yet the audit's worst case is more than 30 pp lower (exact binomial test; thresholds ours).",
        "If the inner maximisation stops finding adversarial examples, adversarial training trains on clean points: "
        "the model looks robust to every gradient attack that shares the masked gradients and falls to stronger ones.",
        "Chen & Lee, LTD, arXiv 2111.02331, Sec. 5.2 (training-phase robust accuracy almost 100% at high T) and Table IV.",
    ),
}


def doc_for(check: str) -> CheckDoc | None:
    """The documentation of a check, or None for a check this version of the report does not know."""
    return CHECK_DOCS.get(check)
