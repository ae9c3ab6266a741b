"""Diagnostics of a trained model next to its retrieval metrics: the loss's anchors as rows (every PML convention),
nearest-anchor predictions, class spread and anchor angles."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..anchors.diagnostics import min_angle_within_budget
from ..losses import AnchorLoss

__all__ = ["anchor_angles", "anchor_rows", "class_spread", "module_device", "predict"]


def anchor_rows(loss: Any) -> torch.Tensor | None:
    """The loss's anchors/proxies as rows ``(N, d)`` (sub-centres flattened), or ``None``.

    Knows ``anchors`` (pml-anchors), ``proxies`` (PML ProxyAnchor/ProxyNCA, ``C x d``), ``W``
    (PML classifier losses, ``d x C``) and ``fc`` (PML SoftTriple, ``d x C*K``).
    """
    for attr, transpose in (("anchors", False), ("proxies", False), ("W", True), ("fc", True)):
        value = getattr(loss, attr, None)
        if torch.is_tensor(value) and value.ndim >= 2:
            value = value.detach()
            rows = value.T if transpose else value.reshape(-1, value.shape[-1])
            return rows.float()
    return None


def predict(loss: Any, embeddings: torch.Tensor) -> torch.Tensor | None:
    """Nearest-anchor labels: ``loss.predict`` or the argmax of ``loss.get_logits``; None if neither."""
    with torch.no_grad():
        if callable(getattr(loss, "predict", None)):
            return loss.predict(embeddings)
        if callable(getattr(loss, "get_logits", None)) and anchor_rows(loss) is not None:
            try:
                return loss.get_logits(embeddings).argmax(dim=1)
            except NotImplementedError:
                return None
    return None


def class_spread(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean distance to the own class mean, mean distance between class means, and their ratio."""
    x = embeddings.detach().double().cpu()
    y = labels.detach().reshape(-1).cpu()
    classes, inverse = torch.unique(y, return_inverse=True)
    means = torch.zeros(len(classes), x.shape[1], dtype=x.dtype).index_add_(0, inverse, x)
    means /= torch.bincount(inverse, minlength=len(classes)).unsqueeze(1).to(x.dtype)
    intra = float((x - means[inverse]).norm(dim=1).mean())
    if len(classes) < 2:
        return {"intra_class_distance": intra, "inter_class_distance": float("nan"), "intra_class_spread": float("nan")}
    d = torch.cdist(means, means)
    inter = float(d[torch.triu_indices(len(classes), len(classes), 1).unbind()].mean())
    return {
        "intra_class_distance": intra,
        "inter_class_distance": inter,
        "intra_class_spread": intra / inter if inter > 0 else float("inf"),
    }


def anchor_angles(loss: Any) -> dict[str, float | None]:
    """Smallest inter-anchor angle (degrees) and, for an :class:`~pml_anchors.AnchorLoss`, the method's target
    (:meth:`~pml_anchors.AnchorLoss.target_min_angle`, radians, converted); PML's losses have no target. Beyond
    K^2 d of about 7e10 the angle is searched from a fixed sample of rows (an upper bound), and
    ``min_anchor_angle_rows_searched`` says how many."""
    rows = anchor_rows(loss)
    angle, searched = None, None
    if rows is not None and rows.shape[0] > 1:
        radians, searched = min_angle_within_budget(rows)
        angle = math.degrees(radians)
    target = loss.target_min_angle() if isinstance(loss, AnchorLoss) else None
    out: dict[str, float | None] = {
        "min_anchor_angle_deg": angle,
        "target_min_anchor_angle_deg": None if target is None else math.degrees(target),
    }
    if rows is not None and searched is not None and searched < rows.shape[0]:
        out["min_anchor_angle_rows_searched"] = searched  # large K: searched from a fixed sample of rows
    return out


def module_device(module: Any, default: torch.device) -> torch.device:
    """Device of the module's first parameter or buffer (``default`` if it has none)."""
    if isinstance(module, torch.nn.Module):
        for tensor in (*module.parameters(), *module.buffers()):
            return tensor.device
    return default
