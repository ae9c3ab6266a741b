"""The environment variables that decide which plugins load, and how plugin names compare.

Read each time plugins are loaded (see :func:`pml_anchors.reset`):

``PML_ANCHORS_LOAD_PLUGINS``
    Comma-separated allowlist of distribution names; set but empty loads no plugin at all
    (built-in methods included; the core geometries stay).
``PML_ANCHORS_DISABLE_PLUGINS``
    Comma-separated blocklist of distribution names.
``PML_ANCHORS_STRICT_PLUGINS``
    ``1`` turns load failures, invalid specs and duplicate names into exceptions.
``PML_ANCHORS_PLUGINS_DIR``
    Folders (separated by :data:`os.pathsep`) whose ``*.py`` files are loaded as one-off plugins named
    after the file stem (``pml-anchors --plugins-dir`` prepends to it). The allowlist does not apply to
    these explicit folders; the blocklist does (by stem).
"""

from __future__ import annotations

import os

ENV_LOAD = "PML_ANCHORS_LOAD_PLUGINS"
ENV_DISABLE = "PML_ANCHORS_DISABLE_PLUGINS"
ENV_STRICT = "PML_ANCHORS_STRICT_PLUGINS"
ENV_PLUGINS_DIR = "PML_ANCHORS_PLUGINS_DIR"

__all__ = [
    "ENV_DISABLE",
    "ENV_LOAD",
    "ENV_PLUGINS_DIR",
    "ENV_STRICT",
    "env_list",
    "normalize_dist_name",
    "plugins_dirs",
    "same_name",
    "strict_mode",
]


def normalize_dist_name(name: str) -> str:
    """A distribution or plugin name as the variables compare it: ``My_Loss.x`` is ``my-loss-x``."""
    return name.strip().lower().replace("_", "-").replace(".", "-")


def same_name(a: str, b: str) -> bool:
    return normalize_dist_name(a) == normalize_dist_name(b)


def env_list(var: str) -> list[str] | None:
    """The normalised names in a comma-separated variable; ``None`` when it is not set."""
    value = os.environ.get(var)
    if value is None:
        return None
    return [normalize_dist_name(v) for v in value.split(",") if v.strip()]


def strict_mode() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() in {"1", "true", "yes", "on"}


def plugins_dirs() -> list[str]:
    """The folders named by ``PML_ANCHORS_PLUGINS_DIR``, absolute, without repeats."""
    value = os.environ.get(ENV_PLUGINS_DIR, "")
    return list(dict.fromkeys(os.path.abspath(p) for p in value.split(os.pathsep) if p.strip()))
