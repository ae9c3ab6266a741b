"""pml-anchors-ncm: the anchor-based Nearest Class Mean losses E-NCM and C-NCM as a pml-anchors plugin.

Hao, Cheng, Wang, Wang, Cao, Hu, Tao, "Anchor-based Nearest Class Mean Loss for Convolutional Neural
Networks", arXiv:1804.08087 (2018). Registers the methods ``e_ncm`` and ``c_ncm`` and the initializer
``ncm_tiered``. Importing this package imports no torch: everything is named by lazy ``"module:attr"``.
"""

from pml_anchors import MethodSpec, hookimpl
from pml_anchors.plugin.lazy import lazy_exports
from pml_anchors.plugin.search_space import log_uniform

__version__ = "0.1.0"

PAPER = (
    "F. Hao, J. Cheng, L. Wang, X. Wang, J. Cao, X. Hu, D. Tao. Anchor-based Nearest Class Mean Loss for "
    "Convolutional Neural Networks. arXiv:1804.08087, 2018."
)

_EXPORTS = {
    "NCMLoss": "pml_anchors_ncm.ncm_loss",
    "ENCMLoss": "pml_anchors_ncm.ncm_loss",
    "CNCMLoss": "pml_anchors_ncm.ncm_loss",
    "ncm_tiered": "pml_anchors_ncm.tiered",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)  # the classes by name, imported on first use


@hookimpl
def register_initializers(register):
    register("ncm_tiered", "pml_anchors_ncm.tiered:ncm_tiered")


@hookimpl
def register_methods(register):
    register(
        MethodSpec(
            name="e_ncm",
            counterpart="baseline:cross_entropy",  # the NCM paper compares with softmax CE
            loss="pml_anchors_ncm.ncm_loss:ENCMLoss",
            initializer="ncm_tiered",
            normalize_embeddings=False,
            paper=PAPER,
            description="E-NCM: softmax over minus the Euclidean distance to fixed unit anchors (eq. 7)",
            # Hao et al.: the loss has no hyper-parameters; only the optimiser's lr (for Adam, the shared recipe)
            search_space={"lr": log_uniform(1e-5, 1e-2)},
        )
    )
    register(
        MethodSpec(
            name="c_ncm",
            counterpart="baseline:pml_normalized_softmax",  # bench reports pair it with: the cosine softmax
            loss="pml_anchors_ncm.ncm_loss:CNCMLoss",
            initializer="ncm_tiered",
            paper=PAPER,
            description="C-NCM: softmax cross-entropy on the cosine to fixed unit anchors, scale 1 (eq. 8)",
            # Hao et al. eq. 8 fixes the scale at 1 (temperature 1); PML's NormalizedSoftmaxLoss uses 0.05
            search_space={"lr": log_uniform(1e-5, 1e-2), "temperature": log_uniform(0.05, 1.0)},
        )
    )


__all__ = ["CNCMLoss", "ENCMLoss", "ncm_tiered", "NCMLoss", "PAPER", "register_initializers", "register_methods"]
