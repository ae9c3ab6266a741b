"""Plugin loading: entry points, the core's own plugin, plugin folders, failure isolation, the load report.

Loading is lazy: ``import pml_anchors`` imports no plugin; the first registry access calls
:meth:`PluginManager.load`. The core's own geometries are a plugin too (:data:`CORE_PLUGIN_MODULES`, imported by
name like llm's ``default_plugins``). Each entry point of the ``pml_anchors`` group is loaded on its own, so
a plugin that raises on import (or implements a hook this version does not know) is skipped with a
:class:`~pml_anchors.errors.PluginLoadWarning`, listed with its status and error by
``pml-anchors plugins``, and named again when someone asks for a method it might provide. Which plugins load is
decided by the environment variables of :mod:`pml_anchors.plugin.settings`.
"""

from __future__ import annotations

import functools
import importlib
import os
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from ..errors import DuplicateMethodError, IncompatiblePluginError, PluginLoadError, PluginLoadWarning
from . import hookspecs
from .plugins_dir import import_file, plugin_files
from .registry import Registry
from .settings import (
    ENV_DISABLE,
    ENV_LOAD,
    ENV_PLUGINS_DIR,
    env_list,
    normalize_dist_name,
    plugins_dirs,
    same_name,
    strict_mode,
)
from .staging import Staged

ENTRY_POINT_GROUP = "pml_anchors"
CORE_PLUGIN = "pml-anchors"
#: The core's own plugin modules (its anchor geometries), registered by name before any entry point.
CORE_PLUGIN_MODULES = ("pml_anchors.anchors.default_plugin",)
#: Distributions shipped from this repository's ``plugins/`` folder. Used only to hide them from
#: ``pml-anchors plugins`` without ``--all``; they load through entry points like any plugin.
BUILTIN_DISTRIBUTIONS = frozenset(
    {"pml-anchors-ncm", "pml-anchors-cam", "pml-anchors-reponet", "pml-anchors-fsc", "pml-anchors-proxy-anchor"}
)
HOOK_ORDER = ("register_initializers", "register_methods")
#: Files of this package, left out of the frame named in a load error (the plugin's own frame is named).
_LOADER_FILES = frozenset({__file__, import_file.__code__.co_filename})


@dataclass
class PluginRecord:
    """What ``pml-anchors plugins`` reports for one plugin."""

    name: str
    version: str | None = None
    module: str | None = None
    source: str = "entry_point"  # entry_point | core | in_process | plugins_dir (module: the file's path)
    status: str = "ok"  # ok | failed | incompatible | disabled | skipped
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    initializers: list[str] = field(default_factory=list)
    builtin: bool = False
    #: names this plugin registers that another plugin registers too (use the qualified ``plugin:name``)
    conflicts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        if self.source == "plugins_dir" and self.module:
            return f"{self.name} ({self.module})"
        return f"{self.name} {self.version}" if self.version else self.name


