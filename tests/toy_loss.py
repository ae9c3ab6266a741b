"""A minimal AnchorLoss subclass used by the core tests (cosine softmax over anchors)."""

import torch

from pml_anchors.losses import AnchorLoss


class ToyCosineLoss(AnchorLoss):
    default_anchors = "one_hot"

    def __init__(self, num_classes, embedding_size=None, scale=1.0, **kwargs):
        super().__init__(num_classes, embedding_size, **kwargs)
        self.scale = scale

    def get_logits(self, embeddings):
        anchors = self.cast_anchors(embeddings)
        return (
            self.scale
            * torch.nn.functional.normalize(embeddings, dim=1)
            @ torch.nn.functional.normalize(anchors, dim=1).T
        )

    def anchor_losses(self, embeddings, labels, anchors, weights):
        logits = (
            self.scale
            * torch.nn.functional.normalize(embeddings, dim=1)
            @ torch.nn.functional.normalize(anchors, dim=1).T
        )
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none") * weights
        return {"loss": self.element_loss(losses)}


class LearnableToyLoss(ToyCosineLoss):
    learnable_anchors = True
    default_anchors = "kaiming_normal"
