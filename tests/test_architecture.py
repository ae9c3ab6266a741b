"""The layers of docs/architecture.md hold: the import-linter contracts pass, what a plugin imports loads none of the
application in a fresh interpreter, and no module imports a private name from another package."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pml_anchors"

#: what a plugin author imports (the public contract)
AUTHOR_MODULES = (
    "pml_anchors",
    "pml_anchors.plugin",
    "pml_anchors.validators",
    "pml_anchors.losses",
    "pml_anchors.losses.logsumexp",
    "pml_anchors.anchors",
    "pml_anchors.testing",
)
#: what those modules, and everything they import in turn, must never load
APPLICATION = (
    "pml_anchors.app",
    "pml_anchors.cli",
    "pml_anchors.evaluation",
    "torchvision",
    "pytorch_metric_learning.trainers",
)


def _loaded_after(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_author_modules_load_nothing_of_the_application():
    loaded = _loaded_after("\n".join(f"import {m}" for m in AUTHOR_MODULES))
    leaked = [m for m in loaded if m.startswith(APPLICATION)]
    assert leaked == [], f"the author-facing modules loaded {leaked}"
    assert "pml_anchors.losses.base" in loaded  # the check looked at what it should


def test_package_root_and_plugin_core_import_neither_torch_nor_plugins():
    loaded = _loaded_after("import pml_anchors, pml_anchors.plugin, pml_anchors.testing")
    assert [m for m in loaded if m.split(".")[0] in ("torch", "pytorch_metric_learning", "pytest", "numpy")] == []
    assert [m for m in loaded if m.startswith("pml_anchors_")] == []  # plugins load on first registry access


def test_building_a_loss_from_the_registry_loads_no_application():
    loaded = _loaded_after(
        "import pml_anchors, torch; pml_anchors.get_loss('c_ncm', 10, 16)(torch.randn(4, 16), torch.arange(4))"
    )
    assert [m for m in loaded if m.startswith(APPLICATION)] == []


@pytest.mark.skipif(
    shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None, reason="needs import-linter"
)
def test_import_linter_contracts_are_kept():
    """The layers, the acyclic packages and the light plugin core of pyproject.toml's [tool.importlinter]."""
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-logo", "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def _package_of(module: str) -> str:
    """``pml_anchors.plugin.api`` -> ``pml_anchors.plugin``; a top-level module is its own package."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _private_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if rel.name == "__init__" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("pml_anchors"):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.endswith("__")
                if private and _package_of(source) != _package_of(module):
                    found.append(f"{module}: from {source} import {alias.name}")
    return found


def test_no_module_imports_a_private_name_of_another_package():
    assert _private_imports() == []
