"""The documentation builds with warnings as errors, and every block marked runnable runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
RUNNABLE = re.compile(r"<!-- runnable -->\s*```(bash|python)\n(.*?)```", re.S)
PAGES = sorted(p for p in DOCS.rglob("*.md") if RUNNABLE.search(p.read_text()))


def test_docs_build_strict(tmp_path):
    """mkdocs --strict: broken internal links, missing pages and bad references fail the build."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
    assert "lr_decay_fraction" in (DOCS / "reference" / "config.md").read_text(), "generated from the schema"
    if (REPO / "benchmarks" / "results" / "uq_methods.json").is_file():
        page = (tmp_path / "site" / "choosing-uncertainty" / "index.html").read_text()
        assert "<code>llpr</code>" in page, "the methods table comes from the benchmark results"


def test_every_page_is_in_the_navigation():
    nav = (REPO / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        assert str(page.relative_to(DOCS)) in nav, f"{page} is not reachable from the navigation"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_runnable_blocks(page, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for language, code in RUNNABLE.findall(page.read_text()):
        command = ["bash", "-e", "-o", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{page.name} block failed:\n{code}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
