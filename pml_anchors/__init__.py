"""pml-anchors: anchor- and proxy-based metric learning methods as plugins for pytorch-metric-learning.

The layers, each importing only those below it (``docs/architecture.md``): :mod:`pml_anchors.cli` →
:mod:`pml_anchors.app` → :mod:`pml_anchors.evaluation` / :mod:`pml_anchors.testing` → :mod:`pml_anchors.losses` →
:mod:`pml_anchors.anchors` → :mod:`pml_anchors.plugin` → :mod:`pml_anchors.errors` / :mod:`pml_anchors.validators` /
:mod:`pml_anchors.devices` / :mod:`pml_anchors.version`.

Importing this package is cheap: it imports neither torch nor any plugin. Plugins are loaded the
first time the registry is touched (``list_methods``, ``get_method``, ``get_loss``, ...).

>>> import pml_anchors
>>> loss = pml_anchors.get_loss("proxy_anchor", num_classes=100, embedding_size=128)  # doctest: +SKIP
"""

from __future__ import annotations

from .errors import (
    DuplicateMethodError,
    IncompatiblePluginError,
    InvalidMethodSpec,
    PluginError,
    PluginLoadError,
    PluginLoadWarning,
    UnknownMethodError,
)
from .plugin import (
    MethodSpec,
    TrainerHooks,
    chain_hooks,
    get_initializer,
    get_loss,
    get_method,
    get_plugins,
    get_trainer_hooks,
    hookimpl,
    hookspec,
    list_datasets,
    list_initializers,
    list_methods,
    load_plugins,
    register_plugin,
    reset,
    tester_kwargs,
    unregister_plugin,
)
from .plugin.lazy import lazy_exports
from .version import PLUGIN_API_VERSION, __version__

# Heavy (torch/PML) objects are imported on first attribute access, by name: the package root sits below every
# layer (docs/architecture.md), so it names the modules above it instead of importing them.
_LAZY = {
    "AnchorLoss": "pml_anchors.losses",
    "param_groups": "pml_anchors.losses",
    "loss_optimizers": "pml_anchors.losses",
    "RecallAtKCalculator": "pml_anchors.evaluation",
    "load_trained": "pml_anchors.app.inference",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "__version__",
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
    "list_datasets",
    "list_initializers",
    "list_methods",
    "load_plugins",
    "load_trained",
    "loss_optimizers",
    "param_groups",
    "register_plugin",
    "reset",
    "tester_kwargs",
    "unregister_plugin",
]
