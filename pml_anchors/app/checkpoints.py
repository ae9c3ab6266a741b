"""The checkpoint file of a run: plain ``state_dict``\\ s, the config and the epoch, in one dict.

A checkpoint is what :func:`pml_anchors.app.session.run` writes as ``checkpoint.pt`` (after every epoch by default),
what ``train --resume`` continues from and what :func:`pml_anchors.load_trained` rebuilds a model from. Every value
is something ``torch.load(weights_only=True)`` reads back (:func:`plain`): reading one unpickles no code. Rebuilding
from it resolves the names it stores (the method, the anchors' initializer) against the installed plugins only
(:func:`pml_anchors.plugin.api.registered_names_only`), never as ``"module:attr"`` imports; see ``docs/security.md``.

:func:`load_checkpoint` checks what it reads: a file that is empty, truncated, corrupt, not a checkpoint, missing a
part, of the wrong type or with NaN/Inf weights is a :class:`CheckpointError` naming the file and what is wrong.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .output_folder import write_atomically

CHECKPOINT_FORMAT = "pml-anchors/checkpoint"
CHECKPOINT_VERSION = 1
#: what every checkpoint holds, and the type of each
REQUIRED = {
    "config": dict,
    "epoch": int,
    "num_classes": int,
    "embedding_size": int,
    "backbone": str,
    "input_shape": list,
    "trunk": dict,
    "embedder": dict,
    "loss": dict,
}
STATE_DICTS = ("trunk", "embedder", "loss")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: the message names the file and what is wrong with it."""


def plain(value: Any) -> Any:
    """``value`` if ``torch.load(weights_only=True)`` can read it back, else its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)) or torch.is_tensor(value):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return repr(value)


def tensors_checksum(data: Mapping[str, Any]) -> int:
    """CRC-32 of every tensor in ``data`` (nested dicts and lists, in key order) with its place and shape.

    Written with a checkpoint and checked when it is read: ``torch.load`` does not check the CRCs of its zip records,
    so a flipped bit in the weights would otherwise load as a silently different model."""
    crc = 0

    def walk(value: Any, where: str) -> None:
        nonlocal crc
        if torch.is_tensor(value):
            flat = value.detach().cpu().contiguous().reshape(-1)
            crc = zlib.crc32(f"{where}{tuple(value.shape)}{value.dtype}".encode(), crc)
            crc = zlib.crc32(flat.view(torch.uint8).numpy().data, crc)
        elif isinstance(value, Mapping):
            for key in sorted(value, key=str):
                if not (where == "" and key in ("checksum", "_path")):
                    walk(value[key], f"{where}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}/{i}")

    walk(data, "")
    return crc


def checkpoint_dict(session: Any) -> dict[str, Any]:
    """The checkpoint of a :class:`pml_anchors.app.session.Session`: plain state_dicts + config + epoch
    (``torch.load(weights_only=True)``-safe) and the checksum of its tensors."""
    data = {
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
    selection = getattr(session, "selection", None)
    if selection is not None:  # best-epoch selection: its state and the best epoch's weights
        data["selection"] = selection.state_dict()
    data["checksum"] = tensors_checksum(data)
    return data


def _selected(checkpoint: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The selection state of a run that selected its epoch on a validation fold and kept that epoch's weights."""
    selection = checkpoint.get("selection")
    if isinstance(selection, Mapping) and isinstance(selection.get("best_states"), Mapping):
        return selection
    return None


def trained_epoch(checkpoint: Mapping[str, Any]) -> int:
    """The epoch whose weights :func:`trained_weights` gives: the selected one, else the last trained."""
    selection = _selected(checkpoint)
    return int(checkpoint["epoch"] if selection is None else selection["best_epoch"])


def trained_weights(checkpoint: Mapping[str, Any], name: str) -> Any:
    """The ``name`` (trunk, embedder, loss) weights to use a checkpoint's model with: the selected epoch's when the
    run selected one on a validation fold (:mod:`pml_anchors.app.selection`), else the last epoch's."""
    selection = _selected(checkpoint)
    return checkpoint[name] if selection is None else selection["best_states"][name]


