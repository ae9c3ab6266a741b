"""Plugin loading: entry points, the core's own plugin, plugin folders, failure isolation, the load report.

Loading is lazy: ``import pml_anchors`` imports no plugin; the first registry access calls
:meth:`PluginManager.load`. The core's own geometries are a plugin too (:data:`CORE_PLUGIN_MODULES`, imported by
name like llm's ``default_plugins``). Each entry point of the ``pml_anchors`` group is loaded on its own, so
a plugin that raises on import (or implements a hook this version does not know) is skipped with a
:class:`~pml_anchors.errors.PluginLoadWarning`, listed with its status and error by
``pml-anchors plugins``, and named again when someone asks for a method it might provide. Which plugins load is
decided by the environment variables of :mod:`pml_anchors.plugin.settings`.

Plugins run in-process, with the user's rights: isolation means reporting, not sandboxing. What the loader
contains and reports:

* ``SystemExit`` raised while a plugin is imported or its hooks run: the plugin is ``failed`` (like any exception);
  ``KeyboardInterrupt``: the load is abandoned (nothing half-loaded is kept) and a ``KeyboardInterrupt`` naming the
  plugin is raised again, since a plugin raising it cannot be told from the user pressing Ctrl-C. ``os._exit`` and
  crashes of native code cannot be caught by anything in the process.
* strict mode (``PML_ANCHORS_STRICT_PLUGINS=1``): the first failure raises, and so does every later registry access
  of this manager (:func:`pml_anchors.reset` starts over); the registry is never built from the plugins loaded
  before the failure.
* core tampering: the attributes of ``pml_anchors``' own modules already imported (and of the classes they define)
  are compared by identity before and after each plugin's import and hooks; a plugin that replaced one (e.g.
  monkeypatched ``AnchorLoss.validate_inputs``) stays loaded but is reported ``tampered`` with the names, with a
  warning (an error in strict mode). In modules imported for the first time during the plugin's import, a function
  or class of the plugin's own package is flagged the same way.
* each plugin's import time (``load_seconds``), with a warning above :data:`SLOW_IMPORT_SECONDS`.
* entry points of a distribution found only through the current directory (on ``sys.path`` because of
  ``python -m``, ``python -c`` or a script in it): refused, with a warning naming the folder (the plugin is
  ``refused``); relative ``PML_ANCHORS_PLUGINS_DIR`` entries are refused too (``failed``).
* names in ``PML_ANCHORS_LOAD_PLUGINS``/``PML_ANCHORS_DISABLE_PLUGINS`` that match no plugin: a warning with the
  closest name (kept in :attr:`PluginManager.notes`, shown by ``pml-anchors plugins``).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import inspect
import operator
import os
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import pluggy

from ..errors import DuplicateMethodError, IncompatiblePluginError, PluginError, PluginLoadError, PluginLoadWarning
from . import hookspecs
from .plugins_dir import PLUGINS_DIR_PACKAGE, import_file, plugin_files
from .registry import Registry
from .settings import (
    ENV_DISABLE,
    ENV_LOAD,
    ENV_PLUGINS_DIR,
    env_names,
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
HOOK_ORDER = ("register_initializers", "register_methods", "register_datasets")
#: A plugin whose import takes longer than this (seconds) is named in a warning: every command pays it.
SLOW_IMPORT_SECONDS = 2.0
#: What a plugin's import or hook may raise and still only fail that plugin (``KeyboardInterrupt`` is re-raised).
CONTAINED = (Exception, SystemExit)
#: Files of this package, left out of the frame named in a load error (the plugin's own frame is named).
_LOADER_FILES = frozenset({__file__, import_file.__code__.co_filename})


@dataclass
class PluginRecord:
    """What ``pml-anchors plugins`` reports for one plugin."""

    name: str
    version: str | None = None
    module: str | None = None
    source: str = "entry_point"  # entry_point | core | in_process | plugins_dir (module: the file's path)
    #: ok | failed | incompatible | disabled | skipped | refused (found only through the current directory) |
    #: tampered (loaded, but replaced attributes of pml_anchors itself: see ``replaced``)
    status: str = "ok"
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    initializers: list[str] = field(default_factory=list)
    #: the datasets it registers (``register_datasets``), by short name
    datasets: list[str] = field(default_factory=list)
    builtin: bool = False
    #: names this plugin registers that another plugin registers too (use the qualified ``plugin:name``)
    conflicts: list[str] = field(default_factory=list)
    #: seconds its import took (``None``: not imported by the loader: skipped, disabled, refused, in-process)
    load_seconds: float | None = None
    #: attributes of pml_anchors' own modules and classes it replaced (status ``tampered``)
    replaced: list[str] = field(default_factory=list)

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
        self._in_process: list[tuple[str, Any]] = []
        #: the strict-mode failure that every later registry access raises again (see :meth:`registry`)
        self._error: BaseException | None = None
        self._clear()

    def _clear(self) -> None:
        """Forget every loaded plugin (not the in-process registrations): the state before :meth:`load`."""
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        #: warnings about the settings themselves (a name in a variable that matches no plugin)
        self.notes: list[str] = []
        self._objects: dict[str, Any] = {}
        self._loaded = False
        self._registry: Registry | None = None

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """Nothing half-loaded survives an exception (a strict failure, Ctrl-C); a strict failure is kept and
        raised again by every later access, so strict mode never falls back to the plugins loaded before it."""
        if self._error is not None:
            raise _again(self._error) from self._error
        try:
            yield
        except BaseException as exc:
            self._clear()
            if isinstance(exc, PluginError):
                self._error = exc
            raise

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> None:
        if self._loaded and self._error is None:
            return
        with self._all_or_nothing():
            self._loaded = True
            self._load_all()

    def _load_all(self) -> None:
        for module_name in CORE_PLUGIN_MODULES:  # by name: the core's plugin sits above this layer
            started = time.perf_counter()
            module = importlib.import_module(module_name)
            record = PluginRecord(CORE_PLUGIN, _version("pml-anchors"), module_name, source="core", builtin=True)
            record.load_seconds = time.perf_counter() - started
            self._register(CORE_PLUGIN, module, record)
        core = _CoreState()  # pml_anchors' own modules as they are now: what every plugin below must leave alone
        allow, block = env_names(ENV_LOAD), env_names(ENV_DISABLE) or []
        allowed = None if allow is None else {name for _, name in allow}
        blocked = {name for _, name in block}
        found = _find_entry_points()
        folders = _plugin_folders()
        self._check_names(allow or [], block, found, folders)
        for item in found:
            key, ep_key = normalize_dist_name(item.dist_name), normalize_dist_name(item.ep.name)
            record = PluginRecord(item.ep.name, item.version, item.ep.value, builtin=key in BUILTIN_DISTRIBUTIONS)
            skip = None
            if allowed is not None and key not in allowed and ep_key not in allowed:
                skip = "skipped", f"not listed in {ENV_LOAD}"
            elif key in blocked or ep_key in blocked:
                skip = "disabled", f"disabled by {ENV_DISABLE}"
            elif item.refused is not None:
                skip = "refused", _refusal(item)
            self._load_one(record, item.ep.load, skip, item.refused or item.dist_name, core)
        self._load_plugins_dirs(folders, blocked, core)
        for name, plugin in self._in_process:
            self._register(name, plugin, PluginRecord(name, module=_module_name(plugin), source="in_process"))

    def _load_one(
        self,
        record: PluginRecord,
        load: Callable[[], Any],
        skip: tuple[str, str] | None,
        origin: str,
        core: _CoreState | None = None,
    ) -> None:
        """Load one entry point or plugins-dir file as ``record.name``, or record ``skip`` = (status, reason)."""
        name = record.name
        if skip is not None:
            record.status, record.error = skip
            if record.status == "refused":  # never silently: the user may expect it to load
                self.records[name if name not in self.records else f"{name} ({origin})"] = record
                self._warn(f"not loading plugin {record.label}: {record.error}")
            else:
                self.records.setdefault(name, record)
            return
        taken = next((r for r in self.records.values() if same_name(r.name, name)), None)
        if taken is not None:  # names compare as in PML_ANCHORS_DISABLE_PLUGINS: "my_loss" is "my-loss"
            self._fail(record, f"plugin name {name!r} is already used by {taken.label}")
            self.records[f"{name} ({origin})"] = record
            return
        started = time.perf_counter()
        try:
            with _interruptible(record, "importing it"):
                plugin = load()
        except CONTAINED as exc:  # any import error, sys.exit() included, must not end the host
            record.load_seconds = time.perf_counter() - started
            self.records[name] = record
            self._fail(record, _describe(exc), exc)
            self._check_slow(record)
            self._check_core(record, core, _own_package(record, None))  # it may have patched before raising
            return
        record.load_seconds = time.perf_counter() - started
        self._register(name, plugin, record)
        self._check_slow(record)
        self._check_core(record, core, _own_package(record, plugin))

    def _load_plugins_dirs(
        self, folders: list[tuple[str, list[Path], str | None]], blocked: set[str], core: _CoreState | None = None
    ) -> None:
        """Load every ``*.py`` file directly in each ``PML_ANCHORS_PLUGINS_DIR`` folder, sorted by name.

        Files whose name starts with ``_`` or ``.`` are skipped (helpers). Each file is a plugin named
        after its stem, imported as ``pml_anchors_plugins_dir.<stem>``; a folder that does not exist, or a relative
        entry, is recorded as a failed plugin named after the entry (a warning, or an error in strict mode).
        """
        for folder, files, problem in folders:
            if problem is not None:
                record = PluginRecord(folder, source="plugins_dir")
                self.records[folder] = record
                self._fail(record, problem)
                continue
            for path in files:
                record = PluginRecord(path.stem, module=str(path), source="plugins_dir")
                disabled = normalize_dist_name(path.stem) in blocked
                skip = ("disabled", f"disabled by {ENV_DISABLE}") if disabled else None
                self._load_one(record, functools.partial(import_file, path), skip, str(path), core)

    def _check_names(
        self,
        allow: list[tuple[str, str]],
        block: list[tuple[str, str]],
        found: list[_Found],
        folders: list[tuple[str, list[Path], str | None]],
    ) -> None:
        """Warn about each name in the allowlist or blocklist that matches no plugin (a typo loads or disables
        nothing, silently otherwise); an unknown allowlist name is an error in strict mode."""
        dists = {normalize_dist_name(f.dist_name): f.dist_name for f in found}
        entry_points = {normalize_dist_name(f.ep.name): f.ep.name for f in found}
        stems = {normalize_dist_name(p.stem): p.stem for _, files, _ in folders for p in files}
        core = {normalize_dist_name(CORE_PLUGIN): CORE_PLUGIN}
        for var, names, known, listed in (
            (ENV_LOAD, allow, {**core, **entry_points, **dists}, sorted(dists.values())),
            (ENV_DISABLE, block, {**core, **entry_points, **stems, **dists}, sorted(dists.values())),
        ):
            for written, name in names:
                if name in known:
                    continue
                close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
                hint = f"; did you mean {known[close[0]]!r}?" if close else "."
                installed = ", ".join(listed) or "(none)"
                if var == ENV_DISABLE and stems:
                    installed += f"; plugins-dir files: {', '.join(sorted(stems.values()))}"
                message = f"{var} names {written!r}, which matches no installed plugin{hint} Installed: {installed}."
                self.notes.append(message)
                if var == ENV_LOAD and strict_mode():
                    raise PluginLoadError(message)
                self._warn(message)

    def _register(self, name: str, plugin: Any, record: PluginRecord) -> None:
        self.records[name] = record
        try:
            self.pm.register(plugin, name=name)
        except CONTAINED as exc:  # PluginValidationError, ValueError (already registered)
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
        self,
        record: PluginRecord,
        message: str,
        exc: BaseException | None = None,
        status: str = "failed",
        loaded: bool = False,
    ) -> None:
        """Record ``status`` and ``message``; warn, or raise :class:`PluginLoadError` in strict mode. ``loaded``: the
        plugin stays loaded (``tampered``), so the message is not "skipping"."""
        record.status, record.error = status, message
        if strict_mode():
            what = f"plugin {record.label} {message}" if loaded else f"plugin {record.label} could not be loaded"
            raise PluginLoadError(what if loaded else f"{what}: {message}") from exc
        self._warn(f"plugin {record.label} {message}" if loaded else f"skipping plugin {record.label}: {message}")

    @staticmethod
    def _warn(message: str) -> None:
        # attributed to the caller's code (the first frame outside pml_anchors), not to a line of this loader: the
        # default filter then shows it once per call site, and it never quotes the loader's source
        warnings.warn(f"pml_anchors: {message}", PluginLoadWarning, stacklevel=_outside_stacklevel())

    def _check_slow(self, record: PluginRecord) -> None:
        seconds = record.load_seconds
        if seconds is not None and seconds > SLOW_IMPORT_SECONDS:
            self._warn(
                f"plugin {record.label} took {seconds:.1f} s to import (more than {SLOW_IMPORT_SECONDS:g} s), which "
                "every command and process that uses the registry pays; a plugin should import its heavy modules "
                "only when a loss is built (MethodSpec(loss='package.module:Class'))"
            )

    def _check_core(self, record: PluginRecord, core: _CoreState | None, own: str | None) -> None:
        """Report ``record`` as ``tampered`` if it replaced attributes of pml_anchors since ``core``'s last check."""
        if core is None:
            return
        replaced = core.changes(own)
        if not replaced:
            return
        record.replaced = sorted({*record.replaced, *replaced})
        message = (
            f"replaced attributes of pml_anchors itself: {', '.join(record.replaced)} (plugins must not patch "
            "pml-anchors: what it computes is no longer what is documented and tested)"
        )
        if record.status == "ok":
            self._fail(record, message, status="tampered", loaded=True)
        else:  # it failed too: keep its status, add what it left behind
            record.error = f"{record.error}; it also {message}"
            if strict_mode():
                raise PluginLoadError(f"plugin {record.label} {message}")
            self._warn(f"plugin {record.label} {message}")

    # -- registry -------------------------------------------------------------------------------
    def registry(self) -> Registry:
        if self._registry is None or self._error is not None:
            with self._all_or_nothing():
                self.load()
                self._registry = self._build_registry()
        assert self._registry is not None
        return self._registry

    def _build_registry(self) -> Registry:
        registry = Registry(notes=self._failure_notes, label=self.label)
        core = _CoreState()
        for name, plugin in list(self._objects.items()):
            record = self.records[name]
            record.methods, record.initializers, record.datasets, record.conflicts = [], [], [], []
            staged = Staged(name, record.version)
            failure: tuple[str, BaseException, str] | None = None
            try:
                with _interruptible(record, "running its hooks"):
                    self._call(plugin, "register_initializers", register=staged.register_initializer)
                    self._call(plugin, "register_methods", register=staged.register_method)
                    self._call(plugin, "register_datasets", register=staged.register_dataset)
            except IncompatiblePluginError as exc:  # MethodSpec.requires_api excludes this version
                failure = str(exc), exc, "incompatible"
            except CONTAINED as exc:  # a bad plugin must not take the others down, sys.exit() included
                failure = _describe(exc), exc, "failed"
            if failure is not None:
                self._fail(record, failure[0], failure[1], status=failure[2])
            self._check_core(record, core, _own_package(record, plugin))
            if failure is not None:
                continue
            for entry in staged.initializers:
                registry.add_initializer(entry)
                record.initializers.append(entry.name)
            for spec in staged.methods:
                registry.add_method(spec)
                record.methods.append(spec.name)
            for dataset in staged.datasets:
                registry.add_dataset(dataset)
                record.datasets.append(dataset.name)
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
        idle: dict[str, list[str]] = {}
        for record in self.records.values():
            if record.status == "incompatible":
                notes.append(
                    f"Plugin {record.label} is incompatible with this pml-anchors version and was not loaded; "
                    f"it may provide it: {(record.error or '').rstrip('.')}."
                )
            elif record.status == "failed":
                notes.append(
                    f"Plugin {record.label} failed to load and may provide it: {(record.error or '').rstrip('.')}."
                )
            elif record.status in {"disabled", "skipped", "refused"}:
                idle.setdefault(record.error or record.status, []).append(record.label)
        for why, labels in idle.items():  # one sentence per reason, not one per plugin
            notes.append(
                f"Plugin{'s' if len(labels) > 1 else ''} {', '.join(labels)} {'are' if len(labels) > 1 else 'is'} not loaded ({why})."
            )
        return notes + self.notes

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


