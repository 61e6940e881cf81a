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
