"""CAM's trainer hooks: the base ones (geometry every epoch, a warning for unstepped anchors), plus the neighbour
list's check between optimizer steps.

With K > 4096 anchors (K^2 above ``pml_anchors_cam.repeller.DENSE_ENTRIES``) L_R (Ghita & Ionescu, eq. 2) sums the
pairs of an exact neighbour list. Its check after the anchors move reads sizes back to the host; run inside the
step, that would stall a GPU at every step and break a compiled graph. These hooks run it outside the step, with
:meth:`~pml_anchors_cam.cam_loss.ClassAnchorMarginLoss.refresh_neighbors` before training and after every
optimizer step (PML calls ``end_of_iteration_hook`` after ``step_optimizers``), so the step on an accelerator or
under ``torch.compile`` reads nothing back and can be captured in a CUDA graph.
"""

from __future__ import annotations

from typing import Any

from pml_anchors.plugin import TrainerHooks
from pml_anchors.plugin.trainer_hooks import metric_loss_of


def refresh_neighbors(trainer: Any) -> None:
    """``refresh_neighbors()`` of the trainer's metric loss (a no-op for a loss without one)."""
    refresh = getattr(metric_loss_of(trainer), "refresh_neighbors", None)
    if callable(refresh):
        refresh()


class CamTrainerHooks(TrainerHooks):
    """:class:`~pml_anchors.TrainerHooks` that keep CAM's neighbour list checked between optimizer steps."""

    def attach(self, trainer: Any, start_epoch: int = 1) -> None:
        super().attach(trainer, start_epoch)
        refresh_neighbors(trainer)

    def end_of_iteration_hook(self, trainer: Any) -> None:
        super().end_of_iteration_hook(trainer)
        refresh_neighbors(trainer)
