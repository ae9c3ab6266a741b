"""The checkpoint file of a run: plain ``state_dict``\\ s, the config and the epoch, in one dict.

A checkpoint is what :func:`pml_anchors.app.session.run` writes as ``checkpoint.pt`` (after every epoch by default),
what ``train --resume`` continues from and what :func:`pml_anchors.load_trained` rebuilds a model from. Every value
is something ``torch.load(weights_only=True)`` reads back (:func:`plain`), so loading one runs no pickled code.
Rebuilding a run from it (config, models, resume checks) is :mod:`pml_anchors.app.session`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "pml-anchors/checkpoint"
CHECKPOINT_VERSION = 1


def plain(value: Any) -> Any:
    """``value`` if ``torch.load(weights_only=True)`` can read it back, else its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)) or torch.is_tensor(value):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return repr(value)


def checkpoint_dict(session: Any) -> dict[str, Any]:
    """The checkpoint of a :class:`pml_anchors.app.session.Session`: plain state_dicts + config + epoch
    (``torch.load(weights_only=True)``-safe)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "config": plain(session.config.to_dict()),
        "epoch": int(session.epoch),
        "method": session.spec.qualified_name,
        "plugin_version": session.spec.plugin_version,
        "num_classes": session.num_classes,
        "embedding_size": session.embedding_size,
        "backbone": session.backbone,
        "input_shape": [int(x) for x in session.splits.input_shape],
        "class_names": list(session.splits.train_class_names),  # label -> name, for inference
        "data_info": plain(session.splits.info),  # e.g. the inputs' normalisation (mean, std)
        "trunk": session.trunk.state_dict(),
        "embedder": session.embedder.state_dict(),
        "loss": session.loss.state_dict(),
        "optimizers": {k: v.state_dict() for k, v in session.optimizers.items()},
        "lr_schedulers": {k: v.state_dict() for k, v in (session.trainer.lr_schedulers or {}).items()}
        if session.trainer is not None
        else {},
        "scaler": session.scaler.state_dict() if session.scaler is not None else None,
        "train_seconds": float(session.train_seconds),
        "history": plain(session.history),
    }


def save_checkpoint(session: Any, path: str | os.PathLike) -> Path:
    """Write :func:`checkpoint_dict` atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint_dict(session), tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pml-anchors checkpoint (written by `pml-anchors train`)")
    if data.get("format_version", 0) > CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format {data['format_version']}; this pml-anchors reads up to {CHECKPOINT_VERSION}"
        )
    return data
