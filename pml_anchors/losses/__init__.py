"""What every loss of a method shares: the :class:`AnchorLoss` base, its input checks, the fused log-sum-exp
kernel, learning-rate multipliers for a loss's own parameters, and exact distributed training.

* :mod:`~pml_anchors.losses.base`: :class:`AnchorLoss` (PML ``BaseMetricLossFunction``; anchors, validation,
  cast copies, the fixed-anchor cache, ``geometry()``);
* :mod:`~pml_anchors.losses.inputs`: the embeddings/labels checks with their messages;
* :mod:`~pml_anchors.losses.logsumexp`: log-sum-exp and cross-entropy over the classes, optionally chunked;
* :mod:`~pml_anchors.losses.lr_multipliers`: :func:`param_groups` for PML's ``metric_loss_optimizer``;
* :mod:`~pml_anchors.losses.distributed`: :class:`DistributedLoss` (the global batch on every rank).
"""

from .base import AnchorLoss, AnchorsArg
from .distributed import DistributedLoss
from .lr_multipliers import param_groups

__all__ = ["AnchorLoss", "AnchorsArg", "DistributedLoss", "param_groups"]
