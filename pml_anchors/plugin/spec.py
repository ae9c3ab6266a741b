"""What a plugin registers: :class:`MethodSpec` (one method) and :class:`InitializerEntry` (one geometry), and the
checks a registration passes (:func:`validate_spec`). Pure data: nothing here imports torch, and PML only to check
a loss class.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import IncompatiblePluginError, InvalidMethodSpec
from ..version import PLUGIN_API_VERSION
from .lazy import describe_object, is_lazy_path, resolve_object
from .search_space import Param, check_search_space

__all__ = ["InitializerEntry", "MethodSpec", "check_loss_class", "is_initializer_name", "validate_spec"]


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
    :param search_space: the hyper-parameters ``pml-anchors tune`` searches, name -> :class:`~pml_anchors.plugin.
        search_space.Param` (``log_uniform(1e-5, 1e-2)``, ``choice(...)``): loss keyword arguments and the reserved
        ``lr``, ``weight_decay`` and ``loss_lr_multiplier`` (:mod:`pml_anchors.plugin.search_space`); empty: the
        method declares none.
    :param counterpart: what benchmark reports compare the method with, paired seed by seed: a PML baseline
        (``"baseline:pml_contrastive"``, listed by ``pml-anchors bench --help``) or another registered method;
        ``None`` (default): the baseline that runs the loss's ``pml_counterpart``, if there is one.
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
    search_space: Mapping[str, Param] = field(default_factory=dict)
    counterpart: str | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}" if self.plugin else self.name

    def resolve_loss(self) -> type:
        """The loss class, importing a lazy ``"module:Class"`` string if needed."""
        cls = resolve_object(self.loss, what=f"loss of method {self.name!r}")
        check_loss_class(cls, f"method {self.name!r}")
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
            "search_space": {k: p.as_dict() for k, p in self.search_space.items()},
            "counterpart": self.counterpart,
        }


def is_initializer_name(value: str) -> bool:
    plugin, sep, name = value.rpartition(":")
    return name.isidentifier() and (not sep or bool(plugin.strip()))


def check_loss_class(cls: Any, where: str) -> None:
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
        check_loss_class(spec.loss, where)
    for field_name in ("initializer", "trainer_hooks"):
        value = getattr(spec, field_name)
        if value is None or callable(value) or is_lazy_path(value):
            continue
        if field_name == "initializer" and isinstance(value, str) and is_initializer_name(value):
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
    try:
        check_search_space(spec.search_space)
    except (TypeError, ValueError) as exc:
        raise InvalidMethodSpec(f"{where}: {exc}") from exc
    if spec.counterpart is not None and not (
        isinstance(spec.counterpart, str) and is_initializer_name(spec.counterpart.removeprefix("baseline:"))
    ):
        raise InvalidMethodSpec(
            f"{where}: counterpart must be None, 'baseline:<name>' or a method's name ('name' or 'plugin:name'), "
            f"got {spec.counterpart!r}"
        )
    _check_requires_api(spec.requires_api, where)
    return spec


def _check_requires_api(requires_api: Any, where: str) -> None:
    """``requires_api`` must be a PEP 440 specifier set that admits the running ``PLUGIN_API_VERSION``."""
    if requires_api is None:
        return
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

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
