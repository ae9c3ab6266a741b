"""Fixtures shared by the core's tests."""

import pytest
from folder_plugins import PLUGIN
from training_toys import add_toys

import pml_anchors
from pml_anchors.plugin.settings import ENV_PLUGINS_DIR


@pytest.fixture
def toys(pml_registry):
    """An isolated registry (pml_anchors.testing's ``pml_registry``) with the toy methods of training_toys."""
    add_toys(pml_registry)
    return pml_registry


@pytest.fixture
def folder(pml_registry, tmp_path, monkeypatch):
    """A plugins folder holding folder_method.py (and a helper that must not load); the env var names it."""
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "folder_method.py").write_text(PLUGIN)
    (d / "_helper.py").write_text("raise RuntimeError('files starting with _ are not plugins')\n")
    (d / "notes.txt").write_text("not python\n")
    monkeypatch.setenv(ENV_PLUGINS_DIR, str(d))
    pml_anchors.reset()
    return d
