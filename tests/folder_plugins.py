"""A plugin in a plain file (`pml-anchors --plugins-dir`), shared by test_plugins_dir and test_validate."""

PLUGIN = '''
"""A method that lives in a plain file: cosine softmax over learnable anchors."""
from __future__ import annotations  # string annotations: dataclasses need this module in sys.modules

import dataclasses

import torch
import torch.nn.functional as F

from pml_anchors import MethodSpec, hookimpl
from pml_anchors.losses import AnchorLoss


@dataclasses.dataclass
class Options:
    scale: float = 10.0


class FolderCosineLoss(AnchorLoss):
    learnable_anchors = True
    default_anchors = "kaiming_normal"

    def __init__(self, num_classes, embedding_size=None, scale: float = Options().scale, **kwargs):
        super().__init__(num_classes, embedding_size, **kwargs)
        self.scale = scale

    def get_logits(self, embeddings):
        return self.scale * F.normalize(embeddings, dim=1) @ F.normalize(self.cast_anchors(embeddings), dim=1).T

    def anchor_losses(self, embeddings, labels, anchors, weights):
        logits = self.scale * F.normalize(embeddings, dim=1) @ F.normalize(anchors, dim=1).T
        return {"loss": self.element_loss(F.cross_entropy(logits, labels, reduction="none") * weights)}


@hookimpl
def register_methods(register):
    register(MethodSpec(name="folder_cosine", loss=FolderCosineLoss, lr_multipliers={"anchors": 10.0}))
'''
