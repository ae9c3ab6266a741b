"""Miner-free trainer hooks for PML's trainers, and how to compose and attach them.

PML's ``BaseTrainer`` calls ``end_of_iteration_hook(trainer)`` after every optimizer step and
``end_of_epoch_hook(trainer)`` after every epoch; an epoch hook returning ``False`` stops training.
The base :class:`TrainerHooks` records the loss's geometry (``loss.geometry()``, which every
:class:`~pml_anchors.AnchorLoss` declares) every epoch; a method's subclass adds its training recipe (warm-up,
frozen BatchNorm, gradient clipping, ...) only if it has one. Because PML has no "before training" hook, call
:func:`attach_hooks` (or :meth:`TrainerHooks.attach`) once after building the trainer::

    hooks = pml_anchors.get_trainer_hooks("proxy_anchor")
    trainer = MetricLossOnly(..., end_of_iteration_hook=hooks.end_of_iteration_hook,
                             end_of_epoch_hook=chain_hooks(hooks.end_of_epoch_hook, my_hook))
    hooks.attach(trainer)
    trainer.train(num_epochs=3)

Nothing here imports torch or PML.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from ..validators import check_int

__all__ = [
    "TrainerHooks",
    "attach_hooks",
    "chain_hooks",
    "loss_geometry",
    "metric_loss_of",
    "pml_progress_warning_hidden",
    "unstepped_loss_parameters",
]

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


def unstepped_loss_parameters(trainer: Any) -> list[str]:
    """Names of the metric loss's trainable parameters that none of ``trainer.optimizers`` holds."""
    loss = metric_loss_of(trainer)
    named = getattr(loss, "named_parameters", None)
    if not callable(named):
        return []
    optimizers = (getattr(trainer, "optimizers", None) or {}).values()
    stepped = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    return [name for name, param in named() if param.requires_grad and id(param) not in stepped]


def loss_geometry(loss: Any) -> dict[str, Any]:
    """``loss.geometry()`` (the anchors' diagnostics a loss declares), or ``{}`` for a loss without one (PML's)."""
    geometry = getattr(loss, "geometry", None)
    return dict(geometry()) if callable(geometry) else {}


class TrainerHooks:
    """Base class of a method's trainer hooks; also the default of a method that declares none.

    :param log_geometry_every: append ``{"epoch": ..., **loss.geometry()}`` to :attr:`history` every this many
        epochs (the smallest inter-anchor angle, the mean anchor norm and what the method adds); 0 disables.
    """

    def __init__(self, log_geometry_every: int = 1, **kwargs: Any):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected options: {', '.join(sorted(kwargs))}")
        self.log_geometry_every = check_int(log_geometry_every, "log_geometry_every", minimum=0)
        self.history: list[dict[str, Any]] = []

    def attach(self, trainer: Any, start_epoch: int = 1) -> None:
        """Prepare a PML trainer before ``trainer.train(start_epoch, ...)`` (install clippers, freeze
        layers, ...). ``start_epoch > 1`` means a resumed run (e.g. skip a finished warm-up).

        The base class warns (``RuntimeWarning``) when the loss has trainable parameters (learnable anchors or
        proxies) that no optimizer of the trainer steps: they would silently keep their initial values.
        Subclasses that override this call ``super().attach(trainer, start_epoch)``."""
        unstepped = unstepped_loss_parameters(trainer)
        if unstepped:
            loss = metric_loss_of(trainer)
            warnings.warn(
                f"{type(loss).__name__} has trainable parameters that no optimizer of the trainer steps "
                f"({', '.join(unstepped)}); they will stay at their initial values. Add e.g. "
                "optimizers['metric_loss_optimizer'] = torch.optim.Adam(pml_anchors.param_groups(loss, lr, spec)) "
                "(the method's lr multipliers) or torch.optim.Adam(loss.parameters(), lr=1e-3).",
                RuntimeWarning,
                stacklevel=2,
            )

    def end_of_iteration_hook(self, trainer: Any) -> None:
        return None

    def end_of_epoch_hook(self, trainer: Any) -> bool:
        if self.log_geometry_every and trainer.epoch % self.log_geometry_every == 0:
            self.history.append({"epoch": trainer.epoch, **loss_geometry(metric_loss_of(trainer))})
        return True


def attach_hooks(hooks: Any, trainer: Any, start_epoch: int = 1) -> None:
    """``hooks.attach(trainer)`` (when the hooks have one) before ``trainer.train()``, telling hooks where a
    resumed run starts.

    ``start_epoch`` is passed to ``attach`` when it accepts it, and is also set as
    ``trainer.start_epoch`` (with ``trainer.epoch = start_epoch - 1``; PML sets ``epoch`` only inside
    ``train()``).
    """
    trainer.start_epoch = start_epoch
    trainer.epoch = start_epoch - 1
    if not callable(getattr(hooks, "attach", None)):  # optional: PML's protocol is only the two hook methods
        return
    try:
        accepts = "start_epoch" in inspect.signature(hooks.attach).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts:
        hooks.attach(trainer, start_epoch=start_epoch)
    else:
        hooks.attach(trainer)


@contextlib.contextmanager
def pml_progress_warning_hidden() -> Iterator[None]:
    """Hide the ``UserWarning`` PML's trainers raise every iteration by formatting the loss tensor for their
    progress bar ("Converting a tensor with requires_grad=True to a scalar"); nothing else is filtered."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
        yield
