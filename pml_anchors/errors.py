"""Exceptions raised by the registry and the plugin loader."""

from __future__ import annotations


class PluginError(Exception):
    """Base class of every registry/plugin error of pml_anchors."""


class UnknownMethodError(PluginError, KeyError, ValueError):
    """No method (or initializer) of that name is registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateMethodError(PluginError, LookupError):
    """A short name is provided by several plugins; use the qualified ``dist:name``."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidMethodSpec(PluginError, ValueError):
    """A plugin registered a malformed :class:`~pml_anchors.MethodSpec` or initializer."""


class IncompatiblePluginError(InvalidMethodSpec):
    """A plugin's ``MethodSpec.requires_api`` excludes this pml-anchors' ``PLUGIN_API_VERSION``."""


class PluginLoadError(PluginError, RuntimeError):
    """Raised instead of a warning when ``PML_ANCHORS_STRICT_PLUGINS=1``."""


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded and was skipped."""