@contextlib.contextmanager
def _interruptible(record: PluginRecord, doing: str) -> Iterator[None]:
    """A ``KeyboardInterrupt`` while a plugin runs is recorded as its failure and raised again, naming it: a plugin
    raising it cannot be told from the user pressing Ctrl-C, and Ctrl-C must still stop the program."""
    try:
        yield
    except KeyboardInterrupt as exc:
        where = _where(exc)
        record.status, record.error = "failed", f"KeyboardInterrupt while {doing}{where}"
        raise KeyboardInterrupt(f"interrupted while loading plugin {record.label}: {record.error}") from exc


def _again(exc: BaseException) -> BaseException:
    """A fresh exception like ``exc`` (same type and message), to raise again without growing its traceback."""
    try:
        return type(exc)(*exc.args)
    except Exception:  # noqa: BLE001 - an exception type with another signature
        return PluginLoadError(str(exc))


# -- discovery ------------------------------------------------------------------------------------
class _Found(NamedTuple):
    """One entry point of the ``pml_anchors`` group, with its distribution."""

    dist_name: str
    version: str | None
    ep: metadata.EntryPoint
    #: the current directory, for a distribution found only through it (its entry points are refused)
    refused: str | None = None
    #: the distribution's metadata folder (``*.dist-info``), when it has one
    metadata_path: str | None = None


