"""The fast paths give what the straightforward formulas give.

* :func:`pml_anchors.losses.logsumexp.class_logsumexp` (hand-written backward, in-place reductions, chunking) against
  ``torch.logsumexp`` over an explicitly masked logit matrix, for every logit map, both directions, sub-centre
  groups, the implicit zero logit and chunk sizes that do and do not divide the rows; plus gradcheck and a
  second backward (``retain_graph``) that must reproduce the first bit for bit; double backward is a clear error;
* every method's loss value and gradients against the plain formula written out here (B x K matrices,
  ``F.cross_entropy``, masks, ``torch.cdist``), in float64;
* ``chunk_size`` (C = 1000, chunks of 128) against the unchunked loss, float32 and float64;
* the fixed-anchor cache: reused while the buffer is unchanged, invalidated by ``load_state_dict``, in-place
  writes, dtype/device moves, a new tensor; ``clear_anchor_cache`` for ``.data`` writes;
* CAM's exact neighbour list against every-pair L_R while anchors move under an optimizer;
* ``benchmarks/loss_speed.py --quick`` prints a markdown table and valid JSON; ``benchmarks/launch_count.py`` counts
  kernels and host reads.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import pml_anchors
from pml_anchors.losses import logsumexp
from pml_anchors.losses.logsumexp import (
    CosineRowsLogits,
    LinearLogits,
    NegEuclideanLogits,
    class_cross_entropy,
    class_logsumexp,
    cross_entropy_from_lse,
)

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


# -- class_logsumexp against the masked logsumexp ------------------------------------------------------------


def _reference_logits(kind, x, rows, bias, scale, floor):
    if kind == "linear":
        return scale * x @ rows.T + bias[:, None]
    if kind == "cosine":
        return scale * x @ F.normalize(rows, dim=1).T + bias[:, None]
    d2 = (x[:, None, :] - rows[None, :, :]).square().sum(-1)
    if kind == "sq_euclid":
        return -d2
    return -torch.sqrt(torch.maximum(d2, floor[:, None]))


def _map(kind, x, rows, bias, scale, floor):
    if kind == "linear":
        return LinearLogits(scale, bias)
    if kind == "cosine":
        return CosineRowsLogits(scale, bias)
    x_sq, r_sq = x.detach().square().sum(1), rows.detach().square().sum(1)
    return NegEuclideanLogits(x_sq, r_sq, None if kind == "sq_euclid" else floor, kind == "sq_euclid")


def _reference_lse(z, dim, labels, group, add_zero):
    b = z.shape[0]
    excluded = None
    if labels is not None:
        zv = z.view(b, -1, group)
        mask = torch.zeros(b, zv.shape[1], dtype=torch.bool)
        mask[torch.arange(b), labels] = True
        excluded = zv[torch.arange(b), labels]
        z = zv.masked_fill(mask[:, :, None], float("-inf")).reshape(b, -1)
    if add_zero:
        zeros = torch.zeros(b, 1, dtype=z.dtype) if dim == 1 else torch.zeros(1, z.shape[1], dtype=z.dtype)
        z = torch.cat([z, zeros], dim=dim)
    return torch.logsumexp(z, dim=dim), excluded


CASES = [
    (kind, dim, group, excl, add_zero, chunk)
    for kind in ("linear", "cosine", "euclid", "sq_euclid")
    for dim, group in ((1, 1), (1, 3), (0, 1))
    for excl in (False, True)
    for add_zero in (False, True)
    for chunk in (None, 3, 6, 1000)
]


@pytest.fixture(params=["kernel", "torch"])
def path(request, monkeypatch):
    """Both ways of computing a log-sum-exp: the hand-written kernel, and (where it applies: linear and cosine maps
    along the classes, unchunked) torch's own operations, forced by the size limits of ``NATIVE_MAX_ENTRIES``."""
    limit = 0 if request.param == "kernel" else 1 << 40
    monkeypatch.setattr(logsumexp, "NATIVE_MAX_ENTRIES", {"cpu": limit, "accelerator": limit})
    return request.param


