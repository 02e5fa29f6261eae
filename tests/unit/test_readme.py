"""Documentation that must stay in step with the code."""

from __future__ import annotations

from conftest import REPO
from incerta.data.keys import markdown_table


def test_readme_key_table_matches_keys_module():
    assert markdown_table(include_internal=False) in (REPO / "README.md").read_text()


def test_readme_and_ci_show_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
