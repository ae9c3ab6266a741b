"""The plugin contract: pluggy markers and hook specifications.

Plugins import the implementation marker from the package root::

    from pml_anchors import hookimpl, MethodSpec

    @hookimpl
    def register_methods(register):
        register(MethodSpec(name="my_loss", loss="my_pkg.loss:MyLoss"))

Hooks are called once, when the registry is first built (the first call to
``list_methods``/``get_method``/``get_loss``/...), never inside a training loop.
Each plugin's implementations are called on their own so that every registration
records the distribution that made it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # the spec is only named in the hooks' signatures
    from .spec import MethodSpec

PROJECT_NAME = "pml_anchors"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_methods(register: Callable[[MethodSpec], None]) -> None:
    """Register metric-learning methods, each bundled as one :class:`~pml_anchors.MethodSpec`.

    :param register: ``register(spec: MethodSpec) -> None``. Call it once per method. The
        registry validates the spec (loss is a PML ``BaseMetricLossFunction`` subclass or a lazy
        ``"module:Class"`` string, names are identifiers, hooks and initializers are callables or
        lazy strings) and raises :class:`~pml_anchors.InvalidMethodSpec` naming your plugin if not.

    Called once per plugin when the registry is first built, right after that plugin's own
    ``register_initializers``. Initializer names in a spec are resolved only when a loss is built,
    so a method may name an initializer that another plugin registers.

    Example::

        @hookimpl
        def register_methods(register):
            register(MethodSpec(name="center", loss="pml_anchors_center.loss:CenterLoss",
                                initializer="one_hot", paper="Wen et al., ECCV 2016"))

    .. versionadded:: 0.1
    """


@hookspec
def register_initializers(register: Callable[..., None]) -> None:
    """Register anchor/proxy geometries that any method may use by name (``anchors="name"``).

    :param register: ``register(name: str, initializer, *, aliases=()) -> None`` where
        ``initializer`` is a callable ``f(num_classes, embedding_size, *, seed=None, **kw) -> Tensor``
        (rows = anchors) or a lazy ``"module:function"`` string.

    Called once per plugin when the registry is first built, just before that plugin's
    ``register_methods``.

    Example::

        @hookimpl
        def register_initializers(register):
            register("hadamard", hadamard_anchors)

    .. versionadded:: 0.1
    """


@hookspec
def register_datasets(register: Callable[[str, Any], None]) -> None:
    """Register datasets that ``load_dataset``, ``pml-anchors train/bench --dataset NAME`` and the benchmark use by
    name, beside the built-in ones (``digits``, ``mnist``, ``imagefolder``, ...).

    :param register: ``register(name: str, builder) -> None``. ``name`` is a lower-case identifier; ``builder`` is
        a callable ``builder(*, data_root, protocol, seed, download, **kwargs) -> DatasetSplits``
        (:class:`pml_anchors.app.data.DatasetSplits`) or a lazy ``"module:function"`` string, imported only when
        the dataset is loaded (listing plugins then imports neither the builder nor torch). ``kwargs`` are the
        user's ``--dataset-kwargs``; ``--limit``, ``--test-limit`` and ``--train-per-class`` are applied to what
        the builder returns.

    Called once per plugin when the registry is first built, after that plugin's ``register_methods``. A name that
    another plugin or a built-in dataset also has is ambiguous: ``load_dataset`` then asks for the qualified
    ``plugin:name`` (built-ins: ``pml-anchors:name``), and ``pml-anchors plugins`` lists the conflict.

    Example::

        @hookimpl
        def register_datasets(register):
            register("blobs", "my_plugin.blobs:build_blobs")

    Added within the 0.1 series, after 0.1.0: a plugin that also supports 0.1.0 marks its implementation
    ``@hookimpl(optionalhook=True)`` (see ``docs/plugins/versioning.md``).
    """
