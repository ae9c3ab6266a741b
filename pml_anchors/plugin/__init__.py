"""The plugin contract and the registry: what a plugin author imports, and nothing of the training application.

* :mod:`~pml_anchors.plugin.hookspecs`: the pluggy markers and hook specifications;
* :mod:`~pml_anchors.plugin.spec`: :class:`MethodSpec`, what ``register_methods`` registers, and its checks;
  :mod:`~pml_anchors.plugin.datasets`: ``DatasetEntry``, what ``register_datasets`` registers;
* :mod:`~pml_anchors.plugin.registry`, :mod:`~pml_anchors.plugin.manager`, :mod:`~pml_anchors.plugin.settings`,
  :mod:`~pml_anchors.plugin.plugins_dir`, :mod:`~pml_anchors.plugin.staging`: loading plugins into the registry;
* :mod:`~pml_anchors.plugin.api`: the getters (``get_loss``, ``list_methods``, ...);
* :mod:`~pml_anchors.plugin.trainer_hooks`: the base :class:`TrainerHooks` of PML's trainer protocol;
* :mod:`~pml_anchors.plugin.template`: the ``pml-anchors new-plugin`` template.

Importing this package imports neither torch nor PML.
"""

from .api import (
    build_loss,
    build_trainer_hooks,
    get_initializer,
    get_loss,
    get_method,
    get_plugins,
    get_trainer_hooks,
    list_datasets,
    list_initializers,
    list_methods,
    load_plugins,
    register_plugin,
    reset,
    resolve_initializer,
    tester_kwargs,
    unregister_plugin,
)
from .hookspecs import hookimpl, hookspec
from .spec import MethodSpec
from .trainer_hooks import TrainerHooks, attach_hooks, chain_hooks, metric_loss_of

__all__ = [
    "MethodSpec",
    "TrainerHooks",
    "attach_hooks",
    "build_loss",
    "build_trainer_hooks",
    "chain_hooks",
    "get_initializer",
    "get_loss",
    "get_method",
    "get_plugins",
    "get_trainer_hooks",
    "hookimpl",
    "hookspec",
    "list_datasets",
    "list_initializers",
    "list_methods",
    "load_plugins",
    "metric_loss_of",
    "register_plugin",
    "reset",
    "resolve_initializer",
    "tester_kwargs",
    "unregister_plugin",
]
