"""The three methods whose maths PML also has, each beside its PML counterpart with identical parameters.

``pml_anchors`` loss ``name`` built by :func:`ours` is loaded from the counterpart's ``state_dict`` (its class weights
become the anchors), so both compute the same function of the embeddings. Module-level factories: spawned
processes (tests/dist_worker.py) can unpickle them.
"""

from __future__ import annotations

import math

import torch
from pytorch_metric_learning import losses

import pml_anchors

K, D = 4, 8
TEMPERATURE = 0.5
MARGIN_RAD = 0.3
SCALE = 16.0

#: method -> (PML class name, PML constructor kwargs, pml_anchors constructor kwargs)
TWINS = {
    "c_ncm": ("NormalizedSoftmaxLoss", {"temperature": TEMPERATURE}, {"temperature": TEMPERATURE}),
    "reponet": (
        "ArcFaceLoss",
        {"margin": math.degrees(MARGIN_RAD), "scale": SCALE},
        {"margin": MARGIN_RAD, "scale": SCALE, "anchors": "kaiming_normal"},
    ),
    "proxy_anchor": ("ProxyAnchorLoss", {"margin": 0.1, "alpha": 32}, {"margin": 0.1, "alpha": 32}),
}


def pml(name: str, seed: int = 7) -> losses.BaseMetricLossFunction:
    """PML's counterpart of ``name``, with seeded weights."""
    cls_name, pml_kwargs, _ = TWINS[name]
    torch.manual_seed(seed)
    return getattr(losses, cls_name)(K, D, **pml_kwargs)


def ours(name: str, seed: int = 7) -> torch.nn.Module:
    """``name`` from the registry, its anchors loaded from :func:`pml`'s ``state_dict``."""
    loss = pml_anchors.get_loss(name, K, D, **TWINS[name][2])
    loss.load_state_dict(pml(name, seed).state_dict())
    return loss


def pml_c_ncm() -> losses.BaseMetricLossFunction:
    return pml("c_ncm")


def ours_c_ncm() -> torch.nn.Module:
    return ours("c_ncm")


def pml_reponet() -> losses.BaseMetricLossFunction:
    return pml("reponet")


def ours_reponet() -> torch.nn.Module:
    return ours("reponet")


def pml_proxy_anchor() -> losses.BaseMetricLossFunction:
    return pml("proxy_anchor")


def ours_proxy_anchor() -> torch.nn.Module:
    return ours("proxy_anchor")


#: name -> (ours factory, PML factory), for the distributed jobs
FACTORIES = {
    "c_ncm": (ours_c_ncm, pml_c_ncm),
    "reponet": (ours_reponet, pml_reponet),
    "proxy_anchor": (ours_proxy_anchor, pml_proxy_anchor),
}
