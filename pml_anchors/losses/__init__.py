"""What every loss of a method shares: the :class:`AnchorLoss` base, its input checks, the fused log-sum-exp
kernel, learning-rate multipliers for a loss's own parameters, and exact distributed training.

* :mod:`~pml_anchors.losses.base`: :class:`AnchorLoss` (PML ``BaseMetricLossFunction``; anchors, validation,
  cast copies, the fixed-anchor cache, ``geometry()``);
* :mod:`~pml_anchors.losses.inputs`: the embeddings/labels checks with their messages;
* :mod:`~pml_anchors.losses.logsumexp`: log-sum-exp and cross-entropy over the classes, optionally chunked;
* :mod:`~pml_anchors.losses.lr_multipliers`: :func:`param_groups` for PML's ``metric_loss_optimizer``;
* :mod:`~pml_anchors.losses.distributed`: :class:`DistributedLoss` (the global batch on every rank);
* :mod:`~pml_anchors.losses.class_parallel`: :class:`ClassParallelLoss` (each rank holds a block of the anchors);
* :mod:`~pml_anchors.losses.distances`: which PML distance a loss's maths is.

Every registered method's loss class is importable from here by name, like PML's:
``from pml_anchors.losses import ProxyAnchorLoss, CNCMLoss, RePoNetLoss``.
"""

from typing import Any

from ..plugin.api import list_methods
from .base import AnchorLoss, AnchorsArg
from .class_parallel import ClassParallelLoss
from .distributed import DistributedLoss
from .lr_multipliers import loss_optimizers, param_groups

__all__ = ["AnchorLoss", "AnchorsArg", "ClassParallelLoss", "DistributedLoss", "loss_optimizers", "param_groups"]


def _class_name(loss: Any) -> str:
    """``"pkg.mod:ProxyAnchorLoss"`` or the class itself -> ``"ProxyAnchorLoss"``."""
    return loss.rpartition(":")[2].rpartition(".")[2] if isinstance(loss, str) else getattr(loss, "__name__", "")


def __getattr__(name: str) -> Any:
    """Every registered method's loss class by its name, the way PML's are imported
    (``from pml_anchors.losses import ProxyAnchorLoss, CNCMLoss``): found in the registry (which loads the plugins,
    not their loss modules) and imported on first access."""
    for spec in list_methods():
        if _class_name(spec.loss) == name:
            return spec.resolve_loss()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r} (and no registered method's loss is named so)")


def __dir__() -> list[str]:
    return sorted({*globals(), *(_class_name(spec.loss) for spec in list_methods())})
