"""Center loss (Wen, Zhang, Li & Qiao, "A Discriminative Feature Learning Approach for Deep Face
Recognition", ECCV 2016) as a pytorch-metric-learning loss.

The joint objective (paper eq. 5, with the mini-batch sums of eq. 1-2 taken as means, which keeps
the ratio of the two terms and makes λ independent of the batch size)::

    L = 1/B sum_i -log softmax(W x_i + b)_{y_i}  +  λ/B sum_i 1/2 ||x_i - c_{y_i}||^2

The softmax classifier ``(W, b)`` and the class centres ``c`` both live in the loss, so PML's
trainers step them with ``optimizers["metric_loss_optimizer"]``. The centres are the
:class:`~pml_anchors.losses.AnchorLoss` anchors (``self.anchors``, an ``nn.Parameter``; also
reachable as ``self.centers``).

**Centre update.** The paper does not update the centres by the gradient of ``L``; it moves each
centre towards the batch features of its class (eq. 4, Algorithm 1)::

    Δc_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j),    c_j <- c_j - α Δc_j

With ``center_update="paper"`` (default) the gradient that reaches the centres *is* Δc_j, carried
by a zero-valued sub-loss ``center_update``; the ``center_loss`` term then sends gradient to the
embeddings only. A plain SGD step (no momentum, no weight decay) with learning rate α on the
centres is then exactly the paper's update; in PML terms ``α = lr × lr_multipliers["anchors"]``.
With ``center_update="gradient"`` the centres get the true gradient of ``L``,
``λ/B sum_{i: y_i = j} (c_j - x_i)``, which depends on λ and the batch size.
Deviation from the paper: with Adam, momentum or weight decay in ``metric_loss_optimizer`` (the
pml-anchors trainer's default is Adam) no learning rate reproduces α exactly; the multiplier
then just scales the centres' step size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pml_anchors.losses import AnchorLoss

CENTER_UPDATES = ("paper", "gradient")


class CenterLoss(AnchorLoss):
    """Softmax cross-entropy with a learnable linear classifier plus λ·½‖x − c_y‖² to learnable centres.

    :param num_classes: number of classes K (labels in ``[0, K)``).
    :param embedding_size: embedding width d.
    :param lambda_c: λ, the weight of the centre term (paper default for its face models: 0.003).
    :param center_update: ``"paper"`` (centres get the paper's Δc_j as their gradient) or
        ``"gradient"`` (the true gradient of the loss); see the module docstring.
    :param bias: whether the softmax classifier has a bias b.
    :param kwargs: :class:`~pml_anchors.losses.AnchorLoss` options: ``anchors`` (centre
        initializer, default ``"kaiming_normal"``), ``learnable`` (``False`` fixes the centres),
        ``seed`` (also seeds the classifier's initialisation), ... and PML's (``reducer``, ...).
    """

    learnable_anchors = True
    default_anchors = "kaiming_normal"

    def __init__(
        self,
        num_classes: int,
        embedding_size: int | None = None,
        *,
        lambda_c: float = 0.003,
        center_update: str = "paper",
        bias: bool = True,
        **kwargs,
    ):
        super().__init__(num_classes, embedding_size, **kwargs)
        if isinstance(lambda_c, bool) or not isinstance(lambda_c, (int, float)) or not lambda_c >= 0:
            raise ValueError(f"lambda_c must be a non-negative number, got {lambda_c!r}")
        if center_update not in CENTER_UPDATES:
            raise ValueError(f"center_update must be one of {CENTER_UPDATES}, got {center_update!r}")
        self.lambda_c = float(lambda_c)
        self.center_update = center_update
        # The classifier is initialised like torch.nn.Linear's weight, U(-1/sqrt(d), 1/sqrt(d)),
        # from the loss's seed so that every process builds the same loss.
        generator = None if self.seed is None else torch.Generator().manual_seed(int(self.seed))
        bound = 1.0 / math.sqrt(self.embedding_size)
        weight = torch.empty(self.num_classes, self.embedding_size, dtype=self.anchors.dtype)
        self.weight = torch.nn.Parameter(weight.uniform_(-bound, bound, generator=generator))
        self.register_parameter(
            "bias", torch.nn.Parameter(torch.zeros(self.num_classes, dtype=self.anchors.dtype)) if bias else None
        )

    def _sub_loss_names(self):
        return ["softmax_loss", "center_loss", "center_update"]

    @property
    def centers(self) -> torch.Tensor:
        """The class centres (the same tensor as ``self.anchors``)."""
        return self.anchors

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The softmax classifier's scores ``W x + b`` (B × K); :meth:`predict` takes their argmax."""
        weight = self.weight.to(device=embeddings.device, dtype=embeddings.dtype)
        bias = None if self.bias is None else self.bias.to(device=embeddings.device, dtype=embeddings.dtype)
        return F.linear(embeddings, weight, bias)

    def anchor_losses(self, embeddings, labels, anchors, weights):
        softmax = F.cross_entropy(self.get_logits(embeddings), labels, reduction="none")
        centers = anchors[labels]
        paper_update = self.center_update == "paper" and anchors.requires_grad
        pull = centers.detach() if paper_update else centers
        center = 0.5 * (embeddings - pull).pow(2).sum(dim=1)
        losses = {
            "softmax_loss": self.element_loss(softmax * weights),
            "center_loss": self.element_loss(self.lambda_c * center * weights),
            "center_update": self.zero_loss(),
        }
        if paper_update:
            # Δc_j = sum_i w_i (c_j - x_i) / (1 + sum_i w_i) over the batch items of class j (eq. 4 with
            # miner weights; w_i = 1 without a miner). (anchors - anchors.detach()) is exactly zero, so
            # this term adds 0 to the loss and exactly Δ to the centres' gradient.
            w = weights.detach().unsqueeze(1)
            delta = torch.zeros_like(anchors).index_add_(0, labels, w * (centers - embeddings).detach())
            counts = torch.zeros(anchors.shape[0], dtype=anchors.dtype, device=anchors.device)
            counts.index_add_(0, labels, weights.detach().to(anchors.dtype))
            delta = delta / (1.0 + counts).unsqueeze(1)
            losses["center_update"] = self.reduced_loss(((anchors - anchors.detach()) * delta).sum())
        return losses

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lambda_c={self.lambda_c}, center_update={self.center_update!r}"
