"""Every registered method, built the same way by the reliability tests (dtypes, checkpoints, bad input,
distributed). Tests parametrize over :func:`method_names`, so an installed method plugin joins them once it is
loaded: the root conftest.py loads only the built-ins unless ``PML_ANCHORS_LOAD_PLUGINS`` names it too."""

from __future__ import annotations

import pml_anchors

#: Small problem used everywhere: labels in [0, 4), width 8 unless the method forces its own.
NUM_CLASSES = 4
WIDTH = 8
#: The methods shipped in plugins/; the suites check that none of them is missing from the registry.
BUILTIN_METHODS = {"e_ncm", "c_ncm", "cam", "reponet", "fsc", "proxy_anchor"}


def method_names() -> list[str]:
    """Qualified names (``dist:name``) of every registered method; unique even if two plugins share a name."""
    return [spec.qualified_name for spec in pml_anchors.list_methods()]


def method_id(qualified: str) -> str:
    """Short test id: ``pml-anchors-ncm:e_ncm`` -> ``e_ncm``."""
    return qualified.rsplit(":", 1)[-1]


def build(name: str, num_classes: int = NUM_CLASSES, embedding_size: int | None = WIDTH, **kwargs):
    """``get_loss(name, K, d)``; methods with a forced width (polytopes) get ``embedding_size=None``."""
    try:
        return pml_anchors.get_loss(name, num_classes, embedding_size, **kwargs)
    except (ValueError, TypeError) as first:
        if embedding_size is None:
            raise
        try:
            return pml_anchors.get_loss(name, num_classes, None, **kwargs)
        except (ValueError, TypeError):
            raise first from None


def builtin_method_names() -> list[str]:
    """:func:`method_names` of the distributions in this repository's ``plugins/`` only."""
    from pml_anchors.plugin.manager import BUILTIN_DISTRIBUTIONS
    from pml_anchors.plugin.settings import normalize_dist_name

    return [
        spec.qualified_name
        for spec in pml_anchors.list_methods()
        if normalize_dist_name(spec.plugin or "") in BUILTIN_DISTRIBUTIONS
    ]


#: tolerances of a compiled loss against the eager one (float32)
RTOL, ATOL = 1e-4, 1e-5


def batch(loss, size: int = 16, seed: int = 0):
    """Seeded embeddings (requiring grad) and labels for ``loss``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(size, loss.embedding_size, generator=g, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=g)
    return emb, labels


def step(fn, loss, emb, labels):
    """Value, embedding gradient and (learnable) anchor gradient of one forward/backward of ``fn``."""
    emb.grad = None
    if loss.anchors.requires_grad:
        loss.anchors.grad = None
    value = fn(emb, labels)
    value.backward()
    anchor_grad = loss.anchors.grad.clone() if loss.anchors.requires_grad else None
    return value.detach(), emb.grad.clone(), anchor_grad


def assert_same(got, expected, what):
    """:func:`step`'s results equal (``RTOL``, ``ATOL``); the message names ``what`` and the quantity."""
    import torch

    for name, a, b in zip(("value", "embedding gradient", "anchor gradient"), got, expected, strict=True):
        if b is None:
            assert a is None
            continue
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{what}, {n}: {m}")
