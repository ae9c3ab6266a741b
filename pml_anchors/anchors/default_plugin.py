"""The core's own plugin: registers every geometry of :mod:`pml_anchors.anchors` under its name.

The plugin manager loads this module by name before any installed plugin (as llm loads its ``default_plugins``),
so ``anchors="simplex"`` works for every method and ``pml-anchors plugins --all`` lists the core like any plugin.
"""

from __future__ import annotations

from collections.abc import Callable

from ..plugin.hookspecs import hookimpl
from .polytopes import cube, one_hot, orthoplex, polygon, simplex
from .sampled import gaussian_subcenters, kaiming_normal
from .well_spread import spread

__all__ = ["INITIALIZERS", "register_initializers"]

INITIALIZERS: dict[str, Callable] = {
    "one_hot": one_hot,
    "polygon": polygon,
    "simplex": simplex,
    "orthoplex": orthoplex,
    "cube": cube,
    "spread": spread,
    "gaussian_subcenters": gaussian_subcenters,
    "kaiming_normal": kaiming_normal,
}


@hookimpl
def register_initializers(register):
    """Register every geometry in :data:`INITIALIZERS` under its name."""
    for name, fn in INITIALIZERS.items():
        register(name, fn)
