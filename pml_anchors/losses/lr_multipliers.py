"""Optimizer parameter groups with a method's learning-rate multipliers, and PML's ``metric_loss_optimizer``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def param_groups(module: Any, lr: float, lr_multipliers: Mapping[str, float] | Any = None) -> list[dict[str, Any]]:
    """Param groups for ``module`` (e.g. a loss under PML's ``metric_loss_optimizer``).

    ``lr_multipliers`` maps parameter names (as in ``named_parameters()``) to multipliers, or is a
    :class:`~pml_anchors.MethodSpec` whose ``lr_multipliers`` are used. Parameters without a
    multiplier get ``lr``; frozen parameters and buffers are left out, multiplier or not (e.g. Proxy Anchor built with
    ``learnable=False``: its fixed proxies are a buffer with nothing to train). A multiplier naming neither a
    parameter nor a buffer is a ``ValueError`` (a misspelt name would otherwise be silently ignored).

    >>> torch.optim.Adam(param_groups(loss, 1e-4, {"anchors": 100}))  # proxy_anchor: proxies at 100x  # doctest: +SKIP
    """
    multipliers = dict(getattr(lr_multipliers, "lr_multipliers", lr_multipliers) or {})
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    known = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    unknown = sorted(set(multipliers) - known)
    if unknown:
        raise ValueError(
            f"lr multipliers name parameters {unknown} that {type(module).__name__} does not have "
            f"(its trainable parameters are {[n for n, _ in named]})"
        )
    groups: dict[float, list] = {}
    for name, param in named:
        groups.setdefault(float(multipliers.get(name, 1.0)), []).append(param)
    return [{"params": params, "lr": lr * mult} for mult, params in groups.items()]


def loss_optimizers(
    loss: Any, optimizer_class: Callable[..., Any], lr: float, lr_multipliers: Any = None, **kwargs: Any
) -> dict[str, Any]:
    """PML's ``{"metric_loss_optimizer": ...}`` for ``loss``, or ``{}`` when it has nothing to train.

    The one line that works for every method, fixed anchors included (where ``optimizer_class(loss.parameters())``
    raises "optimizer got an empty parameter list")::

        optimizers = {"trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-3)}
        optimizers.update(pml_anchors.loss_optimizers(loss, torch.optim.Adam, lr=1e-3, lr_multipliers=spec))

    :param lr_multipliers: as in :func:`param_groups` (a mapping or the method's ``MethodSpec``, e.g. Proxy Anchor's
        proxies at 100x lr).
    :param kwargs: further arguments of ``optimizer_class`` (``weight_decay``, ``momentum``, ...).
    """
    groups = param_groups(loss, lr, lr_multipliers)
    return {"metric_loss_optimizer": optimizer_class(groups, lr=lr, **kwargs)} if groups else {}
