"""The optimizers of a run, under PML's trainer keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..losses.lr_multipliers import param_groups
from .config import OPTIMIZERS, TrainConfig

__all__ = ["make_optimizer", "make_optimizers"]


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """One optimizer of kind ``name`` (``adam``, ``adamw``, ``sgd`` with momentum 0.9)."""
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def make_optimizers(
    trunk: torch.nn.Module,
    embedder: torch.nn.Module,
    loss: torch.nn.Module,
    config: TrainConfig,
    lr_multipliers: Mapping[str, float] | None = None,
) -> dict[str, torch.optim.Optimizer]:
    """Optimizers under PML's keys; ``metric_loss_optimizer`` only if the loss has trainable parameters."""
    optimizers = {
        "trunk_optimizer": make_optimizer(config.optimizer, trunk.parameters(), config.lr, config.weight_decay),
        "embedder_optimizer": make_optimizer(config.optimizer, embedder.parameters(), config.lr, config.weight_decay),
    }
    groups = param_groups(loss, config.lr, lr_multipliers)
    if groups:
        optimizers["metric_loss_optimizer"] = make_optimizer(config.optimizer, groups, config.lr, config.weight_decay)
    return optimizers
