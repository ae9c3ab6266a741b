"""pml-anchors-fsc: the Fixed Sub-Center (F-SC) loss as a pml-anchors plugin.

Z. Zhang, X. Gong, "The Fixed Sub-Center: A Better Way to Capture Data Complexity", arXiv:2203.12928 (2022).
Registers the method ``fsc``. Importing this package imports no torch: everything is named by lazy
``"module:attr"`` strings.
"""

from pml_anchors import MethodSpec, hookimpl
from pml_anchors.plugin.lazy import lazy_exports
from pml_anchors.plugin.search_space import integer, log_uniform

__version__ = "0.1.0"

PAPER = "Z. Zhang, X. Gong. The Fixed Sub-Center: A Better Way to Capture Data Complexity. arXiv:2203.12928, 2022."

_LOSS_MODULE = "pml_anchors_fsc.fsc_loss"
__getattr__ = lazy_exports(
    __name__, dict.fromkeys(["FixedSubCenterLoss", "intra_class_cosine"], _LOSS_MODULE)
)  # imported on first use


@hookimpl
def register_methods(register):
    register(
        MethodSpec(
            name="fsc",
            counterpart="baseline:pml_soft_triple",  # bench reports pair it with: learnable sub-centres
            loss="pml_anchors_fsc.fsc_loss:FixedSubCenterLoss",
            initializer="gaussian_subcenters",
            paper=PAPER,
            description="F-SC: softmax summed over fixed Gaussian sub-centres + sub-class compactness (beta=1e-4)",
            # around Zhang & Gong's s = 4 sub-centres, sigma^2 = 1e-3 (a variance) and beta = 1e-4
            search_space={
                "lr": log_uniform(1e-5, 1e-2),
                "sub_centers": integer(1, 8),
                "variance": log_uniform(1e-4, 1e-1),
                "beta": log_uniform(1e-6, 1e-2),
            },
        )
    )


__all__ = ["FixedSubCenterLoss", "intra_class_cosine", "PAPER", "register_methods"]
