"""Trainer hooks for the CAM loss (Ghita & Ionescu).

Recipe: the class anchors are an ``nn.Parameter`` of the loss, so PML's trainer must step them through
``optimizers["metric_loss_optimizer"]``. The paper trains anchors with the same optimizer as the network,
Adam at lr 1e-3 for ResNets (1e-4 for Swin-T), no learning-rate multiplier::

    optimizers["metric_loss_optimizer"] = torch.optim.Adam(loss.parameters(), lr=1e-3)

and decays the lr by 0.5 on a 9-epoch plateau (``ReduceLROnPlateau(factor=0.5, patience=9)``; ``pml-anchors train
--lr-schedule plateau --lr-gamma 0.5 --lr-patience 9``). Retrieval uses raw (not L2-normalised) embeddings.
:meth:`CAMHooks.attach` warns when the anchors would not be stepped; the epoch hook logs the anchor
geometry against the loss's targets.
"""

from __future__ import annotations

import warnings
from typing import Any

from pml_anchors.trainer_hooks import TrainerHooks, metric_loss_of


class CAMHooks(TrainerHooks):
    """Geometry logging for :class:`~pml_anchors_cam.cam_loss.ClassAnchorMarginLoss`.

    Each logged epoch adds to :attr:`history`, besides the base class's angle and mean norm:
    ``min_anchor_distance`` against ``target_min_distance`` (2m), ``min_anchor_norm`` against
    ``target_min_norm`` (p), and ``pairs_within_margin`` (anchor pairs the repeller still pushes).
    """

    def attach(self, trainer: Any, start_epoch: int = 1) -> None:
        """Warn if learnable anchors are not in ``optimizers["metric_loss_optimizer"]`` (they would never move)."""
        anchors = getattr(metric_loss_of(trainer), "anchors", None)
        if anchors is None or not getattr(anchors, "requires_grad", False):
            return
        optimizer = getattr(trainer, "optimizers", {}).get("metric_loss_optimizer")
        stepped = optimizer is not None and any(p is anchors for g in optimizer.param_groups for p in g["params"])
        if not stepped:
            warnings.warn(
                "CAM's class anchors are learnable but no optimizers['metric_loss_optimizer'] steps them; they "
                "will stay at their initial values. Add e.g. torch.optim.Adam(loss.parameters(), lr=1e-3).",
                RuntimeWarning,
                stacklevel=2,
            )

    def end_of_epoch_hook(self, trainer: Any) -> bool:
        n_before = len(self.history)
        keep_going = super().end_of_epoch_hook(trainer)
        loss = metric_loss_of(trainer)
        if len(self.history) > n_before and hasattr(loss, "geometry"):
            self.history[-1].update(loss.geometry())
        return keep_going
