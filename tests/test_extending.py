"""ARCHITECTURE.md's "How to add" recipes, proven: a throwaway dataset, method, attack and check, each
written in a temporary package outside maskcheck/, join the CLI, the sweep plan, training, the audit,
its JSON and the generated docs with nothing in maskcheck/ edited (issue 25).

Each module below is what a contributor would put in maskcheck/<place>/<name>.py; here they register
themselves from a package in a temporary folder, and the registries are restored afterwards.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest

from maskcheck import docs
from maskcheck.attacks import ADAPTERS
from maskcheck.checks.base import REGISTRY
from maskcheck.cli import main
from maskcheck.data import DATASETS
from maskcheck.methods import METHODS
from maskcheck.training import DATASET_DEFAULTS

MODULES = {
    # a dataset: its DatasetInfo with a loader (data.py) and its training recipe (training.DATASET_DEFAULTS)
    "toy_dataset": '''
        import torch
        from torch.utils.data import TensorDataset

        from maskcheck.data import DATASETS, DatasetInfo, Splits, seeded_split
        from maskcheck.training import DATASET_DEFAULTS


        def load(info, data_dir, download):
            """Three classes of 8x8 images told apart by their brightness."""
            gen = torch.Generator().manual_seed(0)
            y = torch.arange(300) % 3
            x = (0.1 + 0.35 * y.view(-1, 1, 1, 1) + 0.1 * torch.rand(300, 1, 8, 8, generator=gen)).clamp(0, 1)
            train, heldout = seeded_split(len(y))
            return Splits(info, TensorDataset(x[train], y[train]), TensorDataset(x[heldout], y[heldout]), source="toy")


        DATASETS["toy-brightness"] = DatasetInfo("toy-brightness", 3, (1, 8, 8), (0.5,), (0.25,), 0.05, "small-cnn",
                                                 load=load)
        DATASET_DEFAULTS["toy-brightness"] = dict(DATASET_DEFAULTS["digits"], epochs=2, eval_n=30)
    ''',
    # a method: its file in methods/ and one line in METHODS
    "toy_method": '''
        from dataclasses import dataclass
        from typing import ClassVar

        import torch.nn.functional as F

        from maskcheck.methods import METHODS
        from maskcheck.methods.base import Method


        @dataclass
        class LabelSmoothing(Method):
            smoothing: float = 0.1

            name: ClassVar[str] = "label-smoothing"

            def objective(self, model, batch, ctx):
                logits = model(batch.x)
                return F.cross_entropy(logits.float(), batch.y, label_smoothing=self.smoothing), logits


        METHODS["label-smoothing"] = LabelSmoothing
    ''',
    # an attack: an adapter in attacks.py
    "toy_attack": '''
        import torch

        from maskcheck.attacks import AttackResult, adapter


        @adapter("toward-grey", uses_gradients=False, cost=lambda spec: 1.0)
        def toward_grey(spec, model, x, y, env, gen):
            """Move every pixel eps toward 0.5: a query-free attack (one forward)."""
            x_adv = (x + (spec.eps or env.eps) * torch.sign(0.5 - x)).clamp(0, 1)
            with torch.no_grad():
                return AttackResult(x_adv=x_adv, correct=model(x_adv).argmax(1) == y)
    ''',
    # a check: its file in checks/, registered, declaring the attack it reads
    "toy_check": '''
        from dataclasses import dataclass

        from maskcheck.attacks import AttackSpec
        from maskcheck.checks.base import Check, register
        from maskcheck.results import Severity

        GREY = AttackSpec("toward-grey", label="toward-grey", white_box=False)


        @register
        @dataclass(frozen=True)
        class GreyShift(Check):
            """Flags when moving every pixel toward grey breaks more than `max_broken` of the points.

            Why: a demonstration of the recipe, not a masking test. Reference: none (ours).
            """

            max_broken: float = 0.99

            name = "grey-shift"
            mechanism = "toy mechanism"
            remedy = "none"

            def needs(self, cfg, bat):
                return (GREY,)

            def evaluate(self, ctx):
                broken = 1.0 - float(ctx.correct(GREY).float().mean())
                severity = Severity.FAIL if broken > self.max_broken else Severity.OK
                return self.result(ctx, severity=severity, summary=f"{100 * broken:.0f}% broken toward grey.",
                                   evidence={"broken": broken})
    ''',
}


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """Import the four modules from a package in a temporary folder; undo every registration afterwards."""
    package = tmp_path / "toy_extension"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in MODULES.items():
        (package / f"{name}.py").write_text(textwrap.dedent(source))
    for registry, key in ((DATASETS, "toy-brightness"), (DATASET_DEFAULTS, "toy-brightness"),
                          (METHODS, "label-smoothing"), (ADAPTERS, "toward-grey"), (REGISTRY, "grey-shift")):
        monkeypatch.setitem(registry, key, None)  # removed again when the test ends
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in MODULES:
        importlib.import_module(f"toy_extension.{name}")
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("toy_extension")]:
        del sys.modules[name]


def _cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    return info.value.code or 0


def test_a_dataset_method_attack_and_check_added_outside_maskcheck_work_end_to_end(toy_package, tmp_path) -> None:
    from maskcheck.sweep import plan_base

    run = tmp_path / "run"
    assert _cli("train", "--method", "label-smoothing", "--dataset", "toy-brightness", "--out", str(run),
                "--no-progress", "--device", "cpu") == 0
    stored = json.loads((run / "run.json").read_text())
    assert stored["method"] == "label-smoothing" and stored["dataset"] == "toy-brightness"
    assert stored["metrics"]["clean_acc"] > 0.9  # brightness separates the classes

    out = tmp_path / "audit.json"
    assert _cli("audit", str(run), "--checks", "grey-shift", "--n", "40", "--out", str(out), "--quiet",
                "--device", "cpu") == 0
    audit = json.loads(out.read_text())
    assert [c["check"] for c in audit["checks"]] == ["grey-shift"] and audit["dataset"] == "toy-brightness"
    assert "toward-grey" in audit["robust_acc"] and audit["checks"][0]["doc"].startswith("Flags when moving")

    # the sweep plans the method, the docs list the method and the check, the CLI refuses nothing new
    assert [j.name for j in plan_base([1.0], ["label-smoothing"], [], None)] == ["natural", "label-smoothing"]
    assert "`label-smoothing`" in docs.cli_markdown() and "\n## grey-shift\n" in docs.checks_markdown()
    assert "| `max_broken` | `0.99` |" in docs.checks_markdown()
