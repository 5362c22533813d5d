"""The published JSON Schemas: current with the types, and every sample report fits them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import torch
import torch.nn as nn

import maskcheck
from maskcheck import schema
from maskcheck.config import provenance

REPO = Path(__file__).resolve().parents[1]
SAMPLES = {kind: sorted(REPO.glob(f"reports/*/data/**/{kind}.json")) for kind in ("audit", "run")}


def test_committed_schemas_are_regenerated_from_the_types() -> None:
    for name, text in schema.generated().items():
        assert schema.FILES[name].read_text() == text, f"{schema.FILES[name]} is stale: run python -m maskcheck.schema --write"
    assert schema.main([]) == 0


def test_provenance_type_matches_what_every_artefact_carries() -> None:
    assert set(schema.Provenance.__annotations__) == set(provenance("cpu", 0))


@pytest.mark.parametrize("kind", ["audit", "run"])
def test_every_sample_report_fits_its_schema(kind: str) -> None:
    assert SAMPLES[kind], f"no committed {kind}.json under reports/*/data"
    for path in SAMPLES[kind]:
        schema.validate(json.loads(path.read_text()), kind)


@pytest.mark.parametrize("kind,break_it", [
    ("audit", lambda d: d.pop("verdict")),
    ("audit", lambda d: d.update(clean_acc="97%")),
    ("audit", lambda d: d["checks"][0].update(severity="maybe")),
    ("audit", lambda d: d.update(schema_version=99)),
    ("audit", lambda d: d["threat"].update(norm="l7")),
    ("run", lambda d: d.pop("metrics")),
    ("run", lambda d: d["metrics"].update(history=[{"epoch": "one"}])),
])
def test_schemas_reject_broken_documents(kind: str, break_it) -> None:
    doc = copy.deepcopy(json.loads(SAMPLES[kind][0].read_text()))
    break_it(doc)
    with pytest.raises(jsonschema.ValidationError):
        schema.validate(doc, kind)


def test_unknown_additional_fields_are_allowed() -> None:
    doc = json.loads(SAMPLES["audit"][0].read_text())
    doc["a_future_field"] = {"grade": "A"}
    doc["checks"][0]["a_future_field"] = 1
    schema.validate(doc, "audit")


def test_a_fresh_audit_fits_the_schema() -> None:
    """Today's writer, not only the committed samples (labels all wrong: no attack needs to run)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(6, 1, 4, 4)
    with torch.no_grad():
        y = (model(x).argmax(1) + 1) % 3
    result = maskcheck.audit(model, x, y, eps=0.1, checks=["logit-magnitude"], progress=False)
    schema.validate(json.loads(result.to_json()), "audit")
