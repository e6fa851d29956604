"""docs/frameworks.md is written from zdlab.frameworks: every recipe in all four tools, a source per line."""

from __future__ import annotations

from pathlib import Path

from zdlab import frameworks

ROOT = Path(__file__).resolve().parent.parent


def test_every_recipe_in_every_tool_with_a_source():
    recipes = {x.recipe for x in frameworks.LINES}
    assert len(recipes) == 8
    for recipe in recipes:
        assert {x.tool for x in frameworks.LINES if x.recipe == recipe} == set(frameworks.TOOLS), recipe
    for x in frameworks.LINES:
        assert all(u.strip().startswith("https://") for u in x.source.split(" ; ")), x


def test_the_doc_is_the_table():
    assert (ROOT / "docs" / "frameworks.md").read_text(encoding="utf-8") == \
        frameworks.DOC_HEAD + frameworks.markdown() + "\n", "run: python -m zdlab.frameworks > docs/frameworks.md"
