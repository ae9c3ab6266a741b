"""The ``register`` callbacks one plugin's hooks receive: they check each registration and stage it, so that a
plugin whose hook fails half-way adds nothing to the registry."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import InvalidMethodSpec
from .datasets import DatasetEntry, check_dataset
from .lazy import is_lazy_path
from .spec import InitializerEntry, MethodSpec, validate_spec

__all__ = ["Staged"]


class Staged:
    """What plugin ``plugin`` (at ``version``) registered, checked but not yet in the registry.

    :meth:`register_initializer` is the ``register`` of the ``register_initializers`` hook,
    :meth:`register_method` that of ``register_methods`` and :meth:`register_dataset` that of
    ``register_datasets``; they raise :class:`~pml_anchors.InvalidMethodSpec` naming the plugin.
    """

    def __init__(self, plugin: str, version: str | None = None) -> None:
        self.plugin = plugin
        self.version = version
        self.methods: list[MethodSpec] = []
        self.initializers: list[InitializerEntry] = []
        self.datasets: list[DatasetEntry] = []

    def register_initializer(self, name: Any, initializer: Any, *, aliases: tuple[str, ...] = ()) -> None:
        where = f"plugin {self.plugin!r}"
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidMethodSpec(f"{where}: initializer name must be an identifier, got {name!r}")
        if any(e.name == name for e in self.initializers):
            raise InvalidMethodSpec(f"{where} registered initializer {name!r} twice")
        if not (callable(initializer) or is_lazy_path(initializer)):
            raise InvalidMethodSpec(
                f"{where}: initializer {name!r} must be a callable or a lazy 'package.module:function' string, "
                f"got {initializer!r}"
            )
        self.initializers.append(InitializerEntry(name, initializer, self.plugin, tuple(aliases)))

    def register_method(self, spec: Any) -> None:
        spec = validate_spec(spec, self.plugin)
        if any(s.name == spec.name for s in self.methods):
            raise InvalidMethodSpec(f"plugin {self.plugin!r} registered method {spec.name!r} twice")
        self.methods.append(replace(spec, plugin=self.plugin, plugin_version=self.version))

    def register_dataset(self, name: Any, builder: Any) -> None:
        check_dataset(name, builder, self.plugin)
        if any(e.name == name for e in self.datasets):
            raise InvalidMethodSpec(f"plugin {self.plugin!r} registered dataset {name!r} twice")
        self.datasets.append(DatasetEntry(name, builder, self.plugin, self.version))