def _find_entry_points() -> list[_Found]:
    """Every entry point of the group, one distribution per name (the first on ``sys.path``, as importlib does).

    A distribution whose metadata sits in the current directory, on ``sys.path`` only because ``python -m``,
    ``python -c`` or a script there put it first (see :func:`_implicit_cwd`), is not trusted: a copy of an installed
    distribution's metadata (a source checkout's ``*.egg-info``) is ignored, anything else is returned with
    ``refused`` set.
    """
    cwd: str | None | bool = False  # not computed yet: only once a distribution of the group is found
    chosen: dict[str, list[_Found]] = {}  # normalised distribution name -> its entry points
    from_cwd: dict[str, list[_Found]] = {}
    for dist in metadata.distributions():
        eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        if not eps:
            continue
        meta = dist.metadata  # parsed once: its name and version
        dist_name, version = meta["Name"] or eps[0].name, meta["Version"]
        key = normalize_dist_name(dist_name)
        path = getattr(dist, "_path", None)  # PathDistribution: its *.dist-info (or *.egg-info) folder
        unique = {(ep.name, ep.value): ep for ep in eps}  # the same entry point listed twice
        items = [_Found(dist_name, version, ep, None, None if path is None else str(path)) for ep in unique.values()]
        if cwd is False:
            cwd = _implicit_cwd()
        if isinstance(cwd, str) and _location(dist) == cwd:
            from_cwd.setdefault(key, [item._replace(refused=cwd) for item in items])
        else:
            chosen.setdefault(key, items)  # the first distribution of a name on sys.path wins
    for key, items in from_cwd.items():
        chosen.setdefault(key, items)  # unless it only copies an installed one's metadata: then that one loads
    return sorted(
        (f for items in chosen.values() for f in items), key=lambda f: (normalize_dist_name(f.dist_name), f.ep.name)
    )


