"""The repository explains itself: every link in the README and docs/ points at a file in the
repository (nothing outside it, such as a ../shared folder a user of the repository does not have)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    assert "../shared" not in text
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{doc.name}: {target}"


def test_the_rules_document_covers_r1_to_r21() -> None:
    text = (ROOT / "docs" / "RULES.md").read_text(encoding="utf-8")
    for number in range(1, 22):
        assert f"**R{number} —" in text, f"R{number}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_anchor_names_a_heading(doc: Path) -> None:
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")) or "#" not in target:
            continue
        file, anchor = target.split("#", 1)
        text = (doc.parent / file).read_text(encoding="utf-8") if file else doc.read_text(encoding="utf-8")
        headings = {_slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}
        assert anchor in headings, f"{doc.name}: {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_reference_to_a_spec_outside_the_repository(doc: Path) -> None:
    assert not re.search(r"\bSPEC\b", doc.read_text(encoding="utf-8")), doc.name
