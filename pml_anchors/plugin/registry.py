"""The method registry: :class:`MethodSpec`, lookups by name, and the public getters.

The registry is built lazily by :mod:`pml_anchors.plugins` the first time one of the getters
below is called; building it is the only time plugin hooks run.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import DuplicateMethodError, IncompatiblePluginError, InvalidMethodSpec, UnknownMethodError


@dataclass(frozen=True)
class MethodSpec:
    """One metric-learning method, as a plugin registers it.

    Only ``name`` and ``loss`` are required.

    :param name: registry key used in configs and on the command line (a Python identifier).
    :param loss: a PML ``BaseMetricLossFunction`` subclass, or a lazy ``"module:Class"`` string
        that is imported only when the loss is built (listing methods imports no loss code and not PML).
    :param initializer: default anchors: a registered initializer name (``"simplex"``), a callable
        ``f(num_classes, embedding_size, *, seed=None, **kw)`` or a lazy ``"module:function"``;
        passed to the loss as ``anchors=`` unless the caller gives ``anchors`` itself.
    :param trainer_hooks: factory (class, callable or ``"module:attr"``) returning a
        :class:`~pml_anchors.TrainerHooks` for PML's trainer; ``get_trainer_hooks(name, **kw)``
        calls it with ``**kw``.
    :param defaults: default loss keyword arguments; the caller's keyword arguments win.
    :param lr_multipliers: learning-rate multipliers for the loss's own parameters, keyed by
        parameter name (``{"anchors": 100.0}``); used to build ``metric_loss_optimizer``.
    :param normalize_embeddings: whether retrieval evaluation L2-normalises the embeddings
        (False for methods trained on raw Euclidean distances, e.g. CAM).
    :param paper: citation of the paper the method implements.
    :param description: one line shown by ``pml-anchors methods``.
    :param aliases: other names the method answers to.
    :param requires_api: the plugin API versions the method was written for, as a PEP 440 specifier on
        ``pml_anchors.PLUGIN_API_VERSION`` (``">=0.1,<0.2"``); ``None`` accepts any. A plugin that registers
        a method whose range excludes the running version is not loaded and is reported ``incompatible``.
    :param plugin, plugin_version: filled in by the registry (provenance); leave unset.
    """

    name: str
    loss: Any
    initializer: Any = None
    trainer_hooks: Any = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    lr_multipliers: Mapping[str, float] = field(default_factory=dict)
    normalize_embeddings: bool = True
    paper: str = ""
    description: str = ""
    aliases: tuple[str, ...] = ()
    requires_api: str | None = None
    plugin: str | None = None
    plugin_version: str | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}" if self.plugin else self.name

    def resolve_loss(self) -> type:
        """The loss class, importing a lazy ``"module:Class"`` string if needed."""
        cls = resolve_object(self.loss, what=f"loss of method {self.name!r}")
        _check_loss_class(cls, f"method {self.name!r}")
        return cls

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "qualified_name": self.qualified_name,
            "aliases": list(self.aliases),
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "loss": describe_object(self.loss),
            "initializer": describe_object(self.initializer),
            "trainer_hooks": describe_object(self.trainer_hooks),
            "defaults": {k: describe_object(v) for k, v in self.defaults.items()},
            "lr_multipliers": dict(self.lr_multipliers),
            "normalize_embeddings": self.normalize_embeddings,
            "requires_api": self.requires_api,
            "paper": self.paper,
            "description": self.description,
        }


def describe_object(obj: Any) -> Any:
    """A JSON-friendly description of a spec field (class → ``module:Qualname``)."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [describe_object(o) for o in obj]
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return f"{obj.__module__}:{obj.__qualname__}"
    return repr(obj)


def resolve_object(ref: Any, *, what: str = "object") -> Any:
    """Import ``"package.module:attr.sub"`` strings; return anything else unchanged."""
    if not isinstance(ref, str):
        return ref
    if ":" not in ref:
        raise ValueError(f"{what}: expected 'module:attribute', got {ref!r}")
    module_name, _, attr_path = ref.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"{what}: cannot import {ref!r}: {exc}") from exc
    return obj


def is_lazy_path(value: Any) -> bool:
    if not isinstance(value, str) or value.count(":") != 1:
        return False
    module_name, attr = value.split(":")
    return all(p.isidentifier() for p in module_name.split(".")) and all(p.isidentifier() for p in attr.split("."))


def _is_initializer_name(value: str) -> bool:
    plugin, sep, name = value.rpartition(":")
    return name.isidentifier() and (not sep or bool(plugin.strip()))


def _check_loss_class(cls: Any, where: str) -> None:
    from pytorch_metric_learning.losses import BaseMetricLossFunction

    if not (inspect.isclass(cls) and issubclass(cls, BaseMetricLossFunction)):
        raise InvalidMethodSpec(
            f"{where}: loss must be a subclass of pytorch_metric_learning.losses.BaseMetricLossFunction "
            f"(or a 'module:Class' string naming one), got {cls!r}"
        )


