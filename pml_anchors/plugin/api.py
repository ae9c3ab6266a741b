"""The public functions of the plugin system: the registry's getters, building a method's loss and trainer hooks,
and the process-wide plugin manager (load, reset, in-process plugins, the load report).

The registry is built the first time one of the getters is called; building it is the only time plugin hooks
run. Nothing here imports torch: a loss is imported when it is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ..errors import InvalidMethodSpec
from .datasets import DatasetEntry
from .lazy import accepts_keyword, resolve_object
from .manager import PluginManager
from .registry import Registry
from .spec import MethodSpec
from .trainer_hooks import TrainerHooks

__all__ = [
    "build_loss",
    "build_trainer_hooks",
    "find_datasets",
    "get_initializer",
    "get_loss",
    "get_method",
    "get_plugin_manager",
    "get_plugins",
    "get_trainer_hooks",
    "list_datasets",
    "list_initializers",
    "list_methods",
    "load_plugins",
    "register_plugin",
    "registered_names_only",
    "reset",
    "resolve_initializer",
    "tester_kwargs",
    "unregister_plugin",
]

_MANAGER: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = PluginManager()
    return _MANAGER


def load_plugins() -> PluginManager:
    """Load every plugin now (normally done lazily on first registry access)."""
    manager = get_plugin_manager()
    manager.registry()
    return manager


def reset() -> None:
    """Forget every loaded plugin and in-process registration; the next access reloads (tests)."""
    global _MANAGER
    _MANAGER = None


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register an in-process plugin (a module, class or object with ``@hookimpl`` functions).

    Handy in notebooks and tests; returns the name it was registered under.
    """
    return get_plugin_manager().register_plugin(plugin, name)


def unregister_plugin(name: str) -> None:
    """Remove an in-process plugin registered with :func:`register_plugin`."""
    get_plugin_manager().unregister_plugin(name)


def get_plugins(all: bool = True) -> list[dict[str, Any]]:  # noqa: A002 - mirrors `pml-anchors plugins --all`
    """The load report: one dict per plugin with name, version, hooks, methods, status and error.

    ``all=False`` hides the core and the built-in distributions of this repository.
    """
    reports = get_plugin_manager().plugin_reports()
    return [r.as_dict() for r in reports if all or not r.builtin]


def _registry() -> Registry:
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


#: Set while building from a file (a checkpoint): what it names, not the user (see :func:`registered_names_only`).
_NAMES_FROM: ContextVar[str | None] = ContextVar("pml_anchors_names_from", default=None)


@contextmanager
def registered_names_only(source: str) -> Iterator[None]:
    """Inside, a ``"module:attr"`` string that is not a registered initializer is refused instead of imported.

    For everything built from a file (a checkpoint's stored options, e.g. ``anchors="somemod:make"``): resolving such a
    string would import any module on ``sys.path`` and call it with arguments from the file. Registered names (the
    installed plugins') still resolve. ``source`` names the file in the error.
    """
    token = _NAMES_FROM.set(source)
    try:
        yield
    finally:
        _NAMES_FROM.reset(token)


def resolve_initializer(ref: str) -> Callable:
    """An ``anchors=``/``initializer`` string as a callable: a registered initializer (``"simplex"``, or qualified
    ``"plugin:simplex"``), else a lazy ``"module:function"`` (never inside :func:`registered_names_only`)."""
    if ":" in ref and ref not in _registry().initializers:
        source = _NAMES_FROM.get()
        if source is not None:
            raise ValueError(
                f"{source} names anchors={ref!r}, which is not a registered initializer: a file may name only "
                "installed initializers (resolving a 'module:attr' string would import and run code the file "
                f"chooses). Registered: {', '.join(sorted(_registry().initializers))}"
            )
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


def list_datasets() -> list[DatasetEntry]:
    """Every dataset the plugins register (``register_datasets``), sorted by qualified name. The application's
    built-in datasets are not plugins': ``pml_anchors.app.data.available_datasets()`` lists both."""
    return [entry for _, entry in sorted(_registry().datasets.items())]


def find_datasets(name: str) -> list[DatasetEntry]:
    """The plugins' datasets ``name`` (short or ``plugin:name``) may mean: one, several (ambiguous) or none."""
    return _registry().dataset_candidates(name)


def build_loss(spec: MethodSpec, num_classes: int, embedding_size: int | None = None, **kwargs: Any) -> Any:
    """Instantiate ``spec``'s loss; ``spec.defaults`` merged under ``kwargs``."""
    cls = spec.resolve_loss()
    options = {**spec.defaults, **kwargs}
    if spec.initializer is not None and "anchors" not in options and accepts_keyword(cls, "anchors"):
        options["anchors"] = spec.initializer
    if embedding_size is None:
        return cls(num_classes, **options)
    return cls(num_classes, embedding_size, **options)


def get_loss(name: str, num_classes: int, embedding_size: int | None = None, **kwargs: Any) -> Any:
    """A ready PML loss for method ``name``: ``spec.defaults`` merged under your ``kwargs``.

    >>> loss = get_loss("proxy_anchor", num_classes=100, embedding_size=128)  # doctest: +SKIP
    """
    return build_loss(get_method(name), num_classes, embedding_size, **kwargs)


def get_trainer_hooks(name: str, **kwargs: Any) -> Any:
    """The method's :class:`~pml_anchors.TrainerHooks` (a no-op one if it declares none)."""
    spec = get_method(name)
    return build_trainer_hooks(spec, **kwargs)


def build_trainer_hooks(spec: MethodSpec, **kwargs: Any) -> Any:
    """``spec``'s trainer hooks built with ``kwargs``: the base :class:`TrainerHooks` when it declares none, else its
    factory's result, which must have PML's ``end_of_iteration_hook`` and ``end_of_epoch_hook``."""
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


def tester_kwargs(method: str | MethodSpec) -> dict[str, Any]:
    """What PML's ``GlobalEmbeddingSpaceTester`` needs to evaluate ``method`` in the space it was trained in:
    ``{"normalize_embeddings": spec.normalize_embeddings}``. E-NCM and CAM train on raw Euclidean distances and are
    scored without normalisation; PML's tester normalises by default.

    >>> tester = GlobalEmbeddingSpaceTester(**pml_anchors.tester_kwargs("e_ncm"))  # doctest: +SKIP
    """
    spec = method if isinstance(method, MethodSpec) else get_method(method)
    return {"normalize_embeddings": spec.normalize_embeddings}
