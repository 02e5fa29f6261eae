"""The package's layers import only downward (docs/architecture.md), lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

#: lowest first; a module may import its own layer and the layers before it
LAYERS = ("utils", "data", "config", "nn", "models", "train", "uq", "evaluate", "calculators", "active", "entry points")
#: modules outside the layer folders: the command line, the demo, the test helpers and the package itself
ENTRY_POINTS = {"cli", "demo", "testing", ""}


def layer_of(module: str) -> str:
    """'incerta.data.io' -> 'data'; the package, cli, demo and testing are entry points."""
    part = module.split(".")[1] if "." in module else ""
    return "entry points" if part in ENTRY_POINTS else part


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every ``incerta`` import in ``path``, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, target) for line, target in found if target == "incerta" or target.startswith("incerta.")]


def violations(source_root: Path) -> list[str]:
    """'file:line: layer a imports layer b (module)' for every import against the order."""
    problems = []
    for path in sorted((source_root / "incerta").rglob("*.py")):
        module = ".".join(path.relative_to(source_root).with_suffix("").parts).removesuffix(".__init__")
        source = layer_of(module)
        if source not in LAYERS:
            problems.append(f"{path}: module {module} is in no layer; add its folder to LAYERS in {__file__}")
            continue
        for line, target in imported_modules(path, module):
            imported = layer_of(target)
            if imported not in LAYERS or LAYERS.index(imported) > LAYERS.index(source):
                problems.append(f"{path.relative_to(source_root.parent)}:{line}: {source} imports {imported} ({target})")
    return problems


def test_imports_only_run_down_the_layers():
    problems = violations(REPO / "src")
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_the_check_finds_an_upward_import_even_inside_a_function(tmp_path):
    package = tmp_path / "src" / "incerta"
    (package / "data").mkdir(parents=True)
    (package / "data" / "io.py").write_text("import numpy\n\n\ndef read():\n    from incerta.train.run import train_run\n")
    (package / "train").mkdir()
    (package / "train" / "run.py").write_text("from ..data import io\nfrom incerta.utils.files import atomic_write\n")
    assert violations(tmp_path / "src") == ["src/incerta/data/io.py:5: data imports train (incerta.train.run)"]
