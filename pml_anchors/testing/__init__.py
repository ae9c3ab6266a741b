"""Test kit for plugin authors; its fixtures are a ``pytest11`` plugin (:mod:`pml_anchors.testing.fixtures`), so
they are available in every pytest session once pml-anchors is installed.

* :func:`check_method`: the conformance check every plugin runs in its own tests
  (:mod:`~pml_anchors.testing.conformance`; also ``pml-anchors validate --run``)::

      from pml_anchors.testing import check_method

      def test_conformance():
          check_method("my_method")

  Its report's ``"compile"`` entry (:func:`~pml_anchors.testing.compile_check.compile_report`) says whether the
  method compiles whole (graph breaks under ``torch._dynamo.explain``, with their reasons), how many of the breaks
  read a value back to the host (a sync per step on a GPU), and with a CUDA GPU how many syncs one step makes;
* ``pml_registry`` fixture: an isolated registry with entry-point discovery blocked (and no
  ``PML_ANCHORS_PLUGINS_DIR``); add the plugin under test with ``pml_registry.add_plugin(module_or_object)``;
* :func:`check_dtypes` and :func:`check_import_is_light` (:mod:`~pml_anchors.testing.checks`): float64/float32/
  bfloat16 agreement, and a plugin package that imports without torch;
* :func:`make_plugin_env`: a virtualenv with plugin projects pip-installed, for end-to-end entry-point tests.

Importing this package imports neither pytest nor torch (``pml-anchors validate`` uses :func:`check_method`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .checks import check_dtypes, check_import_is_light
from .conformance import ConformanceError, check_method

_FIXTURES = ("IsolatedRegistry", "make_plugin_env", "pml_registry")


def __getattr__(name: str) -> Any:
    if name in _FIXTURES:  # these import pytest
        return getattr(import_module(f"{__name__}.fixtures"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConformanceError",
    "IsolatedRegistry",
    "check_dtypes",
    "check_import_is_light",
    "check_method",
    "make_plugin_env",
    "pml_registry",
]
