"""Which torch device a run or an evaluation uses."""

from __future__ import annotations

from typing import Any

import torch


def resolve_device(device: Any = "auto") -> torch.device:
    """``"auto"`` (or ``None``) → CUDA when available, else CPU; anything else → ``torch.device(device)``.

    Asking for CUDA on a machine without it is a ``ValueError`` here, not a failure later inside a model.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available (use --device cpu or auto)")
    return device
