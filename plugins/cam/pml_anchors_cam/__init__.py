"""pml-anchors plugin: Class Anchor Margin (CAM) loss (Ghita & Ionescu, "Class Anchor Margin Loss for
Content-Based Image Retrieval").

Registers the method ``cam`` (learnable class anchors; attractor + repeller + minimum-norm terms on raw
Euclidean embeddings) and the initializer ``standard_normal``. Nothing here imports torch: the loss is a lazy
``"module:attr"`` string and the initializer imports torch only when called. The anchors are learnable: the base
trainer hooks warn if no optimizer steps them, record the loss's geometry every epoch and, for K > 4096 anchors,
check the repeller's neighbour list between optimizer steps (``CamTrainerHooks``).
"""

from pml_anchors import MethodSpec, hookimpl
from pml_anchors.plugin.lazy import lazy_exports
from pml_anchors.plugin.search_space import log_uniform, uniform

from .initializers import standard_normal

__version__ = "0.1.0"
__all__ = ["ClassAnchorMarginLoss", "PAPER", "register_initializers", "register_methods", "standard_normal"]

PAPER = (
    "Ghita & Ionescu, Class Anchor Margin Loss for Content-Based Image Retrieval "
    "(arXiv 2306.00630; PAKDD 2024 short version)"
)


@hookimpl
def register_initializers(register):
    register("standard_normal", standard_normal)


@hookimpl
def register_methods(register):
    register(
        MethodSpec(
            name="cam",
            counterpart="baseline:pml_contrastive",  # bench reports pair it with: a pair loss on distances
            loss="pml_anchors_cam.cam_loss:ClassAnchorMarginLoss",
            trainer_hooks="pml_anchors_cam.hooks:CamTrainerHooks",  # the neighbour list checked between steps
            initializer=standard_normal,
            normalize_embeddings=False,  # trained and retrieved with raw L2 distances
            paper=PAPER,
            description=(
                "CAM: learnable class anchors; attract embeddings to their anchor, repel anchors closer than 2m, "
                "keep anchor norms >= p (m=2, p=1)"
            ),
            aliases=("class_anchor_margin",),
            # around Ghita & Ionescu's m = 2, p = 1 and Adam lr 1e-3 (anchors at the network's lr, x1)
            search_space={
                "lr": log_uniform(1e-5, 1e-2),
                "loss_lr_multiplier": log_uniform(1.0, 100.0),
                "margin": uniform(0.5, 4.0),
                "min_norm": uniform(0.25, 2.0),
            },
        )
    )


# the loss class by name, imported on first use
__getattr__ = lazy_exports(__name__, {"ClassAnchorMarginLoss": "pml_anchors_cam.cam_loss"})
