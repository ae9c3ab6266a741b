"""The trainer every method trains with: PML's ``MetricLossOnly`` plus mixed precision, and PML's log level."""

from __future__ import annotations

import logging
from typing import Any

import torch
from pytorch_metric_learning import trainers
from pytorch_metric_learning.utils import common_functions as c_f

__all__ = ["AMPMetricLossOnly", "amp_setup", "set_verbosity"]


def set_verbosity(verbose: bool) -> None:
    """PML's logger at INFO (``verbose``) or WARNING (default: quiet)."""
    c_f.LOGGER.setLevel(logging.INFO if verbose else logging.WARNING)


class AMPMetricLossOnly(trainers.MetricLossOnly):
    """PML's ``MetricLossOnly`` with optional mixed precision (PML's trainers have none).

    With ``amp_dtype=None`` this is exactly ``MetricLossOnly``. Otherwise the models' forward
    (``compute_embeddings``: trunk and embedder) runs under ``torch.autocast`` with ``amp_dtype``
    and the miner and loss get float32 embeddings, outside autocast: the loss is cheap next to the
    backbone, more accurate in fp32, and PML losses whose ``cast_types`` rewrites ``W.data``
    (ArcFace, CosFace, NormalizedSoftmax, ...) would otherwise turn their weights into fp16/bf16
    for good. With a ``scaler`` (``torch.amp.GradScaler``, for fp16) the backward is scaled,
    gradients are unscaled before PML's ``gradient_clippers`` and optimizers step through the
    scaler (optimizers whose parameters got no gradient, e.g. frozen in a warm-up, are skipped).
    """

    def __init__(self, *args: Any, amp_dtype: torch.dtype | None = None, scaler: Any = None, **kwargs: Any):
        self.amp_dtype = amp_dtype
        self.scaler = scaler
        super().__init__(*args, **kwargs)

    def compute_embeddings(self, data):
        if self.amp_dtype is None:
            return super().compute_embeddings(data)
        with torch.autocast(device_type=torch.device(self.data_device).type, dtype=self.amp_dtype):
            embeddings = super().compute_embeddings(data)
        return embeddings.float()

    def backward(self):
        if self.scaler is None:
            return super().backward()
        self.scaler.scale(self.losses["total_loss"]).backward()

    def _optimizers_to_step(self) -> list[torch.optim.Optimizer]:
        return [
            opt
            for key, opt in self.optimizers.items()
            if c_f.regex_replace("_optimizer$", "", key) not in self.freeze_these
            and any(p.grad is not None for group in opt.param_groups for p in group["params"])
        ]

    def clip_gradients(self):
        if self.scaler is not None and self.gradient_clippers:
            for opt in self._optimizers_to_step():
                self.scaler.unscale_(opt)
        super().clip_gradients()

    def step_optimizers(self):
        if self.scaler is None:
            return super().step_optimizers()
        for opt in self._optimizers_to_step():
            self.scaler.step(opt)
        self.scaler.update()


def amp_setup(amp: bool, amp_dtype: str | None, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """``(autocast dtype, GradScaler)`` for a run: fp16 + a scaler on CUDA, bf16 on CPU, unless ``amp_dtype``
    names one; ``(None, None)`` without ``amp``."""
    if not amp:
        return None, None
    name = amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")
    dtype = getattr(torch, name)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return dtype, scaler
