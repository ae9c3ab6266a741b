"""The registry: every registered method, initializer and dataset by qualified name (``plugin:name``), looked up by
short name, alias or qualified name. Pure data, built by :mod:`pml_anchors.plugin.manager`; nothing here imports a plugin.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..errors import DuplicateMethodError, UnknownMethodError
from .builtins import builtin_distribution, install_hint
from .datasets import DatasetEntry
from .spec import InitializerEntry, MethodSpec

__all__ = ["Registry"]

Entry = TypeVar("Entry", MethodSpec, InitializerEntry)


class Registry:
    """Methods, initializers and datasets by qualified name (``plugin:name``) with a short-name index."""

    def __init__(
        self, notes: Callable[[], list[str]] | None = None, label: Callable[[str | None], str] | None = None
    ) -> None:
        """:param notes: extra sentences for an unknown-name error (e.g. which plugins failed to load).
        :param label: how a plugin is named in errors (``"name version"``); its name by default."""
        self.methods: dict[str, MethodSpec] = {}
        self.initializers: dict[str, InitializerEntry] = {}
        #: the plugins' datasets (the application's built-in ones are not here: ``pml_anchors.app.data``)
        self.datasets: dict[str, DatasetEntry] = {}
        self._method_index: dict[str, list[str]] = {}
        self._init_index: dict[str, list[str]] = {}
        self._dataset_index: dict[str, list[str]] = {}
        self._notes = notes or (lambda: [])
        self._label = label or str

    # -- building -------------------------------------------------------------------------------
    def add_method(self, spec: MethodSpec) -> None:
        self.methods[spec.qualified_name] = spec
        for short in (spec.name, *spec.aliases):
            self._method_index.setdefault(short, []).append(spec.qualified_name)

    def add_initializer(self, entry: InitializerEntry) -> None:
        self.initializers[entry.qualified_name] = entry
        for short in (entry.name, *entry.aliases):
            self._init_index.setdefault(short, []).append(entry.qualified_name)

    def add_dataset(self, entry: DatasetEntry) -> None:
        self.datasets[entry.qualified_name] = entry
        self._dataset_index.setdefault(entry.name, []).append(entry.qualified_name)

    def duplicates(self) -> dict[str, list[str]]:
        """Short names (methods, initializers and datasets) claimed by more than one plugin."""
        out = {}
        indexes = (("method", self._method_index), ("initializer", self._init_index), ("dataset", self._dataset_index))
        for kind, index in indexes:
            for short, qualified in index.items():
                if len({q.rsplit(":", 1)[0] for q in qualified}) > 1:
                    out[f"{kind} {short!r}"] = qualified
        return out

    # -- lookups --------------------------------------------------------------------------------
    def get_method(self, name: str) -> MethodSpec:
        return self._lookup(name, self.methods, self._method_index, "method")

    def get_initializer_entry(self, name: str) -> InitializerEntry:
        return self._lookup(name, self.initializers, self._init_index, "initializer")

    def dataset_candidates(self, name: str) -> list[DatasetEntry]:
        """The plugins' datasets ``name`` may mean: the one of that qualified name, else every one of that short name
        (several: ambiguous; none: not a plugin's). The caller adds the application's built-in datasets."""
        if name in self.datasets:
            return [self.datasets[name]]
        return [self.datasets[q] for q in self._dataset_index.get(name, [])]

    def notes(self) -> list[str]:
        """The sentences an unknown-name error adds: which plugins failed to load or are switched off."""
        return list(self._notes())

    def _lookup(self, name: Any, table: Mapping[str, Entry], index: Mapping[str, list[str]], kind: str) -> Entry:
        if not isinstance(name, str):
            raise TypeError(f"{kind} name must be a string, got {type(name).__name__}")
        if name in table:
            return table[name]
        candidates = index.get(name, [])
        if len(candidates) == 1:
            return table[candidates[0]]
        if len(candidates) > 1:
            providers = ", ".join(self._label(table[q].plugin) for q in candidates)
            raise DuplicateMethodError(
                f"{kind} {name!r} is ambiguous: it is provided by {providers}. Use a qualified name "
                f"({' or '.join(repr(q) for q in candidates)}) or disable one plugin with "
                "PML_ANCHORS_DISABLE_PLUGINS."
            )
        names = sorted(set(index) | set(table))
        message = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        message += f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
        short_names = sorted(index)
        if short_names:
            message += f" Available {kind}s: {', '.join(short_names)}."
        else:
            message += f" No {kind} is registered: no plugin that provides one is loaded."
        dist = builtin_distribution(name) if kind == "method" else None
        if dist is not None:
            message += f" {name!r} is a built-in method of the {dist} distribution: pip install {dist}."
        elif kind == "method" and not short_names:
            message += f" {install_hint()}."
        for note in self._notes():
            message += f" {note}"
        raise UnknownMethodError(message)
