"""Resuming a run from its checkpoint (the format: :mod:`pml_anchors.app.checkpoints`): which config fields must
match, loading every state into a built session, and the config that rebuilds a checkpoint's models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .checkpoints import plain
from .config import TrainConfig, field_default
from .lr_schedules import load_scheduler_state

__all__ = ["RESUME_KEYS", "check_resume", "config_for_checkpoint", "load_states"]

#: config fields a resumed run must share with its checkpoint
RESUME_KEYS = (
    "method",
    "dataset",
    "protocol",
    "seed",
    "limit",
    "loss_kwargs",
    "backbone",
    "embedding_size",
    "lr_schedule",
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


def load_states(session: Any, checkpoint: Mapping[str, Any], optimizers: bool) -> None:
    for name in ("trunk", "embedder", "loss"):
        getattr(session, name).load_state_dict(checkpoint[name])
    if optimizers:
        missing = set(session.optimizers) ^ set(checkpoint["optimizers"])
        if missing:
            raise ValueError(
                f"checkpoint optimizers {sorted(checkpoint['optimizers'])} do not match {sorted(session.optimizers)}"
            )
        for key, opt in session.optimizers.items():
            opt.load_state_dict(checkpoint["optimizers"][key])
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
        compile=False,
        tensorboard=None,
    )
    return TrainConfig.from_dict(values)