class PluginManager:
    """pluggy's manager plus our lazy, failure-isolating loader and the built registry."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._objects: dict[str, Any] = {}
        self._in_process: list[tuple[str, Any]] = []
        self._loaded = False
        self._registry: Registry | None = None

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module_name in CORE_PLUGIN_MODULES:  # by name: the core's plugin sits above this layer
            module = importlib.import_module(module_name)
            record = PluginRecord(CORE_PLUGIN, _version("pml-anchors"), module_name, source="core", builtin=True)
            self._register(CORE_PLUGIN, module, record)
        allow, block = env_list(ENV_LOAD), env_list(ENV_DISABLE) or []
        for dist_name, version, ep in _iter_entry_points():
            record = PluginRecord(
                ep.name, version, ep.value, builtin=normalize_dist_name(dist_name) in BUILTIN_DISTRIBUTIONS
            )
            key = normalize_dist_name(dist_name)
            skip = None
            if allow is not None and key not in allow and normalize_dist_name(ep.name) not in allow:
                skip = "skipped", f"not listed in {ENV_LOAD}"
            elif key in block or normalize_dist_name(ep.name) in block:
                skip = "disabled", f"disabled by {ENV_DISABLE}"
            self._load_one(record, ep.load, skip, dist_name)
        self._load_plugins_dirs(block)
        for name, plugin in self._in_process:
            self._register(name, plugin, PluginRecord(name, module=_module_name(plugin), source="in_process"))

    def _load_one(
        self, record: PluginRecord, load: Callable[[], Any], skip: tuple[str, str] | None, origin: str
    ) -> None:
        """Load one entry point or plugins-dir file as ``record.name``, or record ``skip`` = (status, reason)."""
        name = record.name
        if skip is not None:
            record.status, record.error = skip
            self.records.setdefault(name, record)
            return
        taken = next((r for r in self.records.values() if same_name(r.name, name)), None)
        if taken is not None:  # names compare as in PML_ANCHORS_DISABLE_PLUGINS: "my_loss" is "my-loss"
            self._fail(record, f"plugin name {name!r} is already used by {taken.label}")
            self.records[f"{name} ({origin})"] = record
            return
        try:
            plugin = load()
        except Exception as exc:  # noqa: BLE001 - any import error must not crash the host
            self._fail(record, _describe(exc), exc)
            self.records[name] = record
            return
        self._register(name, plugin, record)

    def _load_plugins_dirs(self, block: list[str]) -> None:
        """Load every ``*.py`` file directly in each ``PML_ANCHORS_PLUGINS_DIR`` folder, sorted by name.

        Files whose name starts with ``_`` or ``.`` are skipped (helpers). Each file is a plugin named
        after its stem, imported as ``pml_anchors_plugins_dir.<stem>``; a folder that does not exist is
        recorded as a failed plugin named after the folder (a warning, or an error in strict mode).
        """
        for folder in plugins_dirs():
            if not os.path.isdir(folder):
                record = PluginRecord(folder, source="plugins_dir")
                self.records[folder] = record
                self._fail(record, f"{ENV_PLUGINS_DIR} names {folder!r}, which is not a directory")
                continue
            for path in plugin_files(folder):
                record = PluginRecord(path.stem, module=str(path), source="plugins_dir")
                disabled = normalize_dist_name(path.stem) in block
                skip = ("disabled", f"disabled by {ENV_DISABLE}") if disabled else None
                self._load_one(record, functools.partial(import_file, path), skip, str(path))

    def _register(self, name: str, plugin: Any, record: PluginRecord) -> None:
        self.records[name] = record
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - PluginValidationError, ValueError (already registered)
            self._fail(record, _describe(exc), exc)
            return
        record.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        unknown = [
            hc.name
            for hc in self.pm.get_hookcallers(plugin) or []
            if not hc.has_spec()
            for impl in hc.get_hookimpls()
            if impl.plugin is plugin and not impl.optionalhook
        ]
        if unknown:
            self.pm.unregister(plugin)
            self._fail(
                record,
                f"implements unknown hook(s) {', '.join(sorted(set(unknown)))}: it was written for another "
                "pml-anchors version (plugins should mark newer hooks @hookimpl(optionalhook=True))",
                status="incompatible",
            )
            return
        self._objects[name] = plugin

    def _fail(
        self, record: PluginRecord, message: str, exc: BaseException | None = None, status: str = "failed"
    ) -> None:
        record.status, record.error = status, message
        if strict_mode():
            raise PluginLoadError(f"plugin {record.label} could not be loaded: {message}") from exc
        warnings.warn(f"pml_anchors: skipping plugin {record.label}: {message}", PluginLoadWarning, stacklevel=4)

    # -- registry -------------------------------------------------------------------------------
    def registry(self) -> Registry:
        if self._registry is None:
            self.load()
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        registry = Registry(notes=self._failure_notes, label=self.label)
        for name, plugin in self._objects.items():
            record = self.records[name]
            record.methods, record.initializers, record.conflicts = [], [], []
            staged = Staged(name, record.version)
            try:
                self._call(plugin, "register_initializers", register=staged.register_initializer)
                self._call(plugin, "register_methods", register=staged.register_method)
            except IncompatiblePluginError as exc:  # MethodSpec.requires_api excludes this version
                self._fail(record, str(exc), exc, status="incompatible")
                continue
            except Exception as exc:  # noqa: BLE001 - a bad plugin must not take the others down
                self._fail(record, _describe(exc), exc)
                continue
            for entry in staged.initializers:
                registry.add_initializer(entry)
                record.initializers.append(entry.name)
            for spec in staged.methods:
                registry.add_method(spec)
                record.methods.append(spec.name)
        duplicates = registry.duplicates()
        if duplicates and strict_mode():
            detail = "; ".join(f"{k}: {', '.join(v)}" for k, v in duplicates.items())
            raise DuplicateMethodError(f"duplicate names registered by several plugins: {detail}")
        for what, qualified in duplicates.items():
            plugins = {q.rsplit(":", 1)[0] for q in qualified}
            for q in qualified:
                plugin = q.rsplit(":", 1)[0]
                others = sorted(self.records[p].label if p in self.records else p for p in plugins - {plugin})
                if plugin in self.records:
                    self.records[plugin].conflicts.append(
                        f"{what} is also provided by {', '.join(others)}; use the qualified name {q!r}"
                    )
        return registry

    def _call(self, plugin: Any, hook_name: str, **kwargs: Any) -> None:
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin:
                impl.function(**{arg: kwargs[arg] for arg in impl.argnames})

    def _failure_notes(self) -> list[str]:
        notes = []
        for record in self.records.values():
            if record.status == "incompatible":
                notes.append(
                    f"Plugin {record.label} is incompatible with this pml-anchors version and was not loaded; "
                    f"it may provide it: {record.error}."
                )
            elif record.status == "failed":
                notes.append(f"Plugin {record.label} failed to load and may provide it: {record.error}.")
            elif record.status in {"disabled", "skipped"}:
                notes.append(f"Plugin {record.label} is not loaded ({record.error}).")
        return notes

    # -- in-process plugins ---------------------------------------------------------------------
    def register_plugin(self, plugin: Any, name: str | None = None) -> str:
        name = name or _module_name(plugin) or type(plugin).__name__
        if name in self.records or any(n == name for n, _ in self._in_process):
            raise ValueError(f"a plugin named {name!r} is already registered")
        self._in_process.append((name, plugin))
        if self._loaded:
            self._register(name, plugin, PluginRecord(name, module=_module_name(plugin), source="in_process"))
        self._registry = None
        return name

    def unregister_plugin(self, name: str) -> None:
        self._in_process = [(n, p) for n, p in self._in_process if n != name]
        plugin = self._objects.pop(name, None)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.records.pop(name, None)
        self._registry = None

    def label(self, name: str | None) -> str:
        """How plugin ``name`` is named in messages (``"name version"``, or a plugins-dir file's path)."""
        record = self.records.get(name or "")
        return record.label if record else str(name)

    def plugin_reports(self) -> list[PluginRecord]:
        self.registry()
        return [self.records[k] for k in sorted(self.records, key=lambda k: (self.records[k].source != "core", k))]


def _iter_entry_points() -> list[tuple[str, str | None, metadata.EntryPoint]]:
    seen = set()
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else ep.name
        version = dist.version if dist is not None else None
        key = (normalize_dist_name(dist_name), ep.name, ep.value)
        if key in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(key)
        found.append((dist_name, version, ep))
    return sorted(found, key=lambda item: (normalize_dist_name(item[0]), item[2].name))


def _version(dist_name: str) -> str | None:
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


def _module_name(plugin: Any) -> str | None:
    return getattr(plugin, "__name__", None) or getattr(type(plugin), "__module__", None)


def _describe(exc: BaseException) -> str:
    # the innermost frame in the plugin's code, not in this loader or importlib's bootstrap
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if f.filename not in _LOADER_FILES and not f.filename.startswith("<frozen")
    ]
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"