def validate_spec(spec: Any, plugin: str) -> MethodSpec:
    """Check a spec a plugin registers; raise :class:`InvalidMethodSpec` naming the plugin."""
    where = f"plugin {plugin!r}"
    if not isinstance(spec, MethodSpec):
        raise InvalidMethodSpec(f"{where} registered {spec!r}; expected a pml_anchors.MethodSpec")
    where = f"plugin {plugin!r}, method {spec.name!r}"
    if not isinstance(spec.name, str) or not spec.name.isidentifier():
        raise InvalidMethodSpec(f"{where}: name must be a Python identifier such as 'proxy_anchor'")
    if not isinstance(spec.aliases, tuple) or not all(isinstance(a, str) and a.isidentifier() for a in spec.aliases):
        raise InvalidMethodSpec(f"{where}: aliases must be a tuple of identifiers, got {spec.aliases!r}")
    if isinstance(spec.loss, str):
        if not is_lazy_path(spec.loss):
            raise InvalidMethodSpec(f"{where}: loss string must look like 'package.module:Class', got {spec.loss!r}")
    else:
        _check_loss_class(spec.loss, where)
    for field_name in ("initializer", "trainer_hooks"):
        value = getattr(spec, field_name)
        if value is None or callable(value) or is_lazy_path(value):
            continue
        if field_name == "initializer" and isinstance(value, str) and _is_initializer_name(value):
            continue  # a registered initializer name, plain or qualified ("plugin:name")
        if field_name == "initializer" and _is_tensor(value):
            continue
        raise InvalidMethodSpec(
            f"{where}: {field_name} must be a callable, a 'module:attr' string"
            + (", a registered initializer name or a tensor" if field_name == "initializer" else "")
            + f", got {value!r}"
        )
    if not isinstance(spec.defaults, Mapping) or not all(isinstance(k, str) for k in spec.defaults):
        raise InvalidMethodSpec(f"{where}: defaults must be a mapping of loss keyword arguments")
    if not isinstance(spec.lr_multipliers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and v > 0 for k, v in spec.lr_multipliers.items()
    ):
        raise InvalidMethodSpec(f"{where}: lr_multipliers must map parameter names to positive numbers")
    _check_requires_api(spec.requires_api, where)
    return spec


def _check_requires_api(requires_api: Any, where: str) -> None:
    """``requires_api`` must be a PEP 440 specifier set that admits the running ``PLUGIN_API_VERSION``."""
    if requires_api is None:
        return
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    from . import PLUGIN_API_VERSION

    try:
        accepted = SpecifierSet(requires_api) if isinstance(requires_api, str) else None
    except InvalidSpecifier:
        accepted = None
    if accepted is None:
        raise InvalidMethodSpec(
            f"{where}: requires_api must be a version specifier string such as '>=0.1,<0.2', got {requires_api!r}"
        )
    if not accepted.contains(PLUGIN_API_VERSION, prereleases=True):
        raise IncompatiblePluginError(
            f"{where} requires plugin API {requires_api} (MethodSpec.requires_api), but this pml-anchors "
            f"provides {PLUGIN_API_VERSION}: it was written for another pml-anchors version"
        )


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "shape")


@dataclass
class InitializerEntry:
    name: str
    function: Any
    plugin: str
    aliases: tuple[str, ...] = ()

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"

    def resolve(self) -> Callable:
        fn = resolve_object(self.function, what=f"initializer {self.name!r}")
        if not callable(fn):
            raise InvalidMethodSpec(f"initializer {self.qualified_name!r} is not callable: {fn!r}")
        return fn


