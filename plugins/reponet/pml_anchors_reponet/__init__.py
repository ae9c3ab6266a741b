"""pml-anchors plugin: Margin Regular Polytope Networks (Pernici et al., CVPR-W 2019).

Registers the method ``reponet``: a fixed, unit-norm classifier on the vertices of the d-Simplex,
d-Orthoplex or d-Cube, L2-normalised features scaled by kappa = 30 and an additive angular (ArcFace)
margin m = phi, the angle between neighbouring vertices (paper eq. 9-12). The loss and hooks are lazy
``"module:attr"`` strings, so listing methods imports no loss code and not PML.
"""

from pml_anchors import MethodSpec, hookimpl
from pml_anchors.plugin.lazy import lazy_exports
from pml_anchors.plugin.search_space import log_uniform, uniform

__version__ = "0.1.0"

PAPER = (
    "Pernici, Bruni, Baecchi & Del Bimbo, Maximally Compact and Separated Features with Regular Polytope "
    "Networks, CVPR Workshops 2019 (Margin-RePoNet)"
)

# the loss class by name, imported on first use
__getattr__ = lazy_exports(__name__, {"RePoNetLoss": "pml_anchors_reponet.reponet_loss"})


@hookimpl
def register_methods(register):
    register(
        MethodSpec(
            name="reponet",
            counterpart="baseline:pml_arcface",  # bench reports pair it with: an angular-margin softmax
            loss="pml_anchors_reponet.reponet_loss:RePoNetLoss",
            initializer=None,  # the loss builds the polytope chosen by its ``polytope`` option
            normalize_embeddings=True,
            paper=PAPER,
            description=(
                "Margin-RePoNet: fixed simplex/orthoplex/cube classifier, normalised features x30, "
                "ArcFace margin m = phi (the polytope's vertex angle)"
            ),
            aliases=("margin_reponet",),
            # Pernici et al.: features scaled by kappa = 30 (NormFace/ArcFace use 30-64); margin m = phi is fixed
            search_space={"lr": log_uniform(1e-5, 1e-2), "scale": uniform(8.0, 64.0)},
        )
    )


__all__ = ["PAPER", "register_methods", "RePoNetLoss"]
