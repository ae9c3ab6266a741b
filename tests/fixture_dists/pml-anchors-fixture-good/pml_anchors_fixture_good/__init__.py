"""A working third-party plugin (test fixture): one method and one initializer."""

from pml_anchors import MethodSpec, hookimpl


def corners(num_classes, embedding_size, *, seed=None, dtype=None, **kw):
    import torch

    t = torch.zeros(num_classes, embedding_size, dtype=dtype or torch.get_default_dtype())
    for c in range(num_classes):
        t[c, c % embedding_size] = 1.0 if c < embedding_size else -1.0
    return t


@hookimpl
def register_initializers(register):
    register("corners", corners)


@hookimpl
def register_methods(register):
    register(
        MethodSpec(
            name="fixture_proxy_anchor",
            loss="pytorch_metric_learning.losses:ProxyAnchorLoss",
            defaults={"margin": 0.1, "alpha": 32},
            lr_multipliers={"proxies": 100.0},
            paper="fixture",
            description="PML's ProxyAnchorLoss registered by a third-party plugin",
            aliases=("fixture_pa",),
        )
    )