def _implicit_cwd() -> str | None:
    """The current directory, resolved, when it is on ``sys.path`` only implicitly (``""`` as ``python -c`` and the
    REPL put it, or first as ``python -m`` and a script run from it do), not by an explicit entry such as
    ``PYTHONPATH=.``; ``None`` otherwise."""
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:  # the current directory was removed
        return None
    implicit = explicit = False
    for i, entry in enumerate(sys.path):
        if not isinstance(entry, str):
            continue
        if entry == "":
            implicit = True
        elif os.path.realpath(entry) == cwd:
            implicit, explicit = implicit or i == 0, explicit or i > 0
    return cwd if implicit and not explicit else None


def _location(dist: metadata.Distribution) -> str | None:
    """The ``sys.path`` folder holding ``dist``'s metadata, resolved (``None`` when the finder cannot tell)."""
    try:
        return os.path.realpath(str(dist.locate_file("")))
    except Exception:  # noqa: BLE001 - a custom finder's distribution
        return None


def _refusal(item: _Found) -> str:
    where = f"{item.metadata_path}" if item.metadata_path else f"{item.dist_name} {item.version}"
    return (
        f"its distribution ({where}) is found only through the current directory {item.refused}, which "
        "`python -m`, `python -c` or a script there puts on sys.path; entry points from there are refused, so that "
        "running pml-anchors in a folder cannot run code that folder holds. Install the plugin (pip install), or "
        "trust the folder explicitly (PYTHONPATH=<folder>)"
    )


