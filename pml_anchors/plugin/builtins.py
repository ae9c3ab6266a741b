"""The built-in method plugins, known without installing or importing them: which distribution provides which method.

The core registers no method of its own: its methods come in the distributions of this repository's ``plugins/``
folder (:data:`~pml_anchors.plugin.manager.BUILTIN_DISTRIBUTIONS`). This static map lets a core-only install say what
to install (``pml-anchors methods``, ``validate``, and the error for an unknown method such as ``c_ncm``); a test
checks it against the plugins' own registrations.
"""

from __future__ import annotations

__all__ = ["BUILTIN_ALIASES", "BUILTIN_METHODS", "builtin_distribution", "install_hint"]

#: distribution -> the methods it registers
BUILTIN_METHODS: dict[str, tuple[str, ...]] = {
    "pml-anchors-ncm": ("c_ncm", "e_ncm"),
    "pml-anchors-cam": ("cam",),
    "pml-anchors-reponet": ("reponet",),
    "pml-anchors-fsc": ("fsc",),
    "pml-anchors-proxy-anchor": ("proxy_anchor",),
}
#: alias -> method, for the built-in methods' aliases
BUILTIN_ALIASES: dict[str, str] = {"class_anchor_margin": "cam", "margin_reponet": "reponet"}


def builtin_distribution(method: str) -> str | None:
    """The built-in distribution that provides ``method`` (a name, alias or ``dist:name``), or ``None``."""
    dist, _, name = method.rpartition(":")
    name = BUILTIN_ALIASES.get(name, name)
    for candidate, names in BUILTIN_METHODS.items():
        if name in names and dist in ("", candidate):
            return candidate
    return None


def install_hint() -> str:
    """How to install the built-in methods, in one sentence."""
    listed = "; ".join(f"{dist}: {', '.join(names)}" for dist, names in BUILTIN_METHODS.items())
    return f"The built-in methods come in their own distributions ({listed}): pip install {' '.join(BUILTIN_METHODS)}"
