"""The ``pml_registry`` fixture (an isolated registry) and :func:`make_plugin_env` (a venv with plugins installed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from ..plugin import api, settings

__all__ = ["IsolatedRegistry", "make_plugin_env", "pml_registry"]


class IsolatedRegistry:
    """Handle returned by the ``pml_registry`` fixture."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add_plugin(self, plugin: Any, name: str | None = None) -> str:
        name = api.register_plugin(plugin, name)
        self.names.append(name)
        return name

    def remove_plugin(self, name: str) -> None:
        api.unregister_plugin(name)
        self.names.remove(name)


@pytest.fixture
def pml_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[IsolatedRegistry]:
    """An empty registry (core geometries only): installed plugins and plugins-dir files are not loaded."""
    monkeypatch.setenv(settings.ENV_LOAD, "")
    monkeypatch.delenv(settings.ENV_DISABLE, raising=False)
    monkeypatch.delenv(settings.ENV_STRICT, raising=False)
    monkeypatch.setenv(settings.ENV_PLUGINS_DIR, "")  # set, not deleted: restored even if `--plugins-dir` sets it
    api.reset()
    handle = IsolatedRegistry()
    yield handle
    api.reset()


def make_plugin_env(path: Any, *project_dirs: Any) -> str:
    """Create a virtualenv at ``path`` that sees the current environment, pip-install the given
    plugin projects into it (``--no-deps``), and return its Python executable.

    The new environment reuses this environment's packages (torch is not reinstalled) through a
    ``.pth`` file, so installing a plugin there never touches the running environment. For
    end-to-end tests of entry-point discovery with real distributions.
    """
    import subprocess
    import sysconfig
    import venv
    from pathlib import Path

    path = Path(path)
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site_dir = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    parents = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in sorted(parents))
    Path(site_dir, "_pml_anchors_parent_env.pth").write_text(lines)
    if project_dirs:
        import shutil

        copies = []  # build from copies so the source trees get no build/ or .egg-info
        for d in project_dirs:
            copies.append(path / "src" / Path(d).name)
            shutil.copytree(d, copies[-1], ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                *[str(d) for d in copies],
            ],
            check=True,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    return str(python)
