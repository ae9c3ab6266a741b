"""pml-anchors: anchor- and proxy-based metric learning methods as plugins for pytorch-metric-learning.

Importing this package is cheap: it imports neither torch nor any plugin. Plugins are loaded the
first time the registry is touched (``list_methods``, ``get_method``, ``get_loss``, ...).

>>> import pml_anchors
>>> loss = pml_anchors.get_loss("proxy_anchor", num_classes=100, embedding_size=128)  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import (
    DuplicateMethodError,
    IncompatiblePluginError,
    InvalidMethodSpec,
    PluginError,
    PluginLoadError,
    PluginLoadWarning,
    UnknownMethodError,
)
from .hookspecs import hookimpl, hookspec
from .plugins import get_plugins, load_plugins, register_plugin, reset, unregister_plugin
from .registry import (
    MethodSpec,
    get_initializer,
    get_loss,
    get_method,
    get_trainer_hooks,
    list_initializers,
    list_methods,
)

__version__ = "0.1.0"
#: Version of the plugin contract (hookspecs + MethodSpec fields). Plugins may depend on
#: ``pml-anchors>=0.1,<0.2``; hooks added later must be implemented with ``optionalhook=True``.
PLUGIN_API_VERSION = "0.1"

# Heavy (torch/PML) objects are imported on first attribute access.
_LAZY = {
    "AnchorLoss": "pml_anchors.losses",
    "TrainerHooks": "pml_anchors.trainer_hooks",
    "chain_hooks": "pml_anchors.trainer_hooks",
    "load_trained": "pml_anchors.inference",
    "param_groups": "pml_anchors.optim",
    "RecallAtKCalculator": "pml_anchors.recall_at_k",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pml_anchors' has no attribute {name!r}")


__all__ = [
    "AnchorLoss",
    "DuplicateMethodError",
    "IncompatiblePluginError",
    "InvalidMethodSpec",
    "MethodSpec",
    "PLUGIN_API_VERSION",
    "PluginError",
    "PluginLoadError",
    "PluginLoadWarning",
    "RecallAtKCalculator",
    "TrainerHooks",
    "UnknownMethodError",
    "chain_hooks",
    "get_initializer",
    "get_loss",
    "get_method",
    "get_plugins",
    "get_trainer_hooks",
    "hookimpl",
    "hookspec",
    "list_initializers",
    "list_methods",
    "load_plugins",
    "load_trained",
    "param_groups",
    "register_plugin",
    "reset",
    "unregister_plugin",
]