@pytest.mark.parametrize("kind,dim,group,excl,add_zero,chunk", CASES)
def test_class_logsumexp_equals_the_masked_logsumexp(kind, dim, group, excl, add_zero, chunk, path):
    g = torch.Generator().manual_seed(hash((kind, dim, group, excl, add_zero, chunk)) % 2**31)
    b, k, d = 7, 11, 5
    x = torch.randn(b, d, generator=g, dtype=F64, requires_grad=True)
    rows = torch.randn(k * group, d, generator=g, dtype=F64, requires_grad=True)
    bias = torch.randn(b, generator=g, dtype=F64) if kind in ("linear", "cosine") else None
    floor = torch.full((b,), 1e-20, dtype=F64)
    labels = torch.randint(0, k, (b,), generator=g) if excl else None
    scale = 1.7 if kind in ("linear", "cosine") else 1.0
    fmap = _map(kind, x, rows, bias if bias is not None else torch.zeros(b, dtype=F64), scale, floor)
    lse, ex = class_logsumexp(x, rows, fmap, dim=dim, exclude=labels, group=group, add_zero=add_zero, chunk_size=chunk)
    z = _reference_logits(kind, x, rows, bias if bias is not None else torch.zeros(b, dtype=F64), scale, floor)
    ref, ref_ex = _reference_lse(z, dim, labels, group, add_zero)
    weights = torch.randn(ref.shape, generator=g, dtype=F64)
    total, ref_total = (lse * weights).sum(), (ref * weights).sum()
    if labels is not None:
        w_ex = torch.randn(ref_ex.shape, generator=g, dtype=F64)
        total, ref_total = total + (ex.reshape(ref_ex.shape) * w_ex).sum(), ref_total + (ref_ex * w_ex).sum()
        torch.testing.assert_close(ex.reshape(ref_ex.shape), ref_ex, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(total, (x, rows))
    ref_grads = torch.autograd.grad(ref_total, (x, rows))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "cosine", "euclid", "sq_euclid"])
@pytest.mark.parametrize("chunk", [None, 4])
def test_class_logsumexp_gradcheck(kind, chunk, path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g, dtype=F64, requires_grad=True)
    rows = torch.randn(9, 3, generator=g, dtype=F64, requires_grad=True)
    labels = torch.tensor([0, 3, 8, 3, 5])
    bias = torch.randn(5, generator=g, dtype=F64)
    floor = torch.full((5,), 1e-20, dtype=F64)

    def f(x, rows):
        fmap = _map(kind, x, rows, bias, 1.3, floor)
        lse, ex = class_logsumexp(x, rows, fmap, exclude=labels, chunk_size=chunk)
        lse0, _ = class_logsumexp(x, rows, _map(kind, x, rows, bias, 1.3, floor), dim=0, add_zero=True)
        return lse.sum() + (ex.squeeze(1) * torch.arange(5.0, dtype=F64)).sum() + lse0.square().sum()

    assert torch.autograd.gradcheck(f, (x, rows))


@pytest.mark.parametrize("kind", ["linear", "euclid"])
def test_a_second_backward_reproduces_the_first_exactly(kind, path):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, generator=g, requires_grad=True)
    rows = torch.randn(10, 4, generator=g, requires_grad=True)
    floor = torch.full((6,), 1e-12)
    lse, ex = class_logsumexp(x, rows, _map(kind, x, rows, torch.zeros(6), 1.0, floor), exclude=torch.arange(6))
    total = lse.sum() + ex.sum()
    first = torch.autograd.grad(total, (x, rows), retain_graph=True)
    second = torch.autograd.grad(total, (x, rows))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("chunk", [None, 4])
