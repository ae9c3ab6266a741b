"""Which builder a dataset name means: the built-in datasets (:data:`~pml_anchors.app.data.registry.DATASETS`) and
the plugins' (the ``register_datasets`` hook), by short name or qualified ``plugin:name``.

A short name that several providers have (a plugin's and a built-in, or two plugins') is ambiguous, never resolved
by load order: :func:`find_dataset` raises :class:`~pml_anchors.DuplicateMethodError` naming them all and their
qualified names. The built-ins' qualified names are ``pml-anchors:name``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import DuplicateMethodError
from ...plugin.api import find_datasets, get_plugin_manager, list_datasets
from ...plugin.datasets import DatasetEntry
from ...plugin.manager import CORE_PLUGIN

__all__ = ["BUILTIN", "DatasetSource", "builtin_clashes", "dataset_names", "find_dataset"]

#: the provider named in the built-in datasets' qualified names (``pml-anchors:digits``)
BUILTIN = CORE_PLUGIN


@dataclass(frozen=True)
class DatasetSource:
    """One dataset a name resolved to: its short name, its builder (a callable, or a plugin's
    :class:`~pml_anchors.plugin.datasets.DatasetEntry`, resolved by :meth:`resolve`) and who provides it (``plugin``
    ``None``: the built-in table, which :func:`~pml_anchors.app.data.register_dataset` also fills)."""

    name: str
    builder: Any
    plugin: str | None = None
    plugin_version: str | None = None

    @classmethod
    def of_plugin(cls, entry: DatasetEntry) -> DatasetSource:
        return cls(entry.name, entry, entry.plugin, entry.plugin_version)

    def resolve(self) -> Callable[..., Any]:
        """The builder; a plugin's lazy ``"module:function"`` is imported now."""
        return self.builder.resolve() if isinstance(self.builder, DatasetEntry) else self.builder

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin or BUILTIN}:{self.name}"

    def provenance(self) -> dict[str, Any]:
        """What ``DatasetSplits.info`` (and so the checkpoint's ``data_info``) records of a plugin's dataset."""
        if self.plugin is None:
            return {}
        return {"dataset_plugin": self.plugin, "dataset_plugin_version": self.plugin_version}


def find_dataset(name: Any, builtins: Mapping[str, Callable[..., Any]]) -> DatasetSource:
    """The dataset ``name`` means (case-insensitive; ``plugin:name`` picks a provider): a ``ValueError`` for an
    unknown name (with close matches, every available name and the plugins that failed to load),
    :class:`~pml_anchors.DuplicateMethodError` for a short name that several providers have."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset must be a non-empty name such as 'digits', got {name!r}")
    plugin, sep, short = name.strip().rpartition(":")
    short = short.lower()
    builtin = [DatasetSource(short, builtins[short])] if short in builtins else []
    if sep and plugin == BUILTIN:
        found = builtin
    elif sep:
        found = [DatasetSource.of_plugin(e) for e in find_datasets(f"{plugin}:{short}")]
    else:
        found = builtin + [DatasetSource.of_plugin(e) for e in find_datasets(short)]
    if len(found) == 1:
        return found[0]
    if found:
        label = get_plugin_manager().label
        providers = ", ".join(f"{BUILTIN} (built-in)" if s.plugin is None else label(s.plugin) for s in found)
        raise DuplicateMethodError(
            f"dataset {name!r} is ambiguous: it is provided by {providers}. Use a qualified name "
            f"({' or '.join(repr(s.qualified_name) for s in found)}) or disable one plugin with "
            "PML_ANCHORS_DISABLE_PLUGINS."
        )
    available = dataset_names(builtins)
    close = difflib.get_close_matches(name.strip().lower(), available, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    notes = "".join(f" {note}" for note in get_plugin_manager().registry().notes())
    raise ValueError(f"Unknown dataset {name!r}.{hint} Available: {', '.join(available)}.{notes}")


def dataset_names(builtins: Mapping[str, Callable[..., Any]]) -> list[str]:
    """Every name :func:`find_dataset` resolves without ambiguity: the short names, and the qualified ones of a short
    name that several providers have."""
    providers: dict[str, list[str]] = {name: [f"{BUILTIN}:{name}"] for name in builtins}
    for entry in list_datasets():
        providers.setdefault(entry.name, []).append(entry.qualified_name)
    return sorted(q for short, names in providers.items() for q in (names if len(names) > 1 else [short]))


def builtin_clashes(builtins: Mapping[str, Callable[..., Any]]) -> dict[str, list[str]]:
    """``{plugin: [sentence, ...]}`` for each plugin dataset whose name is also a built-in dataset's (the plugin
    registry sees clashes between plugins only), for ``pml-anchors plugins``."""
    out: dict[str, list[str]] = {}
    for entry in list_datasets():
        if entry.name in builtins:
            out.setdefault(entry.plugin, []).append(
                f"dataset {entry.name!r} is also a built-in dataset of {BUILTIN}; use the qualified name "
                f"{entry.qualified_name!r} (the built-in one: '{BUILTIN}:{entry.name}')"
            )
    return out
