"""The environment variables that decide which plugins load, and how plugin names compare.

Read each time plugins are loaded (see :func:`pml_anchors.reset`):

``PML_ANCHORS_LOAD_PLUGINS``
    Comma-separated allowlist of distribution names; set but empty loads no plugin at all
    (built-in methods included; the core geometries stay). A name that matches no installed plugin is a
    :class:`~pml_anchors.errors.PluginLoadWarning` (with the closest installed name), an error in strict mode.
``PML_ANCHORS_DISABLE_PLUGINS``
    Comma-separated blocklist of distribution names (and plugins-dir stems). A name that matches nothing
    installed is a warning (never an error: disabling what is absent is harmless).
``PML_ANCHORS_STRICT_PLUGINS``
    ``1`` turns load failures, invalid specs, duplicate names, core tampering and unknown allowlist names into
    exceptions.
``PML_ANCHORS_PLUGINS_DIR``
    Absolute paths of folders (separated by :data:`os.pathsep`) whose ``*.py`` files are loaded as one-off
    plugins named after the file stem (``pml-anchors --plugins-dir`` prepends to it, made absolute). A relative
    entry is refused (reported as a failed plugin): it would run the files of whatever folder of that name the
    current directory holds. The allowlist does not apply to these explicit folders; the blocklist does (by stem).

Every one of them decides which third-party code runs in the process: plugins run in-process, with the
user's rights, at the first registry access.
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
    "env_names",
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


def env_names(var: str) -> list[tuple[str, str]] | None:
    """``(as written, normalised)`` for each name in a comma-separated variable; ``None`` when it is not set."""
    value = os.environ.get(var)
    if value is None:
        return None
    return [(v.strip(), normalize_dist_name(v)) for v in value.split(",") if v.strip()]


def strict_mode() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() in {"1", "true", "yes", "on"}


def plugins_dirs() -> list[str]:
    """The folders named by ``PML_ANCHORS_PLUGINS_DIR``, as written (normalised, not resolved), without repeats.

    Absolute entries are loaded; the loader refuses relative ones (see the module's docstring), so they are kept
    relative here for it to name them."""
    value = os.environ.get(ENV_PLUGINS_DIR, "")
    return list(dict.fromkeys(os.path.normpath(p.strip()) for p in value.split(os.pathsep) if p.strip()))
