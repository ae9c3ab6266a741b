"""pml-anchors plugin providing the ``center_loss`` method (Wen et al., ECCV 2016).

Installed, this distribution is found through its ``pml_anchors`` entry point (pyproject.toml):
``pml-anchors plugins`` lists it and ``pml_anchors.get_loss("center_loss", num_classes, embedding_size)``
builds its loss. Keep this module cheap to import: the loss is named by a lazy ``"module:Class"``
string, so torch and PML are imported only when someone builds the loss.
"""

from pml_anchors import MethodSpec, hookimpl

PAPER = "Wen, Zhang, Li & Qiao, A Discriminative Feature Learning Approach for Deep Face Recognition, ECCV 2016"


@hookimpl
def register_methods(register):
    """Called once, when pml-anchors first builds its registry."""
    register(
        MethodSpec(
            name="center_loss",
            loss="pml_anchors_center_loss.loss:CenterLoss",
            initializer="kaiming_normal",
            # λ = 0.003: the value the paper reports for its face models (see README.md).
            defaults={"lambda_c": 0.003, "center_update": "paper"},
            # The centres are the loss's `anchors` parameter; see README.md for how this emulates α.
            lr_multipliers={"anchors": 10.0},
            description="Center loss: softmax cross-entropy plus λ·½‖x − c_y‖² to learnable class centres",
            paper=PAPER,
            aliases=("center",),
        )
    )
