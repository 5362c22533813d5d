"""Docs with one source (issue 25): the generated reference is current, the README stays an entry point,
and every relative link in the Markdown resolves."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from maskcheck import docs
from maskcheck.checks import REGISTRY

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md"))]


def test_generated_docs_are_current() -> None:
    assert docs.stale() == [], "run: python -m maskcheck.docs --write, and commit docs/"


def test_a_stale_generated_doc_is_detected(tmp_path) -> None:
    for name, make in docs.GENERATED.items():
        (tmp_path / name).write_text(make(), encoding="utf-8")
    assert docs.stale(tmp_path) == []
    (tmp_path / "checks.md").write_text(docs.checks_markdown().replace("saturation_margin", "margin"), encoding="utf-8")
    (tmp_path / "cli.md").unlink()
    assert sorted(docs.stale(tmp_path)) == ["checks.md", "cli.md"]


def test_the_checks_page_has_every_check_with_its_thresholds() -> None:
    text = docs.checks_markdown()
    for name, cls in REGISTRY.items():
        section = text[text.index(f"\n## {name}\n"):]
        assert cls.doc().splitlines()[0] in section
        own = section.split("\n## ", 2)[1]
        for field in dataclasses.fields(cls):
            assert f"| `{field.name}` | `{field.default!r}` |" in own, (name, field.name)


def test_the_cli_page_lists_every_flag_of_audit() -> None:
    text = docs.cli_markdown()
    audit = text[text.index("## `maskcheck audit`"):text.index("## `maskcheck sweep-status`")]
    for flag in ("--eps", "--fail-on-flag", "--fail-on", "--trust-code", "--bpda", "--eot", "--square-queries"):
        assert f"`{flag}`" in audit


def test_the_readme_is_an_entry_point_not_a_manual() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference material to docs/"


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and resolved.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", resolved.read_text(encoding="utf-8"), re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
                if anchor not in slugs:
                    broken.append(f"{page.name}: {target} (no heading)")
    assert broken == []