def test_class_cross_entropy_equals_the_plain_formula(kind, group, chunk, path):
    """``F.cross_entropy`` (group 1) and -log of the own class's summed sub-centre probabilities (group 3), values
    and gradients, by the kernel and by torch's operations; the own logits come back as constants."""
    g = torch.Generator().manual_seed(group * 10 + (chunk or 0))
    b, k, d = 7, 5, 4
    x = torch.randn(b, d, generator=g, dtype=F64, requires_grad=True)
    rows = torch.randn(k * group, d, generator=g, dtype=F64, requires_grad=True)
    bias = torch.randn(b, generator=g, dtype=F64)
    labels = torch.randint(0, k, (b,), generator=g)
    ce, own = class_cross_entropy(x, rows, _map(kind, x, rows, bias, 1.7, None), labels, group=group, chunk_size=chunk)
    z = _reference_logits(kind, x, rows, bias, 1.7, None).view(b, k, group)
    ref = torch.logsumexp(z.reshape(b, -1), dim=1) - torch.logsumexp(z[torch.arange(b), labels], dim=1)
    if group == 1:
        torch.testing.assert_close(ref, F.cross_entropy(z.squeeze(2), labels, reduction="none"))
    torch.testing.assert_close(ce, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(own, z[torch.arange(b), labels].detach(), rtol=1e-12, atol=1e-12)
    assert not own.requires_grad
    w = torch.randn(b, generator=g, dtype=F64)
    for got, want in zip(
        torch.autograd.grad((ce * w).sum(), (x, rows)), torch.autograd.grad((ref * w).sum(), (x, rows))
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_both_paths_round_a_16_bit_product_alike(scale, monkeypatch):
    """Under bfloat16 autocast the kernel and torch's operations take the logits from the same 16-bit product
    (x * scale rounded once; the kernel's base-2 unit applied in float32): equal to float32 rounding, where the
    16 bits themselves differ from float32 by ~1e-3."""
    g = torch.Generator().manual_seed(3)
    x, rows = torch.randn(9, 6, generator=g), torch.randn(5, 6, generator=g)
    labels = torch.randint(0, 5, (9,), generator=g)
    values = {}
    for name, limit in (("kernel", 0), ("torch", 1 << 40)):
        monkeypatch.setattr(logsumexp, "NATIVE_MAX_ENTRIES", {"cpu": limit, "accelerator": limit})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            values[name] = class_cross_entropy(x, rows, LinearLogits(scale), labels)[0]
    torch.testing.assert_close(values["kernel"], values["torch"], rtol=1e-6, atol=1e-6)


def test_small_linear_problems_run_torch_operations_and_large_ones_the_kernel():
    """Which computation a log-sum-exp gets: torch's operations below ``NATIVE_MAX_ENTRIES`` (by device type) for
    linear and cosine maps along the classes, the hand-written kernel otherwise (chunked, Euclidean maps, along
    the batch, the implicit zero, nothing left after the exclusion)."""
    limit = logsumexp.NATIVE_MAX_ENTRIES["cpu"]
    spec = logsumexp._Spec
    x, labels = torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
    fits, too_big = torch.randn(limit // 8, 4), torch.randn(limit // 8 + 1, 4)
    linear = LinearLogits()
    assert logsumexp._torch_native(x, fits, labels, spec(linear, 1, 1, False, None, ce=True))
    assert not logsumexp._torch_native(x, too_big, labels, spec(linear, 1, 1, False, None, ce=True))
    assert not logsumexp._torch_native(x, fits, labels, spec(linear, 1, 1, False, 16, ce=True))  # chunked
    assert not logsumexp._torch_native(x, fits, labels, spec(linear, 0, 1, True, None))  # along the batch
    assert not logsumexp._torch_native(x, fits, labels, spec(linear, 1, 1, True, None))  # implicit zero
    euclid = NegEuclideanLogits(torch.ones(8), torch.ones(len(fits)), None, squared=True)
    assert not logsumexp._torch_native(x, fits, labels, spec(euclid, 1, 1, False, None))
    one_class = torch.randn(1, 4)  # excluded, nothing is left: the kernel's lse = -inf with a zero gradient
    assert not logsumexp._torch_native(x, one_class, labels, spec(linear, 1, 1, False, None))


#: the methods whose small unchunked batches run torch's own operations (exact second derivatives)
TORCH_NATIVE = {"c_ncm", "reponet", "fsc", "cam"}


@pytest.mark.parametrize("chunk_size", [None, 2], ids=["unchunked", "chunked"])
@pytest.mark.parametrize("name", ["c_ncm", "e_ncm", "reponet", "fsc", "proxy_anchor", "cam"])
def test_double_backward_is_exact_or_a_clear_error(name, chunk_size):
    """A gradient penalty (create_graph=True) either gets exact second derivatives or raises: torch's own
    once_differentiable would silently treat the hand-written gradients as constants here. Small unchunked
    batches of the linear/cosine losses run torch's operations (exact); the hand-written kernel raises."""
    kwargs = {} if chunk_size is None or name == "cam" else {"chunk_size": chunk_size}
    loss = pml_anchors.get_loss(name, 5, 4, **kwargs).double()
    labels = torch.arange(8) % 5
    x = torch.randn(8, 4, dtype=F64, requires_grad=True)
    if name == "cam" or (name in TORCH_NATIVE and chunk_size is None):
        assert torch.autograd.gradgradcheck(lambda e: loss(e, labels), (x,))
        return
    with pytest.raises(RuntimeError, match=r"double backward \(create_graph=True\) through \w+ is not supported"):
        torch.autograd.grad(loss(x, labels), x, create_graph=True)
    (grad,) = torch.autograd.grad(loss(x, labels), x)  # first order still works
    assert torch.isfinite(grad).all()


def test_cross_entropy_from_lse_is_cross_entropy_and_stays_exact_far_out():
    z = torch.tensor([[0.0, 30.0, -5.0], [100.0, 0.0, 1.0], [-3.0, 2.0, 2.5]], dtype=F64)
    y = torch.tensor([1, 1, 0])
    mask = F.one_hot(y, 3).bool()
    lse_others = torch.logsumexp(z.masked_fill(mask, float("-inf")), dim=1)
    got = cross_entropy_from_lse(lse_others, z[mask])
    torch.testing.assert_close(got, F.cross_entropy(z, y, reduction="none"), rtol=1e-14, atol=1e-15)
    # far from the boundary it is more precise than log_softmax: log(1 + e^-30 + e^-35) to the last bit
    assert float(got[0]) == pytest.approx(math.log1p(math.exp(-30) + math.exp(-35)), rel=1e-14)


# -- every method against its plain formula -----------------------------------------------------------------


def _batch(k, d, b=24, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype)
    y = torch.randint(0, k, (b,), generator=g)
    return x, y


def _plain_ncm(loss, x, a, y):
    if loss.metric == "cosine":
        logits = F.normalize(x, dim=1, eps=loss.eps) @ F.normalize(a, dim=1, eps=loss.eps).T
    elif loss.squared:
        logits = -torch.cdist(x, a).square()
    else:
        logits = -(x[:, None, :] - a[None]).square().sum(-1).sqrt()
    return F.cross_entropy(logits, y)


def _plain_reponet(loss, x, a, y):
    cos = F.normalize(x, dim=1) @ F.normalize(a, dim=1).T
    m = loss.margin
    theta = torch.acos(cos.gather(1, y[:, None]).clamp(-1 + 1e-12, 1 - 1e-12))
    target = torch.where(theta <= math.pi - m, torch.cos(theta + m), torch.cos(theta) - m * math.sin(m))
    onehot = F.one_hot(y, cos.shape[1]).bool()
    logits = loss.scale * torch.where(onehot, target, cos)
    return F.cross_entropy(logits, y)


def _plain_fsc(loss, x, w, y):
    k, s, _ = w.shape
    z = x @ w.reshape(k * s, -1).T
    p = torch.softmax(z, dim=1).view(-1, k, s)
    ce = -torch.log(p[torch.arange(len(y)), y].sum(dim=1)).mean()
    own = z.view(-1, k, s)[torch.arange(len(y)), y]
    k_star = own.argmax(dim=1)
    compact = 0.5 * (x - w[y, k_star]).square().sum()
    return ce + loss.beta * compact


def _plain_proxy_anchor(loss, x, p, y):
    cos = F.normalize(x, dim=1) @ F.normalize(p, dim=1).T
    pos = F.one_hot(y, p.shape[0]).bool()
    a, delta = loss.alpha, loss.margin
    pos_sum = torch.where(pos, torch.exp(-a * (cos - delta)), 0).sum(0)
    neg_sum = torch.where(~pos, torch.exp(a * (cos + delta)), 0).sum(0)
    with_pos = pos.any(0)
    return torch.log1p(pos_sum)[with_pos].sum() / with_pos.sum() + torch.log1p(neg_sum).sum() / p.shape[0]


def _plain_cam(loss, x, c, y):
    attractor = 0.5 * (x - c[y]).square().sum(1).mean()
    dist = torch.cdist(c, c)
    off = ~torch.eye(c.shape[0], dtype=torch.bool)
    repeller = 0.5 * torch.where(off, (2 * loss.margin - dist).clamp_min(0).square(), 0).sum()
    norm = 0.5 * (loss.min_norm - c.norm(dim=1)).clamp_min(0).square().sum()
    return attractor + repeller + norm


PLAIN = {
    "e_ncm": (_plain_ncm, {}),
    "e_ncm_squared": (_plain_ncm, {"squared": True}),
    "c_ncm": (_plain_ncm, {}),
    "reponet": (_plain_reponet, {"anchors": "spread", "margin": 0.4}),
    "fsc": (_plain_fsc, {"beta": 0.3}),
    "proxy_anchor": (_plain_proxy_anchor, {}),
    "cam": (_plain_cam, {"margin": 0.6}),
    "cam_neighbor_list": (_plain_cam, {"margin": 0.6, "neighbor_list": True}),
}


def _method(key: str) -> str:
    return key.split("_squared")[0].split("_neighbor")[0]


@pytest.mark.parametrize("key", list(PLAIN))
@pytest.mark.parametrize("chunk", [None, 5])
@pytest.mark.parametrize("learnable", [False, True])
def test_every_method_equals_its_plain_formula(key, chunk, learnable):
    plain, kwargs = PLAIN[key]
    k, d = 13, 6
    kwargs = dict(kwargs, learnable=learnable)  # fixed: the cached path; learnable: anchor gradients too
    if chunk is not None and _method(key) != "cam":
        kwargs["chunk_size"] = chunk
    loss = pml_anchors.get_loss(_method(key), k, d, **kwargs).double()
    x, y = _batch(k, d)
    x.requires_grad_(True)
    for _ in range(2):  # the second call runs on the cached anchor transforms
        value = loss(x, y)
    inputs = (x, loss.anchors) if learnable else (x,)
    got = torch.autograd.grad(value, inputs)
    a = loss.anchors.detach().clone().requires_grad_(learnable)
    x2 = x.detach().clone().requires_grad_(True)
    expected = plain(loss, x2, a, y)
    want = torch.autograd.grad(expected, (x2, a) if learnable else (x2,))
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-12)


def test_e_ncm_on_an_anchor_keeps_the_flat_floor_and_a_finite_gradient():
    loss = pml_anchors.get_loss("e_ncm", 5, 5, anchors="one_hot").double()
    g = torch.Generator().manual_seed(0)
    x = torch.cat([loss.anchors[:2].clone(), torch.randn(3, 5, generator=g, dtype=F64)]).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 4])
    chunked = pml_anchors.get_loss("e_ncm", 5, 5, anchors="one_hot", chunk_size=2).double()
    v1 = loss(x, y)
    (g1,) = torch.autograd.grad(v1, x)
    v2 = chunked(x, y)
    (g2,) = torch.autograd.grad(v2, x)
    assert torch.isfinite(g1).all()
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=0)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14)
    # on its own anchor the distance is flat (gradient 0 from that term); the other classes still pull
    plain = -(x.detach()[:, None] - loss.anchors[None]).square().sum(-1).clamp_min(1e-300).sqrt()
    p = torch.softmax(plain, dim=1)
    diff = x.detach()[:, None] - loss.anchors[None]
    dist = diff.norm(dim=2)
    coef = (p - F.one_hot(y, 5)) / dist.clamp_min(1e-300)
    coef[dist < 1e-6] = 0
    expected = -(coef[:, :, None] * diff).sum(1) / 5
    torch.testing.assert_close(g1, expected, rtol=1e-6, atol=1e-9)