def _plugin_folders() -> list[tuple[str, list[Path], str | None]]:
    """``(entry, plugin files, problem)`` for each ``PML_ANCHORS_PLUGINS_DIR`` entry; a relative entry or a missing
    folder has a problem (and no files)."""
    folders: list[tuple[str, list[Path], str | None]] = []
    for folder in plugins_dirs():
        if not os.path.isabs(folder):
            try:
                here = f" (here {os.path.join(os.getcwd(), folder)!r})"
            except OSError:
                here = ""
            problem = (
                f"{ENV_PLUGINS_DIR} names {folder!r}, a relative path: refused, because it would load the *.py files "
                f"of whatever folder of that name the current directory holds{here}. Use an absolute path, or "
                f"`pml-anchors --plugins-dir {folder}` (made absolute for that command)"
            )
            folders.append((folder, [], problem))
        elif not os.path.isdir(folder):
            folders.append((folder, [], f"{ENV_PLUGINS_DIR} names {folder!r}, which is not a directory"))
        else:
            folders.append((folder, plugin_files(folder), None))
    return folders


def _version(dist_name: str) -> str | None:
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


def _module_name(plugin: Any) -> str | None:
    return getattr(plugin, "__name__", None) or getattr(type(plugin), "__module__", None)


def _own_package(record: PluginRecord, plugin: Any) -> str | None:
    """The package whose functions and classes are the plugin's own (to spot them inside pml_anchors' modules)."""
    if record.source == "plugins_dir":
        return f"{PLUGINS_DIR_PACKAGE}.{Path(record.module).stem}" if record.module else None
    module: str | None
    if record.source == "entry_point":
        module = (record.module or "").partition(":")[0]
    else:
        module = _module_name(plugin) if plugin is not None else record.module
    top = (module or "").strip().split(".")[0]
    return None if top in ("", "pml_anchors", "builtins", "__main__") else top


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _outside_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel, for a call made by this function's caller, that names the first frame outside
    the pml_anchors package and importlib's bootstrap (the user's code, or the ``pml-anchors`` script)."""
    frame, level = sys._getframe(2), 2  # level 1: the function calling warnings.warn
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE_DIR) or frame.f_code.co_filename.startswith("<frozen")
    ):
        frame, level = frame.f_back, level + 1
    return level


def _where(exc: BaseException) -> str:
    # the innermost frame in the plugin's code, not in this loader or importlib's bootstrap
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if f.filename not in _LOADER_FILES and not f.filename.startswith("<frozen")
    ]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): it called sys.exit(){_where(exc)}"
    return f"{type(exc).__name__}: {exc}{_where(exc)}"


# -- core integrity -------------------------------------------------------------------------------
_MISSING = object()


def _core_modules() -> dict[str, types.ModuleType]:
    """pml_anchors' own modules imported by now (never imports one)."""
    return {
        name: module
        for name, module in list(sys.modules.items())
        if (name == "pml_anchors" or name.startswith("pml_anchors.")) and isinstance(module, types.ModuleType)
    }


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")  # e.g. __slotnames__, which copy/pickle add to a class


