"""PML losses used as baselines by ``pml-anchors bench`` (not registered as methods).

Each baseline is an unregistered :class:`~pml_anchors.MethodSpec` (so it trains through exactly the
same code path as a registered method) plus an optional miner factory. Select one with
``TrainConfig(method="baseline:<name>")``.

=========================  ==================================================================
``pml_proxy_anchor``       PML ``ProxyAnchorLoss`` (margin 0.1, alpha 32), proxies at lr x100
``pml_arcface``            PML ``ArcFaceLoss`` (margin 28.6 deg, scale 64)
``pml_normalized_softmax`` PML ``NormalizedSoftmaxLoss`` (temperature 0.05)
``pml_soft_triple``        PML ``SoftTripleLoss`` (10 centres per class), centres at lr x100
``pml_contrastive``        PML ``ContrastiveLoss`` (pos 0, neg 1) with ``MultiSimilarityMiner``
``cross_entropy``          linear classifier head + cross-entropy on the embeddings
=========================  ==================================================================
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..plugin.search_space import Param, integer, log_uniform, uniform
from ..plugin.spec import MethodSpec

#: prefix of a baseline in ``TrainConfig.method``
PREFIX = "baseline:"


class CrossEntropyLoss(losses.BaseMetricLossFunction):
    """Softmax cross-entropy of a linear classifier on the embeddings, as a PML loss.

    ``W`` is ``(embedding_size, num_classes)`` like PML's classifier losses; ``get_logits`` gives
    ``embeddings @ W + b``. Miner tuples become per-sample weights (PML's ``convert_to_weights``).
    """

    def __init__(self, num_classes: int, embedding_size: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.W = torch.nn.Parameter(torch.empty(embedding_size, num_classes))
        self.b = torch.nn.Parameter(torch.zeros(num_classes))
        bound = 1.0 / math.sqrt(embedding_size)  # nn.Linear's default init
        torch.nn.init.uniform_(self.W, -bound, bound)
        torch.nn.init.uniform_(self.b, -bound, bound)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        weights = lmu.convert_to_weights(indices_tuple, labels, dtype=embeddings.dtype)
        losses_ = F.cross_entropy(self.get_logits(embeddings), labels.long(), reduction="none") * weights
        return {
            "loss": {"losses": losses_, "indices": c_f.torch_arange_from_size(embeddings), "reduction_type": "element"}
        }

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings @ self.W.to(embeddings.dtype) + self.b.to(embeddings.dtype)


class ContrastiveBaseline(losses.ContrastiveLoss):
    """PML ``ContrastiveLoss`` taking (and ignoring) ``num_classes, embedding_size`` like the others."""

    def __init__(self, num_classes: int | None = None, embedding_size: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)


@dataclass(frozen=True)
class Baseline:
    """A PML baseline: an unregistered spec and an optional miner factory ``miner()``."""

    spec: MethodSpec
    miner: Callable[[], Any] | None = None

    @property
    def name(self) -> str:
        return self.spec.name


#: every baseline's optimiser lr range (the methods' plugins declare the same one, for Adam, the shared recipe)
LR = log_uniform(1e-5, 1e-2)


def _spec(
    name, loss, description, defaults=None, lr_multipliers=None, search_space: dict[str, Param] | None = None
) -> MethodSpec:
    return MethodSpec(
        name=name,
        loss=loss,
        defaults=defaults or {},
        lr_multipliers=lr_multipliers or {},
        description=description,
        plugin="pytorch-metric-learning",
        search_space={"lr": LR, **(search_space or {})},
    )


# Search spaces (`pml-anchors tune`): ranges around each loss's published defaults, bounded and log-scaled where a
# value spans orders of magnitude, as in the Bayesian search of Musgrave et al. ("A Metric Learning Reality Check",
# ECCV 2020); every baseline also searches the lr (`LR`).
BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline(
            _spec(
                "pml_proxy_anchor",
                losses.ProxyAnchorLoss,
                "PML ProxyAnchorLoss (Kim et al., CVPR 2020)",
                {"margin": 0.1, "alpha": 32},
                {"proxies": 100.0},
                {
                    "loss_lr_multiplier": log_uniform(1.0, 1000.0),
                    "margin": uniform(0.0, 0.5),
                    "alpha": log_uniform(4.0, 128.0),
                },
            )
        ),
        Baseline(
            _spec(
                "pml_arcface",
                losses.ArcFaceLoss,
                "PML ArcFaceLoss (Deng et al., CVPR 2019)",
                {"margin": 28.6, "scale": 64},
                search_space={"margin": uniform(0.0, 60.0), "scale": log_uniform(1.0, 100.0)},  # margin in degrees
            )
        ),
        Baseline(
            _spec(
                "pml_normalized_softmax",
                losses.NormalizedSoftmaxLoss,
                "PML NormalizedSoftmaxLoss (Zhai & Wu, BMVC 2019)",
                {"temperature": 0.05},
                search_space={"temperature": log_uniform(0.01, 1.0)},
            )
        ),
        Baseline(
            _spec(
                "pml_soft_triple",
                losses.SoftTripleLoss,
                "PML SoftTripleLoss (Qian et al., ICCV 2019)",
                {"centers_per_class": 10, "la": 20, "gamma": 0.1, "margin": 0.01},
                {"fc": 100.0},
                {
                    "loss_lr_multiplier": log_uniform(1.0, 1000.0),
                    "centers_per_class": integer(1, 20),
                    "la": log_uniform(1.0, 100.0),
                    "gamma": log_uniform(0.01, 1.0),
                    "margin": uniform(0.0, 0.5),
                },
            )
        ),
        Baseline(
            _spec(
                "pml_contrastive",
                ContrastiveBaseline,
                "PML ContrastiveLoss (Hadsell et al., CVPR 2006) + MultiSimilarityMiner",
                {"pos_margin": 0.0, "neg_margin": 1.0},
                search_space={"pos_margin": uniform(0.0, 0.5), "neg_margin": uniform(0.5, 2.0)},  # L2 distances
            ),
            miner=lambda: miners.MultiSimilarityMiner(epsilon=0.1),
        ),
        Baseline(
            _spec(
                "cross_entropy",
                CrossEntropyLoss,
                "linear classifier head + softmax cross-entropy on the embeddings",
            )
        ),
    )
}


def counterpart_of(spec: MethodSpec) -> str | None:
    """What benchmark reports pair a method with: its spec's ``counterpart``, else the baseline that runs its loss's
    ``pml_counterpart`` (``baseline:<name>``), else ``None``."""
    if spec.counterpart is not None:
        if is_baseline(spec.counterpart):
            get_baseline(spec.counterpart)  # an unknown baseline is an error naming the known ones
        return spec.counterpart
    target = getattr(spec.resolve_loss(), "pml_counterpart", None)
    for baseline in BASELINES.values():
        if target and baseline.spec.resolve_loss().__name__ == target:
            return PREFIX + baseline.name
    return None


def is_baseline(method: str) -> bool:
    return isinstance(method, str) and method.startswith(PREFIX)


def get_baseline(name: str) -> Baseline:
    """The baseline ``name`` (with or without the ``baseline:`` prefix)."""
    key = name[len(PREFIX) :] if is_baseline(name) else name
    if key not in BASELINES:
        close = difflib.get_close_matches(key, BASELINES, n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
        raise ValueError(f"unknown baseline {key!r}{hint} Available baselines: {', '.join(BASELINES)}.")
    return BASELINES[key]