# -- chunked == unchunked ------------------------------------------------------------------------------------

CHUNKED = {
    "e_ncm": {},
    "c_ncm": {},
    "reponet": {"anchors": "spread", "margin": 0.5},
    "fsc": {},
    "proxy_anchor": {},
}


@pytest.mark.parametrize("name", list(CHUNKED))
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_chunked_equals_unchunked_at_1000_classes(name, dtype):
    k, d = 1000, 16
    plain = pml_anchors.get_loss(name, k, d, **CHUNKED[name]).to(dtype)
    chunked = pml_anchors.get_loss(name, k, d, chunk_size=128, **CHUNKED[name]).to(dtype)
    chunked.load_state_dict(plain.state_dict())
    x, y = _batch(k, d, b=64, dtype=dtype)
    results = []
    for loss in (plain, chunked):
        xx = x.clone().requires_grad_(True)
        value = loss(xx, y)
        value.backward()
        grads = [xx.grad] + [p.grad for p in loss.parameters()]
        results.append((value.detach(), grads))
    (v0, g0), (v1, g1) = results
    tol = {"rtol": 2e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 1e-14}
    torch.testing.assert_close(v1, v0, **tol)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, **tol)


def test_chunk_size_is_validated_and_shown():
    with pytest.raises(ValueError, match="chunk_size"):
        pml_anchors.get_loss("c_ncm", 10, 4, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size must be None or a positive int, got float 2.5"):
        pml_anchors.get_loss("c_ncm", 10, 4, chunk_size=2.5)
    assert "chunk_size=4" in repr(pml_anchors.get_loss("c_ncm", 10, 4, chunk_size=4))


# -- the fixed-anchor cache ----------------------------------------------------------------------------------

CACHED = ["c_ncm", "e_ncm", "reponet", "fsc"]


def _value(loss, x, y):
    with torch.no_grad():
        return float(loss(x, y))


def _fresh_twin(loss, name):
    twin = pml_anchors.get_loss(name, loss.num_classes, loss.embedding_size, **_kw(name)).to(loss.anchors.dtype)
    with torch.no_grad():
        twin.anchors.copy_(loss.anchors)
    return twin


def _kw(name):
    return {"anchors": "spread", "margin": 0.5} if name == "reponet" else {}


@pytest.mark.parametrize("name", CACHED)
def test_cache_is_reused_and_invalidated_when_the_anchors_change(name):
    loss = pml_anchors.get_loss(name, 12, 6, **_kw(name))
    x, y = _batch(12, 6, dtype=torch.float32)
    before = _value(loss, x, y)
    cache = dict(loss.anchor_cache.entries)
    assert cache, "fixed anchors should be cached"
    _value(loss, x, y)
    assert all(loss.anchor_cache.entries[k][1] is v[1] for k, v in cache.items()), "cache not reused"

    # load_state_dict with other anchors
    other = pml_anchors.get_loss(name, 12, 6, seed=5, **_kw(name))
    loss.load_state_dict(other.state_dict())
    assert _value(loss, x, y) == pytest.approx(_value(other, x, y), rel=1e-6)
    assert _value(loss, x, y) != pytest.approx(before, rel=1e-6)

    # in-place write (bumps the version counter)
    with torch.no_grad():
        loss.anchors.mul_(-1.5)
    assert _value(loss, x, y) == pytest.approx(_value(_fresh_twin(loss, name), x, y), rel=1e-6)

    # a new tensor
    loss.anchors = loss.anchors.flip(0).clone()
    assert _value(loss, x, y) == pytest.approx(_value(_fresh_twin(loss, name), x, y), rel=1e-6)

    # .data writes bypass the version counter: clear_anchor_cache() is the documented remedy
    loss.anchors.data.copy_(other.anchors)
    loss.clear_anchor_cache()
    assert _value(loss, x, y) == pytest.approx(_value(other, x, y), rel=1e-6)


@pytest.mark.parametrize("name", CACHED)
def test_cache_follows_dtype_moves_and_input_dtype(name):
    loss = pml_anchors.get_loss(name, 12, 6, **_kw(name))
    x, y = _batch(12, 6, dtype=torch.float32)
    v32 = _value(loss, x, y)
    v64_in = _value(loss, x.double(), y)  # float64 inputs: a float64 cached copy, the buffer stays float32
    assert loss.anchors.dtype == torch.float32
    assert v64_in == pytest.approx(v32, rel=1e-5)
    assert {k[1].dtype if torch.is_tensor(k[1]) else None for k in loss.anchor_cache.entries.values()}
    loss.double()
    assert not loss.anchor_cache  # .to() drops the cache
    assert _value(loss, x.double(), y) == pytest.approx(v32, rel=1e-5)
    loss.float()
    assert _value(loss, x, y) == pytest.approx(v32, rel=1e-6)


def test_cached_unit_anchors_are_normal_tensors_even_when_first_built_in_inference_mode():
    loss = pml_anchors.get_loss("c_ncm", 12, 6)
    x, y = _batch(12, 6, dtype=torch.float32)
    with torch.inference_mode():
        loss.get_logits(x)
    xx = x.clone().requires_grad_(True)
    loss(xx, y).backward()  # would raise if an inference tensor were saved for backward
    assert torch.isfinite(xx.grad).all()


def test_learnable_anchors_are_never_cached():
    loss = pml_anchors.get_loss("c_ncm", 12, 6, learnable=True)
    x, y = _batch(12, 6, dtype=torch.float32)
    loss(x, y)
    assert not loss.anchor_cache


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", CACHED)
def test_cache_follows_device_moves(name):
    loss = pml_anchors.get_loss(name, 12, 6, **_kw(name))
    x, y = _batch(12, 6, dtype=torch.float32)
    v = _value(loss, x, y)
    loss.cuda()
    assert _value(loss, x.cuda(), y.cuda()) == pytest.approx(v, rel=1e-5)
    loss.cpu()
    assert _value(loss, x, y) == pytest.approx(v, rel=1e-6)


# -- CAM: neighbour list ------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,scale", [(3, 1.0), (8, 1.5)])
def test_cam_neighbor_list_stays_exact_while_an_optimizer_moves_the_anchors(d, scale):
    k = 60
    torch.manual_seed(0)
    anchors = torch.randn(k, d, dtype=F64) * scale
    fast = pml_anchors.get_loss("cam", k, d, anchors=anchors, neighbor_list=True, neighbor_skin=0.3).double()
    dense = pml_anchors.get_loss("cam", k, d, anchors=anchors, neighbor_list=False).double()
    opt_f = torch.optim.SGD(fast.parameters(), lr=0.05)
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.05)
    for step in range(40):
        x, y = _batch(k, d, b=16, seed=step)
        vf, vd = fast(x, y), dense(x, y)
        torch.testing.assert_close(vf, vd, rtol=1e-10, atol=1e-12)
        opt_f.zero_grad()
        opt_d.zero_grad()
        vf.backward()
        vd.backward()
        torch.testing.assert_close(fast.anchors.grad, dense.anchors.grad, rtol=1e-8, atol=1e-12)
        opt_f.step()
        opt_d.step()
        with torch.no_grad():  # keep them bit-identical (summation order differs)
            fast.anchors.copy_(dense.anchors)
    stats = fast._neighbors.stats
    assert stats["rebuilds"] >= 1 and stats["partial"] + stats["rebuilds"] > 1, stats


