"""Learning-rate schedules for PML's trainer, one scheduler per optimizer under PML's ``lr_schedulers`` keys.

* ``constant``: the optimizers' lr throughout; no scheduler.
* ``cosine`` (``<name>_scheduler_by_iteration``): ``lr * (1 + cos(pi t / T)) / 2`` after ``t`` of the run's
  ``T = epochs * iterations_per_epoch`` steps (F-SC's recipe, from lr 0.01).
* ``step`` (``<name>_scheduler_by_epoch``): ``lr * gamma ** k`` once ``k`` milestones have passed; a milestone
  ``e`` lowers the lr from epoch ``e + 1`` on (``MultiStepLR`` semantics). Proxy Anchor's ``StepLR(10, 0.5)``
  over 40 epochs is milestones ``[10, 20, 30]``, gamma 0.5; RePoNet's CIFAR recipe ``[150, 250]``, gamma 0.1.
* ``plateau`` (``<name>_scheduler_by_plateau``): ``ReduceLROnPlateau(mode="min", factor=gamma, patience)`` on
  the epoch's mean training loss. CAM: gamma 0.5, patience 9; NCM: "lr / 10 on plateau" (gamma 0.1).

PML's trainer steps the iteration and epoch keys itself; :func:`step_plateau` steps the plateau key at the end
of every epoch (PML's own ``HookContainer`` would pass a validation accuracy; these runs have no validation
split, and stepping on the test metrics would leak the test set into training, so the training loss decides).
Every optimizer gets its own scheduler, so the loss parameters keep their lr multiplier throughout. The step
and cosine factors are functions of the config (``LambdaLR``), so a resumed run follows the config it is
resumed with; a plateau scheduler resumes with its counters (best loss, bad epochs) from the checkpoint.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..validators import check_int, check_real

LR_SCHEDULES = ("constant", "cosine", "step", "plateau")
DEFAULT_GAMMA = 0.1
DEFAULT_PATIENCE = 10  # torch's ReduceLROnPlateau default
#: when PML's trainer steps each schedule's scheduler: the key into its ``allowed_lr_scheduler_key_suffixes``
_STEPPED_BY = {"cosine": "iteration", "step": "epoch", "plateau": "plateau"}
#: plateau-scheduler fields the config owns: on resume these come from the config, not the checkpoint
CONFIG_OWNED_STATE = ("factor", "patience")


def check_schedule(
    schedule: str, epochs: int, milestones: Sequence[int] = (), gamma: float | None = None, patience: int | None = None
) -> list[int]:
    """Validate a schedule's settings (``ValueError``/``TypeError`` naming what was expected); returns the
    milestones as a list. Settings a schedule does not use are an error, so none is silently ignored."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
        raise TypeError(f"lr_milestones must be a list of epochs, got {milestones!r}")
    milestones = list(milestones)
    if any(isinstance(m, bool) or not isinstance(m, int) for m in milestones):
        raise TypeError(f"lr_milestones must be whole epochs (ints), got {milestones!r}")
    if schedule == "step":
        if not milestones:
            raise ValueError(
                "lr_schedule='step' needs lr_milestones: the epochs after which the lr is multiplied by lr_gamma, "
                "e.g. [10, 20]"
            )
        if milestones[0] < 1 or any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"lr_milestones must be increasing epochs >= 1, got {milestones}")
        if milestones[-1] >= epochs:
            raise ValueError(
                f"lr_milestones must be < epochs={epochs} (a milestone e lowers the lr from epoch e + 1 on), "
                f"got {milestones}"
            )
    elif milestones:
        raise ValueError(f"lr_milestones {milestones} only apply to lr_schedule='step', not {schedule!r}")
    if gamma is not None:
        if schedule not in ("step", "plateau"):
            raise ValueError(f"lr_gamma only applies to lr_schedule 'step' or 'plateau', not {schedule!r}")
        check_real(gamma, "lr_gamma", minimum=0.0, maximum=1.0, open_min=True, open_max=True)
    if patience is not None:
        if schedule != "plateau":
            raise ValueError(f"lr_patience only applies to lr_schedule='plateau', not {schedule!r}")
        check_int(patience, "lr_patience (epochs without improvement)", minimum=0)
    return milestones


def make_lr_schedulers(
    optimizers: Mapping[str, torch.optim.Optimizer],
    trainer: Any,
    *,
    schedule: str,
    epochs: int,
    milestones: Sequence[int] = (),
    gamma: float | None = None,
    patience: int | None = None,
) -> dict[str, Any]:
    """PML ``lr_schedulers`` for ``schedule`` (see the module docstring), one per optimizer, keyed
    ``<optimizer name without _optimizer><suffix>`` with the PML trainer's own suffix for when it is stepped.
    ``trainer.iterations_per_epoch`` (set by PML when training starts) is read when the cosine factor is
    computed."""
    milestones = check_schedule(schedule, epochs, milestones, gamma, patience)
    if schedule == "constant":
        return {}
    gamma = DEFAULT_GAMMA if gamma is None else float(gamma)

    def cosine(step: int) -> float:
        total = epochs * (getattr(trainer, "iterations_per_epoch", None) or 0)
        if step <= 0 or total <= 0:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    def stepped(epochs_done: int) -> float:
        return gamma ** bisect.bisect_right(milestones, epochs_done)

    def scheduler(opt: torch.optim.Optimizer) -> Any:
        if schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=gamma, patience=DEFAULT_PATIENCE if patience is None else patience
            )
        return torch.optim.lr_scheduler.LambdaLR(opt, cosine if schedule == "cosine" else stepped)

    suffix = trainer.allowed_lr_scheduler_key_suffixes[_STEPPED_BY[schedule]]
    return {key.removesuffix("_optimizer") + suffix: scheduler(opt) for key, opt in optimizers.items()}


def step_plateau(trainer: Any, epoch_loss: float | None) -> None:
    """Step the trainer's plateau schedulers with the epoch's mean training loss (PML's
    ``step_lr_plateau_schedulers``); nothing when there is none or no loss was recorded.

    A scheduler already stepped this epoch (by PML's ``HookContainer``, which steps every plateau key with a
    validation accuracy) is not stepped again; a ``RuntimeWarning`` (once per trainer) says to use one or the
    other.
    """
    suffix = trainer.allowed_lr_scheduler_key_suffixes["plateau"]
    plateau = {k: v for k, v in (trainer.lr_schedulers or {}).items() if k.endswith(suffix)}
    if epoch_loss is None or not plateau:
        return
    stepped = sorted(k for k, v in plateau.items() if v.last_epoch >= trainer.epoch)
    if stepped:
        if getattr(trainer, "plateau_stepped_elsewhere", False):  # warned already
            return
        trainer.plateau_stepped_elsewhere = True
        warnings.warn(
            f"{', '.join(stepped)} already stepped in epoch {trainer.epoch} by another end-of-epoch hook (PML's "
            "HookContainer steps plateau schedulers with a validation accuracy); lr_schedule='plateau' steps them "
            "on the training loss. Not stepping them again: use one or the other.",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    trainer.step_lr_plateau_schedulers(float(epoch_loss))


def load_scheduler_state(scheduler: Any, state: Mapping[str, Any]) -> None:
    """``scheduler.load_state_dict(state)``, except the fields the config owns (:data:`CONFIG_OWNED_STATE`)."""
    scheduler.load_state_dict({k: v for k, v in state.items() if k not in CONFIG_OWNED_STATE})