class Registry:
    """Methods and initializers by qualified name (``plugin:name``) with a short-name index."""

    def __init__(self, notes: Callable[[], list[str]] | None = None):
        self.methods: dict[str, MethodSpec] = {}
        self.initializers: dict[str, InitializerEntry] = {}
        self._method_index: dict[str, list[str]] = {}
        self._init_index: dict[str, list[str]] = {}
        self._notes = notes or (lambda: [])

    # -- building -------------------------------------------------------------------------------
    def add_method(self, spec: MethodSpec) -> None:
        self.methods[spec.qualified_name] = spec
        for short in (spec.name, *spec.aliases):
            self._method_index.setdefault(short, []).append(spec.qualified_name)

    def add_initializer(self, entry: InitializerEntry) -> None:
        self.initializers[entry.qualified_name] = entry
        for short in (entry.name, *entry.aliases):
            self._init_index.setdefault(short, []).append(entry.qualified_name)

    def duplicates(self) -> dict[str, list[str]]:
        """Short names (methods and initializers) claimed by more than one plugin."""
        out = {}
        for kind, index in (("method", self._method_index), ("initializer", self._init_index)):
            for short, qualified in index.items():
                if len({q.rsplit(":", 1)[0] for q in qualified}) > 1:
                    out[f"{kind} {short!r}"] = qualified
        return out

    # -- lookups --------------------------------------------------------------------------------
    def get_method(self, name: str) -> MethodSpec:
        return self._lookup(name, self.methods, self._method_index, "method")

    def get_initializer_entry(self, name: str) -> InitializerEntry:
        return self._lookup(name, self.initializers, self._init_index, "initializer")

    def _lookup(self, name, table, index, kind):
        if not isinstance(name, str):
            raise TypeError(f"{kind} name must be a string, got {type(name).__name__}")
        if name in table:
            return table[name]
        candidates = index.get(name, [])
        if len(candidates) == 1:
            return table[candidates[0]]
        if len(candidates) > 1:
            providers = ", ".join(self._provider(table[q]) for q in candidates)
            raise DuplicateMethodError(
                f"{kind} {name!r} is ambiguous: it is provided by {providers}. Use a qualified name "
                f"({' or '.join(repr(q) for q in candidates)}) or disable one plugin with "
                "PML_ANCHORS_DISABLE_PLUGINS."
            )
        names = sorted(set(index) | set(table))
        message = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        if close:
            message += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        short_names = sorted(index)
        message += f" Available {kind}s: {', '.join(short_names) if short_names else '(none)'}."
        for note in self._notes():
            message += f" {note}"
        raise UnknownMethodError(message)

    @staticmethod
    def _provider(item) -> str:
        from .plugins import plugin_label

        return plugin_label(item.plugin)


# -- public API ---------------------------------------------------------------------------------
def _registry() -> Registry:
    from .plugins import get_plugin_manager

    return get_plugin_manager().registry()


def list_methods() -> list[MethodSpec]:
    """Every registered method, sorted by qualified name."""
    return [spec for _, spec in sorted(_registry().methods.items())]


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` registered as ``name`` (a name, an alias or ``dist:name``)."""
    return _registry().get_method(name)


def get_initializer(name: str) -> Callable:
    """The anchor initializer registered as ``name`` (e.g. ``"simplex"``), resolved to a callable."""
    return _registry().get_initializer_entry(name).resolve()


def resolve_initializer(ref: str) -> Callable:
    """An ``anchors=``/``initializer`` string as a callable: a registered initializer (``"simplex"``, or qualified
    ``"plugin:simplex"``), else a lazy ``"module:function"``."""
    if ":" in ref and ref not in _registry().initializers:
        try:
            return resolve_object(ref, what="anchors")
        except ImportError as exc:
            raise ImportError(
                f"{exc}; it is not a registered initializer either (qualified names: "
                f"{', '.join(sorted(_registry().initializers))})"
            ) from exc
    return get_initializer(ref)


def list_initializers() -> list[str]:
    """Qualified names of every registered initializer."""
    return sorted(_registry().initializers)


def build_loss(spec: MethodSpec, num_classes: int, embedding_size: int | None = None, **kwargs):
    """Instantiate ``spec``'s loss; ``spec.defaults`` merged under ``kwargs``."""
    cls = spec.resolve_loss()
    options = {**spec.defaults, **kwargs}
    if spec.initializer is not None and "anchors" not in options and _accepts(cls, "anchors"):
        options["anchors"] = spec.initializer
    if embedding_size is None:
        return cls(num_classes, **options)
    return cls(num_classes, embedding_size, **options)


def get_loss(name: str, num_classes: int, embedding_size: int | None = None, **kwargs):
    """A ready PML loss for method ``name``: ``spec.defaults`` merged under your ``kwargs``.

    >>> loss = get_loss("proxy_anchor", num_classes=100, embedding_size=128)  # doctest: +SKIP
    """
    return build_loss(get_method(name), num_classes, embedding_size, **kwargs)


def get_trainer_hooks(name: str, **kwargs):
    """The method's :class:`~pml_anchors.TrainerHooks` (a no-op one if it declares none)."""
    spec = get_method(name)
    return build_trainer_hooks(spec, **kwargs)


def build_trainer_hooks(spec: MethodSpec, **kwargs):
    from .trainer_hooks import TrainerHooks

    if spec.trainer_hooks is None:
        return TrainerHooks(**kwargs)
    factory = resolve_object(spec.trainer_hooks, what=f"trainer_hooks of method {spec.name!r}")
    hooks = factory(**kwargs)
    missing = [m for m in ("end_of_iteration_hook", "end_of_epoch_hook") if not callable(getattr(hooks, m, None))]
    if missing:
        raise InvalidMethodSpec(
            f"trainer_hooks of method {spec.qualified_name!r} returned {hooks!r}, which lacks {', '.join(missing)}"
        )
    return hooks


def _accepts(cls: type, param: str) -> bool:
    """Whether ``cls(...)`` accepts keyword ``param`` (following ``**kwargs`` up the MRO)."""
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        try:
            params = inspect.signature(vars(klass)["__init__"]).parameters
        except (TypeError, ValueError):
            return False
        if param in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False
