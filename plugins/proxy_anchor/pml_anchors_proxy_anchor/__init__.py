"""pml-anchors plugin: Proxy Anchor loss (Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020).

Registers the method ``proxy_anchor``. The loss and hooks are named as lazy ``"module:attr"`` strings so that
listing methods imports no loss code and not PML (the core geometries need torch); ``from pml_anchors_proxy_anchor import ProxyAnchorLoss`` imports
them on first access (the one-line switch from ``pytorch_metric_learning.losses.ProxyAnchorLoss``).
"""

from pml_anchors import MethodSpec, hookimpl
from pml_anchors.plugin.lazy import lazy_exports
from pml_anchors.plugin.search_space import log_uniform, uniform

__version__ = "0.1.0"

PAPER = "Kim, Kim, Cho & Kwak, Proxy Anchor Loss for Deep Metric Learning, CVPR 2020 (arXiv 2003.13911)"


@hookimpl
def register_methods(register):
    register(
        MethodSpec(
            name="proxy_anchor",
            counterpart="baseline:pml_proxy_anchor",  # bench reports pair it with: the same loss in PML
            loss="pml_anchors_proxy_anchor.proxy_anchor_loss:ProxyAnchorLoss",
            initializer="kaiming_normal",
            trainer_hooks="pml_anchors_proxy_anchor.hooks:ProxyAnchorHooks",
            lr_multipliers={"anchors": 100.0},
            normalize_embeddings=True,
            paper=PAPER,
            description="Proxy Anchor: each learnable proxy is an anchor against the whole batch (alpha=32, delta=0.1)",
            # around Kim et al.'s alpha = 32, delta = 0.1 and proxies at lr x100 (their study varies alpha and delta)
            search_space={
                "lr": log_uniform(1e-5, 1e-2),
                "loss_lr_multiplier": log_uniform(1.0, 1000.0),
                "margin": uniform(0.0, 0.5),
                "alpha": log_uniform(4.0, 128.0),
            },
        )
    )


__getattr__ = lazy_exports(
    __name__,
    {
        "ProxyAnchorLoss": "pml_anchors_proxy_anchor.proxy_anchor_loss",
        "proxy_anchor_from_cosine": "pml_anchors_proxy_anchor.proxy_anchor_loss",
        "ProxyAnchorHooks": "pml_anchors_proxy_anchor.hooks",
    },
)
__all__ = ["PAPER", "ProxyAnchorHooks", "ProxyAnchorLoss", "proxy_anchor_from_cosine", "register_methods"]
