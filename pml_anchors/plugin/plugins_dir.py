"""One-off plugins: the ``*.py`` files of a ``PML_ANCHORS_PLUGINS_DIR`` folder, each imported as a module."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

#: Parent package of the modules imported from plugins-dir files (``pml_anchors_plugins_dir.<stem>``).
PLUGINS_DIR_PACKAGE = "pml_anchors_plugins_dir"

__all__ = ["PLUGINS_DIR_PACKAGE", "import_file", "plugin_files"]


def plugin_files(folder: str | Path) -> list[Path]:
    """The plugin files directly in ``folder``, sorted by name; files starting with ``_`` or ``.`` are helpers."""
    return [
        path for path in sorted(Path(folder).glob("*.py")) if not path.name.startswith(("_", ".")) and path.is_file()
    ]


def import_file(path: Path) -> types.ModuleType:
    """Import ``path`` as ``pml_anchors_plugins_dir.<stem>``, in ``sys.modules`` before it runs (so that
    dataclasses and pickling of what it defines work). Each load (after :func:`pml_anchors.reset`) runs the file
    again."""
    if not path.stem.isidentifier():
        raise ImportError(f"{path.name!r} is not a valid Python module name; rename the file (letters, digits, _)")
    package = sys.modules.get(PLUGINS_DIR_PACKAGE)
    if package is None:
        package = types.ModuleType(PLUGINS_DIR_PACKAGE, "Plugins loaded from PML_ANCHORS_PLUGINS_DIR folders.")
        package.__path__ = []  # a package, so that "pml_anchors_plugins_dir.<stem>" can be imported by name
        sys.modules[PLUGINS_DIR_PACKAGE] = package
    module_name = f"{PLUGINS_DIR_PACKAGE}.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {str(path)!r} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    setattr(package, path.stem, module)
    return module