def save_checkpoint(session: Any, path: str | os.PathLike) -> Path:
    """Write :func:`checkpoint_dict` atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = checkpoint_dict(session)
    return write_atomically(path, lambda tmp: torch.save(state, tmp))


def checkpoint_bytes(session: Any) -> int:
    """About how many bytes :func:`save_checkpoint` writes: the models' and loss's tensors and the optimizers'
    (Adam keeps two more per parameter), with room for the rest."""
    modules = (session.trunk, session.embedder, session.loss)
    weights = sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values() if torch.is_tensor(t))
    params = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    return int(weights + 2 * params + 2**20)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check it (:func:`check_checkpoint`).

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` for one that cannot be used.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (a run killed while writing it?)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, pickle and storage errors alike: the file is unusable
        raise CheckpointError(f"{path}: {_unreadable(exc)}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pml-anchors checkpoint (written by `pml-anchors train`)")
    version = data.get("format_version", 0)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this pml-anchors reads up to {CHECKPOINT_VERSION}"
        )
    check_checkpoint(data, path)
    data["_path"] = str(path)  # named in later errors; not written back (checkpoint_dict builds a new dict)
    return data


def _unreadable(exc: BaseException) -> str:
    message = str(exc)
    if "Unsupported global" in message or "can still be loaded" in message:  # weights_only refused a class
        return (
            "refused: it holds objects that only load by running code, and a pml-anchors checkpoint holds only "
            "tensors and plain values (torch.load(weights_only=True))"
        )
    reason = message.partition("WeightsUnpickler error:")[2] or message
    first = next((line.strip() for line in reason.splitlines() if line.strip()), type(exc).__name__)
    first = first.split(". ")[0]  # torch's zip reader goes on for several sentences
    return f"cannot be read as a checkpoint: the file is truncated or corrupt ({type(exc).__name__}: {first})"


def check_checkpoint(data: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Every part a checkpoint must have, of the right type, and finite weights; a :class:`CheckpointError`
    naming the file and the first thing wrong otherwise."""
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks {', '.join(missing)} (it is damaged or not complete)")
    for key, kind in REQUIRED.items():
        value = data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(f"{path}: {key!r} should be of type {kind.__name__}, got {type(value).__name__}")
    if data["epoch"] < 0 or data["num_classes"] < 1 or data["embedding_size"] < 1:
        raise CheckpointError(
            f"{path}: impossible sizes: epoch {data['epoch']}, num_classes {data['num_classes']}, "
            f"embedding_size {data['embedding_size']}"
        )
    if not isinstance(data["config"].get("method"), str):
        raise CheckpointError(f"{path}: its config names no method")
    anchors = data["loss"].get("anchors")
    if torch.is_tensor(anchors) and anchors.ndim >= 2 and anchors.shape[-1] != data["embedding_size"]:
        raise CheckpointError(
            f"{path}: its embedding_size {data['embedding_size']} does not fit its anchors of width "
            f"{anchors.shape[-1]}: the weights do not fit the sizes it records"
        )
    for part in STATE_DICTS:
        for name, tensor in data[part].items():
            if name.rpartition(".")[2] == "_extra_state":  # a module's get_extra_state() (e.g. RePoNet's num_classes)
                continue
            if not torch.is_tensor(tensor):
                raise CheckpointError(f"{path}: {part} state {name!r} should be a tensor, got {type(tensor).__name__}")
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"{path}: {part} weight {name!r} holds NaN or Inf values: the run diverged or the file is "
                    "corrupt, so every prediction from it would be meaningless"
                )
    for part in ("optimizers", "lr_schedulers"):
        if part in data and not isinstance(data[part], dict):
            raise CheckpointError(f"{path}: {part!r} should be of type dict, got {type(data[part]).__name__}")
    if "checksum" in data and data["checksum"] != tensors_checksum(data):  # older checkpoints have none
        raise CheckpointError(
            f"{path}: the file is corrupt: its tensors do not match the checksum written with them (a damaged "
            "copy or disk?)"
        )
