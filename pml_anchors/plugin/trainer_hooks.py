"""Miner-free trainer hooks for PML's trainers, and how to compose them.

PML's ``BaseTrainer`` calls ``end_of_iteration_hook(trainer)`` after every optimizer step and
``end_of_epoch_hook(trainer)`` after every epoch; an epoch hook returning ``False`` stops training.
A method's :class:`TrainerHooks` carries its training recipe (warm-up, frozen BatchNorm, gradient
clipping, ...) plus geometry logging. Because PML has no "before training" hook, call
:meth:`TrainerHooks.attach` once after building the trainer (``pml_anchors.training`` does)::

    hooks = pml_anchors.get_trainer_hooks("proxy_anchor")
    trainer = MetricLossOnly(..., end_of_iteration_hook=hooks.end_of_iteration_hook,
                             end_of_epoch_hook=chain_hooks(hooks.end_of_epoch_hook, my_hook))
    hooks.attach(trainer)
    trainer.train(num_epochs=3)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Hook = Callable[[Any], Any]


def chain_hooks(*hooks: Hook | None) -> Hook:
    """One PML hook that calls each given hook in order; returns ``False`` if any returned ``False``."""
    active = [h for h in hooks if h is not None]

    def chained(trainer: Any) -> bool:
        keep_going = True
        for hook in active:
            if hook(trainer) is False:
                keep_going = False
        return keep_going

    return chained


def metric_loss_of(trainer: Any) -> Any:
    """The loss under PML's ``metric_loss`` key (unwrapping ``DistributedLoss``/DDP wrappers)."""
    loss = trainer.loss_funcs["metric_loss"]
    for attr in ("loss", "module"):
        while hasattr(loss, attr) and not hasattr(loss, "anchors"):
            loss = getattr(loss, attr)
    return loss


class TrainerHooks:
    """Base class of a method's trainer hooks; also the no-op default.

    :param log_geometry_every: record anchor geometry (smallest inter-anchor angle, mean anchor
        norm) every this many epochs in :attr:`history`; 0 disables.
    """

    def __init__(self, log_geometry_every: int = 1, **kwargs: Any):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected options: {', '.join(sorted(kwargs))}")
        self.log_geometry_every = log_geometry_every
        self.history: list[dict[str, Any]] = []

    def attach(self, trainer: Any, start_epoch: int = 1) -> None:
        """Prepare a PML trainer before ``trainer.train(start_epoch, ...)`` (install clippers, freeze
        layers, ...). ``start_epoch > 1`` means a resumed run (e.g. skip a finished warm-up)."""

    def end_of_iteration_hook(self, trainer: Any) -> None:
        return None

    def end_of_epoch_hook(self, trainer: Any) -> bool:
        if self.log_geometry_every and trainer.epoch % self.log_geometry_every == 0:
            self.history.append({"epoch": trainer.epoch, **anchor_geometry(metric_loss_of(trainer))})
        return True


def anchor_geometry(loss: Any) -> dict[str, float]:
    """Smallest angle between distinct anchors (degrees) and their mean norm; {} without anchors."""
    anchors = getattr(loss, "anchors", None)
    if anchors is None:
        return {}
    from .anchors import min_pairwise_angle

    rows = anchors.detach().float().reshape(-1, anchors.shape[-1])
    return {
        "min_anchor_angle_deg": math.degrees(float(min_pairwise_angle(rows))) if rows.shape[0] > 1 else float("nan"),
        "mean_anchor_norm": float(rows.norm(dim=1).mean()),
    }
