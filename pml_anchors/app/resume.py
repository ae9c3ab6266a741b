"""Resuming a run from its checkpoint (the format: :mod:`pml_anchors.app.checkpoints`): which config fields must
match, loading every state into a built session, and the config that rebuilds a checkpoint's models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .checkpoints import CheckpointError, plain, trained_weights
from .config import TrainConfig, field_default
from .lr_schedules import load_scheduler_state

__all__ = ["RESUME_KEYS", "check_resume", "checked_config", "checkpoint_source", "config_for_checkpoint", "load_states"]

#: config fields a resumed run must share with its checkpoint
RESUME_KEYS = (
    "method",
    "dataset",
    "protocol",
    "seed",
    "limit",
    "train_per_class",
    "loss_kwargs",
    "backbone",
    "embedding_size",
    "lr_schedule",
    "select_epoch",
)


def check_resume(config: TrainConfig, checkpoint: Mapping[str, Any]) -> None:
    saved = {k: checkpoint["config"].get(k, field_default(k)) for k in RESUME_KEYS}
    diff = [
        f"{k}={saved[k]!r} (checkpoint) vs {getattr(config, k)!r}"
        for k in RESUME_KEYS
        if saved[k] != plain(getattr(config, k))
    ]
    if diff:
        raise ValueError("cannot resume: the config differs from the checkpoint's: " + "; ".join(diff))


def checkpoint_source(checkpoint: Mapping[str, Any]) -> str:
    """How messages name a checkpoint: its file (:func:`~pml_anchors.app.checkpoints.load_checkpoint` records it)."""
    return f"checkpoint {checkpoint.get('_path', '(in memory)')}"


def load_states(session: Any, checkpoint: Mapping[str, Any], optimizers: bool) -> None:
    source = checkpoint_source(checkpoint)
    for name in ("trunk", "embedder", "loss"):  # resuming: the last epoch's; using the model: the selected epoch's
        try:
            getattr(session, name).load_state_dict(
                checkpoint[name] if optimizers else trained_weights(checkpoint, name)
            )
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"{source}: its {name} weights do not fit the {name} its config rebuilds: {exc}"
            ) from exc
    if optimizers:
        saved = checkpoint.get("optimizers")
        if not isinstance(saved, Mapping) or set(session.optimizers) ^ set(saved):
            raise CheckpointError(
                f"{source}: its optimizers {sorted(saved) if isinstance(saved, Mapping) else saved!r} do not match "
                f"{sorted(session.optimizers)}: it cannot be resumed (pml-anchors eval still reads it)"
            )
        for key, opt in session.optimizers.items():
            try:
                opt.load_state_dict(saved[key])
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{source}: its {key} state does not fit: {exc}") from exc
        schedulers = session.trainer.lr_schedulers if session.trainer is not None else {}
        for key, state in (checkpoint.get("lr_schedulers") or {}).items():
            if key in schedulers:
                load_scheduler_state(schedulers[key], state)
        if session.scaler is not None and checkpoint.get("scaler"):
            session.scaler.load_state_dict(checkpoint["scaler"])
    session.epoch = int(checkpoint["epoch"])
    session.start_epoch = session.epoch + 1
    session.train_seconds = float(checkpoint.get("train_seconds", 0.0))
    session.history = list(checkpoint.get("history", []))
    if optimizers and session.selection is not None:
        if not isinstance(checkpoint.get("selection"), Mapping):
            raise CheckpointError(f"{source}: it has no selection state, so its run cannot go on selecting epochs")
        session.selection.load_state_dict(checkpoint["selection"])


def config_for_checkpoint(checkpoint: Mapping[str, Any], **overrides: Any) -> TrainConfig:
    """The config that rebuilds a checkpoint's models and loss to load its weights into (no training).

    ``overrides`` replace config fields (``None`` values are ignored). The models keep the checkpoint's
    ``backbone``/``embedding_size``; nothing is written (``output=None``) or compiled, and no backbone weights file
    is read (``weights_path`` dropped: the checkpoint has the trained weights).
    """
    values = dict(checkpoint["config"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    backbone_kwargs = {k: v for k, v in values.get("backbone_kwargs", {}).items() if k != "weights_path"}
    values.update(
        embedding_size=checkpoint["embedding_size"],
        backbone=checkpoint["backbone"],
        backbone_kwargs=backbone_kwargs,
        output=None,
        select_epoch=None,  # a selected run's checkpoint holds the selected weights: evaluate them on the test split
        class_parallel=False,  # its checkpoint holds the full anchor set: one process reads it
        compile=False,
        tensorboard=None,
    )
    return checked_config(values, checkpoint)


def checked_config(values: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> TrainConfig:
    """``TrainConfig.from_dict(values)``, an invalid stored value named as the checkpoint's fault."""
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint_source(checkpoint)}: its config is not valid: {exc}") from exc