def test_cam_neighbor_list_falls_back_when_too_many_pairs_and_after_load_state_dict():
    from pml_anchors_cam.repeller import NeighborList

    k, d = 40, 2
    loss = pml_anchors.get_loss("cam", k, d, neighbor_list=True).double()
    dense = pml_anchors.get_loss("cam", k, d, neighbor_list=False).double()
    dense.load_state_dict(loss.state_dict())
    loss._neighbors = NeighborList(loss.margin, loss.margin, max_pairs=3)  # nearly every pair is close in 2-D
    x, y = _batch(k, d)
    torch.testing.assert_close(loss(x, y), dense(x, y), rtol=1e-10, atol=1e-12)
    loss._neighbors = None
    loss(x, y)
    other = pml_anchors.get_loss("cam", k, d, seed=3).double()
    loss.load_state_dict(other.state_dict())  # a big jump: the displacement check rebuilds the list
    dense.load_state_dict(other.state_dict())
    torch.testing.assert_close(loss(x, y), dense(x, y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["close_pairs", "gram_fallback"])
def test_cam_repeller_blocks_equal_the_dense_matrix(form, monkeypatch):
    from pml_anchors_cam import repeller
    from pml_anchors_cam.repeller import repeller_blocked

    if form == "gram_fallback":  # more close pairs than fit: L_R from the Gram form itself
        monkeypatch.setattr(repeller, "EXACT_PAIR_ENTRIES", 3 * 5)
    torch.manual_seed(0)
    a = torch.randn(37, 3, dtype=F64, requires_grad=True)
    a.data[5] = a.data[9]  # coincident pair: finite (zero) gradient between them
    dist = torch.cdist(a, a)
    ref = 0.5 * torch.where(~torch.eye(37, dtype=torch.bool), (2.0 - dist).clamp_min(0).square(), 0).sum()
    got = repeller_blocked(a, 1.0, block_entries=37 * 4)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(got, a)
    assert torch.isfinite(g).all()
    keep = torch.ones(37, dtype=torch.bool)
    keep[[5, 9]] = False
    (gr,) = torch.autograd.grad(ref, a)
    torch.testing.assert_close(g[keep], gr[keep], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("neighbor_list", [False, True])
@pytest.mark.parametrize("gap", [1e-2, 1e-3, 1e-4])
def test_cam_repeller_is_exact_for_nearly_coincident_anchors_in_float32(neighbor_list, gap):
    """Both forms take the close pairs' distances from their differences: the Gram form ||a||^2 + ||b||^2 - 2a.b
    cancels for anchors far from the centre and close together (it gave a 55 % too large gradient at gap 1e-3
    with norm ~11, and 0 at 1e-4 with norm ~20)."""
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(20, 128, generator=g) * 2  # norm ~23
    anchors[1] = anchors[0] + gap
    x, y = torch.randn(4, 128, generator=g), torch.tensor([2, 3, 4, 5])
    grads = []
    for dtype in (torch.float32, torch.float64):
        loss = pml_anchors.get_loss("cam", 20, 128, anchors=anchors, neighbor_list=neighbor_list).to(dtype)
        loss(x.to(dtype), y).backward()
        grads.append(loss.anchors.grad[:2].double())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)


# -- the benchmark script ------------------------------------------------------------------------------------


def _benchmark(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``benchmarks/<script> args...`` run from the repository root; it must exit 0."""
    command = [sys.executable, str(ROOT / "benchmarks" / script), *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_loss_speed_quick_prints_a_table_and_valid_json():
    proc = _benchmark("loss_speed.py", "--quick", "--threads", "1", "--json", "-")
    data = json.loads(proc.stdout)
    assert {"meta", "results"} <= set(data)
    assert data["meta"]["lse_path"] == "auto"
    names = {r["loss"] for r in data["results"]}
    assert {"floor", "floor_w", "proxy_anchor", "ProxyAnchorLoss"} <= names
    assert {s.name for s in pml_anchors.list_methods()} <= names
    for row in data["results"]:
        assert row["ms"] > 0 and math.isfinite(row["ms"])
        assert row["kind"] == "floor" or row["x_floor"] > 0
    table = [line for line in proc.stderr.splitlines() if line.startswith("|")]
    assert table[0].startswith("| d | C | loss") and len(table) == 2 + len(data["results"])


def test_train_step_quick_reports_the_loss_share_eager_and_compiled():
    args = ["--quick", "--methods", "c_ncm,proxy_anchor", "--compile", "--threads", "1", "--json", "-"]
    proc = _benchmark("train_step.py", *args, timeout=300)
    rows = json.loads(proc.stdout)["results"]
    assert [(r["method"], r["models"]) for r in rows] == [
        ("c_ncm", "eager"),
        ("c_ncm", "compiled"),
        ("proxy_anchor", "eager"),
        ("proxy_anchor", "compiled"),
    ]
    assert all(0 < r["share"] < 1 and r["step_ms"] > r["loss_ms"] > 0 for r in rows)
    assert all(r["x_eager"] == (1.0 if r["models"] == "eager" else r["x_eager"]) > 0 for r in rows)
    assert "| C | method | trunk + embedder |" in proc.stderr


def test_launch_count_counts_kernels_and_host_reads():
    """The floor is a handful of kernels; PML's ProxyAnchorLoss reads |P+| back to the host (``len(...)``) and
    pml-anchors' proxy_anchor does not; every row names its floor."""
    proc = _benchmark(
        "launch_count.py", "--sizes", "16x50", "--batch", "32", "--methods", "c_ncm,proxy_anchor,ProxyAnchorLoss"
    )
    rows = {}
    for line in proc.stdout.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[2].strip("`")] = (int(cells[3]), cells[4], int(cells[5]))
    assert set(rows) == {"floor", "floor_w", "c_ncm", "proxy_anchor", "ProxyAnchorLoss"}
    assert 5 <= rows["floor"][0] <= 10 and rows["floor"][2] == 0  # mm, log_softmax, nll, their backward
    assert rows["ProxyAnchorLoss"][2] >= 1 and rows["proxy_anchor"][2] == 0
    assert rows["c_ncm"][1].endswith("(floor)") and rows["proxy_anchor"][1].endswith("(floor_w)")
    assert all(kernels > rows["floor"][0] for name, (kernels, _, _) in rows.items() if not name.startswith("floor"))


def test_launch_count_lse_path_torch_launches_fewer_kernels_for_the_linear_losses():
    """``--lse-path torch`` (the GPU's path for small problems) cuts c_ncm's and reponet's kernels below the
    kernel path's at one size; e_ncm (Euclidean: always the kernel) is the same on both."""
    counts = {}
    for path in ("kernel", "torch"):
        proc = _benchmark(
            "launch_count.py",
            "--sizes",
            "16x50",
            "--batch",
            "32",
            "--methods",
            "c_ncm,reponet,e_ncm",
            "--lse-path",
            path,
        )
        assert f"lse-path={path}" in proc.stderr
        for line in proc.stdout.splitlines()[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            counts[path, cells[2].strip("`")] = int(cells[3])
    assert counts["torch", "c_ncm"] < counts["kernel", "c_ncm"]
    assert counts["torch", "reponet"] < counts["kernel", "reponet"]
    assert counts["torch", "e_ncm"] == counts["kernel", "e_ncm"]


def _loss_speed_module(monkeypatch):
    """``benchmarks/loss_speed.py`` imported as a module (it imports ``_bench_common`` from its own folder)."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("_loss_speed_under_test", ROOT / "benchmarks" / "loss_speed.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_loss_speed_floor_follows_the_loss_not_its_name(monkeypatch):
    """Learnable anchors -> ``floor_w``, fixed -> ``floor``, sub-centres (C x s x d anchors) -> ``floor_cs``,
    whatever the method is called; PML's losses by their parameters / ``centers_per_class``."""
    from pytorch_metric_learning import losses

    floor_of = _loss_speed_module(monkeypatch).floor_of
    cases = [
        ("proxy_anchor", {}, "floor_w"),
        ("cam", {}, "floor_w"),
        ("c_ncm", {}, "floor"),
        ("reponet", {"anchors": "spread"}, "floor"),
        ("fsc", {"sub_centers": 4}, "floor_cs"),
        ("c_ncm", {"learnable": True}, "floor_w"),  # same name, learnable anchors
        ("proxy_anchor", {"learnable": False}, "floor"),  # same name, fixed anchors
    ]
    for name, kwargs, expected in cases:
        assert floor_of(pml_anchors.get_loss(name, 10, 9, **kwargs)) == expected, (name, kwargs)
    assert floor_of(losses.ProxyAnchorLoss(10, 9)) == "floor_w"
    frozen = losses.NormalizedSoftmaxLoss(10, 9).requires_grad_(False)
    assert floor_of(frozen) == "floor"
    assert floor_of(losses.SoftTripleLoss(10, 9, centers_per_class=4).requires_grad_(False)) == "floor_cs"


def test_loss_speed_floor_of_a_third_party_plugin_with_learnable_anchors(monkeypatch, pml_registry):
    """The worked example's ``center_loss`` (learnable centres), unknown to the script, gets ``floor_w``."""
    import pml_anchors_center_loss

    pml_registry.add_plugin(pml_anchors_center_loss, name="pml-anchors-center-loss")
    floor_of = _loss_speed_module(monkeypatch).floor_of
    assert floor_of(pml_anchors.get_loss("center_loss", 10, 9)) == "floor_w"


@pytest.mark.parametrize("chunk_size", [1, 7, 16])
def test_chunked_e_ncm_keeps_float32_precision_at_large_norms(chunk_size):
    """A chunked backward normalises each chunk's weights by the same (max, sum) the forward summed, not by an lse
    whose rounding (an ulp of |lse| ~ 5e-4 at distances ~5000) would tilt every weight: the gradient, a small
    difference of two O(1) terms there, kept 0.99 relative error before."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 22, generator=g) * 1000
    y = torch.arange(32) % 39
    grads = {}
    for chunk, dtype in ((None, torch.float64), (None, torch.float32), (chunk_size, torch.float32)):
        loss = pml_anchors.get_loss("e_ncm", 39, 22, chunk_size=chunk)
        xx = x.to(dtype).clone().requires_grad_(True)
        loss(xx, y).backward()
        grads[(chunk, dtype)] = xx.grad.double()
    exact = grads[(None, torch.float64)]
    unchunked = (grads[(None, torch.float32)] - exact).norm() / exact.norm()
    chunked = (grads[(chunk_size, torch.float32)] - exact).norm() / exact.norm()
    assert chunked < max(2 * unchunked, 1e-3)