def _belongs_to(value: Any, package: str | None) -> bool:
    """Whether ``value`` is a function or class defined in ``package`` (a plugin's own)."""
    if package is None:
        return False
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    elif isinstance(value, property):
        value = value.fget
    elif isinstance(value, functools.partial):
        value = value.func
    if not (inspect.isfunction(value) or inspect.isclass(value) or inspect.ismethod(value)):
        return False
    module = getattr(value, "__module__", None)
    return isinstance(module, str) and (module == package or module.startswith(package + "."))


class _CoreState:
    """The attributes of pml_anchors' own modules (those already imported: taking it imports nothing) and of the
    classes they define, by identity; :meth:`changes` says which a plugin replaced. Cheap: an unchanged namespace
    costs one C-level pass of ``is`` comparisons."""

    def __init__(self) -> None:
        self._modules: dict[str, types.ModuleType] = {}
        #: (qualified name, live namespace, copy, is a class)
        self._spaces: list[tuple[str, Any, dict[str, Any], bool]] = []
        self._scanned = len(sys.modules)  # sys.modules is scanned again only when it grew (it holds ~1000 modules)
        self._add(_core_modules())

    def _add(self, modules: dict[str, types.ModuleType]) -> None:
        for name, module in modules.items():
            self._modules[name] = module
            namespace = vars(module)
            self._spaces.append((name, namespace, dict(namespace), False))
            for attr, value in list(namespace.items()):
                if isinstance(value, type) and value.__module__ == name and value.__qualname__ == attr:
                    self._spaces.append((f"{name}.{attr}", vars(value), dict(vars(value)), True))

    def changes(self, own: str | None) -> list[str]:
        """What was replaced or deleted since the last call (added too, on a class; on a module only an object
        of package ``own``), and which functions or classes of ``own`` sit in pml_anchors modules imported since;
        then the current state becomes the reference."""
        found = []
        for name, module in self._modules.items():
            current = sys.modules.get(name)
            if current is not None and current is not module:
                found.append(f"sys.modules[{name!r}]")
        for qualified, live, saved, is_class in self._spaces:
            if len(live) == len(saved) and all(map(operator.is_, live.values(), saved.values())):
                continue
            for key, old in saved.items():
                new = live.get(key, _MISSING)
                if new is old:
                    continue
                if new is _MISSING:
                    found.append(f"{qualified}.{key} (deleted)")
                elif not (isinstance(new, types.ModuleType) and new.__name__ == f"{qualified}.{key}"):
                    found.append(f"{qualified}.{key}")  # (a submodule imported over a same-named attribute is not)
            for key in live.keys() - saved.keys():
                value = live[key]
                if _is_dunder(key) or isinstance(value, types.ModuleType):
                    continue
                if is_class or _belongs_to(value, own):
                    found.append(f"{qualified}.{key} (added)")
            saved.clear()
            saved.update(live)
        new_modules: dict[str, types.ModuleType] = {}
        if len(sys.modules) != self._scanned:
            self._scanned = len(sys.modules)
            new_modules = {n: m for n, m in _core_modules().items() if n not in self._modules}
        if own is not None:
            for name, module in new_modules.items():
                for attr, value in list(vars(module).items()):
                    if _belongs_to(value, own):
                        found.append(f"{name}.{attr}")
                    elif isinstance(value, type) and value.__module__ == name and value.__qualname__ == attr:
                        found += [f"{name}.{attr}.{k}" for k, v in list(vars(value).items()) if _belongs_to(v, own)]
        self._add(new_modules)
        return found
