"""A trained run's models and loss, rebuilt from its checkpoint for evaluation (``pml-anchors eval``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .checkpoints import load_checkpoint, trained_epoch
from .resume import config_for_checkpoint
from .session import Session, build, evaluate_session

__all__ = ["evaluate_checkpoint", "session_from_checkpoint"]


def session_from_checkpoint(path: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> Session:
    """The models and loss of a checkpoint, rebuilt from its config for evaluation (no trainer).

    ``overrides`` replace config fields (``device``, ``dataset``, ``data_root``, ``protocol``,
    ``test_limit``, ...); ``None`` values are ignored. The loss keeps the checkpoint's
    ``num_classes`` and the models its ``backbone``/``embedding_size`` (:func:`config_for_checkpoint`).
    """
    checkpoint = path if isinstance(path, Mapping) else load_checkpoint(path)
    config = config_for_checkpoint(checkpoint, **overrides)
    return build(config, resume=checkpoint, num_classes=checkpoint["num_classes"], with_trainer=False)


def evaluate_checkpoint(path: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """Rebuild a run from its checkpoint's config and evaluate it.

    ``overrides`` replace config fields (``device``, ``dataset``, ``data_root``, ``protocol``,
    ``test_limit``, ...); ``None`` values are ignored. The loss keeps the checkpoint's
    ``num_classes`` and the models its ``backbone``/``embedding_size``.
    """
    checkpoint = load_checkpoint(path)
    session = session_from_checkpoint(checkpoint, **overrides)
    metrics = evaluate_session(session)
    results = {
        "checkpoint": str(path),
        "method": session.spec.name,
        "dataset": session.config.dataset,
        "protocol": session.config.protocol,
        "epoch": trained_epoch(checkpoint),  # of the weights evaluated: with --select-epoch the selected one
        "epochs_trained": session.epoch,
        "device": str(session.device),
        **metrics,
    }
    note = protocol_note(checkpoint["config"].get("protocol"), session.config.protocol)
    if note:
        results["note"] = note
    return results


def protocol_note(trained: str | None, evaluated: str) -> str | None:
    """What a protocol other than the training's means for the numbers (``None`` when they are the same)."""
    if trained is None or trained == evaluated:
        return None
    if trained == "same_class":
        return (
            "trained under same_class, evaluated under open_set: training saw the classes that open_set holds out, "
            "so this is not a held-out-class (zero-shot) result"
        )
    return (
        f"trained under {trained}, evaluated under {evaluated}: the test classes include classes training never "
        "saw, and nearest-anchor accuracy is left out (no anchor for them)"
    )
