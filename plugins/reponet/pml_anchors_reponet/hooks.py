"""Trainer hooks for Margin-RePoNet (Pernici et al., CVPR-W 2019).

The recipe needs nothing from the trainer: the classifier is a fixed buffer, so there is no
``metric_loss_optimizer`` and no proxy learning rate; the trunk/embedder optimizers do all the work
(paper: Adam lr 5e-4, batch 512 for LeNet++ on MNIST; official CIFAR code: SGD lr 0.1). The hooks log
the classifier geometry: its smallest inter-row angle against phi (they agree for the untouched polytope)
and the margin in use.
"""

from __future__ import annotations

import math
from typing import Any

from pml_anchors.trainer_hooks import TrainerHooks, metric_loss_of


class RePoNetHooks(TrainerHooks):
    """Geometry logging for :class:`~pml_anchors_reponet.reponet_loss.RePoNetLoss`.

    Each logged epoch adds to :attr:`history`: ``min_anchor_angle_deg`` and ``mean_anchor_norm`` (base
    class), ``target_min_angle_deg`` (phi), ``margin_deg`` (m) and ``geometry_ok`` (smallest angle >= phi
    up to 1e-4 degrees; false only if custom or learnable anchors drifted below phi).
    """

    def end_of_epoch_hook(self, trainer: Any) -> bool:
        n_before = len(self.history)
        keep_going = super().end_of_epoch_hook(trainer)
        if len(self.history) > n_before:
            loss = metric_loss_of(trainer)
            record = self.history[-1]
            target = getattr(loss, "target_min_angle", lambda: None)()
            if target is not None:
                record["target_min_angle_deg"] = math.degrees(target)
                record["geometry_ok"] = bool(record["min_anchor_angle_deg"] >= math.degrees(target) - 1e-4)
            if hasattr(loss, "margin"):
                record["margin_deg"] = math.degrees(float(loss.margin))
        return keep_going
