"""Trainer hooks for F-SC: the sub-centres are fixed (eq. 6, stop-gradient), so the hooks only log geometry.

No ``metric_loss_optimizer``, warm-up or clipping is needed (Zhang & Gong, arXiv 2203.12928, §3.2 and §4.2
train the backbone only). Each logged epoch records, besides the smallest angle between any two sub-centres
and their mean norm, the mean cosine between sub-centres of the same class: the quantity that tells whether
sigma^2 keeps them apart (about (1/3)/(1/3 + d sigma^2) at initialisation; METHODS.md §5.2 item 7).
"""

from __future__ import annotations

from typing import Any

from pml_anchors.trainer_hooks import TrainerHooks, anchor_geometry, metric_loss_of

__all__ = ["FSCTrainerHooks", "intra_class_cosine"]


def intra_class_cosine(anchors) -> float:
    """Mean cosine between distinct sub-centres of the same class for (K, s, d) anchors; nan if s = 1."""
    import torch

    w = anchors.detach().to(torch.float64)
    s = w.shape[1]
    if w.ndim != 3 or s < 2:
        return float("nan")
    unit = torch.nn.functional.normalize(w, dim=2)
    summed = unit.sum(dim=1)  # sum_{j,k} cos_jk = ||sum_j u_j||^2; the diagonal contributes s (0 for zero rows)
    diagonal = unit.square().sum(dim=(1, 2))
    off = (summed.square().sum(dim=1) - diagonal) / (s * (s - 1))
    return float(off.mean())


class FSCTrainerHooks(TrainerHooks):
    """Geometry logging for F-SC inside PML trainers (no optimizer, no schedule).

    :param log_geometry_every: append ``{"epoch", "min_anchor_angle_deg", "mean_anchor_norm",
        "intra_class_cos"}`` to :attr:`history` every this many epochs; 0 disables.
    """

    def end_of_epoch_hook(self, trainer: Any) -> bool:
        if self.log_geometry_every and trainer.epoch % self.log_geometry_every == 0:
            loss = metric_loss_of(trainer)
            record = {"epoch": trainer.epoch, **anchor_geometry(loss)}
            anchors = getattr(loss, "anchors", None)
            if anchors is not None and anchors.ndim == 3:
                record["intra_class_cos"] = intra_class_cosine(anchors)
            self.history.append(record)
        return True
