"""Audit a model that is already in memory, as in a notebook: no CLI, no model file.

    python examples/notebook_audit.py [OUT_DIR] [--quick]   # writes OUT_DIR/audit.html (default: .)

--quick (what tests/test_examples.py runs) weakens APGD and Square to finish in seconds; its
numbers are not ones to report.

Each block below is one notebook cell. In Jupyter, a cell ending in `result` shows the verdict
table and the figures inline (AuditResult._repr_html_); here the script prints instead.
"""

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import maskcheck
from maskcheck.testing import assert_no_masking

args = [a for a in sys.argv[1:] if a != "--quick"]
out_dir = Path(args[0]) if args else Path(".")
COST = dict(square_queries=100, apgd_iters=10) if "--quick" in sys.argv else {}  # {} = AutoAttack's settings

# --- cell 1: a model in memory (a small CNN, trained for a few seconds on scikit-learn's 8x8 digits)
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixels in [0, 1], (N, 1, 8, 8)
y = torch.tensor(digits.target)
x_train, y_train, x_test, y_test = x[:1500], y[:1500], x[1500:], y[1500:]
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for epoch in range(3):
    for i in range(0, len(y_train), 64):
        optimizer.zero_grad()
        F.cross_entropy(model(x_train[i:i + 64]), y_train[i:i + 64]).backward()
        optimizer.step()
# the model stays in training mode: the audit switches to eval for itself and puts the mode back

# --- cell 2: audit it (the device is the model's; the global random generators are left alone).
# Four of the ten checks keep this demo to seconds; leave out `checks=` to run them all.
CHECKS = ["gradient-health", "logit-magnitude", "one-step-vs-iterative", "black-box-gap"]
result = maskcheck.audit(model, x_test, y_test, eps=0.2, n=100, checks=CHECKS, name="digits-cnn", progress=False,
                         **COST)
print(result.summary())
for check in result.checks:
    print(f"  {check.severity.value:7s} {check.check:22s} {check.summary}")
print("robust accuracy:", {k: round(v, 3) for k, v in result.robust_acc.items()})
assert model.training, "the audit must leave the model's mode as it found it"
html = result._repr_html_()  # what Jupyter shows under the cell
print(f"notebook view: {len(html)} characters of HTML, {html.count('<img')} figures")

# --- cell 3: the assertion a test suite would make (raises AssertionError listing flagged checks)
assert_no_masking(model, x_test, y_test, eps=0.2, n=100, checks=["gradient-health", "logit-magnitude"], **COST)
print("assert_no_masking: no check flagged")

# --- cell 4: the HTML report (the page `maskcheck report` renders), without the CLI
print("report:", result.report(out_dir / "audit.html"))
