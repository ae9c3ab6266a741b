"""Trainer hooks for E-NCM / C-NCM: the paper's recipe needs nothing per step, so they only log geometry.

The anchors are a fixed buffer (Hao et al., arXiv 1804.08087, §3.2: "fixed during training"), so there is
no ``metric_loss_optimizer``, no warm-up and no clipping. Each logged epoch records the anchors' smallest
pairwise angle, measured, next to the loss's :meth:`~pml_anchors_ncm.ncm_loss.NCMLoss.target_min_angle` (the
angle they were built with), so anchors that changed (``learnable=True``) show as a difference.
"""

from __future__ import annotations

import math
from typing import Any

from pml_anchors.trainer_hooks import TrainerHooks, anchor_geometry, metric_loss_of

__all__ = ["NCMTrainerHooks"]


class NCMTrainerHooks(TrainerHooks):
    """Geometry logging for NCM losses inside PML trainers (no optimizer, no schedule).

    :param log_geometry_every: append ``{"epoch", "min_anchor_angle_deg", "mean_anchor_norm",
        "target_min_angle_deg"}`` to :attr:`history` every this many epochs; 0 disables.
    """

    def end_of_epoch_hook(self, trainer: Any) -> bool:
        if self.log_geometry_every and trainer.epoch % self.log_geometry_every == 0:
            loss = metric_loss_of(trainer)
            target = getattr(loss, "target_min_angle", None)
            target = target() if callable(target) else None
            self.history.append(
                {
                    "epoch": trainer.epoch,
                    **anchor_geometry(loss),
                    "target_min_angle_deg": math.degrees(target) if target is not None else float("nan"),
                }
            )
        return True
